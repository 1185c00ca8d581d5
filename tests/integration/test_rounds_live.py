"""Refresh rounds on a real server (`dynalign serve --no-ui`, swap mode "merged"): the admin API
starts a round, the learner child trains with TRL's GRPOTrainer on logged and seed prompts, the
candidate is registered and activated through the same hot-swap path an operator uses, and the new
version answers chats. Also: opt-out and the consumed-prompt watermark, cancel, bad input, a
round that fails, the CLI, proof that a round learns a learnable signal, and a round left open
by a gateway that was killed.

One server for the module; tests run in file order (each round builds on the active version the
previous one left). The last test stops the module's server and restarts over its state dir.

(The basename is test_rounds_live.py: tests/unit/test_rounds.py exists, and basenames must be
unique across tests/unit and tests/integration.)
"""

from __future__ import annotations

import json
import os
import signal
import tomllib
import uuid
from pathlib import Path

import psutil
import pytest

from dynalign.config import PromptsConfig
from dynalign.dataset import SEED_FILE, read_rows
from dynalign.launch import free_port
from dynalign.rewards import WORD, brevity
from dynalign.rounds import system_prompt
from helpers.live_server import gone

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
# A tiny round: 2 steps of 1 prompt x 4 completions x 32 tokens (~10-20 s a step on an idle
# machine, several times that on a busy one).
TINY = {"max_steps": 2, "prompts": 2, "reward": "rule", "num_generations": 4,
        "prompts_per_step": 1, "max_completion_tokens": 32}
# The README's tiny round (`dynalign refresh --max-steps 2 --prompts 2 --set prompts_per_step=1
# --set max_completion_tokens=32`): the paper's step at a small size, 1 prompt x G 8, self-reward.
README_ROUND = {"max_steps": 2, "prompts": 2, "prompts_per_step": 1, "max_completion_tokens": 32}
PEAK_RSS_LIMIT_MB = 4096  # issue 14's bound for the default round's learner on the embedded model
ROUND_TIMEOUT = 1800  # s: loading torch/TRL, the steps, merging the adapter; a busy 2-core box
END = ("promoted", "rejected", "failed", "cancelled")
PHASE_SECONDS = ("seconds/generation", "seconds/ref_logprobs", "seconds/scoring", "seconds/update")
STEP_KEYS = ("reward", "kl", "loss", "frac_reward_zero_std", "completion_length", *PHASE_SECONDS,
             "peak_rss_mb")


# helpers
def tag() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def start_round(server, overrides: dict) -> dict:
    response = server.post("/admin/refresh", json=overrides)
    assert response.status_code == 202, response.text
    return response.json()


def view(server, round_id: int) -> dict:
    response = server.get(f"/admin/rounds/{round_id}")
    assert response.status_code == 200, response.text
    return response.json()


def wait_end(server, round_id: int, timeout: float = ROUND_TIMEOUT) -> dict:
    row = server.wait_for(lambda: (v := view(server, round_id))["status"] in END and v, timeout,
                          f"round {round_id} to end", interval=1.0)
    print(f"\nround {round_id}: {row['status']} after {row['summary'].get('seconds')} s of "
          f"training; progress {row['progress']}; error {row['error']!r}")
    return row


def wait_running(server, round_id: int, timeout: float = ROUND_TIMEOUT) -> dict:
    """Until the learner child runs and has written to the store (its prompts are selected)."""
    def running():
        v = view(server, round_id)
        if v["status"] in END:
            raise AssertionError(f"round {round_id} ended before it was seen running: {v}")
        return v if v["status"] == "running" and v["pid"] and v["progress"].get("phase") else None
    return server.wait_for(running, timeout, f"round {round_id} to run", interval=0.5)


def round_count(server) -> int:
    return server.query("select count(*) as n from rounds")[0]["n"]


def adapters(server) -> dict:
    response = server.get("/admin/adapters")
    assert response.status_code == 200, response.text
    return response.json()


def active_version(server) -> int | None:
    rows = [r["version"] for r in adapters(server)["data"] if r["status"] == "active"]
    assert len(rows) <= 1, rows
    return rows[0] if rows else None


