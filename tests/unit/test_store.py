"""dynalign.store: migrations, WAL, exchanges, adapter lifecycle."""

import sqlite3

import pytest

from dynalign import store as store_mod
from dynalign.errors import AdapterError, UnknownVersionError
from dynalign.store import Store, migrate


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "state" / "sub" / "dynalign.db"


@pytest.fixture
def store(db_path):
    s = Store(db_path)
    yield s
    s.close()


def _names(path):
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("select name from _migrations order by name")]
    finally:
        conn.close()


def test_fresh_file_gets_all_migrations(db_path):
    s = Store(db_path)  # also creates the missing parent folders
    assert set(s.db.table_names()) >= {"exchanges", "adapters", "rounds", "_migrations"}
    s.close()
    assert _names(db_path) == sorted(fn.__name__ for fn in store_mod.MIGRATIONS)
    assert len(_names(db_path)) == len(store_mod.MIGRATIONS) >= 3


def test_reopen_applies_nothing(db_path):
    Store(db_path).close()
    s = Store(db_path)
    try:
        assert migrate(s.db) == []
    finally:
        s.close()
    assert len(_names(db_path)) == len(store_mod.MIGRATIONS)


def test_wal_mode(store, db_path):
    assert store.db.execute("pragma journal_mode").fetchone()[0] == "wal"
    conn = sqlite3.connect(db_path)  # persisted in the file, not only on this connection
    try:
        assert conn.execute("pragma journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_appended_migration_runs_once(db_path, monkeypatch):
    Store(db_path).close()
    calls = []

    def m999_extra(db):
        calls.append(1)
        db["extra"].create({"id": int}, pk="id")

    monkeypatch.setattr(store_mod, "MIGRATIONS", [*store_mod.MIGRATIONS, m999_extra])
    s = Store(db_path)
    assert calls == [1]
    assert "extra" in s.db.table_names()
    assert migrate(s.db) == []
    s.close()
    Store(db_path).close()
    assert calls == [1]
    assert "m999_extra" in _names(db_path)


def test_migrate_returns_applied_names(tmp_path):
    import sqlite_utils

    db = sqlite_utils.Database(tmp_path / "raw.db")
    assert migrate(db) == [fn.__name__ for fn in store_mod.MIGRATIONS]
    assert migrate(db) == []


def test_exchanges_round_trip_json(store):
    messages = [{"role": "user", "content": "hi"}]
    params = {"temperature": 0.5, "n": 2}
    first = store.log_exchange({"client_id": "c1", "messages": messages, "params": params,
                                "response": [{"index": 0, "content": "yo"}], "stream": 1,
                                "prompt_tokens": 3, "latency_ms": 12.5, "status": "ok"})
    second = store.log_exchange({"client_id": "c2", "messages": messages, "status": "ok"})
    assert second > first
    rows = store.exchanges()
    assert [r["id"] for r in rows] == [second, first]  # newest first
    row = rows[1]
    import json
    assert json.loads(row["messages"]) == messages
    assert json.loads(row["params"]) == params
    assert json.loads(row["response"]) == [{"index": 0, "content": "yo"}]
    assert row["prompt_tokens"] == 3 and row["latency_ms"] == 12.5 and row["client_id"] == "c1"
    assert row["created"]
    assert len(store.exchanges(limit=1)) == 1


def test_add_adapter_is_candidate(store):
    v = store.add_adapter("/a/1", base_model="base", rank=8, metrics={"reward": 0.3}, note="n")
    assert v == 1
    row = store.adapter(1)
    assert row["status"] == "candidate"
    assert row["path"] == "/a/1" and row["rank"] == 8 and row["base_model"] == "base"
    assert row["note"] == "n" and '"reward": 0.3' in row["metrics"]
    assert store.active_version() is None


def test_next_version_increments(store):
    assert store.next_version() == 1
    store.add_adapter("/a/1", base_model="b", rank=8)
    assert store.next_version() == 2
    assert store.add_adapter("/a/2", base_model="b", rank=8, parent=1) == 2
    assert store.add_adapter("/a/7", base_model="b", rank=8, version=7) == 7
    assert store.next_version() == 8
    assert [a["version"] for a in store.adapters()] == [1, 2, 7]


def test_set_active_exactly_one_and_retires_previous(store):
    for i in (1, 2, 3):
        store.add_adapter(f"/a/{i}", base_model="b", rank=8)
    store.set_active(1)
    assert store.active_version() == 1
    assert store.adapter(1)["activated"]
    store.set_active(2)
    statuses = {a["version"]: a["status"] for a in store.adapters()}
    assert statuses == {1: "retired", 2: "active", 3: "candidate"}
    store.set_active(1)  # rollback to a retired version
    statuses = {a["version"]: a["status"] for a in store.adapters()}
    assert statuses == {1: "active", 2: "retired", 3: "candidate"}
    assert sum(s == "active" for s in statuses.values()) == 1


def test_set_active_none_serves_base(store):
    store.add_adapter("/a/1", base_model="b", rank=8)
    store.set_active(1)
    store.set_active(None)
    assert store.active_version() is None
    assert store.adapter(1)["status"] == "retired"


def test_unknown_version_raises(store):
    store.add_adapter("/a/1", base_model="b", rank=8)
    store.set_active(1)
    with pytest.raises(UnknownVersionError, match="unknown adapter version: 5"):
        store.set_active(5)
    assert store.active_version() == 1  # nothing changed
    with pytest.raises(AdapterError):
        store.adapter(42)


def test_set_adapter_status(store):
    store.add_adapter("/a/1", base_model="b", rank=8, note="orig")
    store.set_adapter_status(1, "rejected")
    assert store.adapter(1)["status"] == "rejected" and store.adapter(1)["note"] == "orig"
    store.set_adapter_status(1, "rejected", note="bad reward")
    assert store.adapter(1)["note"] == "bad reward"


def test_state_survives_reopen(db_path):
    s = Store(db_path)
    s.add_adapter("/a/1", base_model="b", rank=8)
    s.set_active(1)
    s.close()
    s = Store(db_path)
    try:
        assert s.active_version() == 1
    finally:
        s.close()


def test_exchanges_filter_and_delete(tmp_path):
    from dynalign.store import Store

    store = Store(tmp_path / "x.db")
    rows = [("alice", 0, "plan my week", "ok"), ("bob", 1, "secret plans", "sure"),
            ("alice", 0, "hello", "Plan B")]
    ids = [store.log_exchange({"user": u, "opt_out": o, "messages": [{"role": "user",
           "content": m}], "response": r, "status": "ok"}) for u, o, m, r in rows]
    assert [r["id"] for r in store.exchanges(search="PLAN")] == ids[::-1]  # text or response
    assert [r["id"] for r in store.exchanges(user="alice")] == [ids[2], ids[0]]
    assert [r["id"] for r in store.exchanges(opt_out=True)] == [ids[1]]
    assert [r["id"] for r in store.exchanges(before=ids[2], limit=1)] == [ids[1]]
    assert store.delete_exchange(ids[1]) is True and store.delete_exchange(ids[1]) is False
    assert [r["id"] for r in store.exchanges()] == [ids[2], ids[0]]
    store.close()


def test_one_rating_per_exchange_the_latest_replacing_it_found_by_completion_id(store):
    first = store.log_exchange({"user": "ann", "completion_id": "chatcmpl-1", "status": "ok"})
    other = store.log_exchange({"user": "bob", "completion_id": "chatcmpl-2", "status": "ok"})
    assert store.exchange_by_completion("chatcmpl-1")["id"] == first
    assert store.exchange_by_completion("chatcmpl-3") is None
    store.add_feedback(first, 1, "good", "ann")
    for _ in range(50):  # a client rating the same answer again and again stores one row
        store.add_feedback(first, -1, None, "ann")
    store.add_feedback(other, 1)
    assert [(f["rating"], f["comment"]) for f in store.feedback(first)] == [(-1, None)]
    assert store.db["feedback"].count == 2


def test_the_feedback_migration_keeps_the_latest_rating_of_each_exchange(tmp_path, monkeypatch):
    """A log written before m010 (every rating kept) keeps only the latest per exchange."""
    from dynalign import store as store_mod

    path = tmp_path / "old.db"
    monkeypatch.setattr(store_mod, "MIGRATIONS", [m for m in store_mod.MIGRATIONS
                                                  if m.__name__ < "m010"])
    old = store_mod.Store(path)
    ann = old.log_exchange({"user": "ann", "completion_id": "a", "status": "ok"})
    for rating in (1, -1, 1, -1):
        old.db["feedback"].insert({"exchange_id": ann, "rating": rating, "created": "t"})
    old.close()
    monkeypatch.undo()
    new = store_mod.Store(path)
    assert [f["rating"] for f in new.feedback(ann)] == [-1]
    new.close()


def test_deleting_exchanges_deletes_their_feedback(store):
    ann = store.log_exchange({"user": "ann", "completion_id": "a", "status": "ok"})
    bob = store.log_exchange({"user": "bob", "completion_id": "b", "status": "ok"})
    store.add_feedback(ann, -1, "my comment", "ann")
    store.add_feedback(bob, 1, "his comment", "bob")
    assert store.delete_exchanges(user="ann") == [ann]
    assert store.feedback(ann) == []
    assert [f["comment"] for f in store.db["feedback"].rows] == ["his comment"]


def test_ratings_by_version_count_each_rated_exchange_once_under_the_version_that_answered(store):
    base = store.log_exchange({"version": None, "completion_id": "a", "status": "ok"})
    v1 = store.log_exchange({"version": 1, "completion_id": "b", "status": "ok"})
    store.log_exchange({"version": 1, "completion_id": "c", "status": "ok"})  # never rated
    store.add_feedback(base, 1)
    store.add_feedback(v1, 1)
    store.add_feedback(v1, -1)  # changed its mind: this one counts
    assert store.ratings_by_version() == {None: (1, 0), 1: (0, 1)}


def test_canary_arms_are_sums_per_arm_with_distinct_raters_and_the_median_latency(store):
    rows = [("active", "ok", 10, 100.0, "ann"), ("active", "error", None, 300.0, "ann"),
            ("active", "ok", 20, 200.0, "bob"), ("canary", "ok", 5, 50.0, "cy"),
            ("canary", "aborted", None, None, "cy")]
    ids = [store.log_exchange({"canary": 7, "arm": arm, "status": status, "client_id": "ip",
                               "completion_tokens": tokens, "latency_ms": ms, "user": user})
           for arm, status, tokens, ms, user in rows]
    store.log_exchange({"canary": 8, "arm": "active", "status": "error"})  # another canary
    store.add_feedback(ids[0], 1, user="ann")
    store.add_feedback(ids[1], -1, user="ann")  # the same rater twice
    store.add_feedback(ids[2], 1, user="bob")
    store.add_feedback(ids[3], -1)  # no user: the exchange's client counts as the rater
    arms = store.canary_arms(7, latency=True)
    assert arms["active"] == {"requests": 3, "errors": 1, "tokens": 30, "answers": 2, "up": 2,
                              "down": 1, "raters": 2, "p50_latency_ms": 200.0}
    assert arms["canary"] == {"requests": 2, "errors": 0, "tokens": 5, "answers": 1, "up": 0,
                              "down": 1, "raters": 1, "p50_latency_ms": 50.0}
    store.log_exchange({"canary": 7, "arm": "canary", "status": "ok", "latency_ms": 70.0})
    assert store.canary_arms(7, latency=True)["canary"]["p50_latency_ms"] == 60.0  # even: mean
    assert "p50_latency_ms" not in store.canary_arms(7)["active"]  # only when asked
    assert store.canary_arms(99) == {}


def test_the_conversations_migration_keeps_older_exchanges_without_a_conversation(tmp_path,
                                                                                  monkeypatch):
    """A log written before m012: its exchanges get NULL conversation and continuation key (no
    conversation), both columns indexed; a new exchange records both, and is found by its key."""
    from dynalign import store as store_mod

    path = tmp_path / "old.db"
    monkeypatch.setattr(store_mod, "MIGRATIONS", [m for m in store_mod.MIGRATIONS
                                                  if m.__name__ < "m012"])
    old = store_mod.Store(path)
    before = old.log_exchange({"user": "ann", "messages": [{"role": "user", "content": "hi"}],
                               "status": "ok"})
    assert "conversation" not in old.db["exchanges"].columns_dict
    old.close()
    monkeypatch.undo()
    new = store_mod.Store(path)
    assert "m012_conversations" in _names(path)
    [row] = new.exchanges()
    assert row["id"] == before and row["conversation"] is None and row["continuation_key"] is None
    indexed = {tuple(i.columns) for i in new.db["exchanges"].indexes}
    assert {("conversation",), ("continuation_key",)} <= indexed
    after = new.log_exchange({"user": "ann", "conversation": "c-1", "continuation_key": "k-1",
                              "status": "ok"})
    assert new.continued_conversation("k-1") == "c-1"
    assert new.continued_conversation("k-unknown") is None
    assert [r["id"] for r in new.exchanges(conversation="c-1")] == [after]
    new.close()


def test_erase_a_conversation_deletes_its_turns_and_their_ratings_only(store):
    turns = [store.log_exchange({"conversation": "c-1", "status": "ok"}) for _ in range(3)]
    other = store.log_exchange({"conversation": "c-2", "status": "ok"})
    store.add_feedback(turns[1], -1, "on turn 2", "ann")
    store.add_feedback(other, 1, "on the other", "ann")
    assert store.erase(conversation="c-1") == (turns, 1)
    assert [r["id"] for r in store.exchanges()] == [other]
    assert [f["comment"] for f in store.db["feedback"].rows] == ["on the other"]
    with pytest.raises(ValueError):
        store.erase(user="ann", conversation="c-2")
