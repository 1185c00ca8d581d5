"""The generation loop's mechanics, with scripted writers standing in for the three models
(the loop against a real model served by dynalign is in tests/integration/test_generate_live.py)."""

import json
import random
import threading

import pytest

from dynalign.config import load_config

from dynalign.errors import DataError, DynalignError, EndpointError
from dynalign.generate import (Generator, clean_goal, clean_prompt,
                               parse_verdict)

PLACES = ["Lagos", "Oslo", "Lima", "Pune", "Hanoi", "Quito", "Turin", "Perth", "Accra", "Cork",
          "Busan", "Tartu", "Cusco", "Split", "Fez", "Leon"]
WORDS = ["orchard", "garage", "choir", "ferry", "clinic", "bakery", "library", "harbour",
         "market", "school", "mill", "museum", "farm", "studio", "chapel", "depot"]


@pytest.mark.parametrize("critique, verdict", [
    ("Clear and open. In conclusion, this task prompt is: Appropriate.", True),
    ("Too narrow. In conclusion, this task prompt is: Inappropriate.", False),
    ("In conclusion, this task prompt is: **Inappropriate**", False),
    ("in conclusion this task prompt is appropriate", True),
    ("This task prompt is: Inappropriate. On reflection... this task prompt is: Appropriate.", True),
    ("It seems appropriate overall.", None),
    ("", None),
])
def test_parse_verdict(critique, verdict):
    assert parse_verdict(critique) is verdict


@pytest.mark.parametrize("raw, clean", [
    ("#Task Prompt#: Plan a trip.", "Plan a trip."),
    ("#Revised Task Prompt#:\n\"Plan a trip.\"", "Plan a trip."),
    ("**Task prompt:** Plan a trip.", "Plan a trip."),
    ("**#Task Prompt#**\n\nSamantha needs a plan.", "Samantha needs a plan."),  # seen from the 1.5B
    ("**What is John's plan for the fundraiser?**", "What is John's plan for the fundraiser?"),
    ("  Plan a trip.  ", "Plan a trip."),
])
def test_clean_prompt(raw, clean):
    assert clean_prompt(raw) == clean


@pytest.mark.parametrize("raw, clean", [
    ("Plan a family vacation itinerary", "Plan a family vacation itinerary"),
    ("1. Choose a new job\n2. Another", "Choose a new job"),
    ("Task: \"Buy a house\"", "Buy a house"),
    ("\n\n- Organise a reunion.", "Organise a reunion."),
    ("Goal: plan a move", "plan a move"),
    ("Goalkeeping practice for a youth team", "Goalkeeping practice for a youth team"),
    ("Taskforce meeting plan", "Taskforce meeting plan"),
    ("2025 budget for the family", "2025 budget for the family"),
])
def test_clean_goal(raw, clean):
    assert clean_goal(raw) == clean


class Scripted:
    """A stand-in model: `reply(messages, seed)` decides the text; calls are recorded."""

    def __init__(self, reply):
        self.model, self.reply, self.calls = "scripted", reply, []

    def chat(self, messages, seed=None):
        self.calls.append((messages, seed))
        return self.reply(messages, seed)


def _goal(messages, seed):
    n = sum(m["role"] == "assistant" for m in messages) + seed % 1000  # varies with every attempt
    return f"Plan the {WORDS[n % 16]} opening number {n}"


def _prompt(messages, seed):
    """A different 24-word scenario for every goal number; revisions start with 'Honestly,'."""
    text = messages[-1]["content"]
    n = int(text.split("opening number ")[1].split()[0]) if "opening number" in text else 0
    revised = "#Revised Task Prompt#:" in text
    words = random.Random(n).sample(PLACES + WORDS, 24)
    return f"#Task Prompt#: {'Honestly, ' if revised else ''}the {' '.join(words)}."


def _generator(tmp_path, evaluator, prompt=_prompt, **gen):
    cfg = load_config(overrides={f"generate.{k}": v for k, v in gen.items()})
    writers = {"goal_writer": Scripted(_goal), "prompt_writer": Scripted(prompt),
               "evaluator": Scripted(evaluator)}
    return Generator(cfg, tmp_path / "out.jsonl", writers)


