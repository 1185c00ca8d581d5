"""GET /metrics: the gateway's Prometheus metrics, written by prometheus-client (one registry per
gateway, so two apps in one process never share counters).

Two kinds, so that no state is kept twice:
- what happens is counted where it happens: each HTTP answer (a middleware), each finished chat
  exchange with its latency, time to first token and tokens (the exchange log's writer thread,
  from the row it stores), each hot-swap and its seconds (Versions.activate);
- what is, is read when scraped (`StateCollector`): the active version, the engine's state and
  restarts, the log writer's backlog and failures, rounds by status, the running round's step
  and reward, users' feedback per version and rating, and the running canary's arms, from the
  objects and the SQLite store that already hold them. The store is read through the gateway's
  store thread (server/store_thread.py): the /metrics route renders the text there, so a scrape
  never holds the event loop while SQLite sums the ratings.
"""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

from dynalign.canary import arm_stats
from dynalign.evaluate import approval_by_version
from dynalign.store import Store
from server.versions import public_name

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
SECONDS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)


class Metrics:
    def __init__(self):
        self.registry = r = CollectorRegistry()
        self.http = Counter("dynalign_http_requests", "HTTP answers by route, method and status",
                            ["route", "method", "code"], registry=r)
        self.exchanges = Counter("dynalign_chat_exchanges", "Finished chat exchanges by the "
                                 "version that answered and status (ok, aborted, error)",
                                 ["version", "status"], registry=r)
        self.latency = Histogram("dynalign_chat_latency_seconds", "Chat latency, request to last "
                                 "byte", ["version"], buckets=SECONDS, registry=r)
        self.ttft = Histogram("dynalign_chat_ttft_seconds", "Time to first token of streamed "
                              "chats", ["version"], buckets=SECONDS, registry=r)
        self.tokens = Counter("dynalign_chat_tokens", "Tokens in (prompt) and out (completion)",
                              ["version", "kind"], registry=r)
        self.swaps = Histogram("dynalign_swap_seconds", "Hot-swaps (activations) and their "
                               "seconds", buckets=SECONDS, registry=r)

    def exchange(self, row: dict) -> None:
        """Count one finished exchange from its log row (server/exchange_log.py: to_row)."""
        version = row.get("model_served") or "unknown"
        self.exchanges.labels(version, row.get("status") or "unknown").inc()
        if row.get("latency_ms") is not None:
            self.latency.labels(version).observe(row["latency_ms"] / 1000)
        if row.get("stream") and row.get("ttft_ms") is not None:
            self.ttft.labels(version).observe(row["ttft_ms"] / 1000)
        for kind in ("prompt", "completion"):
            if row.get(f"{kind}_tokens"):
                self.tokens.labels(version, kind).inc(row[f"{kind}_tokens"])

    def watch(self, state) -> None:
        """Read what is from the app's state at each scrape."""
        self.registry.register(StateCollector(state))

    def text(self) -> bytes:
        return generate_latest(self.registry)


