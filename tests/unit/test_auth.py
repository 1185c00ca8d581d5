"""Keys (server/auth.py): checked before anything touches the engine, so no engine is needed.
The app is built after the environment is set (keys are read once, at start)."""

import os
import stat
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

from dynalign import cli
from dynalign.config import Config, ServerConfig, UIConfig
from dynalign.errors import ConfigError
from server.auth import is_loopback, load_keys, matches, prepare_keys, ui_env
from server.engine import engine_command, engine_env
from server.gateway import create_app

CHAT_KEYS = "chat-key-one,chat-key-two"
ADMIN = "admin-key-0123456789"


def make_client(monkeypatch, chat: str | None = CHAT_KEYS, admin: str | None = ADMIN):
    for name, value in (("DYNALIGN_API_KEY", chat), ("DYNALIGN_ADMIN_KEY", admin)):
        if value is not None:
            monkeypatch.setenv(name, value)
    # lifespan not run; a local client's Host and a JSON body type (server/guard.py, read_body)
    return TestClient(create_app(Config(), "merged", "http://127.0.0.1:9"),
                      base_url="http://127.0.0.1:8000",
                      headers={"Content-Type": "application/json"})


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


def assert_no_key_in(text: str) -> None:
    for key in (*CHAT_KEYS.split(","), ADMIN, "wrong-key"):
        assert key not in text


@pytest.mark.parametrize("method, path", [("post", "/v1/chat/completions"),
                                          ("get", "/v1/models"), ("get", "/admin/adapters"),
                                          ("post", "/admin/refresh"), ("get", "/admin/rounds")])
@pytest.mark.parametrize("header", [None, "Bearer wrong-key", "wrong-key", "Basic wrong-key",
                                    "Bearer "], ids=["none", "wrong", "no-scheme", "basic", "empty"])
def test_a_missing_or_wrong_key_gets_401(monkeypatch, method, path, header):
    client = make_client(monkeypatch)
    response = getattr(client, method)(path, headers={"Authorization": header} if header else {})
    assert response.status_code == 401
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("invalid_api_key", "authentication_error")
    assert error["message"] and response.headers["www-authenticate"] == "Bearer"
    assert_no_key_in(response.text)


@pytest.mark.parametrize("key", CHAT_KEYS.split(","))
def test_every_chat_key_opens_chat(monkeypatch, key):
    client = make_client(monkeypatch)
    response = client.post("/v1/chat/completions", headers=bearer(key), content=b"{not json")
    assert response.status_code == 400  # past the key check, stopped by the body check
    assert "invalid JSON" in response.json()["error"]["message"]
    # the keys were loaded: the same request without a key, or with another, is refused
    assert client.post("/v1/chat/completions", content=b"{not json").status_code == 401
    assert client.post("/v1/chat/completions", headers=bearer(key + "x"),
                       content=b"{not json").status_code == 401


@pytest.mark.parametrize("key", CHAT_KEYS.split(","))
def test_a_chat_key_on_admin_is_403(monkeypatch, key):
    response = make_client(monkeypatch).get("/admin/adapters", headers=bearer(key))
    assert response.status_code == 403
    error = response.json()["error"]
    assert (error["code"], error["type"]) == ("admin_key_required", "permission_error")
    assert "admin key" in error["message"]
    assert_no_key_in(response.text)


def test_the_admin_key_opens_chat_for_an_operators_client(monkeypatch):
    """`dynalign eval` sends the admin key: it may chat, and name versions not serving."""
    client = make_client(monkeypatch)
    response = client.post("/v1/chat/completions", headers=bearer(ADMIN), content=b"{not json")
    assert response.status_code == 400  # past the key check, stopped by the body check


def test_the_admin_key_passes_the_admin_check(monkeypatch):
    client = make_client(monkeypatch)
    response = client.post("/admin/adapters", headers=bearer(ADMIN), content=b"{not json")
    assert response.status_code == 400  # past the key check, stopped by the body check


def test_without_chat_keys_chat_is_open_but_admin_is_closed(monkeypatch):
    client = make_client(monkeypatch, chat=None, admin=None)
    assert client.post("/v1/chat/completions", content=b"{not json").status_code == 400
    assert client.get("/admin/adapters").status_code == 401
    assert client.get("/admin/adapters", headers=bearer("anything")).status_code == 401


