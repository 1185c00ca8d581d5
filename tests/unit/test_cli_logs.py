"""Deleting and exporting logged exchanges: `dynalign logs export|delete|checkpoint` (a subprocess,
as a user runs it, on the state dir's SQLite) and retention ([privacy] retention_days on a daily
job). A reader holding a snapshot is a second sqlite3 connection inside an open read transaction."""

import datetime as dt
import json
import logging
import os
import sqlite3
import stat
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
from apscheduler.schedulers.background import BackgroundScheduler

from dynalign.config import load_config
from dynalign.erasure import cutoff
from dynalign.errors import ConfigError
from dynalign.store import Store
from learner.schedule import Schedule
from server.learning import add_retention, purge_old_exchanges

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
    assert "2 exchange(s) of user 'alice' and 0 rating(s)" in out.stderr
    rows = [json.loads(line) for line in (tmp_path / "alice.jsonl").read_text().splitlines()]
    assert [r["messages"][0]["content"] for r in rows] == ["alice one", "alice two"]
    assert rows[0]["response"][0]["content"] == "answer to alice one"
    assert rows[0]["params"] == {"max_tokens": 8} and rows[0]["user"] == "alice"
    assert {"id", "created", "opt_out", "status"} <= set(rows[0])
    assert [r["record"] for r in rows] == ["exchange", "exchange"]
    assert rows[0]["feedback"] == [] and rows[1]["feedback"] == []


def _rate_around(store: Store) -> dict[str, int]:
    """alice rates her second exchange, bob's and the one logged with no user; bob rates
    alice's first; carol rates her own. Returns the exchanges' ids by text."""
    ids = {json.loads(r["messages"])[0]["content"]: r["id"] for r in store.exchanges()}
    ids["carol one"] = _log(store, "carol", "carol one")
    for text, rating, comment, rater in [
            ("alice two", 1, "alice on her own answer", "alice"),
            ("bob one", -1, "alice on bob's answer", "alice"),
            ("nobody", 1, "alice on the anonymous answer", "alice"),
            ("alice one", -1, "bob on alice's answer", "bob"),
            ("carol one", 1, "carol on her own answer", "carol")]:
        store.add_feedback(ids[text], rating, comment, rater)
    return ids


def test_export_lists_only_the_ratings_the_user_gave(store):
    """Her exchanges carry only her own ratings (bob's comment on hers is his, not hers), then
    one line per rating she gave on an exchange not logged under her."""
    ids = _rate_around(store)
    out = _run("export", "--user", "alice")
    assert out.returncode == 0, out.stderr
    assert "bob on alice" not in out.stdout and "carol" not in out.stdout
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [(r["record"], r["id"]) for r in rows[:2]] == [
        ("exchange", ids["alice one"]), ("exchange", ids["alice two"])]
    assert rows[0]["feedback"] == []
    assert [(f["rating"], f["comment"], f["user"]) for f in rows[1]["feedback"]] == [
        (1, "alice on her own answer", "alice")]
    assert [(r["record"], r["exchange_id"], r["comment"], r["user"]) for r in rows[2:]] == [
        ("rating", ids["bob one"], "alice on bob's answer", "alice"),
        ("rating", ids["nobody"], "alice on the anonymous answer", "alice")]
    assert "bob one" not in out.stdout  # her rating of bob's answer, not his text
    assert "2 exchange(s) of user 'alice' and 2 rating(s) they gave" in out.stderr


def test_export_file_is_private_and_never_written_through_a_symlink(store, tmp_path):
    path = tmp_path / "alice.jsonl"
    umask = os.umask(0o022)  # the usual default: files 0644, readable by every local user
    try:
        assert _run("export", "--user", "alice", "--out", str(path)).returncode == 0
    finally:
        os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    path.chmod(0o644)  # an existing file is made private too, before anything is written
    assert _run("export", "--user", "alice", "--out", str(path)).returncode == 0
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and "alice two" in path.read_text()
    victim = tmp_path / "victim.txt"
    victim.write_text("kept")
    (tmp_path / "link.jsonl").symlink_to(victim)
    out = _run("export", "--user", "alice", "--out", str(tmp_path / "link.jsonl"))
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "is a symbolic link" in out.stderr and victim.read_text() == "kept"


def test_export_to_stdout_and_of_an_unknown_user(store):
    out = _run("export", "--user", "bob")
    assert [json.loads(line)["messages"][0]["content"] for line in out.stdout.splitlines()] == [
        "bob one"]
    out = _run("export", "--user", "nobody-at-all")
    assert out.returncode == 0 and out.stdout == "" and "0 exchange(s)" in out.stderr


