"""One SQLite connection on one worker thread, for the gateway's reads and small writes that must
not run on the event loop (ratings, the canary's sums, /metrics' scrape).

The store's calls are short, but a scan over many exchanges, or a write that waits on the busy
lock of another process (the CLI deleting, a round's learner), would stall every stream the loop
serves. One thread owns the connection (sqlite3 connections are not for concurrent use), so calls
run one at a time, in order. The exchange log's writer keeps its own thread (server/exchange_log.py).
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from dynalign.store import Store


class StoreThread:
    def __init__(self, db_path: str | Path):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store")
        self.store: Store = self.pool.submit(Store, db_path).result()

    async def __call__(self, fn, *args):
        """fn(store, *args) on the store's thread; its result (or its exception)."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, self.store, *args)

    def run(self, fn, *args):
        """The same from a thread that is not the event loop's (a Prometheus scrape's)."""
        return self.pool.submit(fn, self.store, *args).result()

    def close(self) -> None:
        self.pool.submit(self.store.close).result()
        self.pool.shutdown()
