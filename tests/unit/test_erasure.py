"""Deleting exchanges deletes every copy of their text in the state dir (dynalign/erasure.py),
with a real SQLite log and round folders laid out as a round writes them."""

import json
import subprocess
import sys
from contextlib import closing

from dynalign.config import load_config
from dynalign.erasure import drop_missing, forget, scrub_rounds
from dynalign.store import Store

SECRET = "my landlord Jaroslav keeps the deposit at 14 Quay Street"


def _log(store, user, text):
    return store.log_exchange({"user": user, "messages": [{"role": "user", "content": text}],
                               "response": "ok", "status": "ok", "opt_out": 0})


def _round(cfg, round_id, rows):
    folder = cfg.round_dir(round_id)
    folder.mkdir(parents=True)
    (folder / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
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
        assert forget(cfg, store, user="alice") == [secret]
    assert _files_holding(cfg.home, SECRET) == []
    kept = [json.loads(line) for line in
            cfg.round_dir(1).joinpath("prompts.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in kept] == ["plan a choir rehearsal", "a seed prompt"]


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
        assert forget(cfg, store, ids=[secret + 100]) == []
        assert scrub_rounds(cfg.rounds_dir, []) == 0
        assert SECRET in path.read_text()
        assert forget(cfg, store, ids=[secret]) == [secret]
    assert SECRET not in path.read_text()


def test_a_round_drops_prompts_deleted_while_it_selected_them():
    cfg, store, rows, secret = _state()
    path = _round(cfg, 1, rows)
    with closing(store):
        store.delete_exchanges(ids=[secret])  # after selection, before the list was written
        assert drop_missing(path, store) == 1
        assert drop_missing(path, store) == 0
    assert SECRET not in path.read_text() and "choir" in path.read_text()