def folder(server, round_id: int) -> Path:
    return server.home / "rounds" / f"{round_id:04d}"


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def chat(server, text: str, headers: dict | None = None, max_tokens: int = 16, **kwargs):
    return server.client().chat.completions.create(
        model="dynalign", messages=[{"role": "user", "content": text}], max_tokens=max_tokens,
        extra_headers={"X-Dynalign-User": tag(), **(headers or {})}, **kwargs)


def state_files(server) -> list[Path]:
    """Every file under the state dir except weights (> 64 MB; they hold no text)."""
    return [p for p in server.home.rglob("*") if p.is_file() and p.stat().st_size < 64 << 20]



# 1. a round from the admin API to a served version
def test_refresh_round_trains_publishes_and_serves_the_new_version(merged, openai_error):
    """The README's tiny round: it moves inside step 1, fits in memory, and is served after."""
    parent = active_version(merged)
    versions_before = [r["version"] for r in adapters(merged)["data"]]

    row = start_round(merged, README_ROUND)
    round_id = row["id"]
    assert row["status"] in ("queued", "running") and row["trigger"] == "operator"

    busy = merged.post("/admin/refresh", json=TINY)
    assert busy.status_code == 409, busy.text
    error = openai_error(busy)
    assert error["code"] == "round_in_progress"
    assert f"round {round_id}" in error["message"]

    seen = []  # the distinct progress states of step 1, as the admin API showed them

    def progressed():
        v = view(merged, round_id)
        if v["status"] in END:
            raise AssertionError(f"round ended before any progress was seen: {v}")
        p = v["progress"]
        if p.get("step") == 0 and p.get("step_phase"):
            state = (p["step_phase"], p["done"], p["eta_s"])
            if not seen or seen[-1] != state:
                seen.append(state)
        return v if (p.get("step") or 0) >= 1 else None
    live = merged.wait_for(progressed, ROUND_TIMEOUT, "step 1 of the round", interval=0.5)
    print(f"\nlive progress: {live['progress']}; step 1 seen as {seen}")
    assert len(seen) >= 3, f"step 1's progress changed fewer than twice: {seen}"
    assert seen[0][0] == "generation"
    assert any(eta is not None for _, _, eta in seen), seen  # an ETA before step 1 ends
    assert live["status"] == "running" and live["pid"]
    progress = live["progress"]
    assert progress["max_steps"] == 2 and 1 <= progress["step"] <= 2
    assert progress["phase"] in ("training", "saved", "converged")
    assert isinstance(progress["reward"], float) and 0.0 <= progress["reward"] <= 5.0
    assert progress["seconds_per_step"] > 0
    assert progress["eta_s"] is not None and progress["eta_s"] >= 0
    if progress["step"] == 1:
        assert progress["eta_s"] > 0  # one step left
    assert 0 < progress["peak_rss_mb"] < PEAK_RSS_LIMIT_MB
    assert live["steps"] and live["steps"][0]["step"] == 1
    assert tomllib.loads(live["config"])["learn"]["max_steps"] == 2

    done = wait_end(merged, round_id)
    assert done["status"] == "promoted", done
    version = done["adapter_version"]
    assert version == max(versions_before, default=0) + 1
    assert done["error"] is None and done["finished"]
    assert done["summary"]["steps"] == 2 and done["summary"]["parent"] == parent
    assert done["summary"]["gate"]["promote"] is True
    assert len(done["steps"]) == 2

    listing = adapters(merged)
    assert listing["active"] == f"dynalign-v{version}"
    [new] = [r for r in listing["data"] if r["version"] == version]
    assert new["status"] == "active" and new["source"] == "round" and new["parent"] == parent
    assert f"round {round_id}" in new["note"]
    rounds = merged.get("/admin/rounds").json()
    assert rounds["data"][0]["id"] == round_id and rounds["data"][0]["status"] == "promoted"
    assert "schedule" in rounds

    raw = merged.client().chat.completions.with_raw_response.create(
        model="dynalign", messages=[{"role": "user", "content": "Name a colour."}], max_tokens=12,
        extra_headers={"X-Dynalign-User": tag()})
    assert raw.headers.get("x-dynalign-version") == f"dynalign-v{version}"
    completion = raw.parse()
    assert completion.model == f"dynalign-v{version}"
    assert completion.choices[0].message.content

    out = folder(merged, round_id)
    assert (out / "adapter" / "adapter_config.json").is_file()
    assert (out / "adapter" / "adapter_model.safetensors").is_file()
    assert (out / "learner.log").is_file()
    assert json.loads((out / "summary.json").read_text())["steps"] == 2
    assert len(read_jsonl(out / "prompts.jsonl")) == 2
    assert 0 < done["summary"]["peak_rss_mb"] < PEAK_RSS_LIMIT_MB
    assert (done["summary"]["reward"], done["summary"]["self_score"]) == ("self", "expected")
    steps = read_jsonl(out / "metrics.jsonl")
    assert [s["step"] for s in steps] == [1, 2]
    for step in steps:
        missing = [k for k in STEP_KEYS if k not in step]
        assert not missing, f"step {step['step']} lacks {missing}: {step}"
        assert all(step[k] > 0 for k in PHASE_SECONDS), step  # self-reward: scoring takes time
        assert sum(step[k] for k in PHASE_SECONDS) <= step["seconds/step"]
        assert 0 < step["peak_rss_mb"] < PEAK_RSS_LIMIT_MB
        assert 0 < step["completion_length"] <= 32
        assert 0.0 <= step["reward"] <= 5.0
    config = tomllib.loads((out / "config.toml").read_text())["learn"]
    assert {k: config[k] for k in README_ROUND} == README_ROUND
    assert config["reward"] == "self" and config["num_generations"] == 8
    assert json.loads((out / "overrides.json").read_text()) == README_ROUND


