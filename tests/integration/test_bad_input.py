"""The bad-input catalogue (tests/helpers/bad_requests.py) against one real server: `dynalign
serve` in merged swap mode with two chat keys, the admin key it makes itself (<state>/admin.key),
and version 1 of a real adapter registered and active.

Each hostile or malformed request must get its 4xx with an OpenAI-style error body whose message
is readable (no traceback); after each, the engine (the same process) still answers a real chat,
the exchange log, the adapter listing, the rounds and the schedule are unchanged. Odd but valid
requests (NUL, RTL overrides, ...) are answered and logged once. Last, no key appears in any log
or command line, and the CLI reads the key file.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import httpx
import psutil
import pytest

from dynalign.config import ServerConfig
from helpers.bad_requests import CATALOGUE, CHAT, HI, ODD_BUT_VALID
from helpers.live_server import run_server, server_env

pytestmark = pytest.mark.slow

WEIGHTS = "adapter_model.safetensors"
CHAT_KEYS = "bad-input-chat-key-1,bad-input-chat-key-2"
PROBE = "bad-input-probe"  # the user tag of the after-each chats (not part of the snapshot)


FEEDBACK_PER_MINUTE = 4  # server.feedback_per_minute here: the limit is reached in a test


@pytest.fixture(scope="module")
def server(base_model, tmp_path_factory):
    yield from run_server(tmp_path_factory, base_model, "merged", api_key=CHAT_KEYS,
                          server_settings=f"feedback_per_minute = {FEEDBACK_PER_MINUTE}\n")


@pytest.fixture(scope="module")
def ready(server, test_adapter):
    """Version 1 registered and active, one exchange logged; the engine's pid."""
    response = server.post("/admin/adapters", json={"path": str(test_adapter), "activate": True})
    assert response.status_code == 201, response.text
    send(server, "POST", CHAT, {"messages": HI, "max_tokens": 2}, "chat", user="bad-input-first")
    server.wait_rows("bad-input-first")
    return {"engine": engine_pids(server)}


@pytest.fixture(scope="module")
def dirs(test_adapter, tmp_path_factory) -> dict:
    """Adapter folders, each broken in one way (made from the real adapter)."""
    root = tmp_path_factory.mktemp("broken-adapters")
    config = json.loads((test_adapter / "adapter_config.json").read_text())
    made = {"good": str(test_adapter)}
    for name, edit in {"garbage-config": lambda f: f.write_text("{{{ not json"),
                       "string-rank": lambda f: f.write_text(json.dumps({**config, "r": "eight"})),
                       "string-alpha": lambda f: f.write_text(
                           json.dumps({**config, "lora_alpha": "abc"})),
                       "passwd-link": lambda f: (f.unlink(), f.symlink_to("/etc/passwd")),
                       "config-dir": lambda f: (f.unlink(), f.mkdir()),
                       "config-fifo": lambda f: (f.unlink(), os.mkfifo(f)),
                       "weights-dir": lambda f: (f.with_name(WEIGHTS).unlink(),
                                                 f.with_name(WEIGHTS).mkdir()),
                       "truncated": None, "huge-header": None}.items():
        folder = root / name
        shutil.copytree(test_adapter, folder)
        if edit:
            edit(folder / "adapter_config.json")
        made[name] = str(folder)
    weights = root / "truncated" / WEIGHTS
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    huge = root / "huge-header" / WEIGHTS
    huge.write_bytes((2**63).to_bytes(8, "little") + huge.read_bytes()[8:])
    return made


def key_for(server, auth: str) -> str | None:
    return {"chat": CHAT_KEYS.split(",")[1], "admin": server.admin_key,
            "wrong": "wrong-key-0000", "none": None}[auth]


def send(server, method, path, body, auth, user, extra: dict | None = None) -> httpx.Response:
    headers = {"X-Dynalign-User": user, **(extra or {})}
    if key_for(server, auth):
        headers["Authorization"] = f"Bearer {key_for(server, auth)}"
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    if content is not None:
        headers["Content-Type"] = "application/json"
    return httpx.request(method, f"{server.url}{path}", content=content, headers=headers,
                         timeout=300)


def engine_pids(server) -> set[int]:
    tree = psutil.Process(server.proc.pid).children(recursive=True)
    return {p.pid for p in tree if "vllm" in " ".join(p.cmdline())}


def snapshot(server) -> dict:
    """What a rejected request must not change."""
    log = server.query("select * from exchanges where user is not ? order by id", (PROBE,))
    state = {path: server.get(f"/admin/{path}").json() for path in ("adapters", "schedule")}
    rounds = [r["id"] for r in server.get("/admin/rounds").json()["data"]]
    return {"log": log, **state, "rounds": rounds}


def assert_alive(server, ready) -> None:
    """The same engine processes, and they answer a real chat with the active version."""
    completion = server.client(timeout=120).chat.completions.create(
        model="dynalign", messages=HI, max_tokens=1, extra_headers={"X-Dynalign-User": PROBE})
    assert completion.model == "dynalign-v1"
    assert engine_pids(server) == ready["engine"], f"the engine was restarted\n{server.output()}"