def test_keys_are_kept_as_digests_only(monkeypatch):
    monkeypatch.setenv("DYNALIGN_API_KEY", CHAT_KEYS)
    monkeypatch.setenv("DYNALIGN_ADMIN_KEY", ADMIN)
    keys = load_keys(Config())
    assert_no_key_in(repr(keys))
    assert all(matches(k, keys.chat) for k in CHAT_KEYS.split(","))  # loaded, as digests
    assert matches(ADMIN, (keys.admin,)) and not matches(ADMIN, keys.chat)
    assert not matches("chat-key-three", keys.chat) and not matches("", keys.chat)


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.2", True),
                                            ("::1", True), ("localhost", True),
                                            ("0.0.0.0", False), ("::", False), ("", False),
                                            ("10.1.2.3", False), ("example.com", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_on_loopback_serve_creates_a_private_admin_key_and_says_where(capsys):
    cfg = Config()
    keys = prepare_keys(cfg)
    path = cfg.home / "admin.key"
    key = path.read_text().strip()
    assert len(key) >= 32 and stat.S_IMODE(path.stat().st_mode) == 0o600
    out = capsys.readouterr().out
    assert str(path) in out and key not in out
    assert prepare_keys(cfg) == keys  # the next start reads the same key
    assert path.read_text().strip() == key


def test_the_env_admin_key_wins_over_the_file(monkeypatch):
    monkeypatch.setenv("DYNALIGN_ADMIN_KEY", ADMIN)
    cfg = Config()
    prepare_keys(cfg)
    assert not (cfg.home / "admin.key").exists()
    assert make_client(monkeypatch).get("/admin/nope", headers=bearer(ADMIN)).status_code == 404


def test_a_readable_key_file_is_refused(tmp_path):
    path = tmp_path / "admin.key"
    path.write_text("some-admin-key\n")
    path.chmod(0o644)
    with pytest.raises(ConfigError, match="chmod 600"):
        prepare_keys(Config(server=ServerConfig(admin_key_file=str(path))))


@pytest.mark.parametrize("chat, admin, words", [(None, ADMIN, "DYNALIGN_API_KEY"),
                                                (CHAT_KEYS, None, "DYNALIGN_ADMIN_KEY")])
def test_off_loopback_serve_refuses_a_missing_key(monkeypatch, chat, admin, words):
    make_client(monkeypatch, chat=chat, admin=admin)
    with pytest.raises(ConfigError, match=words):
        prepare_keys(Config(server=ServerConfig(host="0.0.0.0"), ui=UIConfig(enabled=False)))


def test_off_loopback_with_both_keys_serve_starts(monkeypatch):
    make_client(monkeypatch)
    prepare_keys(Config(server=ServerConfig(host="0.0.0.0"), ui=UIConfig(enabled=False)))


def test_a_public_chat_ui_is_refused(monkeypatch):
    with pytest.raises(ConfigError, match="ui.host"):
        prepare_keys(Config(ui=UIConfig(host="0.0.0.0")))


def test_the_admin_key_must_not_be_a_chat_key(monkeypatch):
    make_client(monkeypatch, admin="chat-key-two")
    with pytest.raises(ConfigError, match="separate admin key"):
        prepare_keys(Config())


def test_dynalign_serve_exits_1_naming_the_variable(tmp_path, capsys):
    config = tmp_path / "public.toml"
    config.write_text('[server]\nhost = "0.0.0.0"\n\n[ui]\nenabled = false\n')
    assert cli.main(["--config", str(config), "serve"]) == 1
    err = capsys.readouterr().err
    assert "DYNALIGN_API_KEY" in err and "Traceback" not in err


def test_the_engine_and_the_ui_get_no_admin_key(monkeypatch):
    make_client(monkeypatch)
    cfg = Config()
    env = engine_env(cfg, "merged")
    assert "DYNALIGN_ADMIN_KEY" not in env and "DYNALIGN_API_KEY" not in env
    assert_no_key_in(" ".join(engine_command(cfg, "merged")))
    assert ui_env(cfg)["DYNALIGN_API_KEY"] == "chat-key-one"
    assert "DYNALIGN_ADMIN_KEY" not in ui_env(cfg)


def cli_against(json_server, tmp_path, status: int):
    """`dynalign adapters activate 3 --force` against a stand-in gateway answering `status`."""
    seen = []

    def respond(path, headers, body):
        seen.append((path, headers.get("authorization")))
        return status, {"error": {"message": "invalid admin key", "type": "x", "code": None}}, {}
    port = urlsplit(json_server(respond)).port
    config = tmp_path / "cli.toml"
    config.write_text(f"[server]\nport = {port}\n")
    return cli.main(["--config", str(config), "adapters", "activate", "3", "--force"]), seen


def test_the_cli_sends_the_admin_key_from_the_key_file(json_server, tmp_path, capsys):
    prepare_keys(Config())
    key = (Config().home / "admin.key").read_text().strip()
    code, seen = cli_against(json_server, tmp_path, 401)
    assert seen == [("/admin/adapters/3/activate", f"Bearer {key}")]
    assert code == 1
    err = capsys.readouterr().err
    assert "refused the admin key" in err and key not in err


def test_the_cli_prefers_the_admin_key_variable(json_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DYNALIGN_ADMIN_KEY", "wrong-key")
    code, seen = cli_against(json_server, tmp_path, 403)
    assert (code, seen[0][1]) == (1, "Bearer wrong-key")
    err = capsys.readouterr().err
    assert "DYNALIGN_ADMIN_KEY" in err and "wrong-key" not in err


def test_no_key_file_is_made_by_reading(tmp_path):
    load_keys(Config())
    assert not os.path.exists(Config().home / "admin.key")