# 2. logged prompts are trained on, opted-out ones never, consumed ones only once
def test_rounds_train_on_new_logged_prompts_but_never_opted_out_ones(merged):
    normal = f"In one sentence, what is a lighthouse keeper {uuid.uuid4().hex[:8]} doing at dawn?"
    private = f"In one sentence, what is a baker {uuid.uuid4().hex[:8]} doing at dawn?"
    heldout = next(r["prompt"] for r in read_rows(SEED_FILE) if r["split"] == "heldout")
    users = [tag(), tag(), tag()]
    assert chat(merged, normal, {"X-Dynalign-User": users[0]}).choices[0].message.content
    assert chat(merged, private, {"X-Dynalign-User": users[1], "X-Dynalign-Opt-Out": "1"})
    assert chat(merged, f" {heldout.upper()} ", {"X-Dynalign-User": users[2]})  # pasted
    follow_up = f"Tell me more, {uuid.uuid4().hex[:8]}."  # after a held-out prompt in turn 1
    assert merged.client().chat.completions.create(
        model="dynalign", max_tokens=8, extra_headers={"X-Dynalign-User": users[2]},
        messages=[{"role": "user", "content": heldout}, {"role": "assistant", "content": "Yes."},
                  {"role": "user", "content": follow_up}])
    [normal_row] = merged.wait_rows(users[0])
    [private_row] = merged.wait_rows(users[1])
    merged.wait_rows(users[2], 2)
    assert normal_row["opt_out"] == 0 and private_row["opt_out"] == 1  # both logged; one opted out

    # logged_share 1: every logged prompt since the last round may be taken (up to `prompts`)
    overrides = {**TINY, "max_steps": 1, "prompts": 6, "logged_share": 1.0}
    first = wait_end(merged, start_round(merged, overrides)["id"])
    assert first["status"] == "promoted", first
    prompts = read_jsonl(folder(merged, first["id"]) / "prompts.jsonl")
    texts = [p["prompt"] for p in prompts]
    assert {"prompt": normal, "messages": [{"role": "user", "content": normal}],
            "source": "logged", "id": f"exchange-{normal_row['id']}"} in prompts
    assert private not in texts
    assert not {" ".join(t.lower().split()) for t in texts} & {" ".join(heldout.lower().split())}
    assert follow_up not in texts  # the whole conversation is left out
    assert first["summary"]["selection"]["heldout_excluded"] >= 2
    assert first["exchanges_upto"] >= normal_row["id"]
    assert first["summary"]["selection"]["logged"] >= 1

    # the next round: the consumed prompt is not trained on again, a new one is: the third turn
    # of a real conversation, trained with its earlier turns
    fresh, turns, user = three_turn_chat(merged)
    fresh_row = merged.wait_rows(user, 3)[-1]
    second = wait_end(merged, start_round(merged, {**overrides, "prompts": 1})["id"])
    assert second["status"] == "promoted", second
    prompts = read_jsonl(folder(merged, second["id"]) / "prompts.jsonl")
    assert prompts == [{"prompt": fresh, "messages": turns, "source": "logged",
                        "id": f"exchange-{fresh_row['id']}"}]  # the 3 turns, in order
    assert second["exchanges_upto"] >= fresh_row["id"] > first["exchanges_upto"]
    # sampled WITH the CA system prompt before the conversation, the loss's ids without it
    [shown] = read_jsonl(folder(merged, second["id"]) / "rollouts.jsonl")
    ca = system_prompt(PromptsConfig())[:80]
    assert shown["id"] == f"exchange-{fresh_row['id']}"
    assert _in_order(shown["sampled"], [ca] + [t["content"] for t in turns]), shown["sampled"]
    assert ca not in shown["loss"] and _in_order(shown["loss"], [t["content"] for t in turns])

    # deleting a user's data deletes every copy: the log's rows and the rounds' prompt lists
    assert any(normal.encode() in p.read_bytes() for p in state_files(merged))
    deleted = merged.cli("logs", "delete", "--user", users[0], timeout=120)
    assert deleted.returncode == 0 and "deleted 1 exchange(s)" in deleted.stdout, deleted.stderr
    assert [p for p in state_files(merged) if normal.encode() in p.read_bytes()] == []
    assert fresh in (folder(merged, second["id"]) / "prompts.jsonl").read_text()  # others kept
    # ... and a conversation's: its turns in the log, the round's prompt list and rollouts
    texts = [t["content"].encode() for t in turns if t["role"] == "user"]
    assert any(fresh.encode() in p.read_bytes() for p in state_files(merged))
    deleted = merged.cli("logs", "delete", "--conversation", fresh_row["conversation"],
                         timeout=120)
    assert deleted.returncode == 0 and "deleted 3 exchange(s)" in deleted.stdout, deleted.stderr
    assert [p for p in state_files(merged) if any(t in p.read_bytes() for t in texts)] == []


