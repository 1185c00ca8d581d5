"""server.max_body_mb: a body over it is refused with 413 before it is parsed or forwarded (the
app's engine URL answers nothing, so a request that got past the check would fail otherwise).

The body is read as it streams in (server/validate.py: read_body), so a chunked body, or one whose
Content-Length lies low, is refused as soon as the bytes read pass the limit: the client's body is
an async generator that counts what the app pulled from it (httpx's ASGI transport pulls it lazily,
as uvicorn does; Starlette's TestClient would read it whole first)."""

import asyncio

import httpx
from fastapi.testclient import TestClient

from dynalign.config import Config, ServerConfig
from server.gateway import create_app

ADMIN = "admin-key-0123456789"
JSON = {"Content-Type": "application/json"}
LOCAL = "http://127.0.0.1:8000"  # what a local client sends as Host (server/guard.py)
CHUNK = 64 * 1024


def client(monkeypatch, mb: float) -> TestClient:
    monkeypatch.setenv("DYNALIGN_ADMIN_KEY", ADMIN)
    cfg = Config(server=ServerConfig(max_body_mb=mb))
    return TestClient(create_app(cfg, "merged", "http://127.0.0.1:9"), base_url=LOCAL)


def test_a_chat_body_over_the_limit_gets_413(monkeypatch):
    body = b'{"messages": [{"role": "user", "content": "' + b"x" * 2048 + b'"}]}'
    response = client(monkeypatch, 0.001).post("/v1/chat/completions", content=body, headers=JSON)
    assert response.status_code == 413
    error = response.json()["error"]
    assert error["code"] == "request_too_large" and "server.max_body_mb" in error["message"]


def test_an_admin_body_over_the_limit_gets_413_and_a_small_one_passes_the_check(monkeypatch):
    app = client(monkeypatch, 0.001)
    headers = {"Authorization": f"Bearer {ADMIN}", **JSON}
    big = app.post("/admin/refresh", content=b'{"note": "' + b"y" * 4096 + b'"}', headers=headers)
    assert big.status_code == 413
    small = app.post("/v1/chat/completions", content=b"{not json", headers=JSON)
    assert small.status_code == 400 and "JSON" in small.json()["error"]["message"]


def send_streamed(monkeypatch, path: str, chunks: int, headers: dict, mb: float = 1.0):
    """POST `chunks` x 64 KiB to `path`, generated as the app asks for them; the response and
    how many chunks the app pulled."""
    monkeypatch.setenv("DYNALIGN_ADMIN_KEY", ADMIN)
    app = create_app(Config(server=ServerConfig(max_body_mb=mb)), "merged", "http://127.0.0.1:9")
    pulled = [0]

    async def body():
        piece = b"x" * CHUNK
        for _ in range(chunks):
            pulled[0] += 1
            yield piece

    async def post():
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url=LOCAL) as http:
            return await http.post(path, content=body(), headers={**JSON, **headers})

    return asyncio.run(post()), pulled[0]


def test_a_chunked_body_is_refused_once_it_passes_the_limit_not_read_to_its_end(monkeypatch):
    """64 MiB offered against a 1 MiB limit, on a chat, feedback and an admin route: 413, and the
    app stopped pulling at the chunk that passed the limit (17 of 1024)."""
    for path, headers in (("/v1/chat/completions", {}), ("/v1/feedback", {}),
                          ("/admin/adapters", {"Authorization": f"Bearer {ADMIN}"})):
        response, pulled = send_streamed(monkeypatch, path, 1024, headers)
        assert response.status_code == 413, (path, response.text)
        assert response.json()["error"]["code"] == "request_too_large"
        assert pulled <= 2**20 // CHUNK + 2, f"{path}: read {pulled} of 1024 chunks"


def test_a_content_length_that_lies_low_does_not_let_more_in(monkeypatch):
    """Content-Length says 10 bytes; 64 MiB stream in: refused once past the limit."""
    response, pulled = send_streamed(monkeypatch, "/v1/chat/completions", 1024,
                                     {"Content-Length": "10"})
    assert response.status_code == 413 and pulled <= 2**20 // CHUNK + 2, pulled


def test_a_body_within_the_limit_is_read_whole(monkeypatch):
    """15 chunks (960 KiB) under a 1 MiB limit: all read, then parsed (and refused as JSON)."""
    response, pulled = send_streamed(monkeypatch, "/v1/chat/completions", 15, {})
    assert pulled == 15 and response.status_code == 400
    assert "invalid JSON" in response.json()["error"]["message"]
