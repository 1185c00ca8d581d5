"""The one client of the gateway's admin API (HTTP only, through httpx): the `dynalign` commands
and the operator console both call through `Admin`.

Every call takes one admin key; an API error (OpenAI-style ``{"error": {"message", "code"}}``)
or a failed connection is raised as `AdminError`, whose text is what a person is shown (the CLI
prints it, the console displays it). The key is sent as a bearer token and never put in a message.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from dynalign.errors import DynalignError

TIMEOUT_S = 30
WRONG_KEY = "wrong admin key"


class AdminError(DynalignError):
    """An admin call that failed: its HTTP status (0: no answer), error code and message."""

    def __init__(self, message: str, status: int = 0, code: str | None = None):
        super().__init__(message)
        self.message, self.status, self.code = message, status, code


def admin_url(api_url: str) -> str:
    """The admin API's root for the gateway's OpenAI URL: same host, under /admin."""
    parts = urlsplit(api_url)
    return f"{parts.scheme}://{parts.netloc}/admin"


def error_of(status: int, body) -> AdminError:
    """The AdminError for a non-2xx answer; 401/403 read as a wrong key."""
    if status in (401, 403):
        return AdminError(WRONG_KEY, status, "unauthorized")
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return AdminError(str(error.get("message") or error), status, error.get("code"))
    return AdminError(f"HTTP {status}: {body}", status)


class Admin:
    """The admin API as seen with one key."""

    def __init__(self, api_url: str, key: str, transport=None, timeout: float = TIMEOUT_S):
        self.root = admin_url(api_url)
        self.key = key or ""
        self.transport, self.timeout = transport, timeout

    def call(self, method: str, path: str, json=None, params=None):
        """The decoded JSON answer of METHOD /admin/PATH, or AdminError."""
        import httpx

        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        with httpx.Client(timeout=self.timeout, transport=self.transport) as client:
            try:
                r = client.request(method, self.root + path, json=json, params=params,
                                   headers=headers)
            except httpx.HTTPError as exc:
                raise AdminError(f"cannot reach the gateway at {self.root}: "
                                 f"{type(exc).__name__}: {exc}") from None
        body = _json(r)
        if r.status_code >= 400:
            raise error_of(r.status_code, body)
        return body

    # the calls the console makes
    def adapters(self) -> dict:
        return self.call("GET", "/adapters")

    def activate(self, version: str, force: bool = False) -> dict:
        return self.call("POST", f"/adapters/{version}/activate", json={"force": True} if force else None)

    def rollback(self) -> dict:
        return self.call("POST", "/rollback")

    def refresh(self, overrides: dict) -> dict:
        return self.call("POST", "/refresh", json=overrides)

    def rounds(self, limit: int = 20, steps: bool = False) -> dict:
        params = {"limit": limit, **({"steps": "true"} if steps else {})}
        return self.call("GET", "/rounds", params=params)

    def round(self, round_id: int) -> dict:
        return self.call("GET", f"/rounds/{round_id}")

    def cancel(self, round_id: int) -> dict:
        return self.call("POST", f"/rounds/{round_id}/cancel")

    def scoreboard(self, version: int | str | None = None) -> dict:
        """Each version's latest scoreboard against the base, per judge and prompt set
        ({"data": [...]}, oldest version first); `version`: that one only."""
        params = None if version is None else {"version": str(version)}
        return self.call("GET", "/scoreboard", params=params)

    def schedule(self) -> dict:
        return self.call("GET", "/schedule")

    def set_schedule(self, spec: dict) -> dict:
        return self.call("PUT", "/schedule", json=spec)

    def reset_schedule(self) -> dict:
        return self.call("DELETE", "/schedule")

    def exchanges(self, q: str = "", user: str = "", opt_out: str = "any",
                  conversation: str = "", limit: int = 50) -> dict:
        params = {"limit": limit, "q": q, "user": user, "conversation": conversation}
        if opt_out in ("true", "false"):
            params["opt_out"] = opt_out
        return self.call("GET", "/exchanges", params=params)

    def delete_exchange(self, exchange_id: int) -> dict:
        return self.call("DELETE", f"/exchanges/{exchange_id}")

    def reviews(self, status: str = "", limit: int = 50) -> dict:
        return self.call("GET", "/reviews", params={"status": status, "limit": limit})

    def decide_review(self, review_id: int, body: dict) -> dict:
        return self.call("POST", f"/reviews/{review_id}", json=body)

    def canary(self) -> dict:
        return self.call("GET", "/canary")

    def start_canary(self, body: dict) -> dict:
        return self.call("POST", "/canary", json=body)

    def stop_canary(self) -> dict:
        return self.call("DELETE", "/canary")

    def promote_canary(self) -> dict:
        return self.call("POST", "/canary/promote")


def _json(response):
    """The body as JSON, or its text when it is not JSON."""
    if "json" not in response.headers.get("content-type", ""):
        return response.text
    return response.json()


# the CLI's calls: the gateway of a config, its admin key
def admin_request(cfg, method: str, path: str, body=None, timeout: float = 600) -> dict:
    """One call to this config's gateway's admin API, with the admin
    key (server.admin_key_env, else server.admin_key_file: dynalign/keys.py). Every dynalign
    command that talks to /admin goes through here."""
    from dynalign.keys import admin_key_path, read_admin_key

    try:
        return Admin(cfg.gateway_url, read_admin_key(cfg), timeout=timeout).call(method, path, json=body)
    except AdminError as e:
        if e.status in (401, 403):
            raise DynalignError(f"the server refused the admin key ({e.message}): set "
                                f"{cfg.server.admin_key_env}, or check {admin_key_path(cfg)}"
                                ) from None
        raise
