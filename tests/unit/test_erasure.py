"""Deleting exchanges deletes every copy of their text in the state dir (dynalign/erasure.py),
with a real SQLite log and round folders laid out as a round writes them."""

import json
import sqlite3
import subprocess
import sys
from contextlib import closing

from fastapi.testclient import TestClient

from dynalign.config import load_config
from dynalign.erasure import drop_missing, forget, scrub_rounds
from dynalign.store import CHECKPOINT_TRIES, Store
from server.engine import EngineClient
from server.gateway import create_app
from server.store_thread import StoreThread
from server.versions import Versions

SECRET = "my landlord Jaroslav keeps the deposit at 14 Quay Street"


def _log(store, user, text):
    return store.log_exchange({"user": user, "messages": [{"role": "user", "content": text}],
                               "response": "ok", "status": "ok", "opt_out": 0})


def _round(cfg, round_id, rows):
    """A round's prompt list, and its rollouts.jsonl: each prompt as the model was shown it."""
    folder = cfg.round_dir(round_id)
    folder.mkdir(parents=True)
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "rollouts.jsonl").write_text("".join(json.dumps(
        {"id": r["id"], "sampled": f"CA ... {r['prompt']}", "loss": r["prompt"]}) + "\n"
        for r in rows))
    return folder / "prompts.jsonl"


def _files_holding(home, text):
    return [p for p in home.rglob("*") if p.is_file() and text.encode() in p.read_bytes()]


def _state():
    cfg = load_config()
    cfg.home.mkdir(parents=True)
    store = Store(cfg.db_path)
    secret = _log(store, "alice", SECRET)
    other = _log(store, "bob", "plan a choir rehearsal")
    rows = [{"prompt": SECRET, "source": "logged", "id": f"exchange-{secret}"},
            {"prompt": "plan a choir rehearsal", "source": "logged", "id": f"exchange-{other}"},
            {"prompt": "a seed prompt", "source": "seed", "id": "seed-00001"}]
    return cfg, store, rows, secret


