"""dynalign.rounds: what a refresh round trains on (through a real Store's logged exchanges),
the learn-config checks, live progress and the API's view of a round."""

import json

import pytest

from dynalign.checks import problems
from dynalign.config import LearnConfig, load_config
from dynalign.errors import ConfigError
from dynalign.conversation import last_user_turn, load_probes
from dynalign.rounds import progress, prompt_messages, round_view, select_prompts
from dynalign.store import Store


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "state" / "dynalign.db")
    yield s
    s.close()


def _log(store, text, opt_out=0, status="ok", history=()):
    messages = [*history, {"role": "user", "content": text}]
    return store.log_exchange({"messages": messages, "response": "r", "opt_out": opt_out,
                               "status": status})


def _seeds(train=20, heldout=10):
    rows = [{"id": f"tr-{i:02d}", "prompt": f"train prompt {i}", "split": "train"}
            for i in range(train)]
    return rows + [{"id": f"ho-{i:02d}", "prompt": f"heldout prompt {i}", "split": "heldout"}
                   for i in range(heldout)]


def _logged(sel):
    return {p["prompt"] for p in sel.prompts if p["source"] == "logged"}


def test_opted_out_and_failed_exchanges_are_never_selected(store):
    keep = _log(store, "plan my allotment")
    _log(store, "secret opted out", opt_out=1)
    _log(store, "request that errored", status="error")
    _log(store, "request the client dropped", status="cancelled")
    last = _log(store, "budget for a wedding")
    rows = store.training_exchanges(store.consumed_upto())
    assert [r["id"] for r in rows] == [keep, last]  # oldest first
    sel = select_prompts(rows, [], LearnConfig(prompts=10, logged_share=1.0))
    assert _logged(sel) == {"plan my allotment", "budget for a wedding"}
    assert sel.logged == 2 and sel.exchanges_upto == last
    ids = {p["id"] for p in sel.prompts}
    assert ids == {f"exchange-{keep}", f"exchange-{last}"}


def test_no_user_fills_more_than_its_share_of_the_logged_prompts_even_rated_down(store):
    """One user logs 10 prompts and rates each answer down; two others log one each: with
    max_user_share 0.25 of 8 logged places, the first user gets 2, rated down or not."""
    flood = [store.log_exchange({"messages": [{"role": "user", "content": f"mine {i}"}],
                                 "status": "ok", "opt_out": 0, "user": "mallory"})
             for i in range(10)]
    for exchange in flood:
        store.add_feedback(exchange, -1, user="mallory")
    for who in ("ann", "bob"):
        store.log_exchange({"messages": [{"role": "user", "content": f"{who}'s prompt"}],
                            "status": "ok", "opt_out": 0, "client_id": who})  # no user: client
    learn = LearnConfig(prompts=8, logged_share=1.0, max_user_share=0.25)
    sel = select_prompts(store.training_exchanges(0), _seeds(), learn)
    logged = _logged(sel)
    assert len([t for t in logged if t.startswith("mine")]) == 2
    assert {"ann's prompt", "bob's prompt"} <= logged
    assert sel.user_capped == 8 and sel.summary()["user_capped"] == 8
    assert all("who" not in p for p in sel.prompts)  # who sent it is not copied into the list
    everyone = select_prompts(store.training_exchanges(0), _seeds(),
                              LearnConfig(prompts=8, logged_share=1.0, max_user_share=1.0))
    assert len([t for t in _logged(everyone) if t.startswith("mine")]) == 8  # the cap did it


def test_prompts_rated_down_come_first_in_the_logged_share_and_keep_their_rating(store):
    old_down = _log(store, "an old prompt its user rated down")
    liked = _log(store, "a prompt whose answer was liked")
    changed = _log(store, "rated down, then up")
    newest = [_log(store, f"newer prompt {i}") for i in range(3)]
    store.add_feedback(old_down, -1)
    store.add_feedback(liked, 1)
    store.add_feedback(changed, -1)
    store.add_feedback(changed, 1)  # the latest rating counts
    opted = _log(store, "opted out and rated down", opt_out=1)
    store.add_feedback(opted, -1)  # stored, never trained on
    sel = select_prompts(store.training_exchanges(0), _seeds(), LearnConfig(prompts=4,
                                                                            logged_share=0.5))
    logged = [p for p in sel.prompts if p["source"] == "logged"]
    assert {p["prompt"] for p in logged} == {"an old prompt its user rated down",
                                             "newer prompt 2"}  # then the newest
    assert [p.get("rating") for p in sorted(logged, key=lambda p: p["id"])] == [-1, None]
    assert sel.summary()["rated_down"] == 1 and sel.logged == 2
    assert newest[-1] > old_down


