"""Where the keys are: chat keys in the variable `server.api_keys_env` (comma-separated), the
admin key in `server.admin_key_env` or else the file `server.admin_key_file`. Read by the server
(server/auth.py, which also makes and checks them) and by the CLI's admin calls."""

from __future__ import annotations

import os
from pathlib import Path

from dynalign.config import Config


def split_keys(value: str | None) -> list[str]:
    return [k.strip() for k in (value or "").split(",") if k.strip()]


def first_key(value: str | None) -> str | None:
    """The key a client of this server sends, from a variable that may list several."""
    keys = split_keys(value)
    return keys[0] if keys else None


def admin_key_path(cfg: Config) -> Path:
    return Path(cfg.server.admin_key_file) if cfg.server.admin_key_file else cfg.home / "admin.key"


def read_admin_key(cfg: Config) -> str | None:
    """The admin key from its variable, else from the key file; None when neither has one."""
    key = os.environ.get(cfg.server.admin_key_env, "").strip()
    path = admin_key_path(cfg)
    if not key and path.is_file():
        key = path.read_text().strip()
    return key or None
