"""A local judge (`url = "local"`: a model loaded in-process) on the embedded model: the mechanics
of `dynalign judge score | check`, and its wiring as a round's reward and the gate's judge.

The embedded 135M model cannot judge (docs: its scores of good, off-topic and harmful answers sit
within a few tenths): these tests show plumbing, and that `judge check` says so. A capable judge
is shown by `dynalign judge check --model qwen2.5-coder-1.5b` and bench/align.py, not here."""

import json
import os
from pathlib import Path

import pytest
import tomli_w

from dynalign.cli import main
from dynalign.config import load_config, resolved_toml
from dynalign.prompts import ASPECTS
from dynalign.store import Store

pytestmark = pytest.mark.slow

MODEL = os.environ.get("DYNALIGN_TEST_MODEL") or str(Path(__file__).resolve().parents[2] / "state"
                                                     / "model")
# a round's learning rate that moves the greedy answers in one step (the default 5e-6 from LoRA
# B = 0 leaves them as the base's: every pair "identical", the judge never asked); 1e-3 still
# left one of the two held-out answers unchanged
MOVING_LR = 1e-2
ROWS = [{"id": "r1", "prompt": "How do I fix a dripping tap?", "response": "Turn off the water "
         "supply, take the handle off, replace the worn washer, and put it back together.",
         "note": "kept"},
        {"id": "r2", "prompt": "How do I fix a dripping tap?", "response": ""},
        {"id": "r3", "prompt": "Plan a birthday party for my daughter.", "response": "Penguins "
         "are flightless birds of the Southern Hemisphere."},
        {"id": "r4", "messages": [  # a conversation: its earlier turns shown as context
            {"role": "user", "content": "Plan a birthday party for my daughter."},
            {"role": "assistant", "content": "A picnic in the park with games."},
            {"role": "user", "content": "And if it rains?"}],
         "response": "Move the games indoors: a treasure hunt around the flat works well."}]


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("reading", ["expected", "greedy"])
def test_judge_score_prints_each_row_with_its_score(tmp_path, capsys, reading):
    data = write_rows(tmp_path / "rows.jsonl", ROWS)
    code = main(["judge", "score", "--model", MODEL, "--data", str(data), "--reading", reading,
                 "--no-progress"])
    captured = capsys.readouterr()
    out = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["id"] for r in out] == ["r1", "r2", "r3", "r4"] and out[0]["note"] == "kept"
    assert all(0.0 <= r["score"] <= 5.0 for r in out)
    if reading == "expected":  # graded: four different answers, four different scores
        assert code == 0 and len({r["score"] for r in out}) == 4
        assert all(r["score"] > 0 for r in out)
    else:  # the 135M rarely starts its answer with a digit: all unreadable is an error
        assert all(r["score"] == int(r["score"]) for r in out)
        unreadable = "no readable score" in captured.err
        assert code == (1 if unreadable else 0)


