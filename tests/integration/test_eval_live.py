"""`dynalign eval` and the promotion gate on a real server (`dynalign serve --no-ui`, swap mode
"lora", so a version and the base model are served side by side).

- pairwise: answers from two served versions, every pair judged twice by this server (the 135M
  model: the numbers are noise; the test checks the protocol ran for real, not the verdicts);
- IFEval on our own sample, math and multiple choice on our samples, bad input;
- a round whose gate must reject (more consistent judgments asked for than it has pairs): the
  candidate is registered as rejected with its reasons and the active version keeps serving;
  an operator force-promotes it and rolls back through the CLI.

Tests run in file order and share the module's server.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
ROUND = {"max_steps": 1, "prompts": 1, "reward": "rule", "num_generations": 4,
         "prompts_per_step": 1, "max_completion_tokens": 32, "gate.enabled": True,
         "gate.prompts": 2, "gate.limit": 2, "gate.max_tokens": 32, "gate.min_judged": 3,
         "gate.multiturn": 0}
END = ("promoted", "rejected", "failed", "cancelled")


def report_of(result) -> dict:
    """The report.json a `dynalign eval` run names on its last stderr line."""
    assert result.returncode == 0, result.stderr[-3000:]
    path = Path(result.stderr.strip().splitlines()[-1].removeprefix("report: "))
    assert (path.parent / "summary.md").is_file()
    return json.loads(path.read_text())


def judge_requests(server) -> list[tuple[int, str]]:
    """(opt_out, the judge prompt) of every pairwise judgment the server logged."""
    rows = server.query("select opt_out, messages from exchanges")
    asked = [(r["opt_out"], json.loads(r["messages"])[-1]["content"]) for r in rows]
    return [(opt_out, text) for opt_out, text in asked if 'Reply with only "A" or "B"' in text]


def chat_model(server) -> str:
    return server.client().chat.completions.create(
        model="dynalign", messages=[{"role": "user", "content": "Hello"}], max_tokens=4).model


def test_pairwise_judges_every_pair_in_both_orders(lora, test_adapter):
    registered = lora.post("/admin/adapters", json={"path": str(test_adapter), "activate": True})
    assert registered.status_code == 201, registered.text
    version = registered.json()["version"]
    result = lora.cli("eval", "pairwise", "--a", str(version), "--b", "base", "--limit", "3",
                      "--max-tokens", "64")
    print(f"\n$ dynalign eval pairwise --a {version} --b base --limit 3\n{result.stdout}")
    report = report_of(result)
    assert report["a"] == f"dynalign-v{version}" and report["b"] == lora.base_name
    assert report["n"] == 3 and len(report["items"]) == 3
    counted = sum(report[k] for k in ("win", "loss", "tie", "inconsistent", "unreadable"))
    assert counted == 3 and report["judged"] == report["win"] + report["loss"] + report["tie"]
    asked = [i for i in report["items"] if not i["identical"]]
    assert asked, "the adapter changes greedy answers: at least one pair needs the judge"
    for item in asked:
        assert len(item["raw"]) == 2 and item["a"] != item["b"]
    # both orders really went to the judge (this server), marked opted out of training
    requests = judge_requests(lora)
    assert len(requests) == 2 * len(asked) and all(opt_out == 1 for opt_out, _ in requests)
    for item in asked:
        shown = [text for _, text in requests if item["prompt"] in text]
        a_first = sorted(text.index(item["a"]) < text.index(item["b"]) for text in shown)
        assert a_first == [False, True], "one judgment with each answer shown first"
    assert "| win_rate |" in result.stdout and "| inconsistent |" in result.stdout
    trained_on = lora.query("select count(*) as n from exchanges where opt_out = 0")[0]["n"]
    assert trained_on == 0, "evaluation requests must never become training data"


def test_ifeval_math_and_multiple_choice_reports(lora):
    ifeval = report_of(lora.cli("eval", "ifeval", "--model", "active", "--limit", "3",
                                "--max-tokens", "128"))
    assert ifeval["model"] == "dynalign" and ifeval["n_prompts"] == 3
    for key in ("prompt_strict", "prompt_loose", "instruction_strict", "instruction_loose"):
        assert 0.0 <= ifeval[key] <= 1.0
    assert ifeval["prompt_loose"] >= ifeval["prompt_strict"]
    assert all(item["response"] for item in ifeval["items"])
    math = report_of(lora.cli("eval", "math", "--data", str(REPO / "data/eval/math_sample.jsonl"),
                              "--model", "base", "--limit", "2", "--max-tokens", "128"))
    assert math["n"] == 2 and 0.0 <= math["accuracy"] <= 1.0 and len(math["items"]) == 2
    mc = report_of(lora.cli("eval", "mc", "--data", str(REPO / "data/eval/mc_sample.csv"),
                            "--limit", "2", "--max-tokens", "64"))
    assert mc["n"] == 2 and 0.0 <= mc["accuracy"] <= 1.0


@pytest.mark.parametrize("args, words", [
    (["eval", "pairwise", "--a", "99", "--limit", "1"], "dynalign-v99"),
    (["eval", "ifeval", "--data", "/nonexistent/input_data.jsonl"], "/nonexistent/input_data"),
    (["eval", "math", "--data", str(REPO / "data/seed.jsonl"), "--limit", "1"], "seed.jsonl"),
])
def test_bad_eval_requests_are_clear_errors(lora, args, words):
    result = lora.cli(*args, timeout=300)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and words in result.stderr
    assert "Traceback" not in result.stderr
    assert lora.get("/health").status_code == 200


def test_a_rejected_candidate_is_registered_and_the_active_version_keeps_serving(lora):
    active = lora.active()
    response = lora.post("/admin/refresh", json=ROUND)
    assert response.status_code == 202, response.text
    round_id = response.json()["id"]
    row = lora.wait_for(lambda: (r := lora.get(f"/admin/rounds/{round_id}").json())["status"]
                        in END and r, 1800, f"round {round_id}", interval=1.0)
    print(f"\nround {round_id}: {row['status']}: {row['error']}")
    assert row["status"] == "rejected", row
    assert "consistent on" in row["error"] and "3 needed" in row["error"]
    candidate = row["adapter_version"]
    shown = lora.get(f"/admin/adapters/{candidate}").json()
    assert shown["status"] == "rejected" and "3 needed" in shown["note"]
    assert shown["round"]["id"] == round_id
    gate = shown["round"]["summary"]["gate"]
    assert gate["promote"] is False and gate["failures"] and gate["drift_flags"] == []
    assert lora.active() == active and chat_model(lora) == active
    # what the round measured, beside its candidate
    measured = json.loads((lora.home / "rounds" / f"{round_id:04d}" / "gate.json").read_text())
    assert measured["pairwise"]["n"] == 2
    assert set(measured["capabilities"]["ifeval"]) == {"active", "candidate"}
    assert measured["capabilities"]["ifeval"]["candidate"]["n_prompts"] == 2
    drift = measured["drift"]
    assert len(drift["self_scores"]) == 2 and all(0 <= s <= 5 for s in drift["self_scores"])
    assert drift["kl"] is not None and drift["length_ratio"] > 0


def test_operator_force_promotes_and_rolls_back(lora):
    rejected = max(r["version"] for r in lora.get("/admin/adapters").json()["data"])
    before = lora.active()
    refused = lora.cli("adapters", "activate", str(rejected), timeout=300)
    assert refused.returncode == 1 and "rejected by the gate" in refused.stderr
    assert lora.active() == before
    forced = lora.cli("adapters", "activate", str(rejected), "--force", timeout=300)
    assert forced.returncode == 0, forced.stderr
    assert lora.active() == chat_model(lora) == f"dynalign-v{rejected}"
    assert "[force-promoted]" in lora.get(f"/admin/adapters/{rejected}").json()["note"]
    back = lora.cli("adapters", "rollback", timeout=300)  # to the version it was trained from
    assert back.returncode == 0, back.stderr
    assert lora.active() == before == chat_model(lora)
    assert lora.cli("adapters", "rollback", timeout=300).returncode == 0  # v1's parent: base
    assert lora.active() == lora.base_name
    nothing = lora.cli("adapters", "rollback", timeout=300)
    assert nothing.returncode == 1 and "nothing to roll back" in nothing.stderr
