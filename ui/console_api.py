"""The operator console's client for the gateway's admin API (HTTP only, through httpx).

Every call takes the admin key given at login; an API error (OpenAI-style
``{"error": {"message", "code"}}``) or a failed connection is raised as `AdminError`, whose
text is what the console shows. The key is sent as a bearer token and never put in a message.
"""

from __future__ import annotations

from urllib.parse import urlsplit

TIMEOUT_S = 30
WRONG_KEY = "wrong admin key"


class AdminError(Exception):
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

    def __init__(self, api_url: str, key: str, transport=None):
        self.root = admin_url(api_url)
        self.key = key or ""
        self.transport = transport

    def call(self, method: str, path: str, json=None, params=None):
        """The decoded JSON answer of METHOD /admin/PATH, or AdminError."""
        import httpx

        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        with httpx.Client(timeout=TIMEOUT_S, transport=self.transport) as client:
            try:
                r = client.request(method, self.root + path, json=json, params=params,
                                   headers=headers)
            except httpx.HTTPError as exc:
                raise AdminError(f"the gateway did not answer: {type(exc).__name__}") from exc
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

    def schedule(self) -> dict:
        return self.call("GET", "/schedule")

    def set_schedule(self, spec: dict) -> dict:
        return self.call("PUT", "/schedule", json=spec)

    def reset_schedule(self) -> dict:
        return self.call("DELETE", "/schedule")

    def exchanges(self, q: str = "", user: str = "", opt_out: str = "any", limit: int = 50) -> dict:
        params = {"limit": limit, "q": q, "user": user}
        if opt_out in ("true", "false"):
            params["opt_out"] = opt_out
        return self.call("GET", "/exchanges", params=params)

    def delete_exchange(self, exchange_id: int) -> dict:
        return self.call("DELETE", f"/exchanges/{exchange_id}")


def _json(response):
    """The body as JSON, or its text when it is not JSON."""
    if "json" not in response.headers.get("content-type", ""):
        return response.text
    return response.json()