def three_turn_chat(server) -> tuple[str, list[dict], str]:
    """A 3-turn conversation through the openai client, each turn sent with the answers before
    it: (its last user turn, its messages up to that turn, its user)."""
    user, messages = tag(), []
    asks = [f"Plan a garden party for my street, {uuid.uuid4().hex[:8]}.",
            f"Make it cheaper, {uuid.uuid4().hex[:8]}.",
            f"And what if it rains {uuid.uuid4().hex[:8]}?"]
    for ask in asks:
        messages.append({"role": "user", "content": ask})
        answer = server.client().chat.completions.create(
            model="dynalign", messages=messages, max_tokens=16,
            extra_headers={"X-Dynalign-User": user}).choices[0].message.content
        if ask != asks[-1]:
            messages.append({"role": "assistant", "content": answer.strip()})
    return asks[-1], messages, user


def _in_order(text: str, parts: list[str]) -> bool:
    at = 0
    for part in parts:
        at = text.find(part, at)
        if at < 0:
            return False
        at += len(part)
    return True


# 3. bad input
@pytest.mark.parametrize("body, words", [
    ({"max_stepz": 1}, "learn.max_stepz"),
    ([1], "JSON object"),
    ({"max_steps": "x"}, "learn.max_steps"),
    ({"max_steps": 0}, "learn.max_steps"),
    ({"reward": "nope"}, "learn.reward"),
    ({"num_generations": 1}, "learn.num_generations"),
    ({"judge": {"urll": "http://x"}}, "learn.judge.urll"),
    ({"judge": 3}, "learn.judge"),
    ({"prompts_per_step": 512, "max_completion_tokens": 2048}, "learn.prompts_per_step"),
    ({"micro_batch": 0}, "learn.micro_batch"),
    ({"rollout_dtype": "fp8"}, "learn.rollout_dtype"),
], ids=["unknown-key", "not-an-object", "wrong-type", "zero-steps", "unknown-reward",
        "one-generation", "unknown-nested-key", "nested-not-a-table", "beyond-memory",
        "zero-micro-batch", "unknown-rollout-dtype"])