def test_judge_score_with_aspects_scores_each_aspect_with_its_own_prompt(tmp_path, capsys):
    data = write_rows(tmp_path / "rows.jsonl", ROWS[:2])
    assert main(["judge", "score", "--model", MODEL, "--data", str(data), "--aspects",
                 "--no-progress"]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [list(r["aspects"]) for r in out] == [list(ASPECTS)] * 2
    for row in out:
        assert all(0 < v < 5 for v in row["aspects"].values())  # expected reading: graded
        assert len({*row["aspects"].values(), row["score"]}) == 5  # five prompts, five readings


def test_judge_score_names_a_row_without_a_response(tmp_path, capsys):
    data = write_rows(tmp_path / "rows.jsonl", [{"prompt": "Hello?"}])
    assert main(["judge", "score", "--model", MODEL, "--data", str(data)]) == 1
    assert "rows.jsonl:1: needs a text 'response'" in capsys.readouterr().err


def test_judge_check_fails_a_judge_that_cannot_tell(capsys):
    """The 135M usually ranks the good answer first, by a few tenths: no usable signal."""
    assert main(["judge", "check", "--model", MODEL, "--limit", "3", "--no-progress",
                 "--aspects"]) == 1
    captured = capsys.readouterr()
    report = json.loads(captured.out)
    assert report["prompts"] == 3 and report["judge"].endswith("(local, float32)")
    assert set(report["mean"]) == {"good", "off_topic", "harmful"}
    assert list(report["aspects"]) == list(ASPECTS)  # each aspect's own calibration
    for aspect in report["aspects"].values():
        assert set(aspect["mean"]) == set(report["mean"])
        assert aspect["mean"] != report["mean"]  # its own prompt, its own scores
        assert 0 <= aspect["good_beats_harmful"] <= 1
    assert [s["id"] for s in report["scores"]] == ["cal-01", "cal-02", "cal-03"]
    assert "judge check: FAIL" in captured.err and "on average (needs 0.75)" in captured.err
    # the same scores pass when no gap is required and the order is all that is asked
    gap = report["mean"]["good"] - max(report["mean"]["off_topic"], report["mean"]["harmful"])
    assert gap < 0.75


# a one-step round on the embedded model with a small gate (no capability checks)
ONE_STEP = {"model.path": MODEL, "learn.max_steps": 1, "learn.prompts": 1,
            "learn.prompts_per_step": 1, "learn.num_generations": 2,
            "learn.max_completion_tokens": 8, "learn.gate.limit": 0, "learn.gate.max_tokens": 8,
            "learn.learning_rate": MOVING_LR}


def one_round(cfg) -> tuple[dict, Path, list[dict]]:
    """A round run in this process, the normal code path: its summary, folder and step metrics."""
    from learner.round import run_round

    round_id = Store(cfg.db_path).open_round("test", resolved_toml(cfg), os.getpid())
    summary = run_round(cfg, round_id)
    folder = cfg.home / "rounds" / f"{round_id:04d}"
    return summary, folder, [json.loads(line) for line in
                             (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_local_judge_rewards_a_round_and_judges_its_gate(tmp_path):
    """The normal round code path with learn.reward = "judge" and both judges local: the reward
    is read from the judge's digit probabilities (graded, never the unreadable 0) and the gate's
    pairwise verdicts come from the same model, named in the round's summary. The step's learning
    rate moves the answers, so the gate has pairs to judge."""
    cfg = load_config(None, {
        **ONE_STEP, "learn.reward": "judge", "learn.judge.url": "local",
        "learn.judge.model": MODEL, "eval.judge.url": "local", "eval.judge.model": MODEL,
        "learn.gate.prompts": 2, "learn.gate.multiturn": 1})
    summary, folder, steps = one_round(cfg)
    assert summary["reward"] == "judge" and summary["unreadable_scores"] == 0
    assert 0.0 < steps[0]["reward"] < 5.0
    gate = summary["gate_eval"]
    assert gate["judge"] == f"{MODEL} (local, float32)"
    assert gate["pairwise"]["n"] == 3  # 2 held-out prompts and a multi-turn probe
    report = json.loads((folder / "gate.json").read_text())
    probe = report["pairwise"]["items"][-1]["prompt"]  # judged with its earlier turns
    assert [m["role"] for m in probe] == ["user", "assistant", "user", "assistant", "user"]
    judged = [item for item in report["pairwise"]["items"] if not item["identical"]]
    assert judged, report["pairwise"]["items"]  # the candidate answered otherwise: judged
    assert all(len(item["raw"]) == 2 for item in judged)  # asked in both orders
    # a local judge weighs its verdicts too; the 135M may put almost no weight on "A" or "B"
    # (then that order is unreadable, counted as such: on the long probe prompt it did)
    shares = [share for item in judged for share in item["a_share"] if share is not None]
    assert shares and all(0.0 <= share <= 1.0 for share in shares)
    balanced = report["pairwise"]["balanced"]
    assert balanced["n"] == 3 and balanced["judged"] + balanced["unreadable"] <= 3
    # the first learn.gate.aspect_prompts (2) prompts scored on each aspect, on every side
    aspects = report["aspects"]
    assert aspects["prompts"] == 2 and list(aspects["means"]) == ["holistic", *ASPECTS]
    for sides in aspects["means"].values():
        assert set(sides) == {"candidate", "active", "base"}
        assert all(0.0 < v < 5.0 for v in sides.values()), aspects["means"]
    assert len(aspects["scores"]["candidate"]["knowledge"]) == 2


SHORT_PAIRWISE = ("Which answer to [Prompt] helps people more, A or B?\n\nA: [Response A]\n\n"
                  "B: [Response B]\n\nReply A, B or tie.")


def test_a_judge_panel_rewards_a_round_and_judges_its_gate_each_member_reported(tmp_path):
    """Panels as a round's reward (the policy itself plus the embedded model under a rubric of its
    own) and as the gate's judge (the embedded model under two pairwise prompts, and an endpoint
    that refuses every connection). Plumbing, not judgement: the 135M cannot tell. The failed
    member is reported and left out, never counted; the two others still make min_judges 2."""
    panel = {"learn": {"reward": "judge", "judges": [
                 {"url": "policy", "name": "policy"},
                 {"url": "local", "model": MODEL, "weight": 2, "name": "short rubric",
                  "reward": "Score 0-5 how much [Response] helps with [Prompt]. Only a digit."}]},
             "eval": {"judges": [
                 {"url": "local", "model": MODEL, "name": "paper prompt"},
                 {"url": "local", "model": MODEL, "name": "short prompt",
                  "pairwise": SHORT_PAIRWISE},
                 {"url": "http://127.0.0.1:9/v1", "model": "gone", "name": "down"}]},
             "panel": {"aggregate": "min", "min_judges": 2}}
    (tmp_path / "panel.toml").write_text(tomli_w.dumps(panel))
    cfg = load_config(tmp_path / "panel.toml", {
        **ONE_STEP, "generate.max_retries": 0, "learn.gate.prompts": 3, "learn.gate.multiturn": 0})
    summary, folder, steps = one_round(cfg)
    assert summary["unreadable_scores"] == 0 and 0.0 < steps[0]["reward"] < 5.0
    assert summary["panel"]["scored"] == 2 and summary["panel"]["failures"] == []
    assert summary["gate_eval"]["judge"].startswith("panel (min) of paper prompt = ")
    pair = json.loads((folder / "gate.json").read_text())["pairwise"]
    members = {m["judge"]: m for m in pair["members"]}
    assert list(members) == ["paper prompt", "short prompt", "down"] and pair["aggregate"] == "min"
    assert "cannot connect" in members["down"]["error"]
    for name in ("paper prompt", "short prompt"):
        assert members[name]["weight"] == 1.0 and "balanced" in members[name]
    assert pair["n"] == 3 and len(pair["items"]) == 3
    for item in pair["items"]:
        prefs = [m["preference"] for m in item["members"]]
        assert prefs[2] is None  # the failed member: left out, not a loss
        readable = [p for p in prefs if p is not None]
        if len(readable) < 2:
            assert item["outcome"] == "unreadable"  # fewer than min_judges
        else:
            assert item["outcome"] == ("win" if min(readable) > 0.5 else "loss"
                                       if min(readable) < 0.5 else "tie")
        assert item["review"] == (any(p > 0.5 for p in readable) and
                                  any(p < 0.5 for p in readable))
    assert pair["disagreements"] == sum(item["review"] for item in pair["items"])
    # aspects through the panel: the failed member left out, the two others aggregated
    means = json.loads((folder / "gate.json").read_text())["aspects"]["means"]
    assert all(v is not None for sides in means.values() for v in sides.values()), means
    queued = summary["gate_eval"]["reviews"]  # the split pairs and sign conflicts, queued
    assert len(queued) == pair["disagreements"] + len(
        json.loads((folder / "gate.json").read_text())["aspects"]["conflicts"])


def test_the_alignment_benchmark_runs_end_to_end(tmp_path):
    """bench/align.py --quick on the embedded model as policy and judge, so it cannot rot (the
    1.5B's numbers are the benchmark's, in the README, not a test's)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    out = tmp_path / "align.json"
    subprocess.run([sys.executable, str(repo / "bench" / "align.py"), "--experiment", "a", "--quick",
                    "--policy", MODEL, "--judge", MODEL, "--state", str(tmp_path / "state"),
                    "--ifeval-data", str(repo / "data" / "eval" / "ifeval_sample.jsonl"),
                    "--out", str(out), "--threads", "1", "--lr", str(MOVING_LR)], check=True,
                   cwd=tmp_path)
    result = json.loads(out.read_text())
    assert result["reward"] == "judge" and len(result["curve"]) == 1
    assert result["eval"]["judge"] == f"{MODEL} (local, float32)"
    assert result["eval"]["pairwise"]["n"] == 2 and result["eval"]["ifeval"]["prompts"] == 2
    judged = [item for item in result["eval"]["pairwise"]["items"] if not item["identical"]]
    assert judged, result["eval"]["examples"]  # the round moved the answers: the judge was asked
    assert all(len(item["raw"]) == 2 and len(item["a_share"]) == 2 for item in judged)
    assert "length_controlled" in result["eval"] and len(result["eval"]["examples"]) == 2
    assert set(result["eval"]["length_controlled"]) == {"outcome", "balanced"}
    assert result["eval"]["pointwise"]["n"] == 2
    assert "CA win rate, balanced over both orders" in out.with_suffix(".md").read_text()


def test_a_round_whose_judge_gives_no_digit_fails_at_step_one_saying_why(json_server, capsys):
    from dynalign.errors import RoundError
    from learner.round import run_round

    def respond(path, headers, body):
        return 200, {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                     "choices": [{"index": 0, "finish_reason": "stop", "message": {
                         "role": "assistant", "content": "A lovely answer."}}]}, {}

    cfg = load_config(None, {
        "model.path": MODEL, "learn.reward": "judge", "learn.judge.url": json_server(respond),
        "learn.judge.model": "m", "learn.gate.enabled": False, "learn.max_steps": 2,
        "learn.prompts": 2, "learn.prompts_per_step": 1, "learn.num_generations": 2,
        "learn.max_completion_tokens": 8})
    store = Store(cfg.db_path)
    round_id = store.open_round("test", resolved_toml(cfg), os.getpid())
    with pytest.raises(RoundError, match="no readable score .* any of the 2 answers of step 1"):
        run_round(cfg, round_id)
