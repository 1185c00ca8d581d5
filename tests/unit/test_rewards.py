"""dynalign.rewards: score parsing, the rule rewards, and the judge reward against a real local
OpenAI-compatible HTTP server standing in for the judge model."""

import threading

import pytest

from dynalign import prompts as paper
from dynalign.config import LearnConfig
from dynalign.endpoint import Endpoint
from dynalign.rewards import (JudgeReward, brevity, keyword, parse_score, reward_prompt,
                              rule_reward, text_of)


@pytest.mark.parametrize("text, score", [
    ("4", 4),
    ("0", 0),
    ("5", 5),
    ("Score: 4", 4),
    ("4/5", 4),
    ("I would give it a 3.", 3),
    ("4.", 4),
    ("Score: 3/5.", 3),
    ("4.0", None),
    ("**2**", 2),
    ("10", None),
    ("3.5", None),
    ("6", None),
    ("", None),
    ("no idea", None),
    (None, None),
])
def test_parse_score(text, score):
    assert parse_score(text) == score


def test_text_of_plain_and_conversational():
    assert text_of("plain") == "plain"
    convo = [{"role": "system", "content": "be kind"}, {"role": "user", "content": "q1"},
             {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"}]
    assert text_of(convo) == "q2"
    assert text_of([{"role": "assistant", "content": "answer"}]) == "answer"
    assert text_of([{"role": "system", "content": "only system"}]) == ""
    assert text_of([{"role": "assistant", "content": None}]) == ""


def test_brevity():
    reward = brevity(4)
    completions = ["one two three", "one two three four", "a b c d e f g h", "",
                   [{"role": "assistant", "content": "a b c d e f g h"}]]
    assert reward(["p"] * 5, completions) == [5.0, 5.0, 2.5, 0.0, 2.5]


def test_keyword():
    reward = keyword("Thanks")
    assert reward(["p", "p", "p"], ["thanks a lot", "Many THANKS!", "cheers"]) == [5.0, 5.0, 0.0]


def test_rule_reward_follows_the_config():
    brief = rule_reward(LearnConfig(rule="brevity", rule_words=2))
    assert brief(["p", "p"], ["short one", "a rather longer one"]) == [5.0, 2.5]
    word = rule_reward(LearnConfig(rule="keyword", rule_keyword="please"))
    assert word(["p", "p"], ["please do", "a rather longer one"]) == [5.0, 0.0]


@pytest.fixture
def judge(json_server):
    """A judge answering by the response it is asked about (the reward calls run in parallel,
    so the answer cannot depend on arrival order)."""
    answers = {"answer alpha": "4", "answer beta": "Score: 2", "answer gamma": "no idea"}
    state = {"requests": []}
    lock = threading.Lock()

    def respond(path, headers, body):
        with lock:
            state["requests"].append((path, headers, body))
        asked = body["messages"][-1]["content"]
        content = next((a for key, a in answers.items() if key in asked), "")
        return 200, {"id": "j", "object": "chat.completion", "created": 0, "model": body["model"],
                     "choices": [{"index": 0, "finish_reason": "stop",
                                  "message": {"role": "assistant", "content": content}}]}, {}

    state["url"] = json_server(respond)
    return state


def test_judge_reward_scores_with_the_papers_prompt(judge):
    endpoint = Endpoint("judge", judge["url"], "judge-model", temperature=0.0, max_tokens=8,
                        max_retries=0)
    reward = JudgeReward(endpoint, paper.REWARD, paper.CA_DEFINITION, workers=3)
    system = {"role": "system", "content": "a system prompt the judge must not see"}
    prompts = [[system, {"role": "user", "content": f"question {name}"}]
               for name in ("alpha", "beta", "gamma")]
    completions = [[{"role": "assistant", "content": f"answer {name}"}]
                   for name in ("alpha", "beta", "gamma")]
    assert reward(prompts, completions) == [4.0, 2.0, 0.0]
    assert reward.unreadable == 1

    assert len(judge["requests"]) == 3
    asked = {}
    for path, headers, body in judge["requests"]:
        assert path == "/v1/chat/completions"
        assert body["model"] == "judge-model" and body["max_tokens"] == 8
        assert body["temperature"] == 0.0
        assert len(body["messages"]) == 1 and body["messages"][0]["role"] == "user"
        text = body["messages"][0]["content"]
        asked[text.split("answer ")[1].split()[0]] = text
    for name in ("alpha", "beta", "gamma"):
        text = asked[name]
        assert text == paper.fill(paper.REWARD, definition=paper.CA_DEFINITION,
                                  prompt=f"question {name}", response=f"answer {name}")
        assert text == reward_prompt(paper.REWARD, paper.CA_DEFINITION, f"question {name}",
                                     f"answer {name}")
        assert paper.CA_DEFINITION in text
        assert "[Prompt]" not in text and "[Response]" not in text
        assert "[Definition of CA]" not in text
        assert "system prompt" not in text
        assert text.index(f"question {name}") < text.index(f"answer {name}")

    # unreadable answers accumulate over calls
    assert reward(["question gamma"], ["answer gamma"]) == [0.0]
    assert reward.unreadable == 2


def test_strict_parse_needs_the_answer_to_start_with_the_score():
    assert parse_score(" 4", strict=True) == 4
    assert parse_score("3. It helps.", strict=True) == 3
    assert parse_score("Your manager keeps texting you at 1", strict=True) is None
    assert parse_score("Your manager keeps texting you at 1") == 1  # the lenient reading