def test_bad_refresh_requests_are_400_and_start_nothing(merged, openai_error, body, words):
    before = round_count(merged)
    response = merged.post("/admin/refresh", json=body)
    assert response.status_code == 400, response.text
    assert words in openai_error(response)["message"]
    assert round_count(merged) == before
    assert not merged.query("select id from rounds where status in "
                            "('queued', 'running', 'evaluating')")


def test_unknown_rounds_are_404_and_finished_ones_cannot_be_cancelled(merged, openai_error):
    before = merged.query("select id, status, finished from rounds order by id")
    assert before and before[-1]["status"] == "promoted"
    for path in ("/admin/rounds/999", "/admin/rounds/0"):
        response = merged.get(path)
        assert response.status_code == 404, response.text
        openai_error(response)
    response = merged.post("/admin/rounds/999/cancel")
    assert response.status_code == 404, response.text
    response = merged.get("/admin/rounds/abc")
    assert response.status_code == 400, response.text
    finished = before[-1]["id"]
    response = merged.post(f"/admin/rounds/{finished}/cancel")
    assert response.status_code == 409, response.text
    error = openai_error(response)
    assert error["code"] == "round_state" and "promoted" in error["message"]
    assert merged.query("select id, status, finished from rounds order by id") == before


# 4. cancel
def test_cancel_stops_the_learner_and_publishes_nothing(merged):
    active, listing = merged.active(), adapters(merged)["data"]
    round_id = start_round(merged, {**TINY, "max_steps": 50})["id"]
    running = wait_running(merged, round_id)
    pid = running["pid"]
    assert not gone(pid), f"the learner (pid {pid}) is not running"

    response = merged.post(f"/admin/rounds/{round_id}/cancel")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "cancelled", body
    assert body["cancel_requested"] == 1 and body["adapter_version"] is None and body["finished"]
    assert gone(pid), f"the learner (pid {pid}) survived the cancel"
    assert view(merged, round_id)["status"] == "cancelled"

    assert adapters(merged)["data"] == listing  # nothing registered, nothing re-activated
    assert merged.active() == active
    assert not (merged.home / "adapters" / f"{max(r['version'] for r in listing) + 1:04d}").exists()
    assert chat(merged, "Name a fruit.").model == active
    again = merged.post(f"/admin/rounds/{round_id}/cancel")
    assert again.status_code == 409, again.text


# 5. a round that fails
def test_a_failing_round_publishes_nothing(merged):
    active, listing = merged.active(), adapters(merged)["data"]
    nowhere = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    row = start_round(merged, {**TINY, "max_steps": 1, "reward": "judge",
                               "judge": {"url": nowhere, "model": "judge"}})
    done = wait_end(merged, row["id"])
    assert done["status"] == "failed", done
    assert done["adapter_version"] is None and done["finished"]
    assert "judge" in done["error"] and nowhere in done["error"], done["error"]
    assert adapters(merged)["data"] == listing
    assert merged.active() == active
    assert chat(merged, "Name a tree.").model == active


