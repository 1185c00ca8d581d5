"""dynalign/canary.py: the sticky split, each arm's numbers and when a canary ends."""

import datetime as dt

import pytest

from dynalign.canary import MIN_REQUESTS, arm_of, arm_stats, decide, routing_key

CANARY = {"id": 3, "version": 2, "share": 0.3, "min_feedback": 10, "min_raters": 1,
          "max_hours": 24.0,
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


def sums(arm, n, errors=0, up=0, down=0, raters=None):
    """One arm's sums as Store.canary_arms returns them: n requests with answers of 10..n+9
    tokens, `errors` of them failed, up/down ratings from `raters` users (default: one each)."""
    return {arm: {"requests": n, "errors": errors, "tokens": sum(range(10, 10 + n)),
                  "answers": n, "up": up, "down": down,
                  "raters": up + down if raters is None else raters}}


def test_arm_stats_count_requests_errors_lengths_latency_and_approval():
    arms = arm_stats({**sums("active", 4, errors=1, up=2, down=1),
                      "canary": {"requests": 2, "errors": 0, "tokens": 21, "answers": 2}})
    active = arms["active"]
    assert (active["requests"], active["errors"], active["error_rate"]) == (4, 1, 0.25)
    assert active["mean_answer_tokens"] == 11.5
    assert active["feedback"]["ratings"] == 3 and active["feedback"]["up"] == 2
    assert active["feedback"]["raters"] == 3
    assert arms["canary"]["feedback"]["ratings"] == 0
    assert arm_stats({})["canary"]["requests"] == 0  # no exchange yet


@pytest.mark.parametrize("cand_up, action", [(9, "promote"), (7, "promote"), (3, "rollback"),
                                              (0, "rollback")])
def test_enough_ratings_roll_back_only_a_canary_shown_worse_by_more_than_the_margin(cand_up,
                                                                                  action):
    arms = arm_stats({**sums("active", 40, up=8, down=2),
                      **sums("canary", 20, up=cand_up, down=10 - cand_up)})
    decided, why = decide(CANARY, arms, SOON)
    assert decided == action and "approval" in why and "margin" in why


def test_a_canary_worse_by_less_than_the_margin_is_promoted():
    """0.76 vs 0.80 on 1,000 ratings each: the upper bound of the difference is about -0.01,
    below 0 but inside the margin of 0.05 (a rule that ignored the margin would roll it back)."""
    arms = arm_stats({**sums("active", 1000, up=800, down=200),
                      **sums("canary", 1000, up=760, down=240)})
    decided, why = decide(CANARY, arms, SOON)
    upper = float(why.split("at most ")[1].split(" ")[0])
    assert -CANARY["margin"] < upper < 0 and decided == "promote", why
    assert decide({**CANARY, "margin": 0.0}, arms, SOON)[0] == "rollback"  # no margin: worse


def test_ratings_from_too_few_users_decide_nothing_until_the_time_limit():
    """One client rating 40 answers in each arm under 3 user names steers nothing: min_raters."""
    canary = {**CANARY, "min_raters": 5}
    arms = arm_stats({**sums("active", 40, up=20, raters=3),
                      **sums("canary", 40, down=20, raters=3)})
    assert decide(canary, arms, SOON) is None  # enough ratings, too few raters
    assert decide(canary, arms, LATE)[0] == "keep"  # and the time limit keeps the active one
    many = arm_stats({**sums("active", 40, up=20, raters=5),
                      **sums("canary", 40, down=20, raters=5)})
    assert decide(canary, many, SOON)[0] == "rollback"


def test_too_few_ratings_wait_until_the_time_limit_then_decide_or_keep():
    arms = arm_stats({**sums("active", 40, up=5), **sums("canary", 20, up=4)})
    assert decide(CANARY, arms, SOON) is None
    assert decide(CANARY, arms, LATE)[0] == "promote"  # on what there is
    assert decide({**CANARY, "on_timeout": "keep"}, arms, LATE)[0] == "keep"
    none = arm_stats({**sums("active", 40), **sums("canary", 20)})
    assert decide(CANARY, none, LATE)[0] == "keep"  # nothing to decide on


def test_a_clearly_higher_error_rate_ends_it_at_once():
    arms = arm_stats({**sums("active", 100, errors=1), **sums("canary", MIN_REQUESTS, errors=10)})
    action, why = decide(CANARY, arms, SOON)
    assert action == "rollback" and "error rate" in why
    few = arm_stats({**sums("active", 100), **sums("canary", MIN_REQUESTS - 1, errors=10)})
    assert decide(CANARY, few, SOON) is None  # too few requests to tell