def test_deleting_a_users_exchanges_leaves_no_copy_of_their_text_in_the_state_dir():
    cfg, store, rows, secret = _state()
    _round(cfg, 1, rows)
    _round(cfg, 2, rows[1:])
    with closing(store):
        assert _files_holding(cfg.home, SECRET)  # the log and round 1's list hold it
        assert forget(cfg, store, user="alice").exchanges == [secret]
    assert _files_holding(cfg.home, SECRET) == []
    kept = [json.loads(line) for line in
            cfg.round_dir(1).joinpath("prompts.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in kept] == ["plan a choir rehearsal", "a seed prompt"]
    shown = [json.loads(line) for line in
             cfg.round_dir(1).joinpath("rollouts.jsonl").read_text().splitlines()]
    assert [r["id"] for r in shown] == [r["id"] for r in rows[1:]]


def test_the_cli_delete_scrubs_rounds_too():
    cfg, store, rows, _ = _state()
    store.close()
    _round(cfg, 1, rows)
    out = subprocess.run([sys.executable, "-m", "dynalign.cli", "logs", "delete", "--user",
                          "alice"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "deleted 1 exchange(s) of user 'alice'" in out.stdout
    assert _files_holding(cfg.home, SECRET) == []


def test_one_exchange_by_id_and_nothing_when_nothing_matched():
    cfg, store, rows, secret = _state()
    path = _round(cfg, 1, rows)
    with closing(store):
        assert forget(cfg, store, ids=[secret + 100]).exchanges == []
        assert scrub_rounds(cfg.rounds_dir, []) == 0
        assert SECRET in path.read_text()
        assert forget(cfg, store, ids=[secret]).exchanges == [secret]
    assert SECRET not in path.read_text()


def test_a_round_drops_prompts_deleted_while_it_selected_them():
    cfg, store, rows, secret = _state()
    path = _round(cfg, 1, rows)
    with closing(store):
        store.delete_exchanges(ids=[secret])  # after selection, before the list was written
        assert drop_missing(path, store) == 1
        assert drop_missing(path, store) == 0
    assert SECRET not in path.read_text() and "choir" in path.read_text()


def _hold_snapshot(cfg) -> sqlite3.Connection:
    """A reader inside an open read transaction: the WAL cannot be checkpointed past it."""
    reader = sqlite3.connect(cfg.db_path)
    reader.execute("begin")
    reader.execute("select count(*) from exchanges").fetchone()
    return reader


def test_the_checkpoint_is_retried_until_the_reader_lets_go():
    """The reader ends its transaction when the second try starts (seen by the deleting
    connection's statement trace): the first try was refused, the second completes."""
    cfg, store, _, secret = _state()
    store.db.execute("pragma wal_checkpoint(truncate)")  # the secret is in dynalign.db now
    tries = []

    def on_statement(sql: str) -> None:
        if "wal_checkpoint" in sql:
            tries.append(sql)
            if len(tries) == 2:
                reader.rollback()

    with closing(store), closing(_hold_snapshot(cfg)) as reader:
        store.db.conn.set_trace_callback(on_statement)
        erased = forget(cfg, store, user="alice")
        assert _files_holding(cfg.home, SECRET) == []
        assert erased.copies_remain is None and erased.exchanges == [secret]
        assert len(tries) == 2


def test_a_reader_that_stays_leaves_copies_and_forget_says_so_after_bounded_tries():
    cfg, store, _, secret = _state()
    store.db.execute("pragma wal_checkpoint(truncate)")
    tries = []
    with closing(store), closing(_hold_snapshot(cfg)):
        store.db.conn.set_trace_callback(lambda sql: tries.append(sql)
                                         if "wal_checkpoint" in sql else None)
        erased = forget(cfg, store, user="alice")
        assert erased.exchanges == [secret] and len(tries) == CHECKPOINT_TRIES
        assert f"copies of the deleted text remain in {cfg.db_path}-wal" in erased.copies_remain
        assert store.existing_exchange_ids([secret]) == []  # committed all the same
        assert _files_holding(cfg.home, SECRET)  # and the copies are there, as it says
        store.db.conn.set_trace_callback(None)
    with closing(Store(cfg.db_path)) as store:
        assert store.checkpoint() is True  # the reader is gone: what `logs checkpoint` runs
    assert _files_holding(cfg.home, SECRET) == []


def test_the_admin_route_reports_copies_left_in_the_wal(monkeypatch):
    """DELETE /admin/exchanges/{id}: 200 either way (the deletion stands); `copies_remain` says
    what is left and how to finish while a reader holds a snapshot, null once none does."""
    monkeypatch.setenv("DYNALIGN_ADMIN_KEY", "admin-key-0123456789")
    cfg, store, _, secret = _state()
    other = store.exchanges(user="bob")[0]["id"]
    store.add_feedback(secret, -1, "alice's comment", "alice")
    store.close()
    app = create_app(cfg, "lora", "http://127.0.0.1:9")  # its lifespan is not run: no engine
    app.state.db, store = StoreThread(cfg.db_path), Store(cfg.db_path)  # as the lifespan sets
    app.state.versions = Versions(cfg, "lora", EngineClient("http://127.0.0.1:9", None), store)
    client = TestClient(app, base_url="http://127.0.0.1",
                        headers={"Authorization": "Bearer admin-key-0123456789"})
    try:
        with closing(_hold_snapshot(cfg)):
            body = client.delete(f"/admin/exchanges/{secret}").json()
        assert body["deleted"] == secret and body["ratings"] == 1
        assert "copies of the deleted text remain in" in body["copies_remain"]
        assert "dynalign logs checkpoint" in body["copies_remain"]
        assert client.delete(f"/admin/exchanges/{other}").json() == {
            "deleted": other, "ratings": 0, "copies_remain": None}
        assert client.delete(f"/admin/exchanges/{other}").status_code == 404
    finally:
        app.state.db.close()
        store.close()
    assert _files_holding(cfg.home, SECRET) == []  # the second delete's checkpoint finished