# 6. the CLI
def test_cli_refresh_waits_for_the_round_and_rounds_lists_and_shows_it(merged):
    newest = max((r["version"] for r in adapters(merged)["data"]), default=0)
    result = merged.cli("refresh", "--max-steps", "1", "--prompts", "1", "--reward", "rule",
                 "--set", "num_generations=4", "--set", "prompts_per_step=1",
                 "--set", "max_completion_tokens=16", "--wait")
    print(f"\n$ dynalign refresh ... --wait\n{result.stdout}{result.stderr[-2000:]}")
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert "promoted" in last
    round_id = int(last.split(":")[0].removeprefix("round "))
    row = view(merged, round_id)
    assert row["status"] == "promoted" and row["trigger"] == "operator"
    assert row["adapter_version"] == newest + 1
    assert f"version {row['adapter_version']}" in last
    config = tomllib.loads((folder(merged, round_id) / "config.toml").read_text())["learn"]
    assert (config["max_steps"], config["prompts"], config["num_generations"],
            config["max_completion_tokens"]) == (1, 1, 4, 16)
    assert merged.active() == f"dynalign-v{row['adapter_version']}"

    listed = merged.cli("rounds", "list", timeout=120)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].startswith(f"round {round_id}: promoted")
    all_ids = [r["id"] for r in merged.query("select id from rounds order by id desc")]
    assert [int(line.split(":")[0].removeprefix("round ")) for line in lines] == all_ids[:20]

    shown = merged.cli("rounds", "show", str(round_id), timeout=120)
    assert shown.returncode == 0, shown.stderr
    body = json.loads(shown.stdout)
    assert body["id"] == round_id and body["status"] == "promoted"
    assert len(body["steps"]) == 1 and "reward" in body["steps"][0]

    refused = merged.cli("rounds", "cancel", str(round_id), timeout=120)
    assert refused.returncode == 1 and "promoted" in refused.stderr, refused
    missing = merged.cli("rounds", "show", "999", timeout=120)
    assert missing.returncode == 1 and "unknown round" in missing.stderr, missing
    too_big = merged.cli("refresh", "--set", "prompts_per_step=512", "--set",
                         "max_completion_tokens=2048", timeout=120)
    assert too_big.returncode == 1, too_big
    assert "learn.prompts_per_step (now 512)" in too_big.stderr and "GiB" in too_big.stderr
    assert merged.query("select max(id) as id from rounds")[0]["id"] == all_ids[0]


def test_a_standalone_learner_publishes_through_the_gate_like_the_server(merged):
    """`dynalign learn` (a round in its own process) with a gate that cannot pass (2 consistent
    judgments needed of 1 probe prompt): its candidate is registered `rejected`, as an in-server
    round's would be, so activating it needs force; the active version stays."""
    active = merged.active()
    result = merged.cli("learn", "--max-steps", "1", "--prompts", "1", "--reward", "rule",
                        "--set", "num_generations=4", "--set", "prompts_per_step=1",
                        "--set", "max_completion_tokens=16", "--set", "gate.enabled=true",
                        "--set", "gate.prompts=1", "--set", "gate.multiturn=0",
                        "--set", "gate.limit=1", "--set", "gate.max_tokens=8",
                        "--set", "gate.min_judged=2")
    print(f"\n$ dynalign learn ...\n{result.stdout}{result.stderr[-2000:]}")
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert "rejected" in last, last
    round_id = int(last.split(":")[0].removeprefix("round "))
    row = view(merged, round_id)
    assert row["status"] == "rejected" and row["trigger"] == "cli"
    [version] = [r for r in adapters(merged)["data"] if r["version"] == row["adapter_version"]]
    assert version["status"] == "rejected" and version["source"] == "round", version
    assert "needed" in version["note"], version["note"]
    refused = merged.post(f"/admin/adapters/{version['version']}/activate")
    assert refused.status_code == 409, refused.text
    assert refused.json()["error"]["code"] == "adapter_rejected"
    assert merged.active() == active


# 7. a round learns
HELDOUT = [r for r in read_rows(SEED_FILE) if r["split"] == "heldout"][:6]
LEARN = {"reward": "rule", "rule": "brevity", "rule_words": 12, "max_steps": 8, "prompts": 16,
         "logged_share": 0.0, "num_generations": 8, "prompts_per_step": 1,
         "max_completion_tokens": 48, "learning_rate": 1.5e-3}
MARGIN = 0.75


def heldout_brevity(server) -> tuple[float, set[str], list[int], list[str], int]:
    """Mean brevity reward (12 words) of the greedy answers to the held-out seed prompts, through
    the gateway; also the served names, word counts and answers. Opted out, so these prompts never
    become training prompts."""
    texts, served, finish = [], set(), []
    for row in HELDOUT:
        completion = chat(server, row["prompt"], {"X-Dynalign-Opt-Out": "1"}, max_tokens=48,
                          temperature=0)
        served.add(completion.model)
        texts.append(completion.choices[0].message.content or "")
        finish.append(completion.choices[0].finish_reason)
    cut = [[0] * 48 if f == "length" else [] for f in finish]  # stands for the completion ids
    rewards = brevity(12, 48)(None, texts, completion_ids=cut)  # the round's own reward
    answers = [f"[{f}] {t[:90]!r}" for f, t in zip(finish, texts)]
    stopped = sum(f == "stop" for f in finish)
    return (sum(rewards) / len(rewards), served, [len(WORD.findall(t)) for t in texts], answers,
            stopped)


