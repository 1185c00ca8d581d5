"""Keys are checked before anything touches the engine: no engine is needed to test them."""

import pytest
from fastapi.testclient import TestClient

from dynalign.config import Config
from server.gateway import create_app


@pytest.fixture
def client():
    return TestClient(create_app(Config(), "merged", "http://127.0.0.1:9"))  # lifespan not run


@pytest.mark.parametrize("path, method, env", [
    ("/v1/chat/completions", "post", "DYNALIGN_API_KEY"),
    ("/v1/models", "get", "DYNALIGN_API_KEY"),
    ("/admin/adapters", "get", "DYNALIGN_ADMIN_KEY")])
@pytest.mark.parametrize("header", [None, "Bearer wrong", "secret"])
def test_a_missing_or_wrong_key_gets_401(client, monkeypatch, path, method, env, header):
    monkeypatch.setenv(env, "secret")
    headers = {"Authorization": header} if header else {}
    response = getattr(client, method)(path, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"


def test_the_chat_key_does_not_open_admin(client, monkeypatch):
    monkeypatch.setenv("DYNALIGN_API_KEY", "chat")
    monkeypatch.setenv("DYNALIGN_ADMIN_KEY", "admin")
    response = client.get("/admin/adapters", headers={"Authorization": "Bearer chat"})
    assert response.status_code == 401


def test_the_right_key_passes_the_check(client, monkeypatch):
    monkeypatch.setenv("DYNALIGN_API_KEY", "secret")
    response = client.post("/v1/chat/completions", headers={"Authorization": "Bearer secret"},
                           content=b"{not json")
    assert response.status_code == 400  # past the key check, stopped by the body check
    assert "invalid JSON" in response.json()["error"]["message"]