class StateCollector:
    """Read at scrape time from the gateway's state (app.state): nothing is copied ahead. It
    runs on the store thread (the /metrics route), so it reads that thread's connection."""

    def __init__(self, state):
        self.state = state

    @property
    def store(self) -> Store:
        return self.state.db.store

    def collect(self):
        yield from self._serving()
        yield from self._log()
        yield from self._rounds()
        yield from self._feedback()
        yield from self._canary()
        yield from self._scoreboard()

    def _serving(self):
        versions, supervised = self.state.versions, self.state.engine_status
        active = InfoMetricFamily("dynalign_active", "The version the alias dynalign serves")
        active.add_metric([], {"version": public_name(versions.cfg, versions.active),
                               "swap": versions.mode})
        yield active
        info = supervised.info() if supervised else {"engine_state": "up", "engine_restarts": 0}
        yield GaugeMetricFamily("dynalign_engine_up", "1 while the engine serves, else 0",
                                value=int(info["engine_state"] == "up"))
        yield CounterMetricFamily("dynalign_engine_restarts", "Engine restarts after it died",
                                  value=info["engine_restarts"])

    def _log(self):
        status = self.state.log.status()
        yield GaugeMetricFamily("dynalign_log_pending", "Exchanges kept in memory, not yet in "
                                "SQLite (the disk failed)", value=status["pending"])
        yield GaugeMetricFamily("dynalign_log_ok", "1 while the exchange log writes, else 0",
                                value=int(status["ok"]))
        yield CounterMetricFamily("dynalign_log_write_failures", "Failed SQLite writes of the "
                                  "exchange log", value=status["failed"])
        yield CounterMetricFamily("dynalign_log_dropped", "Exchanges dropped: the memory kept "
                                  "for a failing disk was full", value=status["dropped"])

    def _rounds(self):
        store = self.store
        by_status = GaugeMetricFamily("dynalign_rounds", "Refresh rounds by status",
                                      labels=["status"])
        for status, count in store.round_counts().items():
            by_status.add_metric([status], count)
        yield by_status
        step = GaugeMetricFamily("dynalign_round_step", "The running round's step",
                                 labels=["round"])
        reward = GaugeMetricFamily("dynalign_round_reward", "The running round's last mean reward",
                                   labels=["round"])
        for row in store.open_rounds():
            progress = json.loads(row["progress"] or "{}")
            if progress.get("step") is not None:
                step.add_metric([str(row["id"])], progress["step"])
            if progress.get("reward") is not None:
                reward.add_metric([str(row["id"])], progress["reward"])
        yield step
        yield reward

    def _feedback(self):
        family = GaugeMetricFamily("dynalign_feedback", "Users' ratings (the latest per answer) "
                                   "by the version that answered", labels=["version", "rating"])
        approvals = approval_by_version(self.store.ratings_by_version())
        for version, numbers in sorted(approvals.items(), key=lambda item: str(item[0])):
            for rating in ("up", "down"):
                if numbers[rating]:
                    family.add_metric([public_name(self.state.cfg, version), rating],
                                      numbers[rating])
        yield family

    def _scoreboard(self):
        """Each version's latest scoreboard against the base, per judge (the pointwise reading:
        the judge's 0-5 score higher than the base's on the same prompt)."""
        rate = GaugeMetricFamily("dynalign_scoreboard_win_rate", "A version's win rate against "
                                 "the base (dynalign eval scoreboard), with its interval's bounds",
                                 labels=["version", "reading", "bound", "judge"])
        kl = GaugeMetricFamily("dynalign_scoreboard_kl", "A version's per-token KL to the base on "
                               "its own held-out answers", labels=["version", "judge"])
        aspect = GaugeMetricFamily("dynalign_scoreboard_aspect", "A version's (of=version) and "
                                   "the base's (of=base) mean 0-5 score on one aspect of CA",
                                   labels=["version", "aspect", "of", "judge"])
        for row in self.store.scoreboards():
            name, summary = public_name(self.state.cfg, row["version"]), row["summary"]
            for reading in ("pointwise", "pairwise", "balanced", "length_controlled"):
                tally = summary.get(reading)
                if tally and tally["win_rate"] is not None:
                    bounds = [("value", tally["win_rate"])] + list(zip(("low", "high"),
                                                                       tally["ci"] or []))
                    for bound, value in bounds:
                        rate.add_metric([name, reading, bound, row["judge"]], value)
            if summary.get("kl") is not None:
                kl.add_metric([name, row["judge"]], summary["kl"])
            for aspect_name, sides in (summary.get("aspects") or {}).items():
                for of, value in sides.items():
                    if value is not None:
                        aspect.add_metric([name, aspect_name, of, row["judge"]], value)
        yield rate
        yield kl
        yield aspect

    def _canary(self):
        requests = GaugeMetricFamily("dynalign_canary_requests", "The running canary's exchanges "
                                     "by arm (active, canary)", labels=["arm", "version"])
        errors = GaugeMetricFamily("dynalign_canary_errors", "The running canary's failed "
                                   "exchanges by arm", labels=["arm", "version"])
        ratings = GaugeMetricFamily("dynalign_canary_ratings", "The running canary's ratings "
                                    "(the latest per answer) by arm", labels=["arm", "rating"])
        canary = self.state.versions.canary
        if canary:
            arms = arm_stats(self.store.canary_arms(canary["id"]))
            for arm, stats in arms.items():
                version = public_name(self.state.cfg, canary["version" if arm == "canary"
                                                             else "active"])
                requests.add_metric([arm, version], stats["requests"])
                errors.add_metric([arm, version], stats["errors"])
                ratings.add_metric([arm, "up"], stats["feedback"]["up"])
                ratings.add_metric([arm, "down"], stats["feedback"]["down"])
        yield from (requests, errors, ratings)


class CountAnswers:
    """ASGI middleware: count every HTTP answer by its route's path template (never the raw path:
    ids in paths would make a label per id), method and status code."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        code = {}

        async def sending(message):
            if message["type"] == "http.response.start":
                code["status"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.http.labels(route, scope["method"], str(code.get("status", 0))).inc()