def test_a_round_with_a_learnable_reward_improves_held_out_answers(merged):
    """A brevity rule reward (5 for a non-empty answer of <= 12 words, else 5 * 12 / words) is a
    signal a 135M model can learn; it says nothing about alignment. The test shows that a round,
    through the whole pipeline (admin API, learner child, registration, hot-swap), changes the
    served model in the rewarded direction on held-out prompts it never trained on.

    Learning rate 1.5e-3: the paper's 5e-6 does not move a 135M LoRA policy measurably in a
    handful of steps (the earlier rounds of this module ran at 5e-6 and left the greedy answers
    as they were).

    The rule scales a completion that runs into max_completion_tokens (it did not stop) by
    12 / 48, so it stays graded but below any answer that stops. Without that, the policy learned
    to fill its 48 tokens with few words (repeated short phrases, emoji) and collapsed after ~8
    steps at 7e-4-1e-3; with it, answers stop on their own, which the test checks on the served
    answers too (finish_reason "stop"). Measured alone (round 1): 1.47 -> 4.67, 6 of 6 stopped.

    Held-out answers are scored with the round's own reward (cut-off answers scaled by 12/48).
    Margin 0.75: greedy decoding is deterministic, so the only "noise" in before/after is
    training itself; the base model's greedy held-out answers all run into the 48-token limit
    (~40-45 words, reward ~0.37). Measured: alone (round 1) 6 of 6 answers then stopped, reward
    ~4.7; as round 7 of this module (other prompts) 1 of 6 stopped and the rest padded with few
    words, reward ~1.25. Which of the two a round finds depends on its prompts.
    """
    assert len(HELDOUT) == 6
    heldout_prompts = {r["prompt"] for r in HELDOUT}
    parent = active_version(merged)
    before, served, words_before, answers_before, stopped_before = heldout_brevity(merged)
    assert served == {merged.active()}

    round_id = start_round(merged, LEARN)["id"]
    done = wait_end(merged, round_id, timeout=3600)
    assert done["status"] == "promoted", done
    version = done["adapter_version"]
    assert merged.active() == f"dynalign-v{version}"
    assert done["summary"]["parent"] == parent

    prompts = read_jsonl(folder(merged, round_id) / "prompts.jsonl")
    assert len(prompts) == 16 and not {p["prompt"] for p in prompts} & heldout_prompts

    after, served, words_after, answers_after, stopped_after = heldout_brevity(merged)
    assert served == {f"dynalign-v{version}"}
    metrics = read_jsonl(folder(merged, round_id) / "metrics.jsonl")
    steps = [s["reward"] for s in metrics]
    k = 2  # one prompt per step: a single step's reward is noisy
    first, last = sum(steps[:k]) / k, sum(steps[-k:]) / k
    print(f"\nheld-out brevity reward: before {before:.2f} (words {words_before}), after "
          f"{after:.2f} (words {words_after}); round {round_id} step rewards "
          f"{[round(r, 2) for r in steps]} (first {k} {first:.2f}, last {k} {last:.2f}); "
          f"completion tokens {[round(s['completion_length'], 1) for s in metrics]}; "
          f"{done['summary']['seconds']} s of training, "
          f"{done['progress']['seconds_per_step']} s per step")
    print("answers before:\n  " + "\n  ".join(answers_before))
    print("answers after:\n  " + "\n  ".join(answers_after))
    assert len(steps) == LEARN["max_steps"]
    assert after >= before + MARGIN, f"held-out reward {before:.2f} -> {after:.2f}"
    # really shorter: more answers end on their own instead of running into max_tokens
    assert stopped_after > stopped_before, (stopped_before, stopped_after)
    # one prompt per step, a different one each step: the round's own curve is noisy (round 7:
    # 0.38 -> 0.49; alone, round 1: 0.38 -> 2.16); the held-out check above is the proof
    assert last > first, f"the round's reward did not rise: {steps}"


