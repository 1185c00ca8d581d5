"""Keys: chat API keys for /v1, one admin key for /admin, where they come from, and the checks.

- Chat keys: the variable named by `server.api_keys_env` (default DYNALIGN_API_KEY), one key or
  several separated by commas. Unset: /v1 is open, which `dynalign serve` allows on loopback only.
- The admin key: the variable named by `server.admin_key_env` (DYNALIGN_ADMIN_KEY), else the file
  `server.admin_key_file` (default <state>/admin.key). On loopback, `dynalign serve` writes a
  random one there (mode 0600) when neither exists; off loopback it refuses to start instead.
- Keys live in the environment or that file, never in the TOML config. Only SHA-256 digests are
  kept in memory, compared with hmac.compare_digest against every key (no early exit), and no
  message, log line or command line names a key.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from starlette.requests import Request

from dynalign.config import Config
from dynalign.errors import ConfigError
from dynalign.keys import admin_key_path, first_key, read_admin_key, split_keys
from server.validate import RequestError

BEARER_HINT = "send it as the header 'Authorization: Bearer KEY'"
ADMIN = "admin"  # client_key's name for the admin key


@dataclass(frozen=True)
class Keys:
    chat: tuple[bytes, ...] = ()  # digests; empty: /v1 is open (loopback only)
    admin: bytes | None = None  # digest; None: /admin is closed to everyone


def digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogateescape")).digest()


def load_keys(cfg: Config) -> Keys:
    """The keys as they are now (no side effects)."""
    admin = read_admin_key(cfg)
    chat = split_keys(os.environ.get(cfg.server.api_keys_env))
    return Keys(tuple(digest(k) for k in chat), digest(admin) if admin else None)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name, "" or "0.0.0.0"-style wildcards are not loopback


def prepare_keys(cfg: Config) -> Keys:
    """`dynalign serve`'s keys: refuse what would expose an open door, create the admin key on
    loopback when there is none, and say where the keys are (never what they are)."""
    chat, admin = split_keys(os.environ.get(cfg.server.api_keys_env)), read_admin_key(cfg)
    if not is_loopback(cfg.server.host):
        _refuse_open_doors(cfg, chat, admin)
    if cfg.ui.enabled and not is_loopback(cfg.ui.host):
        raise ConfigError(f"ui.host is {cfg.ui.host!r}: the chat UI has no login of its own; keep "
                          "it on 127.0.0.1 (behind your own authenticating proxy) or use --no-ui")
    if admin in chat:
        raise ConfigError("the admin key is also a chat API key: use a separate admin key")
    doors = f"{len(chat)} key(s) from {cfg.server.api_keys_env}" if chat else "open (loopback only)"
    print(f"chat API: {doors}; admin key: {_admin_key_source(cfg, admin)}", flush=True)
    return load_keys(cfg)


def _admin_key_source(cfg: Config, admin: str | None) -> str:
    """Where the admin key is, creating <state>/admin.key when there is none."""
    path = admin_key_path(cfg)
    if admin is None:
        _create_admin_key(path)
        return f"created {path} (mode 0600; the CLI reads it from there)"
    if os.environ.get(cfg.server.admin_key_env, "").strip():
        return f"from {cfg.server.admin_key_env}"
    _check_private(path)
    return str(path)


def _refuse_open_doors(cfg: Config, chat: list[str], admin: str | None) -> None:
    where = f"server.host is {cfg.server.host!r}, not a loopback address"
    if not chat:
        raise ConfigError(f"{where}: set {cfg.server.api_keys_env} to one or more chat API keys "
                          "(comma-separated), or bind to 127.0.0.1")
    if admin is None:
        raise ConfigError(f"{where}: set {cfg.server.admin_key_env} (or write the admin key to "
                          f"{admin_key_path(cfg)}, mode 0600), or bind to 127.0.0.1")


def _create_admin_key(path: Path) -> str:
    if path.exists():
        raise ConfigError(f"{path} is empty: write an admin key into it, or delete it to get one")
    key = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def _check_private(path: Path) -> None:
    if path.stat().st_mode & 0o077:
        raise ConfigError(f"{path} can be read by other users: chmod 600 {path}")


def bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None


def matches(given: str, keys: tuple[bytes, ...]) -> bool:
    """Constant time in the key given and in which key matched: every key is compared."""
    found, given_digest = False, digest(given)
    for key in keys:
        found |= hmac.compare_digest(given_digest, key)
    return found


def _unauthorized(message: str) -> RequestError:
    return RequestError(message, status=401, code="invalid_api_key", type="authentication_error")


def require_chat_key(request: Request) -> None:
    """FastAPI dependency of the /v1 routes: a chat key, or the admin key (an operator's
    client, such as `dynalign eval`, which may also ask for versions that are not serving).
    Sets request.state.key_id (client_key)."""
    keys: Keys = request.app.state.keys
    given = bearer(request)
    if given is not None and keys.admin is not None and matches(given, (keys.admin,)):
        request.state.key_id = ADMIN
        return
    request.state.key_id = None
    if not keys.chat:
        return
    if given is None:
        raise _unauthorized(f"missing API key: {BEARER_HINT}")
    if not matches(given, keys.chat):
        raise _unauthorized("invalid API key")
    request.state.key_id = digest(given)[:6].hex()


def client_key(request: Request) -> str | None:
    """Which key sent a /v1 request: ADMIN, a chat key's id (a digest prefix: it names no key),
    or None when chat keys are off (anyone may chat on loopback)."""
    return getattr(request.state, "key_id", None)


def require_admin_key(request: Request) -> None:
    """FastAPI dependency of every /admin route: 401 without the admin key, 403 for a chat key."""
    keys: Keys = request.app.state.keys
    given = bearer(request)
    if given is None:
        raise _unauthorized(f"missing admin key: {BEARER_HINT}")
    if keys.admin is not None and matches(given, (keys.admin,)):
        return
    if matches(given, keys.chat):
        raise RequestError("a chat API key cannot use /admin: send the admin key", status=403,
                           code="admin_key_required", type="permission_error")
    raise _unauthorized("invalid admin key")


def ui_env(cfg: Config) -> dict:
    """The chat UI's environment: the first chat key as DYNALIGN_API_KEY, no admin key (the
    operator console asks the person for it)."""
    env = {k: v for k, v in os.environ.items()
           if k not in (cfg.server.api_keys_env, cfg.server.admin_key_env, "DYNALIGN_API_KEY")}
    key = first_key(os.environ.get(cfg.server.api_keys_env))
    if key:
        env["DYNALIGN_API_KEY"] = key
    return env
