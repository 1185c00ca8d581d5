"""Opening a path without following a symbolic link, with errors a person can act on.

Two places take paths from someone else and must not be led elsewhere by a link: the adapter
files a registration copies (server/adapters.py) and the file `dynalign logs export --out`
writes (dynalign/cli_logs.py). O_NOFOLLOW makes the open itself refuse a link (no check-then-open
race); this turns its ELOOP, and any other refusal, into the caller's DynalignError.
"""

from __future__ import annotations

import errno
import os

from dynalign.errors import DynalignError


def open_no_link(path, flags: int, error: type[DynalignError], is_link: str, failed: str,
                 mode: int = 0o600, dir_fd: int | None = None, shown=None) -> int:
    """os.open(path, flags | O_NOFOLLOW | O_CLOEXEC); a link raises `error(f"{shown} is a
    symbolic link: {is_link}")` (`shown`: the path to name, default `path`), another OSError
    `error(f"{failed}: {strerror}")`."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise error(f"{shown or path} is a symbolic link: {is_link}") from None
        raise error(f"{failed}: {e.strerror}") from None
