"""dynalign/canary.py: the sticky split, each arm's numbers and when a canary ends."""

import datetime as dt

import pytest

from dynalign.canary import MIN_REQUESTS, arm_of, arm_stats, decide, routing_key

CANARY = {"id": 3, "version": 2, "share": 0.3, "min_feedback": 10, "max_hours": 24.0,
          "margin": 0.05, "confidence": 0.95, "on_timeout": "decide",
          "started": "2026-12-04T10:00:00.000+00:00"}
SOON = dt.datetime(2026, 12, 4, 11, tzinfo=dt.timezone.utc)
LATE = dt.datetime(2026, 12, 5, 11, tzinfo=dt.timezone.utc)


def test_the_split_is_sticky_per_user_near_its_share_and_new_for_each_canary():
    users = [f"user-{i}" for i in range(10_000)]
    arms = [arm_of(u, 3, 0.3) for u in users]
    assert arms == [arm_of(u, 3, 0.3) for u in users]  # the same person, the same arm
    share = arms.count("canary") / len(arms)
    assert 0.28 < share < 0.32  # 0.3 +- 4.4 standard deviations
    other = [arm_of(u, 4, 0.3) for u in users]
    assert sum(a != b for a, b in zip(arms, other)) > 3000  # another canary draws anew


def test_routing_key_prefers_user_then_headers_then_the_first_message():
    body = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]}
    assert routing_key({**body, "user": "ann"}, {"x-dynalign-user": "bob"}) == "ann"
    assert routing_key(body, {"x-dynalign-user": "bob", "x-client-id": "c"}) == "bob"
    assert routing_key(body, {"x-client-id": "c"}) == "c"
    assert routing_key(body, {}) == "hi"


def rows(arm, n, errors=0, up=0, down=0):
    out = [{"arm": arm, "status": "error" if i < errors else "ok", "completion_tokens": 10 + i,
            "latency_ms": 100.0 * (i + 1), "rating": None} for i in range(n)]
    for i in range(up + down):
        out[i]["rating"] = 1 if i < up else -1
    return out


def test_arm_stats_count_requests_errors_lengths_latency_and_approval():
    arms = arm_stats(rows("active", 4, errors=1, up=2, down=1) + rows("canary", 2))
    active = arms["active"]
    assert (active["requests"], active["errors"], active["error_rate"]) == (4, 1, 0.25)
    assert active["mean_answer_tokens"] == 11.5 and active["p50_latency_ms"] == 250.0
    assert active["feedback"]["ratings"] == 3 and active["feedback"]["up"] == 2
    assert arms["canary"]["feedback"]["ratings"] == 0


@pytest.mark.parametrize("cand_up, action", [(9, "promote"), (7, "promote"), (3, "rollback"),
                                              (0, "rollback")])
def test_enough_ratings_roll_back_only_a_canary_shown_worse_by_more_than_the_margin(cand_up,
                                                                                  action):
    arms = arm_stats(rows("active", 40, up=8, down=2) + rows("canary", 20, up=cand_up,
                                                             down=10 - cand_up))
    decided, why = decide(CANARY, arms, SOON)
    assert decided == action and "approval" in why and "margin" in why


def test_too_few_ratings_wait_until_the_time_limit_then_decide_or_keep():
    arms = arm_stats(rows("active", 40, up=5) + rows("canary", 20, up=4))
    assert decide(CANARY, arms, SOON) is None
    assert decide(CANARY, arms, LATE)[0] == "promote"  # on what there is
    assert decide({**CANARY, "on_timeout": "keep"}, arms, LATE)[0] == "keep"
    none = arm_stats(rows("active", 40) + rows("canary", 20))
    assert decide(CANARY, none, LATE)[0] == "keep"  # nothing to decide on


def test_a_clearly_higher_error_rate_ends_it_at_once():
    arms = arm_stats(rows("active", 100, errors=1) + rows("canary", MIN_REQUESTS, errors=10))
    action, why = decide(CANARY, arms, SOON)
    assert action == "rollback" and "error rate" in why
    few = arm_stats(rows("active", 100) + rows("canary", MIN_REQUESTS - 1, errors=10))
    assert decide(CANARY, few, SOON) is None  # too few requests to tell
