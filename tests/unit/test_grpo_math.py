"""dynalign.grpo: the paper's group-relative advantages and the convergence rule."""

import math

import pytest

from dynalign.grpo import converged, group_advantages, moving_average, zero_spread_fraction


def test_advantages_match_a_hand_computation():
    # group 1: rewards 1, 2, 3 -> mean 2, population std sqrt(2/3)
    std = math.sqrt(2 / 3)
    expected = [-1 / (std + 1e-4), 0.0, 1 / (std + 1e-4)]
    # group 2: rewards 0, 4 -> mean 2, std 2
    expected += [-2 / (2 + 1e-4), 2 / (2 + 1e-4)]
    got = group_advantages([1, 2, 3, 0, 4, 9], 3)[:3] + group_advantages([0, 4], 2)
    assert got == pytest.approx(expected, rel=1e-12)


def test_advantages_are_per_group_not_per_batch():
    got = group_advantages([0.0, 1.0, 10.0, 11.0], 2)
    assert got == pytest.approx([-0.5 / (0.5 + 1e-4), 0.5 / (0.5 + 1e-4)] * 2)


def test_zero_spread_groups_get_zero_advantage():
    got = group_advantages([5.0, 5.0, 5.0, 1.0, 2.0, 3.0], 3)
    assert got[:3] == [0.0, 0.0, 0.0]
    assert got[3] < 0 < got[5]
    assert zero_spread_fraction([5.0, 5.0, 5.0, 1.0, 2.0, 3.0], 3) == 0.5
    assert zero_spread_fraction([2.0, 2.0, 3.0, 3.0], 2) == 1.0
    assert zero_spread_fraction([], 4) == 0.0


def test_moving_average():
    assert moving_average([1.0, 2.0, 3.0, 4.0], 2) == [1.0, 1.5, 2.5, 3.5]
    assert moving_average([3.0], 5) == [3.0]


def test_converged_needs_two_windows_of_steps():
    assert not converged([2.0] * 5, window=3, tolerance=0.05)
    assert converged([2.0] * 6, window=3, tolerance=0.05)


def test_converged_on_a_flat_series_not_on_a_rising_one():
    rising = [0.1 * i for i in range(20)]
    assert not converged(rising, window=5, tolerance=0.05)
    assert converged([0.1 * i for i in range(10)] + [1.0] * 10, window=5, tolerance=0.05)
    # flat within the tolerance, noisy
    assert converged([3.0, 3.02, 2.98, 3.01, 2.99, 3.0, 3.01, 2.99], window=4, tolerance=0.05)
