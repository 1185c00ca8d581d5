"""Cross-site protection: which Host names and which browser origins the gateway answers.

With keys off (the loopback default) anything that can make this machine's browser send a request
could otherwise chat (logged, trained on) or probe /health: a web page POSTing to 127.0.0.1 (a
browser sends a cross-origin "simple" request without asking first), or a page whose domain was
rebound to 127.0.0.1 (DNS rebinding: the browser then takes the gateway for the page's own origin,
but still names the page's domain in Host). The checks, each refusing with an OpenAI-style body:

- Host (`CheckHost`): bound to a loopback address, the gateway answers Host names localhost,
  127.0.0.1, [::1] and server.host (any port), plus `server.allowed_hosts`; others get 421. A
  wildcard or other non-loopback bind answers any Host (keys are required there) unless
  allowed_hosts is set. "*" in allowed_hosts answers any.
- Origin (`CheckOrigin`): a request naming an Origin that is neither the gateway's own (scheme,
  host and port of the request) nor in `server.cors_origins` gets 403, a CORS preflight
  (OPTIONS) included; requests without Origin (every non-browser client) pass.
  Listed origins get CORS answers from Starlette's CORSMiddleware.
- Content-Type (not here: server/validate.py, read_body, the one reader of bodies): a body must
  be declared application/json, so an HTML form or a text/plain fetch cannot send a chat.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware

from server.auth import is_loopback
from server.validate import RequestError

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})  # bind addresses, never names to answer to
DEFAULT_PORTS = {"http": 80, "https": 443}
CORS_HEADERS = ["Authorization", "Content-Type", "X-Dynalign-User", "X-Dynalign-Opt-Out",
                "X-Client-Id", "X-Conversation-Id"]


def install(app, server) -> None:
    """Add the checks to `app` for `server` (the ServerConfig). Called before the metrics
    middleware is added, so that one stays outermost and counts the refusals too."""
    if server.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(server.cors_origins),
                           allow_methods=["GET", "POST", "PUT", "DELETE"],
                           allow_headers=CORS_HEADERS,
                           expose_headers=["X-Dynalign-Version", "X-Conversation-Id"])
    app.add_middleware(CheckOrigin, listed=frozenset(o.lower() for o in server.cors_origins))
    app.add_middleware(CheckHost, allowed=allowed_hosts(server))


def split_host(value: str) -> tuple[str, int | None]:
    """A Host header's (or config entry's) name, lower case without brackets or a final dot, and
    its port (None when it has none): "[::1]:8000" -> ("::1", 8000), "LocalHost." -> ("localhost",
    None). A port that is not a number gives the name "", which nothing allows."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value[1:].partition("]")
        port = rest.removeprefix(":") if rest.startswith(":") or not rest else "x"
    elif value.count(":") == 1:
        name, port = value.split(":")
    else:
        name, port = value, ""  # no port, or a bare IPv6 address
    if port and not port.isdigit():
        return "", None
    return name.rstrip("."), int(port) if port else None


def host_name(value: str) -> str:
    return split_host(value)[0]


def allowed_hosts(server) -> frozenset[str] | None:
    """The Host names the gateway answers; None: any."""
    listed = {host_name(h) for h in server.allowed_hosts}
    if "*" in listed or (not listed and not is_loopback(server.host)):
        return None
    return frozenset(LOOPBACK_NAMES | listed | ({host_name(server.host)} - WILDCARDS))


def header(scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


def refusal(status: int, message: str, code: str) -> JSONResponse:
    error = RequestError(message, status=status, code=code, type="invalid_request_error")
    return JSONResponse(error.body(), status_code=status)


class CheckHost:
    """ASGI middleware: 421 for a Host the gateway does not answer to (DNS rebinding)."""

    def __init__(self, app, allowed: frozenset[str] | None):
        self.app, self.allowed = app, allowed

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.allowed is None:
            return await self.app(scope, receive, send)
        host = header(scope, b"host") or ""
        if host_name(host) in self.allowed:
            return await self.app(scope, receive, send)
        response = refusal(421, f"this server does not answer to the host {host!r}: it answers "
                           f"{', '.join(sorted(self.allowed))}; add the name to "
                           "server.allowed_hosts", "host_not_allowed")
        await response(scope, receive, send)


def same_origin(origin: str, scope) -> bool:
    """Whether Origin names the gateway itself: the request's scheme, Host name and port."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port or DEFAULT_PORTS.get(parts.scheme)
    except ValueError:
        return False
    scheme = scope.get("scheme", "http")
    name, own_port = split_host(header(scope, b"host") or "")
    return (bool(name) and parts.scheme == scheme and (parts.hostname or "") == name
            and port == (own_port or DEFAULT_PORTS.get(scheme)))


class CheckOrigin:
    """ASGI middleware: 403 for a browser request from an origin that is neither the gateway's
    own nor in server.cors_origins (a page on another site calling the API)."""

    def __init__(self, app, listed: frozenset[str]):
        self.app, self.listed = app, listed

    async def __call__(self, scope, receive, send):
        origin = header(scope, b"origin") if scope["type"] == "http" else None
        if origin is None or origin.lower() in self.listed or same_origin(origin, scope):
            return await self.app(scope, receive, send)
        response = refusal(403, f"requests from the web origin {origin!r} are refused: list it "
                           "in server.cors_origins to allow a page there to call this API",
                           "origin_not_allowed")
        await response(scope, receive, send)
