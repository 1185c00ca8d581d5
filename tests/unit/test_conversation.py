"""dynalign/conversation.py: a logged conversation as a training prompt (roles, the client's system
message, tool turns), cut to a token budget at turn boundaries, and as the text a judge reads."""

import json

import pytest

from dynalign import conversation as conv
from dynalign.errors import DataError

SYSTEM = {"role": "system", "content": "You are Pip, the garden centre's assistant."}
TURNS = [{"role": "user", "content": "Plan a garden party for my street."},
         {"role": "assistant", "content": "Pick a date, invite everyone, ask for a dish each."},
         {"role": "user", "content": "Make it cheaper."},
         {"role": "assistant", "content": "Borrow tables and chairs from neighbours."},
         {"role": "user", "content": "And what if it rains?"}]


def words(messages):  # a counter: one token a word, plus one per message
    return sum(len(m["content"].split()) + 1 for m in messages)


def test_the_conversation_up_to_its_last_user_turn_with_the_client_system_kept_or_dropped():
    logged = [SYSTEM, *TURNS, {"role": "assistant", "content": "the answer being logged"}]
    assert conv.training_messages(logged, "keep") == [SYSTEM, *TURNS]
    assert conv.training_messages(json.dumps(logged), "drop") == TURNS
    assert conv.training_messages([{"role": "user", "content": "  "}]) is None
    assert conv.training_messages([SYSTEM]) is None


def test_content_parts_and_tool_turns_become_text_and_turns_keep_alternating():
    logged = [{"role": "user", "content": [{"type": "text", "text": "Weather in Oslo?"}]},
              {"role": "assistant", "content": None, "tool_calls": [
                  {"id": "c1", "type": "function",
                   "function": {"name": "weather", "arguments": '{"city": "Oslo"}'}}]},
              {"role": "tool", "tool_call_id": "c1", "content": "4 C, rain"},
              {"role": "assistant", "content": "It is 4 C and raining."},
              {"role": "user", "content": "Should I cycle?"}]
    assert conv.training_messages(logged) == [
        {"role": "user", "content": "Weather in Oslo?"},
        {"role": "assistant", "content": '[called weather({"city": "Oslo"})]\n[tool result] 4 C, '
                                         'rain\nIt is 4 C and raining.'},
        {"role": "user", "content": "Should I cycle?"}]


def test_a_long_conversation_loses_whole_turns_from_its_start_then_the_system_message():
    messages = [SYSTEM, *TURNS]
    full = words(messages)
    assert conv.fit(messages, full, words) == messages  # fits: unchanged
    assert conv.fit(messages, full - 1, words) == [SYSTEM, *TURNS[2:]]  # turn 1 cut whole
    last_two = words([SYSTEM, TURNS[4]])
    assert conv.fit(messages, last_two, words) == [SYSTEM, TURNS[4]]
    assert conv.fit(messages, last_two - 1, words) == [TURNS[4]]  # then the system message
    assert conv.fit(messages, words([TURNS[4]]) - 1, words) is None  # never cut inside a turn


def test_a_judge_reads_earlier_turns_as_context_and_never_the_client_system_message():
    assert conv.as_text([TURNS[0]]) == TURNS[0]["content"]  # one turn: as it always was
    text = conv.as_text([SYSTEM, *TURNS])
    assert "Pip" not in text
    assert text == (f"{conv.CONTEXT_HEADER}\nUser: Plan a garden party for my street.\n\n"
                    "Assistant: Pick a date, invite everyone, ask for a dish each.\n\n"
                    "User: Make it cheaper.\n\nAssistant: Borrow tables and chairs from "
                    f"neighbours.\n\n{conv.REQUEST_HEADER}\nAnd what if it rains?")


def test_rollouts_get_the_ca_system_prompt_first_in_one_system_turn():
    assert conv.with_system("CA", TURNS)[0] == {"role": "system", "content": "CA"}
    merged = conv.with_system("CA", [SYSTEM, *TURNS])
    assert merged[0] == {"role": "system", "content": f"CA\n\n{SYSTEM['content']}"}
    assert merged[1:] == TURNS


def test_identical_conversations_share_a_key_and_another_history_does_not():
    same = [dict(m, content=m["content"].upper()) for m in TURNS]
    assert conv.key(TURNS) == conv.key(same)
    assert conv.key(TURNS) != conv.key(TURNS[2:])


def test_tokens_are_counted_with_the_models_own_tokenizer_file(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0, "rain": 1}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(tmp_path / "tokenizer.json"))
    count = conv.token_counter(str(tmp_path))
    assert count([TURNS[4]]) == 6 + conv.TURN_TOKENS  # And what if it rains ?
    estimate = conv.token_counter(str(tmp_path / "no-tokenizer-here"))
    assert estimate([TURNS[4]]) == len(TURNS[4]["content"]) // 4 + conv.TURN_TOKENS


def test_the_gates_probes_load_and_a_bad_row_is_refused_naming_its_line(tmp_path):
    probes = conv.load_probes()
    assert len(probes) == 20 and all(len(conv.user_turns(p["messages"])) >= 2 for p in probes)
    assert len(conv.load_probes(limit=4)) == 4
    bad = tmp_path / "probes.jsonl"
    bad.write_text(json.dumps(probes[0]) + "\n" + json.dumps({"messages": TURNS[:2]}) + "\n")
    with pytest.raises(DataError, match="probes.jsonl:2: messages must alternate"):
        conv.load_probes(bad)