def assert_readable_error(response: httpx.Response, words: str) -> None:
    error = response.json()["error"]
    assert isinstance(error["message"], str) and error["message"].strip()
    assert isinstance(error["type"], str) and error["type"]
    assert "Traceback" not in error["message"] and 'File "' not in error["message"]
    assert words in error["message"].lower(), error["message"]


@pytest.mark.parametrize("case", CATALOGUE, ids=[case.id for case in CATALOGUE])
def test_a_bad_request_gets_a_clear_4xx_and_changes_nothing(server, ready, dirs, case):
    before = snapshot(server)
    body = case.body(dirs) if callable(case.body) else case.body
    auth = case.auth or ("admin" if case.path.startswith("/admin") else "chat")
    response = send(server, case.method, case.path, body, auth, user=f"bad-{case.id}",
                    extra=case.headers)
    low, high = case.status
    assert low <= response.status_code <= high, f"{response.status_code} {response.text[:500]}"
    assert_readable_error(response, case.words)
    assert_alive(server, ready)
    assert snapshot(server) == before


@pytest.mark.parametrize("name", ODD_BUT_VALID)
def test_odd_but_valid_input_is_answered_and_logged_once(server, ready, name):
    response = send(server, "POST", CHAT, ODD_BUT_VALID[name], "chat", user=f"odd-{name}")
    assert response.status_code == 200, response.text[:500]
    assert response.json()["choices"][0]["message"]["content"] is not None
    rows = server.wait_rows(f"odd-{name}")
    assert len(rows) == 1 and rows[0]["status"] == "ok"
    assert_alive(server, ready)


def test_no_rejected_request_was_logged(server, ready):
    """The log writer is one FIFO thread: once a later exchange is in, earlier ones would be."""
    send(server, "POST", CHAT, {"messages": HI, "max_tokens": 1}, "chat", user="bad-input-last")
    server.wait_rows("bad-input-last")
    assert server.query("select user from exchanges where user like 'bad-%' and user not in "
                        "(?, 'bad-input-first', 'bad-input-last')", (PROBE,)) == []


def test_no_key_is_logged_or_on_a_command_line(server, ready):
    keys = [*CHAT_KEYS.split(","), server.admin_key]
    key_file = server.home / "admin.key"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600"
    serve_out = server.output_path.read_text(errors="replace")
    assert str(key_file) in serve_out
    logs = [serve_out] + [p.read_text(errors="replace") for p in (server.home / "logs").iterdir()]
    argv = [" ".join(p.cmdline()) for p in psutil.Process(server.proc.pid).children(recursive=True)]
    for key in keys:
        assert not any(key in text for text in logs + argv)


def cli(server, *args, admin_key=None) -> subprocess.CompletedProcess:
    """The CLI with no key in its environment unless `admin_key`: it reads <state>/admin.key."""
    return subprocess.run([sys.executable, "-m", "dynalign.cli", "--config",
                           str(server.home.parent / "dynalign.toml"), *args],
                          capture_output=True, text=True, timeout=300, env=server_env(admin_key),
                          cwd=server.home.parent, stdin=subprocess.DEVNULL)


def test_the_cli_reads_the_key_file_and_refuses_a_wrong_key(server, ready):
    assert "DYNALIGN_ADMIN_KEY" not in server_env() and os.path.exists(server.home / "admin.key")
    listed = cli(server, "adapters", "list")
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout)["active"] == "dynalign-v1"
    refused = cli(server, "adapters", "activate", "base", admin_key="wrong-key-0000")
    assert refused.returncode == 1
    assert "refused the admin key" in refused.stderr and "wrong-key-0000" not in refused.stderr
    assert "Traceback" not in refused.stderr
    assert server.active() == "dynalign-v1"