def test_only_exchanges_after_the_last_consumed_round_are_new(store):
    first = _log(store, "old prompt")
    round_id = store.open_round("operator", "", 1)
    store.update_round(round_id, status="promoted", exchanges_upto=first)
    second = _log(store, "new prompt")
    assert store.consumed_upto() == first
    assert [r["id"] for r in store.training_exchanges(store.consumed_upto())] == [second]
    # a failed round consumed nothing: its exchanges stay available to the next one
    round_id = store.open_round("operator", "", 1)
    store.update_round(round_id, status="failed", exchanges_upto=second)
    assert store.consumed_upto() == first


def test_last_user_turn_of_each_conversation(store):
    history = [{"role": "user", "content": "first question"},
               {"role": "assistant", "content": "an answer"}]
    _log(store, "  the follow-up  ", history=history)
    sel = select_prompts(store.training_exchanges(0), [], LearnConfig(prompts=4, logged_share=1.0))
    assert _logged(sel) == {"the follow-up"}


def test_last_user_turn_shapes():
    parts = [{"role": "user", "content": [{"type": "text", "text": "look"},
                                          {"type": "image_url", "image_url": {"url": "x"}},
                                          {"type": "text", "text": "here"}]}]
    assert last_user_turn(parts) == "look here"
    assert last_user_turn(json.dumps([{"role": "user", "content": "as json"}])) == "as json"
    assert last_user_turn([{"role": "system", "content": "sys"}]) is None
    assert last_user_turn([{"role": "user", "content": "   "}]) is None
    assert last_user_turn([]) is None


def test_duplicates_are_case_and_whitespace_insensitive(store):
    older = _log(store, "Plan  a Trip to Lima")
    newer = _log(store, "plan a trip\tto lima ")
    _log(store, "something else")
    sel = select_prompts(store.training_exchanges(0), [], LearnConfig(prompts=10, logged_share=1.0))
    assert sel.duplicates == 1 and sel.logged == 2
    ids = {p["id"] for p in sel.prompts}
    assert f"exchange-{newer}" in ids and f"exchange-{older}" not in ids  # the newest kept


def test_seed_prompts_equal_to_a_logged_one_are_not_replayed(store):
    _log(store, "Train Prompt 3")
    seeds = _seeds(train=5, heldout=0)
    sel = select_prompts(store.training_exchanges(0), seeds, LearnConfig(prompts=10))
    assert "tr-03" not in {p["id"] for p in sel.prompts}
    assert sel.seed == 4


def test_overlong_prompts_are_left_out_and_counted(store):
    _log(store, "x" * 44)  # 16 tokens by the estimate without a tokenizer (4 chars, + 5)
    _log(store, "y" * 40)  # 15
    sel = select_prompts(store.training_exchanges(0), [],
                         LearnConfig(prompts=10, logged_share=1.0, max_prompt_tokens=15))
    assert sel.too_long == 1
    assert _logged(sel) == {"y" * 40}


def test_newest_logged_prompts_win_when_capped_by_the_share(store):
    for i in range(6):
        _log(store, f"logged prompt {i}")
    learn = LearnConfig(prompts=4, logged_share=0.5)
    sel = select_prompts(store.training_exchanges(0), _seeds(), learn)
    assert _logged(sel) == {"logged prompt 5", "logged prompt 4"}
    assert (sel.logged, sel.seed, len(sel.prompts)) == (2, 2, 4)
    assert sel.summary() == {"prompts": 4, "logged": 2, "seed": 2, "too_long": 0,
                             "duplicates": 0, "heldout_excluded": 0, "rated_down": 0,
                             "user_capped": 0, "exchanges_upto": 6}


