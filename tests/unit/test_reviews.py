"""dynalign/reviews.py on a real SQLite file: what a round queues, a verdict given once, the tally."""

from contextlib import closing

import pytest

from dynalign import reviews
from dynalign.config import Config
from dynalign.errors import DataError, ReviewDecidedError, UnknownReviewError
from dynalign.store import Store

PAIRWISE = {"items": [
    {"prompt": "p1", "a": "A1", "b": "B1", "outcome": "tie", "review": True,
     "members": [{"judge": "x", "preference": 0.9}, {"judge": "y", "preference": 0.2}]},
    {"prompt": "p2", "a": "A2", "b": "B2", "outcome": "win", "review": False,
     "members": [{"judge": "x", "preference": 0.9}, {"judge": "y", "preference": 0.8}]},
    {"prompt": [{"role": "user", "content": "p3"}], "a": "A3", "b": "B3", "outcome": "loss",
     "review": True, "members": [{"judge": "x", "preference": 0.1}, {"judge": "y",
                                                                      "preference": 0.7}]}]}


@pytest.fixture
def store():
    with closing(Store(Config().db_path)) as s:
        yield s


def test_a_gate_queues_only_the_pairs_its_panel_split_on(store):
    ids = reviews.queue_gate(store, 7, {"pairwise": PAIRWISE})
    assert len(ids) == 2
    listed = reviews.listing(store, status="open")
    assert [r["id"] for r in listed] == ids[::-1]  # newest first
    first = reviews.get(store, ids[0])
    assert first["round_id"] == 7 and first["source"] == "gate" and first["status"] == "open"
    assert first["item"]["members"][1] == {"judge": "y", "preference": 0.2}
    assert reviews.get(store, ids[1])["item"]["prompt"] == [{"role": "user", "content": "p3"}]
    assert reviews.listing(store, round_id=8) == []


def test_a_verdict_is_recorded_once_with_who_gave_it(store):
    first, second = reviews.queue_gate(store, 7, {"pairwise": PAIRWISE})
    done = reviews.decide(store, first, "ann", verdict="better")
    assert (done["status"], done["verdict"], done["decided_by"]) == ("decided", "better", "ann")
    with pytest.raises(ReviewDecidedError, match="decided already, by ann"):
        reviews.decide(store, first, "bob", verdict="worse")
    assert reviews.get(store, first)["verdict"] == "better"  # unchanged
    with pytest.raises(UnknownReviewError):
        reviews.decide(store, 999, "ann", verdict="tie")
    for bad in ({"verdict": "great"}, {"verdict": None, "score": 4.0}):
        with pytest.raises(DataError, match="one of better, worse, tie"):
            reviews.decide(store, second, "ann", **bad)
    with pytest.raises(DataError, match="who gave it"):
        reviews.decide(store, second, " ", verdict="tie")
    assert reviews.get(store, second)["status"] == "open"  # nothing half-written


def test_a_rounds_tally_keeps_the_peoples_verdicts_apart(store):
    first, second = reviews.queue_gate(store, 7, {"pairwise": PAIRWISE})
    assert reviews.tally(store, 7) == {"queued": 2, "open": 2, "better": 0, "worse": 0, "tie": 0,
                                       "win_rate": None, "ids": [second, first]}
    reviews.decide(store, first, "ann", verdict="better")
    reviews.decide(store, second, "ann", verdict="worse")
    tally = reviews.tally(store, 7)
    assert (tally["open"], tally["better"], tally["worse"], tally["win_rate"]) == (0, 1, 1, 0.5)


def test_items_whose_holistic_score_and_aspects_disagree_are_queued_with_their_scores(store):
    conflict = {"prompt": "p4", "a": "A4", "b": "B4", "scores": {
        "candidate": {"holistic": 4.0, "knowledge": 1.0}, "active": {"holistic": 3.0,
                                                                     "knowledge": 2.0}}}
    ids = reviews.queue_gate(store, 9, {"pairwise": PAIRWISE, "aspects": {"conflicts": [conflict]}})
    assert len(ids) == 3
    last = reviews.get(store, ids[-1])
    assert last["reason"] == reviews.SIGN_CONFLICT and last["item"]["scores"] == conflict["scores"]
    assert reviews.get(store, ids[0])["reason"] == reviews.PANEL_SPLIT


def test_a_scoreboards_split_pairs_are_queued_once_per_version_and_tallied_apart(store):
    items = PAIRWISE["items"]
    first = reviews.queue_scoreboard(store, 3, items)
    assert len(first) == 2 and reviews.queue_scoreboard(store, 3, items) == []  # a rerun
    assert len(reviews.queue_scoreboard(store, 4, items)) == 2  # another version's
    reviews.decide(store, first[0], "ann", verdict="worse")
    tally = reviews.tally(store, version=3)
    assert (tally["queued"], tally["open"], tally["worse"], tally["win_rate"]) == (2, 1, 1, 0.0)
    assert reviews.get(store, first[0])["source"] == "scoreboard"
    assert reviews.tally(store, round_id=7)["queued"] == 0  # a gate's round is another thing
