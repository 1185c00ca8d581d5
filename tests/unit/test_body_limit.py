"""server.max_body_mb: a body over it is refused with 413 before it is parsed or forwarded (the
app's engine URL answers nothing, so a request that got past the check would fail otherwise)."""

from fastapi.testclient import TestClient

from dynalign.config import Config, ServerConfig
from server.gateway import create_app

ADMIN = "admin-key-0123456789"


def client(monkeypatch, mb: float) -> TestClient:
    monkeypatch.setenv("DYNALIGN_ADMIN_KEY", ADMIN)
    cfg = Config(server=ServerConfig(max_body_mb=mb))
    return TestClient(create_app(cfg, "merged", "http://127.0.0.1:9"))  # lifespan not run


def test_a_chat_body_over_the_limit_gets_413(monkeypatch):
    body = b'{"messages": [{"role": "user", "content": "' + b"x" * 2048 + b'"}]}'
    response = client(monkeypatch, 0.001).post("/v1/chat/completions", content=body)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and "server.max_body_mb" in error["message"]


def test_an_admin_body_over_the_limit_gets_413_and_a_small_one_passes_the_check(monkeypatch):
    app = client(monkeypatch, 0.001)
    headers = {"Authorization": f"Bearer {ADMIN}"}
    big = app.post("/admin/refresh", content=b'{"note": "' + b"y" * 4096 + b'"}', headers=headers)
    assert big.status_code == 413
    small = app.post("/v1/chat/completions", content=b"{not json")
    assert small.status_code == 400 and "JSON" in small.json()["error"]["message"]
