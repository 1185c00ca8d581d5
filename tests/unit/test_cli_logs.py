"""Deleting and exporting logged exchanges: `dynalign logs export|delete` (a subprocess, as a user
runs it, on the state dir's SQLite) and retention ([privacy] retention_days on a daily job)."""

import datetime as dt
import json
import subprocess
import sys
import time

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from dynalign.config import load_config
from dynalign.erasure import cutoff
from dynalign.errors import ConfigError
from dynalign.store import Store
from learner.schedule import Schedule
from server.learning import add_retention

DAY = dt.timedelta(days=1)


def _run(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "dynalign.cli", "logs", *args],
                          capture_output=True, text=True, timeout=timeout)


def _log(store: Store, user: str | None, text: str, age_days: float = 0) -> int:
    created = (dt.datetime.now(dt.timezone.utc) - age_days * DAY).isoformat(timespec="milliseconds")
    return store.log_exchange({
        "created": created, "user": user, "messages": [{"role": "user", "content": text}],
        "response": [{"index": 0, "content": f"answer to {text}", "finish_reason": "stop"}],
        "params": {"max_tokens": 8}, "status": "ok", "opt_out": 0})


@pytest.fixture
def store():
    store = Store(load_config().db_path)
    _log(store, "alice", "alice one", age_days=40)
    _log(store, "bob", "bob one", age_days=40)
    _log(store, "alice", "alice two")
    _log(store, None, "nobody")
    store.db.execute("pragma wal_checkpoint(truncate)")  # the text is in the main file now
    yield store
    store.close()


def _texts(store: Store) -> list[str]:
    return [json.loads(r["messages"])[0]["content"] for r in store.exchanges()][::-1]


def test_export_a_users_exchanges_as_jsonl(store, tmp_path):
    out = _run("export", "--user", "alice", "--out", str(tmp_path / "alice.jsonl"))
    assert out.returncode == 0, out.stderr
    assert "2 exchange(s) of user 'alice'" in out.stderr
    rows = [json.loads(line) for line in (tmp_path / "alice.jsonl").read_text().splitlines()]
    assert [r["messages"][0]["content"] for r in rows] == ["alice one", "alice two"]
    assert rows[0]["response"][0]["content"] == "answer to alice one"
    assert rows[0]["params"] == {"max_tokens": 8} and rows[0]["user"] == "alice"
    assert {"id", "created", "opt_out", "status"} <= set(rows[0])
    assert rows[0]["feedback"] == [] and rows[1]["feedback"] == []


def test_export_carries_each_answers_feedback(store, tmp_path):
    [two, one] = [r["id"] for r in store.exchanges(user="alice")]
    store.add_feedback(one, 1, "useful", "alice")
    store.add_feedback(one, -1, "on second thought, wrong", "alice")
    rows = [json.loads(line) for line in _run("export", "--user", "alice").stdout.splitlines()]
    assert [(f["rating"], f["comment"]) for f in rows[0]["feedback"]] == [
        (1, "useful"), (-1, "on second thought, wrong")]
    assert rows[1]["id"] == two and rows[1]["feedback"] == []


def test_export_to_stdout_and_of_an_unknown_user(store):
    out = _run("export", "--user", "bob")
    assert [json.loads(line)["messages"][0]["content"] for line in out.stdout.splitlines()] == [
        "bob one"]
    out = _run("export", "--user", "nobody-at-all")
    assert out.returncode == 0 and out.stdout == "" and "0 exchange(s)" in out.stderr


def test_delete_a_user_leaves_no_trace_in_the_files(store):
    store.add_feedback(store.exchanges(user="alice")[0]["id"], -1, "alice remarks", "alice")
    store.db.execute("pragma wal_checkpoint(truncate)")
    out = _run("delete", "--user", "alice")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "deleted 2 exchange(s) of user 'alice'"
    assert _texts(store) == ["bob one", "nobody"]
    home = load_config().home
    stored = b"".join(p.read_bytes() for p in home.glob("dynalign.db*"))
    assert b"alice one" not in stored and b"alice two" not in stored  # secure_delete
    assert b"alice remarks" not in stored  # her feedback went with her exchanges
    assert b"bob one" in stored


def test_delete_older_than_and_both_filters(store):
    out = _run("delete", "--older-than", "30", "--user", "bob")
    assert out.stdout.strip() == "deleted 1 exchange(s) of user 'bob' older than 30 days"
    assert _texts(store) == ["alice one", "alice two", "nobody"]
    out = _run("delete", "--older-than", "30")
    assert out.stdout.strip() == "deleted 1 exchange(s) older than 30 days"
    assert _texts(store) == ["alice two", "nobody"]


@pytest.mark.parametrize("args, message", [
    (["delete"], "needs --user ID and/or --older-than DAYS"),
    (["delete", "--older-than", "-1"], "--older-than must be 0 or more days"),
])
def test_delete_errors(store, args, message):
    out = _run(*args)
    assert out.returncode == 1 and message in out.stderr and "Traceback" not in out.stderr
    assert len(_texts(store)) == 4


def test_no_log_yet_is_a_clear_error():
    out = _run("export", "--user", "alice")
    assert out.returncode == 1
    assert "error: no exchange log at" in out.stderr and "Traceback" not in out.stderr
    assert not load_config().db_path.exists()  # nothing created by looking


def test_delete_before_a_cutoff_at_a_given_time(store):
    at = dt.datetime.now(dt.timezone.utc) + 20 * DAY
    assert len(store.delete_exchanges(before=cutoff(50, at=at))) == 2  # 40 days old: 60 then
    assert _texts(store) == ["alice two", "nobody"]
    with pytest.raises(ValueError):
        store.delete_exchanges()  # never everything


def test_retention_runs_at_start_and_daily_at_its_hour(store):
    """On the refresh schedule's scheduler: the service's one APScheduler."""
    cfg = load_config(overrides={"privacy.retention_days": 30, "privacy.retention_hour": 5})
    schedule = Schedule(cfg, lambda trigger: {"id": 0})
    assert schedule.start() is None  # no refresh schedule: the scheduler runs all the same
    scheduler = schedule.scheduler
    assert add_retention(cfg, scheduler) is True
    try:
        deadline = time.monotonic() + 30
        while _texts(store) != ["alice two", "nobody"]:
            assert time.monotonic() < deadline, f"retention did not run: {_texts(store)}"
            time.sleep(0.05)
        daily = scheduler.get_job("retention").next_run_time
        assert (daily.hour, daily.minute) == (5, 0) and daily.utcoffset() == dt.timedelta(0)
    finally:
        schedule.stop()
    assert not scheduler.running


def test_retention_off_and_a_bad_hour():
    scheduler = BackgroundScheduler(timezone="UTC")
    assert add_retention(load_config(), scheduler) is False  # retention_days = 0: keep forever
    assert scheduler.get_jobs() == []
    with pytest.raises(ConfigError, match="privacy.retention_hour must be between 0 and 23"):
        load_config(overrides={"privacy.retention_days": 7, "privacy.retention_hour": 24})