def test_heldout_prompts_are_never_trained_on_whatever_their_source(store):
    """A user pasting a held-out prompt (other case and spacing), and a seed train row that
    repeats one: both excluded and counted, even with the whole round open to the log."""
    _log(store, "  HELDOUT prompt   3 ")
    _log(store, "plan my allotment")
    seeds = _seeds(train=3, heldout=5) + [{"id": "tr-dup", "prompt": "heldout prompt 4",
                                            "split": "train"}]
    sel = select_prompts(store.training_exchanges(0), seeds,
                         LearnConfig(prompts=10, logged_share=1.0))
    texts = {" ".join(p["prompt"].lower().split()) for p in sel.prompts}
    assert not texts & {f"heldout prompt {i}" for i in range(5)}
    assert _logged(sel) == {"plan my allotment"}
    assert sel.heldout_excluded == 2 and sel.summary()["heldout_excluded"] == 2
    assert (sel.logged, sel.seed) == (1, 3)


def test_a_logged_conversation_is_trained_with_its_earlier_turns(store):
    history = [{"role": "system", "content": "You are Pip."},
               {"role": "user", "content": "Plan a garden party for my street."},
               {"role": "assistant", "content": "Pick a date and invite everyone."}]
    _log(store, "And what if it rains?", history=history)
    for client_system, head in (("keep", history[:1]), ("drop", [])):
        sel = select_prompts(store.training_exchanges(0), [],
                             LearnConfig(prompts=4, logged_share=1.0, client_system=client_system))
        [prompt] = sel.prompts
        assert prompt["prompt"] == "And what if it rains?"
        assert prompt["messages"] == head + history[1:] + [
            {"role": "user", "content": "And what if it rains?"}]
        assert prompt_messages(prompt) == prompt["messages"]
    assert prompt_messages({"prompt": "seed"}) == [{"role": "user", "content": "seed"}]


def test_a_held_out_prompt_in_any_turn_excludes_the_whole_conversation(store):
    heldout_first = [{"role": "user", "content": "Heldout prompt 2"},
                     {"role": "assistant", "content": "an answer"}]
    _log(store, "Tell me more.", history=heldout_first)
    probe = load_probes()[0]["messages"]  # the gate's multi-turn probes: never trained on
    _log(store, "And then?", history=[*probe, {"role": "assistant", "content": "Indoors."}])
    _log(store, "Tell me more.", history=[{"role": "user", "content": "About bees?"},
                                          {"role": "assistant", "content": "They pollinate."}])
    sel = select_prompts(store.training_exchanges(0), _seeds(train=0, heldout=5),
                         LearnConfig(prompts=10, logged_share=1.0))
    assert [p["messages"][0]["content"] for p in sel.prompts] == ["About bees?"]
    assert sel.heldout_excluded == 2


def test_identical_conversations_are_one_prompt_and_the_same_last_turn_after_others_is_not(store):
    for first in ("About bees?", "about  BEES?", "About wasps?"):
        _log(store, "Tell me more.", history=[{"role": "user", "content": first},
                                              {"role": "assistant", "content": "They fly."}])
    sel = select_prompts(store.training_exchanges(0), [], LearnConfig(prompts=10, logged_share=1.0))
    assert sorted(p["messages"][0]["content"] for p in sel.prompts) == ["About wasps?",
                                                                         "about  BEES?"]
    assert sel.duplicates == 1


def test_seed_replay_fills_up_from_the_train_split_only():
    sel = select_prompts([], _seeds(train=20, heldout=10), LearnConfig(prompts=100))
    ids = {p["id"] for p in sel.prompts}
    assert ids == {f"tr-{i:02d}" for i in range(20)}  # all of train, none of heldout
    assert {p["source"] for p in sel.prompts} == {"seed"}
    assert sel.seed == 20 and sel.logged == 0 and sel.exchanges_upto == 0


