"""What a canary's review costs per rating: its arms' numbers at N exchanges, summed in SQL
(Store.canary_arms, what the review and /metrics read now) against the reading it replaced (every
exchange of the canary fetched with its latest rating, then counted in Python), on the same file
in the same run.

    .venv/bin/python bench/canary_review.py [--exchanges 50000] [--repeat 5]

The gateway runs the review after each rating; before, it also ran on the event loop, so its
time was a stall of every stream the gateway served.
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import tempfile
import time
from pathlib import Path

from dynalign.store import Store

OLD_READING = (  # dynalign/store.py: canary_exchanges, before issue 28
    "select arm, status, completion_tokens, latency_ms, (select rating from feedback where "
    "exchange_id = exchanges.id order by feedback.id desc limit 1) from exchanges "
    "where canary = ?")


def fill(store: Store, n: int, rated: float = 0.05) -> int:
    """A running canary with `n` exchanges split 90/10, `rated` of them rated; its id."""
    canary = store.start_canary(version=2, active=1, share=0.1, min_feedback=50, min_raters=10,
                                max_hours=24.0, margin=0.05, confidence=0.95,
                                on_timeout="decide")["id"]
    rng = random.Random(0)
    rows = [{"canary": canary, "arm": "canary" if rng.random() < 0.1 else "active",
             "status": "ok", "completion_tokens": rng.randint(5, 300),
             "latency_ms": rng.uniform(100, 3000), "user": f"u{rng.randint(0, 5000)}",
             "client_id": "127.0.0.1"} for _ in range(n)]
    store.log_exchanges(rows)
    ids = [r[0] for r in store.db.execute("select id from exchanges")]
    with store.db.conn:
        for i in rng.sample(ids, int(n * rated)):
            store.add_feedback(i, rng.choice((1, -1)), user=f"u{i % 5000}")
    return canary


def old_reading(store: Store, canary: int) -> dict:
    rows = store.db.execute(OLD_READING, [canary]).fetchall()
    arms = {}
    for arm, status, tokens, latency, rating in rows:
        numbers = arms.setdefault(arm, {"requests": 0, "errors": 0, "lengths": [],
                                        "latencies": [], "ratings": []})
        numbers["requests"] += 1
        numbers["errors"] += status not in ("ok", "aborted")
        numbers["lengths"].append(tokens)
        numbers["latencies"].append(latency)
        if rating is not None:
            numbers["ratings"].append(rating)
    for numbers in arms.values():
        numbers["p50"] = statistics.median(numbers["latencies"])
    return arms


def timed(fn, repeat: int) -> float:
    """The median seconds of `repeat` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=50_000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "dynalign.db")
        canary = fill(store, args.exchanges)
        old = timed(lambda: old_reading(store, canary), args.repeat)
        review = timed(lambda: store.canary_arms(canary), args.repeat)
        view = timed(lambda: store.canary_arms(canary, latency=True), args.repeat)
        store.close()
    print(f"{args.exchanges:,} exchanges in one canary, 5 % rated; {platform.processor() or platform.machine()}")
    print(f"  before (rows to Python, per rating):     {old * 1000:8.1f} ms")
    print(f"  review now (SQL sums, per rating):       {review * 1000:8.1f} ms   "
          f"ratio {old / review:.1f}x")
    print(f"  GET /admin/canary now (with p50 latency): {view * 1000:8.1f} ms   "
          f"ratio {old / view:.1f}x")


if __name__ == "__main__":
    main()