def chunked(size: int):
    """`size` bytes made as they are sent: httpx sends a generator chunked, without a
    Content-Length, and the test never holds the body."""
    piece = b" " * 2**16
    for _ in range(size // len(piece)):
        yield piece


def peak_growth(pid: int, send) -> tuple[httpx.Response, float]:
    """`send()`'s answer and how far the process's peak RSS (VmHWM, reset first through
    /proc/PID/clear_refs) rose above its RSS before, in MiB."""
    def status(key: str) -> int:
        line = next(x for x in open(f"/proc/{pid}/status") if x.startswith(key + ":"))
        return int(line.split()[1]) * 1024

    before = status("VmRSS")
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")
    response = send()
    return response, (status("VmHWM") - before) / 2**20


@pytest.mark.parametrize("path, auth", [(CHAT, "chat"), ("/v1/feedback", "chat"),
                                        ("/admin/adapters", "admin")])
def test_a_chunked_body_over_the_limit_gets_413_and_changes_nothing(server, ready, path, auth):
    """64 MiB sent chunked against server.max_body_mb (the default, 4), on every route that reads a body:
    413, and the gateway's memory grew by less than 2 x the limit (it stops reading at the
    limit: server/validate.py, read_body; it read it whole before). Then a chat is answered."""
    before = snapshot(server)
    headers = {"Authorization": f"Bearer {key_for(server, auth)}", "X-Dynalign-User": "bad-chunk",
               "Content-Type": "application/json"}
    response, grew = peak_growth(server.proc.pid, lambda: httpx.post(
        f"{server.url}{path}", content=chunked(64 * 2**20), headers=headers, timeout=300))
    sent = response.request.headers
    assert sent.get("transfer-encoding") == "chunked" and "content-length" not in sent
    assert response.status_code == 413, response.text[:500]
    assert response.json()["error"]["code"] == "request_too_large"
    assert_readable_error(response, "server.max_body_mb")
    assert grew < 2 * ServerConfig().max_body_mb, f"the gateway's RSS grew by {grew:.1f} MiB"
    assert_alive(server, ready)
    assert snapshot(server) == before


def test_cross_site_requests_are_refused_and_changes_nothing(server, ready):
    """What a web page in a local browser could send: a text/plain chat (no CORS preflight), a
    request under a rebound domain name (DNS rebinding: its Host), a request from another origin
    and its preflight. Each is refused with a readable error and nothing is logged."""
    before = snapshot(server)
    url, body = f"{server.url}{CHAT}", json.dumps({"messages": HI, "max_tokens": 1}).encode()
    chat_key = {"Authorization": f"Bearer {key_for(server, 'chat')}",
                "X-Dynalign-User": "bad-cross-site"}
    json_type = {**chat_key, "Content-Type": "application/json"}
    for response, status, words in [
        (httpx.post(url, content=body, headers={**chat_key, "Content-Type": "text/plain"}),
         415, "application/json"),
        (httpx.post(url, content=body, headers={**json_type, "Host": "rebound.example"}),
         421, "server.allowed_hosts"),
        (httpx.get(f"{server.url}/health", headers={"Host": "rebound.example:80"}),
         421, "server.allowed_hosts"),
        (httpx.post(url, content=body, headers={**json_type, "Origin": "http://evil.example"}),
         403, "server.cors_origins"),
        (httpx.options(url, headers={"Origin": "http://evil.example",
                                     "Access-Control-Request-Method": "POST"}),
         403, "server.cors_origins")]:
        assert response.status_code == status, response.text[:500]
        assert_readable_error(response, words)
    assert_alive(server, ready)
    assert snapshot(server) == before


def test_the_gateways_own_origin_and_a_route_without_a_body_are_answered(server, ready):
    """A page served by the gateway's own origin may call it; the CLI's POSTs without a body
    (activate) need no Content-Type."""
    own = httpx.post(f"{server.url}{CHAT}", json={"messages": HI, "max_tokens": 1}, timeout=300,
                     headers={"Authorization": f"Bearer {key_for(server, 'chat')}",
                              "X-Dynalign-User": PROBE, "Origin": server.url})
    assert own.status_code == 200, own.text[:500]
    activated = cli(server, "adapters", "activate", "1")
    assert activated.returncode == 0, activated.stderr
    assert server.active() == "dynalign-v1"


# ratings: only the key that received an answer rates it, and each key at a bounded rate
def answer_for(server, key: str, user: str):
    return server.client(key=key).chat.completions.create(
        model="dynalign", messages=HI, max_tokens=1, extra_headers={"X-Dynalign-User": user})


def rate_with(server, key: str, completion_id: str, rating: int = -1) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/feedback", json={"id": completion_id, "rating": rating},
                      headers={"Authorization": f"Bearer {key}"}, timeout=60)


def test_only_the_key_that_received_an_answer_may_rate_it(server, ready):
    first, second = CHAT_KEYS.split(",")
    answer = answer_for(server, first, "rater-owner")
    [row] = server.wait_rows("rater-owner")
    other = rate_with(server, second, answer.id)
    assert other.status_code == 404 and other.json()["error"]["code"] == "not_found", other.text
    assert server.query("select * from feedback where exchange_id = ?", (row["id"],)) == []
    own = rate_with(server, first, answer.id)
    assert own.status_code == 200 and own.json()["exchange_id"] == row["id"], own.text
    assert own.json()["user"] == "rater-owner"


def test_a_key_rating_past_its_rate_gets_429_with_retry_after(server, ready):
    first, second = CHAT_KEYS.split(",")
    answer = answer_for(server, first, "rater-limited")
    answers = [rate_with(server, first, answer.id) for _ in range(FEEDBACK_PER_MINUTE + 1)]
    limited = [r for r in answers if r.status_code == 429]
    assert limited and {r.status_code for r in answers} <= {200, 429}, [r.text for r in answers]
    assert int(limited[0].headers["retry-after"]) >= 1
    error = limited[0].json()["error"]
    assert error["code"] == "rate_limit_exceeded" and "server.feedback_per_minute" in error["message"]
    assert server.query("select count(*) as n from feedback f join exchanges e on "
                        "e.id = f.exchange_id where e.user = 'rater-limited'")[0]["n"] == 1
    theirs = answer_for(server, second, "rater-other-key")  # another key has its own budget
    assert rate_with(server, second, theirs.id).status_code == 200
    assert_alive(server, ready)

