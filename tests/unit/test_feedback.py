"""server/feedback.py: whose rating counts (the key and the user that received the answer), one
per answer, and the per-client rate limit, on a real store."""

import pytest

from dynalign.config import Config
from dynalign.store import Store
from server.feedback import RateLimit, rate
from server.validate import RequestError


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "dynalign.db")
    yield s
    s.close()


def test_only_the_key_that_received_an_answer_may_rate_it(store):
    store.log_exchange({"completion_id": "c-1", "status": "ok", "key_id": "k1"})
    with pytest.raises(RequestError) as other:
        rate(store, Config(), {"id": "c-1", "rating": -1}, key_id="k2")
    assert (other.value.status, other.value.code) == (404, "not_found")  # as if unknown
    assert store.db["feedback"].count == 0
    assert rate(store, Config(), {"id": "c-1", "rating": -1}, key_id="k1")["rating"] == -1
    store.log_exchange({"completion_id": "c-2", "status": "ok", "key_id": None})  # keys off
    assert rate(store, Config(), {"id": "c-2", "rating": 1}, key_id=None)["rating"] == 1


def test_an_answer_given_to_a_user_is_rated_as_that_user_only(store):
    store.log_exchange({"completion_id": "c-1", "status": "ok", "user": "ann"})
    with pytest.raises(RequestError) as other:
        rate(store, Config(), {"id": "c-1", "rating": -1, "user": "mallory"}, None)
    assert (other.value.status, other.value.code) == (403, "not_your_answer")
    with pytest.raises(RequestError):
        rate(store, Config(), {"id": "c-1", "rating": -1}, None, header_user="mallory")
    assert rate(store, Config(), {"id": "c-1", "rating": -1}, None)["user"] == "ann"
    store.log_exchange({"completion_id": "c-2", "status": "ok"})  # the chat UI names no one
    assert rate(store, Config(), {"id": "c-2", "rating": 1, "user": "bo"}, None)["user"] == "bo"


def test_ratings_are_limited_per_client_with_the_time_to_wait():
    limit = RateLimit(per_minute=3)
    for _ in range(3):  # a burst of as many as the minute's
        limit.take("k1", now=100.0)
    with pytest.raises(RequestError) as refused:
        limit.take("k1", now=100.0)
    error = refused.value
    assert (error.status, error.code) == (429, "rate_limit_exceeded")
    assert error.headers == {"Retry-After": "20"} and "retry in 20 s" in error.message
    limit.take("k2", now=100.0)  # another client has its own
    with pytest.raises(RequestError):
        limit.take("k1", now=119.0)  # 19 s: not a whole token yet
    limit.take("k1", now=120.5)  # 20 s: one token back
    RateLimit(per_minute=0).take("k1")  # 0: no limit


def test_the_limiter_keeps_a_bounded_number_of_clients():
    limit = RateLimit(per_minute=1)
    limit.MAX_CLIENTS = 10
    for i in range(50):
        limit.take(f"client-{i}", now=0.0)
    assert len(limit.buckets) == 10