def test_selection_is_deterministic_per_salt():
    learn = LearnConfig(prompts=8)
    seeds = _seeds(train=60)
    a = select_prompts([], seeds, learn, salt=1)
    b = select_prompts([], seeds, learn, salt=1)
    c = select_prompts([], seeds, learn, salt=2)
    assert a.prompts == b.prompts
    assert [p["id"] for p in a.prompts] != [p["id"] for p in c.prompts]
    other_seed = select_prompts([], seeds, LearnConfig(prompts=8, seed=7), salt=1)
    assert [p["id"] for p in other_seed.prompts] != [p["id"] for p in a.prompts]


def test_exchanges_upto_is_the_newest_id_seen_even_if_unusable(store):
    _log(store, "usable")
    last = store.log_exchange({"messages": [{"role": "system", "content": "no user turn"}],
                               "opt_out": 0, "status": "ok"})
    sel = select_prompts(store.training_exchanges(0), [], LearnConfig(prompts=4))
    assert sel.exchanges_upto == last and sel.logged == 1


def test_defaults_pass_the_config_check():
    assert problems(load_config()) == []


@pytest.mark.parametrize("changes, key", [
    ({"reward": "vibes"}, "learn.reward"),
    ({"self_score": "median"}, "learn.self_score"),
    ({"rule": "length"}, "learn.rule"),
    ({"loss_type": "ppo"}, "learn.loss_type"),
    ({"prompts": 0}, "learn.prompts"),
    ({"max_steps": 0}, "learn.max_steps"),
    ({"iterations": 0}, "learn.iterations must be at least 1"),
    ({"lora_rank": 0}, "learn.lora_rank"),
    ({"num_generations": 1}, "learn.num_generations"),
    ({"logged_share": 1.5}, "learn.logged_share"),
    ({"logged_share": -0.1}, "learn.logged_share"),
])
def test_a_bad_learn_setting_is_named_when_the_config_loads(changes, key):
    with pytest.raises(ConfigError, match=key):
        load_config(overrides={f"learn.{k}": v for k, v in changes.items()})


def test_iterations_is_a_learn_setting_checked_at_load():
    assert load_config().learn.iterations == 1  # TRL's default num_iterations: no reuse
    assert load_config(overrides={"learn.iterations": 4}).learn.iterations == 4
    with pytest.raises(ConfigError, match=r"learn\.iterations must be at least 1; got -1"):
        load_config(overrides={"learn.iterations": -1})
    with pytest.raises(ConfigError, match=r"learn\.iterations"):
        load_config(overrides={"learn.iterations": 1.5})


def test_progress_eta_from_the_mean_step_time():
    assert progress(2, 10, [1.0, 3.0], 2.5) == {"step": 2, "max_steps": 10, "reward": 2.5,
                                               "seconds_per_step": 2.0, "eta_s": 16.0}
    assert progress(0, 10, [], None) == {"step": 0, "max_steps": 10, "reward": None,
                                         "seconds_per_step": None, "eta_s": None}


def test_round_view_decodes_and_reads_steps_without_a_torn_last_line(store, tmp_path):
    round_id = store.open_round("operator", "[learn]\nmax_steps = 2\n", 1)
    store.update_round(round_id, progress={"step": 1, "max_steps": 2}, metrics={"reward": 3.0})
    row = store.round(round_id)
    view = round_view(row)
    assert view["progress"] == {"step": 1, "max_steps": 2}
    assert view["summary"] == {"reward": 3.0}
    assert "config" not in view and "steps" not in view and "metrics" not in view
    assert view["id"] == round_id and view["status"] == "queued"

    folder = tmp_path / "round"
    folder.mkdir()
    assert round_view(row, folder)["steps"] == []  # no metrics file yet
    (folder / "metrics.jsonl").write_text('{"step": 1, "reward": 2.0}\n{"step": 2, "rew')
    full = round_view(row, folder)
    assert full["steps"] == [{"step": 1, "reward": 2.0}]
    assert full["config"] == "[learn]\nmax_steps = 2\n"


def test_system_prompt_has_the_ca_definition_filled_in():
    from dynalign.config import PromptsConfig
    from dynalign.rounds import system_prompt

    text = system_prompt(PromptsConfig())
    assert "[Definition of CA]" not in text
    assert "Benevolence: the decision to uplift" in text and text.startswith("You are an assistant")