def _verdict(ok):
    return f"Fine. In conclusion, this task prompt is: {'Appropriate' if ok else 'Inappropriate'}."


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_accepts_rows_with_the_dataset_schema_and_a_heldout_split(tmp_path):
    gen = _generator(tmp_path, lambda m, s: _verdict(True), heldout_every=3)
    tally = gen.run(6, progress=False)
    assert (tally.accepted, tally.rejected, tally.revised) == (6, 0, 0)
    rows = _lines(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == [f"gen-{i:05d}" for i in range(1, 7)]
    assert [r["split"] for r in rows] == ["train", "train", "heldout"] * 2
    assert all(r["prompt"].startswith("the ") and r["goal"].startswith("Plan the") for r in rows)
    assert {"id", "goal", "prompt", "split", "source"} <= set(rows[0])


def test_inappropriate_prompts_are_revised_with_the_critique(tmp_path):
    verdicts = iter([False, True])
    gen = _generator(tmp_path, lambda m, s: _verdict(next(verdicts)))
    gen.run(1, progress=False)
    refinement = gen.prompt_writer.calls[-1][0][0]["content"]
    assert "#Critique#:\n\nFine. In conclusion, this task prompt is: Inappropriate." in refinement
    row = _lines(tmp_path / "out.jsonl")[0]
    assert row["prompt"].startswith("Honestly, ") and row["revisions"] == 1
    trace = _lines(tmp_path / "out.trace.jsonl")[0]
    assert [r["verdict"] for r in trace["rounds"]] == [False, True]


def test_rejected_after_max_revisions_and_gives_up_at_max_attempts(tmp_path):
    gen = _generator(tmp_path, lambda m, s: "No conclusion here.", max_revisions=2, max_attempts=3)
    with pytest.raises(DynalignError, match="gave up after 3 attempts"):
        gen.run(1, progress=False)
    trace = _lines(tmp_path / "out.trace.jsonl")
    assert [t["reason"] for t in trace] == ["not appropriate after 2 revisions"] * 3
    assert all(len(t["rounds"]) == 3 for t in trace)
    assert gen.tally.revised == 6 and not (tmp_path / "out.jsonl").exists()


def test_rule_breaking_prompts_go_back_even_when_the_evaluator_passes_them(tmp_path):
    def prompt(messages, seed):
        return _prompt(messages, seed) + " Put it in a table." * ("Revised" not in
                                                                  messages[-1]["content"])
    gen = _generator(tmp_path, lambda m, s: _verdict(True), prompt=prompt)
    gen.run(1, progress=False)
    assert "asks for a format: 'in a table'" in gen.prompt_writer.calls[-1][0][0]["content"]
    assert "table" not in _lines(tmp_path / "out.jsonl")[0]["prompt"]


def test_near_duplicates_are_rejected(tmp_path):
    gen = _generator(tmp_path, lambda m, s: _verdict(True), prompt=lambda m, s: _prompt([{"content": ""}], s),
                     max_attempts=3)
    with pytest.raises(DynalignError):
        gen.run(2, progress=False)
    trace = _lines(tmp_path / "out.trace.jsonl")
    assert [t["outcome"] for t in trace] == ["accepted", "rejected", "rejected"]
    assert trace[1]["reason"] == "near-duplicate of gen-00001 (ROUGE-L 1.00)"


def test_resume_continues_ids_goals_and_seeds_after_a_crash(tmp_path):
    first = _generator(tmp_path, lambda m, s: _verdict(True))
    first.run(3, progress=False)
    with (tmp_path / "out.jsonl").open("a") as f:
        f.write('{"id": "gen-00004", "goal": "cut sh')  # a write cut short by a crash
    resumed = _generator(tmp_path, lambda m, s: _verdict(True))
    assert len(resumed.rows) == 3 and resumed.next_attempt == 3
    resumed.run(5, progress=False)
    rows = _lines(tmp_path / "out.jsonl")
    assert [r["id"] for r in rows] == [f"gen-{i:05d}" for i in range(1, 6)]
    assert [r["attempt"] for r in rows] == [0, 1, 2, 3, 4]
    goal_call = resumed.goal_writer.calls[0][0]
    assert [m["content"] for m in goal_call if m["role"] == "assistant"] == \
        [r["goal"] for r in rows[:3]]
    fresh = _generator(tmp_path / "again", lambda m, s: _verdict(True))
    (tmp_path / "again").mkdir()
    fresh.run(5, progress=False)
    assert [r["prompt"] for r in _lines(tmp_path / "again" / "out.jsonl")] == \
        [r["prompt"] for r in rows]
    assert [c[1] for c in fresh.goal_writer.calls][3:] == [c[1] for c in resumed.goal_writer.calls]


def test_a_malformed_line_in_the_output_is_a_clear_error(tmp_path):
    (tmp_path / "out.jsonl").write_text('{"id": "gen-00001"}\n{oops}\n')
    with pytest.raises(DataError, match=r"out.jsonl:2: not JSON"):
        _generator(tmp_path, lambda m, s: _verdict(True))


def test_seeds_differ_per_request_and_repeat_per_seed(tmp_path):
    gen = _generator(tmp_path, lambda m, s: _verdict(True), max_revisions=60)
    seeds = {gen._seed(a, c) for a in range(50) for c in range(125)}
    assert len(seeds) == 50 * 125 and gen._seed(3, 1) == gen._seed(3, 1)


def test_goal_context_keeps_only_the_last_goals(tmp_path):
    gen = _generator(tmp_path, lambda m, s: _verdict(True), goal_context=2)
    gen.run(4, progress=False)
    first, last = gen.goal_writer.calls[0][0], gen.goal_writer.calls[-1][0]
    assert first == [{"role": "user", "content": gen.cfg.prompts.goal}]
    assert [m["role"] for m in last] == ["user", "assistant", "user", "assistant", "user"]
    assert last[0]["content"] == gen.cfg.prompts.goal
    assert [m["content"] for m in last[1::2]] == gen.goals[1:3]
    assert last[-1]["content"] == gen.cfg.generate.goal_followup


def test_concurrent_attempts_overlap_and_keep_exactly_the_wanted_count(tmp_path):
    """Three evaluators must be inside `chat` at once to pass the barrier: run one at a time, the
    barrier times out and the run fails. The count is met exactly; extra acceptances are surplus."""
    barrier = threading.Barrier(3, timeout=10)

    def evaluator(messages, seed):
        barrier.wait()
        return _verdict(True)

    gen = _generator(tmp_path, evaluator, concurrency=3)
    tally = gen.run(4, progress=False)
    rows = _lines(tmp_path / "out.jsonl")
    outcomes = [r["outcome"] for r in _lines(tmp_path / "out.trace.jsonl")]
    assert tally.accepted == len(rows) == 4
    assert [r["id"] for r in rows] == [f"gen-{i:05d}" for i in range(1, 5)]
    assert outcomes.count("accepted") == 4 and set(outcomes) <= {"accepted", "surplus"}
    assert len(outcomes) == 6  # two rounds of three in flight


def test_concurrency_below_one_is_a_clear_error():
    with pytest.raises(DynalignError, match="generate.concurrency must be at least 1"):
        load_config(overrides={"generate.concurrency": 0})


def test_when_one_attempt_fails_the_others_start_no_new_request(tmp_path):
    """Two attempts in flight; the first one's goal writer fails. The run raises, and the other
    attempt, whose goal arrives only after that, asks the prompt writer nothing."""
    calls = []

    def goal(messages, seed):
        with lock:
            calls.append(seed)
            first = len(calls) == 1
        if first:
            raise EndpointError("goal_writer: the endpoint is down")
        assert gen.stopping.wait(10), "the run did not stop after the failure"
        return _goal(messages, seed)

    lock = threading.Lock()
    gen = _generator(tmp_path, lambda m, s: _verdict(True), concurrency=2)
    gen.goal_writer = Scripted(goal)
    with pytest.raises(EndpointError, match="down"):
        gen.run(3, progress=False)
    assert len(calls) in (1, 2)  # the second may have stopped before its goal request
    assert gen.prompt_writer.calls == [] and gen.evaluator.calls == []