# 9. the paper's own reward paths, end to end with the embedded model (plumbing: it cannot judge)
def test_a_greedy_self_reward_round_with_no_readable_score_fails_saying_why(merged):
    """The paper's reading of its reward prompt (greedy: the answer must start with a digit 0-5).
    The 135M never starts its answer with a digit on these candidates, so the round fails at step
    1 with what to do, instead of training on zeros; the active version stays. The default
    reading ("expected", always readable) runs in the first test (the README's tiny round)."""
    before = merged.active()
    overrides = {key: value for key, value in TINY.items() if key != "reward"}
    done = wait_end(merged, start_round(merged, {**overrides, "max_steps": 1,
                                                 "self_score": "greedy"})["id"])
    assert done["status"] == "failed", done
    assert "no readable score" in done["error"] and 'self_score = "expected"' in done["error"]
    assert merged.active() == before


def test_a_judge_round_asks_this_server_and_its_requests_are_not_trained_on(merged):
    """learn.reward = "judge" with the default judge: this dynalign server. Its scoring requests
    carry the opt-out header, so they are logged opted out and never become training prompts.
    The served 135M answers them without a digit (it cannot judge): the round then fails at step 1
    saying so, rather than train on zeros; a judge that gives some score lets it finish."""
    first = merged.query("select coalesce(max(id), 0) as n from exchanges")[0]["n"]
    done = wait_end(merged, start_round(merged, {**TINY, "max_steps": 1, "reward": "judge"})["id"])
    assert done["status"] == "promoted" or (
        done["status"] == "failed" and "no readable score" in done["error"]), done
    rows = merged.query("select messages, opt_out from exchanges where id > ?", (first,))
    judged = [r for r in rows if "You are an expert evaluator" in r["messages"]]
    assert len(judged) == TINY["num_generations"] * TINY["prompts_per_step"]
    assert all(r["opt_out"] == 1 for r in judged)


# 8. a round left open by a gateway that died (stops the module's server: the last test)
def test_a_round_left_open_by_a_killed_gateway_is_failed_at_the_next_start(merged, start_server):
    """Ctrl-C the module's server; start a fresh one over its state dir, start a long round,
    SIGKILL that gateway: its learner dies with it and the round stays open in the store.
    The next server to start over the state dir marks it failed ("interrupted") and serves the
    version that was active."""
    result = merged.stop()
    assert result.sigint_stopped and not result.survivors, (result, merged.output())
    active = adapters_before = None

    def versions(server) -> list[tuple]:
        return [(r["version"], r["status"]) for r in adapters(server)["data"]]

    server = start_server(merged.home.parent, merged.model_path, "merged")
    learner_pid = None
    try:
        active = server.active()
        adapters_before = versions(server)
        round_id = start_round(server, {**TINY, "max_steps": 50})["id"]
        learner_pid = wait_running(server, round_id)["pid"]
        os.killpg(server.proc.pid, signal.SIGKILL)  # the gateway's own group: only the gateway
        server.proc.wait(60)
        server.wait_for(lambda: gone(learner_pid), 60, f"the learner {learner_pid} to die with "
                        "the gateway")
        [row] = server.query("select status, error from rounds where id = ?", (round_id,))
        assert row["status"] == "running", row  # left open: nobody recorded its end
    finally:
        stopped = server.stop()  # the engine and anything else of its tree, by pid
        if learner_pid and not gone(learner_pid):
            psutil.Process(learner_pid).kill()
    assert not stopped.survivors, f"processes outlived the killed gateway: {stopped.survivors}"

    again = start_server(merged.home.parent, merged.model_path, "merged")
    try:
        row = view(again, round_id)
        assert row["status"] == "failed", row
        assert "interrupted" in row["error"], row["error"]
        assert row["adapter_version"] is None and row["finished"]
        assert again.active() == active
        assert versions(again) == adapters_before
        assert chat(again, "Name a bird.").model == active
        # and rounds can run again
        busy = again.post("/admin/refresh", json={"max_stepz": 1})
        assert busy.status_code == 400
        assert not again.query("select id from rounds where status in "
                               "('queued', 'running', 'evaluating')")
    finally:
        result = again.stop()
    assert result.sigint_stopped and not result.survivors, (result, again.output())
