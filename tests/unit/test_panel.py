"""dynalign/panel.py: how a panel's scores and verdicts become one, and what goes to a person."""

import pytest

from dynalign.panel import (aggregate, pair_disagrees, pair_outcome, preference, scores_disagree,
                            sign_conflict)


@pytest.mark.parametrize("how, expected", [
    ("mean", (4 * 3 + 1 * 1) / 4),  # weighted: the 4 counts three times
    ("min", 1.0),
    ("mean_minus_std", 3.25 - (0.75 * 0.75 ** 2 + 0.25 * 2.25 ** 2) ** 0.5),
])
def test_the_three_aggregates_on_weighted_scores(how, expected):
    assert aggregate([4.0, 1.0], [3.0, 1.0], how) == pytest.approx(expected)


def test_an_unreadable_member_is_left_out_not_counted_as_zero():
    assert aggregate([4.0, None], [1.0, 1.0], "mean") == 4.0
    assert aggregate([4.0, None], [1.0, 1.0], "min") == 4.0
    assert aggregate([None, None], [1.0, 1.0], "mean") is None


def test_fewer_readable_members_than_min_judges_gives_no_score():
    assert aggregate([4.0, None, 2.0], [1, 1, 1], "mean", min_judges=2) == 3.0
    assert aggregate([4.0, None, None], [1, 1, 1], "mean", min_judges=2) is None
    assert pair_outcome([1.0, None], [1, 1], "mean", min_judges=2) == "unreadable"


def test_mean_minus_std_is_conservative_and_floored_at_zero():
    assert aggregate([3.0, 3.0], [1, 1], "mean_minus_std") == 3.0  # agreement costs nothing
    assert aggregate([5.0, 0.0], [1, 1], "mean_minus_std") == 0.0
    assert aggregate([5.0, 0.0, 0.0], [1, 1, 1], "mean_minus_std") == 0.0  # not below 0


def test_an_unknown_aggregate_is_an_error():
    with pytest.raises(ValueError, match="median"):
        aggregate([1.0], [1.0], "median")


def test_a_pairs_preference_is_the_balanced_share_or_the_outcome():
    weighed = {"outcome": "inconsistent", "a_share": [0.8, 0.6]}
    assert preference(weighed, balanced=True) == pytest.approx(0.7)
    assert preference(weighed, balanced=False) is None  # the paper's rule: excluded
    assert preference({"outcome": "win"}, balanced=True) == 1.0  # an endpoint: its verdicts
    assert preference({"outcome": "tie"}, balanced=False) == 0.5
    assert preference({"outcome": "unreadable", "a_share": [None, 0.4]}, True) is None


@pytest.mark.parametrize("prefs, how, outcome", [
    ([1.0, 0.0], "mean", "tie"), ([1.0, 0.0], "min", "loss"), ([0.9, 0.7], "min", "win"),
    ([0.9, 0.3], "mean", "win"), ([0.9, 0.3], "mean_minus_std", "loss"),
])
def test_a_pairs_outcome_from_the_members_preferences(prefs, how, outcome):
    assert pair_outcome(prefs, [1.0, 1.0], how) == outcome


def test_disagreements_go_to_review():
    assert scores_disagree([4.5, 2.0], gap=1.5)
    assert not scores_disagree([4.5, 3.0], gap=1.5)  # exactly the gap: not beyond it
    assert not scores_disagree([4.5, None], gap=0.1)  # one readable member cannot disagree
    assert pair_disagrees([0.9, 0.2]) and not pair_disagrees([0.9, 0.5, None])


def test_holistic_and_aspects_disagreeing_in_sign():
    assert sign_conflict(0.8, {"knowledge": -0.5, "power": -0.2, "vitality": 0.1,
                               "benevolence": -0.6})
    assert not sign_conflict(0.8, {"knowledge": 0.5, "power": -0.2})
    assert not sign_conflict(0.0, {"knowledge": -1.0})  # no direction to disagree with
    assert not sign_conflict(0.3, {"knowledge": -0.2}, tolerance=0.25)
    assert not sign_conflict(0.8, {})
