"""Cross-site protection (server/guard.py, server/validate.py: read_body): Host names, browser
origins and the JSON Content-Type, through the gateway app with Starlette's TestClient (no
engine: a request that passes every check is stopped by the body check, 400 "invalid JSON");
and the config keys' checks at load (dynalign/checks.py). The same refusals against a real server:
tests/integration/test_bad_input.py."""

import pytest
from fastapi.testclient import TestClient

from dynalign.config import Config, ServerConfig, load_config
from dynalign.errors import ConfigError
from server.gateway import create_app
from server.guard import split_host

CHAT = "/v1/chat/completions"
JSON = {"Content-Type": "application/json"}
NOT_JSON = b"{not json"


def client(**server) -> TestClient:
    cfg = Config(server=ServerConfig(**server))
    return TestClient(create_app(cfg, "merged", "http://127.0.0.1:9"),
                      base_url="http://127.0.0.1:8000")  # lifespan not run


def chat(app: TestClient, headers: dict | None = None, body: bytes = NOT_JSON, **kwargs):
    return app.post(CHAT, content=body, headers={**JSON, **(headers or {})}, **kwargs)


def passed(response) -> bool:
    """Past the cross-site checks: stopped by the body check behind them."""
    return response.status_code == 400 and "invalid JSON" in response.json()["error"]["message"]


def refused(response, status: int, code: str, words: str) -> bool:
    error = response.json()["error"]
    return (response.status_code, error["code"]) == (status, code) and words in error["message"]


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost", "LOCALHOST:1", "[::1]:8000",
                                  "127.0.0.1", "localhost.:8000"])
def test_a_loopback_bind_answers_loopback_names_on_any_port(host):
    assert passed(chat(client(), {"Host": host}))


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.1.evil.example",
                                  "0.0.0.0:8000", "", "localhost:port", "[::1]x"])
def test_a_loopback_bind_refuses_other_host_names_with_421(host):
    """DNS rebinding: the browser names the attacker's domain in Host, on every route."""
    app = client()
    assert refused(chat(app, {"Host": host}), 421, "host_not_allowed", "server.allowed_hosts")
    assert refused(app.get("/health", headers={"Host": host}), 421, "host_not_allowed",
                   "server.allowed_hosts")


def test_allowed_hosts_adds_names_and_the_bound_host_is_answered():
    app = client(allowed_hosts=["chat.example.com", "[fd00::1]"])
    assert passed(chat(app, {"Host": "chat.example.com:443"}))
    assert passed(chat(app, {"Host": "[FD00::1]:8000"}))
    assert refused(chat(app, {"Host": "other.example.com"}), 421, "host_not_allowed", "")
    assert passed(chat(client(host="127.0.0.2"), {"Host": "127.0.0.2:8000"}))


def test_a_wildcard_bind_answers_any_host_unless_allowed_hosts_is_set():
    assert passed(chat(client(host="0.0.0.0"), {"Host": "anything.example"}))
    assert passed(chat(client(host="::"), {"Host": "10.1.2.3:8000"}))
    listed = client(host="0.0.0.0", allowed_hosts=["chat.example.com"])
    assert passed(chat(listed, {"Host": "chat.example.com"}))
    assert passed(chat(listed, {"Host": "127.0.0.1:8000"}))  # the CLI and the UI, on this machine
    assert refused(chat(listed, {"Host": "anything.example"}), 421, "host_not_allowed", "")
    assert refused(chat(listed, {"Host": "0.0.0.0"}), 421, "host_not_allowed", "")
    assert passed(chat(client(allowed_hosts=["*"]), {"Host": "anything.example"}))


def test_split_host():
    assert split_host("[::1]:8000") == ("::1", 8000)
    assert split_host("LocalHost.") == ("localhost", None)
    assert split_host("::1") == ("::1", None) and split_host("a:b") == ("", None)


@pytest.mark.parametrize("origin", ["http://evil.example", "null", "http://127.0.0.1:8001",
                                    "https://127.0.0.1:8000", "http://localhost:8000"])
def test_a_cross_origin_browser_request_is_refused_with_403(origin):
    """Not the gateway's own origin (scheme, host and port of the request), not listed."""
    response = chat(client(), {"Origin": origin})
    assert refused(response, 403, "origin_not_allowed", "server.cors_origins")
    assert "access-control-allow-origin" not in response.headers


def test_a_preflight_from_an_unlisted_origin_is_refused():
    response = client().options(CHAT, headers={"Origin": "http://evil.example",
                                               "Access-Control-Request-Method": "POST"})
    assert refused(response, 403, "origin_not_allowed", "server.cors_origins")


def test_the_gateways_own_origin_and_requests_without_origin_pass():
    app = client()
    assert passed(chat(app, {"Origin": "http://127.0.0.1:8000"}))
    assert passed(chat(app, {"Origin": "http://localhost", "Host": "localhost:80"}))
    assert passed(chat(app))


def test_a_listed_origin_gets_cors_answers():
    app = client(cors_origins=["https://app.example.com"])
    preflight = app.options(CHAT, headers={
        "Origin": "https://app.example.com", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    response = chat(app, {"Origin": "https://app.example.com"})
    assert passed(response)
    assert response.headers["access-control-allow-origin"] == "https://app.example.com"
    assert refused(chat(app, {"Origin": "https://other.example.com"}), 403,
                   "origin_not_allowed", "")


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "", "json"])
def test_a_body_not_declared_json_gets_415(content_type):
    """What a page can send cross-site without a preflight is never read as a chat."""
    response = client().post(CHAT, content=b'{"messages": []}',
                             headers={"Content-Type": content_type})
    assert refused(response, 415, "unsupported_media_type", "application/json")


def test_json_with_parameters_passes_and_no_type_needs_an_empty_body():
    app = client()
    assert passed(chat(app, {"Content-Type": "Application/JSON; charset=utf-8"}))
    assert refused(app.post(CHAT, content=b'{"messages": []}'), 415, "unsupported_media_type",
                   "no Content-Type")
    empty = app.post(CHAT)  # no body, no type: past the type check, refused as JSON
    assert empty.status_code == 400 and "invalid JSON" in empty.json()["error"]["message"]


@pytest.mark.parametrize("key, value, words", [
    ("server.allowed_hosts", ["http://chat.example.com"], "'http://chat.example.com' is not"),
    ("server.allowed_hosts", ["chat.example.com:8000"], "is not a host name"),
    ("server.allowed_hosts", ["bad_name.example"], "is not a host name"),
    ("server.allowed_hosts", [""], "is not a host name"),
    ("server.cors_origins", ["app.example.com"], "'app.example.com' is not an origin"),
    ("server.cors_origins", ["https://app.example.com/"], "no path or trailing slash"),
    ("server.cors_origins", ["ftp://app.example.com"], "is not an origin"),
    ("server.cors_origins", ["*"], "is not an origin"),
    ("server.cors_origins", ["https://app.example.com:99999"], "is not an origin"),
])
def test_bad_hosts_and_origins_fail_at_load_naming_the_key(key, value, words):
    with pytest.raises(ConfigError) as e:
        load_config(overrides={key: value})
    assert key in str(e.value) and words in str(e.value)


def test_good_hosts_and_origins_load():
    cfg = load_config(overrides={
        "server.allowed_hosts": ["chat.example.com", "10.0.0.5", "[::1]", "fd00::1", "*",
                                 "localhost."],
        "server.cors_origins": ["https://app.example.com", "http://127.0.0.1:3000",
                                "http://[::1]:3000"]})
    assert cfg.server.cors_origins[0] == "https://app.example.com"