def _stored() -> bytes:
    """The log's files. Not dynalign.db-shm (page numbers, no text): closing a descriptor of it
    would drop this process's POSIX locks there, a reader's snapshot with them."""
    return b"".join(p.read_bytes() for p in load_config().home.glob("dynalign.db*")
                    if not p.name.endswith("-shm"))


def test_delete_a_user_leaves_no_trace_in_the_files(store):
    store.add_feedback(store.exchanges(user="alice")[0]["id"], -1, "alice remarks", "alice")
    store.db.execute("pragma wal_checkpoint(truncate)")
    out = _run("delete", "--user", "alice")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "deleted 2 exchange(s) of user 'alice' and 1 rating(s)"
    assert _texts(store) == ["bob one", "nobody"]
    stored = _stored()
    assert b"alice one" not in stored and b"alice two" not in stored  # secure_delete
    assert b"alice remarks" not in stored  # her feedback went with her exchanges
    assert b"bob one" in stored


def test_delete_a_user_deletes_the_ratings_they_gave_on_anyones_exchanges(store):
    """Hers on bob's answer and on the one logged with no user (the chat UI sends none) go,
    with every rating of her own exchanges (bob's too); others' ratings stay."""
    _rate_around(store)
    store.db.execute("pragma wal_checkpoint(truncate)")
    out = _run("delete", "--user", "alice")
    assert out.returncode == 0, out.stderr
    assert [(f["user"], f["comment"]) for f in store.db["feedback"].rows] == [
        ("carol", "carol on her own answer")]
    assert out.stdout.strip() == "deleted 2 exchange(s) of user 'alice' and 4 rating(s)"
    assert _texts(store) == ["bob one", "nobody", "carol one"]
    stored = _stored()
    assert b"alice on" not in stored and b"bob on alice" not in stored
    assert b"carol on her own answer" in stored


def _reader(store: Store) -> sqlite3.Connection:
    """A second connection inside an open read transaction: it holds a snapshot of the log."""
    reader = sqlite3.connect(load_config().db_path)
    reader.execute("begin")
    assert reader.execute("select count(*) from exchanges").fetchone() == (4,)
    return reader


def test_a_reader_holding_a_snapshot_the_cli_says_copies_remain_and_how_to_finish(store):
    db = load_config().db_path
    with closing(_reader(store)) as reader:
        out = _run("delete", "--user", "alice")
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert out.stdout.strip() == "deleted 2 exchange(s) of user 'alice' and 0 rating(s)"
        assert f"the deletion is committed, but copies of the deleted text remain in {db}-wal" \
            in out.stderr and "`dynalign logs checkpoint`" in out.stderr
        assert _texts(store) == ["bob one", "nobody"]  # deleted all the same
        assert b"alice one" in _stored()  # as it says: not yet overwritten in the files
        out = _run("checkpoint")  # while the reader is still there: no better
        assert out.returncode == 1 and "still cannot be folded into" in out.stderr
        reader.rollback()  # the reader is done
        out = _run("checkpoint")
        assert out.returncode == 0, out.stderr
        assert "checkpointed" in out.stdout
    wal = db.with_name(db.name + "-wal")  # gone when the CLI closed the last connection
    assert b"alice one" not in _stored() and (not wal.exists() or wal.stat().st_size == 0)


def test_delete_older_than_and_both_filters(store):
    out = _run("delete", "--older-than", "30", "--user", "bob")
    assert out.stdout.strip() == ("deleted 1 exchange(s) of user 'bob' older than 30 days and 0 "
                                  "rating(s)")
    assert _texts(store) == ["alice one", "alice two", "nobody"]
    out = _run("delete", "--older-than", "30")
    assert out.stdout.strip() == "deleted 1 exchange(s) older than 30 days and 0 rating(s)"
    assert _texts(store) == ["alice two", "nobody"]


