"""The continual loop, mechanics only (the embedded model judges: it cannot tell): bench/continual.py
--quick against a real server, with simulated users chatting the whole time, killed (SIGKILL)
after its first recorded round and started again; and the scoreboard's cache resuming.

What can fail here: a round not recorded, or recorded twice after the restart; a promoted version
with no scoreboard row; the second round not starting from the first's adapter; a failed chat
while rounds train, swap and restart; the kept adapters missing; a scoreboard recomputing what it
had."""

import json
import os
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest

from dynalign.store import Store

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow
DEADLINE_S = 900


def _bench(tmp: Path, base_model: str, rounds: int) -> subprocess.Popen:
    env = {**os.environ, "DYNALIGN_TEST_MODEL": base_model}
    env.pop("DYNALIGN_HOME", None)
    log = open(tmp / "bench.log", "ab")
    return subprocess.Popen(
        [sys.executable, str(REPO / "bench" / "continual.py"), "--quick", "--rounds", str(rounds),
         "--root", str(tmp / "run"), "--out", str(tmp / "continual.json"),
         "--adapters", str(tmp / "kept")], env=env, stdout=log, stderr=subprocess.STDOUT)


def _recorded(tmp: Path) -> list[dict]:
    path = tmp / "continual.json"
    return json.loads(path.read_text())["rounds"] if path.exists() else []


def _wait_for_a_round(proc: subprocess.Popen, tmp: Path) -> None:
    deadline = time.monotonic() + DEADLINE_S
    while not _recorded(tmp):
        assert proc.poll() is None, (tmp / "bench.log").read_text()[-3000:]
        assert time.monotonic() < deadline, (tmp / "bench.log").read_text()[-3000:]
        time.sleep(2)


def test_rounds_run_back_to_back_on_live_traffic_and_a_killed_run_resumes(base_model, tmp_path):
    first = _bench(tmp_path, base_model, rounds=2)
    _wait_for_a_round(first, tmp_path)
    first.kill()  # no cleanup at all: its server is left running, its traffic gets SIGTERM
    first.wait()
    second = _bench(tmp_path, base_model, rounds=2)
    assert second.wait(DEADLINE_S) == 0, (tmp_path / "bench.log").read_text()[-3000:]

    out = json.loads((tmp_path / "continual.json").read_text())
    rounds = out["rounds"]
    assert [r["status"] for r in rounds] == ["promoted", "promoted"]  # quick: the gate is off
    assert rounds[0]["round"] < rounds[1]["round"]  # each recorded once, in order
    assert rounds[1]["parent"] == rounds[0]["version"]  # continued from the active adapter
    with closing(Store(tmp_path / "run" / "state" / "dynalign.db")) as store:
        measured = {row["version"] for row in store.scoreboards()}
        users = {r["user"] for r in store.exchanges(limit=1000)}
    assert measured == {r["version"] for r in rounds}
    for r in rounds:
        assert r["scoreboard"]["pointwise"]["n"] == 2 and r["scoreboard"]["kl"] is not None
    assert any(u and u.startswith("sim-user-") for u in users)
    traffic = out["traffic"]
    assert len(traffic) == 2  # the killed run's traffic summary too
    assert sum(t["requests"]["ok"] for t in traffic) > 0
    assert [t["requests"]["failed"] for t in traffic] == [0, 0], traffic
    for name in ("first", "latest"):
        assert (tmp_path / "kept" / name / "adapter_model.safetensors").exists()
    assert "v" + str(rounds[1]["version"]) in (tmp_path / "kept" / "latest" / "VERSION").read_text()
    assert (tmp_path / "continual.png").stat().st_size > 10_000


def test_a_scoreboard_run_again_computes_only_what_its_cache_lost(base_model, tmp_path):
    from learner.adapter import new_adapter

    state = tmp_path / "state"
    adapter = new_adapter(base_model, state / "adapters" / "v1", seed=1, noise=0.05)
    with closing(Store(state / "dynalign.db")) as store:
        store.add_adapter(str(adapter), base_model="test", rank=8)
    (tmp_path / "p.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in (
        "Say hi.", "Name a colour.", "How can I help my neighbours?")))
    (tmp_path / "c.toml").write_text(
        f'state_dir = "{state}"\n[model]\npath = "{base_model}"\n[eval]\nscoreboard_tokens = 12\n'
        f'ifeval_limit = 2\n[eval.judge]\nurl = "local"\nmodel = "{base_model}"\n')

    def scoreboard() -> dict:
        done = subprocess.run([sys.executable, "-m", "dynalign.cli", "--config",
                               str(tmp_path / "c.toml"), "eval", "scoreboard", "--version", "1",
                               "--prompts", str(tmp_path / "p.jsonl")],
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        with closing(Store(state / "dynalign.db")) as store:
            return store.scoreboard(store.scoreboards(1)[-1]["id"])["result"]

    first = scoreboard()
    # answers (3 + 2 IFEval) x 2; aspects: 3 prompts x 2 sides x 4 aspects
    assert first["computed"] == {"answers": 10, "scores": 6, "pairs": 3, "aspects": 24}
    assert list(first["aspects"]) == ["knowledge", "power", "vitality", "benevolence"]
    assert all(0 < v < 5 for sides in first["aspects"].values() for v in sides.values())
    with closing(Store(state / "dynalign.db")) as store:
        store.db.execute("delete from eval_cache where kind = 'score' and rowid in "
                         "(select rowid from eval_cache where kind = 'score' limit 2)")
        store.db.conn.commit()
    again = scoreboard()
    assert again["computed"] == {"answers": 0, "scores": 2, "pairs": 0, "aspects": 0}
    assert again["readings"] == first["readings"] and again["kl"] == first["kl"]
    assert again["aspects"] == first["aspects"]  # from the cache