@pytest.mark.parametrize("args, message", [
    (["delete"], "needs --user ID, --conversation ID and/or --older-than DAYS"),
    (["delete", "--conversation", "c", "--user", "alice"], "give it without --user"),
    (["delete", "--conversation", "c", "--older-than", "1"], "give it without --user"),
    (["list", "--limit", "0"], "--limit must be 1 or more"),
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


def test_retention_logs_plainly_when_copies_remain(store, caplog):
    cfg = load_config(overrides={"privacy.retention_days": 30})
    with closing(_reader(store)), caplog.at_level(logging.WARNING, "dynalign.retention"):
        assert purge_old_exchanges(cfg) == 2
    assert _texts(store) == ["alice two", "nobody"]
    [error] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "copies of the deleted text remain in" in error.getMessage()
    assert "dynalign logs checkpoint" in error.getMessage()


def test_retention_off_and_a_bad_hour():
    scheduler = BackgroundScheduler(timezone="UTC")
    assert add_retention(load_config(), scheduler) is False  # retention_days = 0: keep forever
    assert scheduler.get_jobs() == []
    with pytest.raises(ConfigError, match="privacy.retention_hour must be between 0 and 23"):
        load_config(overrides={"privacy.retention_days": 7, "privacy.retention_hour": 24})


def _conversation(store: Store, conversation: str, user: str, texts: list[str]) -> list[int]:
    """A conversation's turns, each exchange holding the history before it (as clients send)."""
    ids, history = [], []
    for text in texts:
        history = [*history, {"role": "user", "content": text}]
        ids.append(store.log_exchange({
            "user": user, "conversation": conversation, "messages": history, "status": "ok",
            "opt_out": 0, "response": [{"index": 0, "content": f"answer to {text}"}]}))
        history = [*history, {"role": "assistant", "content": f"answer to {text}"}]
    return ids


def _round_prompts(ids: dict[int, str]) -> Path:
    """A round's prompts.jsonl that trained on these exchanges (id -> prompt text)."""
    path = load_config().rounds_dir / "0001" / "prompts.jsonl"
    path.parent.mkdir(parents=True)
    path.write_text("".join(json.dumps({"prompt": text, "source": "logged",
                                        "id": f"exchange-{i}"}) + "\n" for i, text in ids.items()))
    return path


def test_delete_a_conversation_leaves_no_copy_of_it_in_the_state_dir(store):
    party = _conversation(store, "conv-party", "alice", ["plan a garden party", "make it cheaper",
                                                         "and what if it rains"])
    [other] = _conversation(store, "conv-other", "alice", ["plan a birthday"])
    store.add_feedback(party[1], -1, "too expensive still", "alice")
    prompts = _round_prompts({party[2]: "and what if it rains", other: "plan a birthday"})
    store.db.execute("pragma wal_checkpoint(truncate)")
    out = _run("delete", "--conversation", "conv-party")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ("deleted 3 exchange(s) of conversation 'conv-party' and 1 "
                                  "rating(s)")
    assert _texts(store) == ["alice one", "bob one", "alice two", "nobody", "plan a birthday"]
    stored = _stored() + prompts.read_bytes()
    for text in (b"garden party", b"make it cheaper", b"what if it rains", b"too expensive"):
        assert text not in stored
    assert b"plan a birthday" in prompts.read_bytes()  # the other conversation's stays


def test_delete_a_conversation_with_a_reader_holding_a_snapshot_exits_1_saying_so(store):
    _conversation(store, "conv-1", "bob", ["a secret plan"])
    reader = sqlite3.connect(load_config().db_path)
    with closing(reader):
        reader.execute("begin")
        reader.execute("select count(*) from exchanges").fetchone()
        out = _run("delete", "--conversation", "conv-1")
        assert out.returncode == 1 and "Traceback" not in out.stderr
        assert "deleted 1 exchange(s) of conversation 'conv-1'" in out.stdout
        assert "copies of the deleted text remain" in out.stderr
        reader.rollback()
    assert _run("checkpoint").returncode == 0
    assert b"a secret plan" not in _stored()


def test_list_shows_each_conversation_with_its_turns_in_order(store):
    _conversation(store, "conv-party", "alice", ["plan a garden party", "make it cheaper"])
    _conversation(store, "conv-other", "carol", ["plan a birthday"])
    out = _run("list", "--limit", "3")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "conversation conv-other  user carol  1 exchange(s)"
    assert lines[1].endswith("plan a birthday")
    assert lines[2] == "conversation conv-party  user alice  2 exchange(s)"
    assert lines[3].endswith("plan a garden party") and lines[4].endswith("make it cheaper")
    assert len(lines) == 5
    out = _run("list", "--conversation", "conv-party")
    assert out.stdout.splitlines()[0].startswith("conversation conv-party") and \
        "birthday" not in out.stdout
    older = _run("list", "--user", "bob").stdout.splitlines()  # logged before conversations
    assert older[0] == "no conversation id (logged before)  user bob  1 exchange(s)"
    assert _run("list", "--conversation", "nope").stderr.strip() == "no logged exchange matches"
