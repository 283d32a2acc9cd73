"""Pareto flags and the choice under a latency budget, on hand-made points."""

from __future__ import annotations

import math

import pytest

from coarserank.cold.pareto import check_budget, choose_under_budget, pareto_flags
from coarserank.errors import ConfigError, DataError


def _naive_flags(q: list[float], t: list[float]) -> list[bool]:
    """Reference: a point is dominated if another is no worse on both axes and differs on one."""
    return [not any((q[j], t[j]) != (q[i], t[i]) and q[j] >= q[i] and t[j] <= t[i] for j in range(len(q)))
            for i in range(len(q))]


def test_dominated_points_are_marked_and_the_frontier_is_kept():
    gauc = [0.70, 0.72, 0.71, 0.69, 0.75]
    p99 = [1.0, 2.0, 3.0, 1.5, 5.0]
    assert pareto_flags(gauc, p99) == [True, True, False, False, True]


def test_identical_points_do_not_dominate_each_other():
    assert pareto_flags([0.7, 0.7, 0.6], [1.0, 1.0, 2.0]) == [True, True, False]


def test_equal_gauc_at_higher_latency_is_dominated():
    assert pareto_flags([0.7, 0.7], [1.0, 1.2]) == [True, False]


def test_equal_latency_with_lower_gauc_is_dominated():
    assert pareto_flags([0.7, 0.71], [1.0, 1.0]) == [False, True]


def test_flags_match_a_naive_reference_on_random_points_with_ties(rng):
    q = [float(x) for x in rng.integers(0, 5, 40) / 10]
    t = [float(x) for x in rng.integers(1, 6, 40)]
    assert pareto_flags(q, t) == _naive_flags(q, t)


def test_choice_is_the_highest_gauc_within_the_budget():
    assert choose_under_budget([0.70, 0.72, 0.75], [1.0, 2.0, 5.0], 3.0) == 1


def test_a_point_exactly_at_the_budget_is_within_it():
    assert choose_under_budget([0.70, 0.72], [1.0, 2.0], 2.0) == 1


def test_gauc_tie_goes_to_the_lower_latency():
    assert choose_under_budget([0.72, 0.72, 0.70], [2.0, 1.5, 1.0], 3.0) == 1


def test_full_tie_goes_to_the_earlier_point():
    assert choose_under_budget([0.72, 0.72], [1.5, 1.5], 3.0) == 0


def test_without_a_budget_the_highest_gauc_is_chosen():
    assert choose_under_budget([0.70, 0.75, 0.72], [1.0, 9.0, 2.0], None) == 1


def test_everything_over_budget_is_a_clear_error_naming_the_fastest_point():
    with pytest.raises(ConfigError, match=r"no sweep point meets the p99 latency budget of 0.5 ms: "
                                          r"the fastest point \(#1\) needs 0.800 ms"):
        choose_under_budget([0.70, 0.65], [1.0, 0.8], 0.5)


@pytest.mark.parametrize("budget", [0.0, -1.0, math.inf, math.nan])
def test_a_budget_that_is_not_a_positive_number_is_refused(budget):
    with pytest.raises(ConfigError, match="latency budget must be a positive number"):
        check_budget(budget)


def test_no_points_is_a_clear_error():
    with pytest.raises(ConfigError, match="no sweep points"):
        choose_under_budget([], [], 1.0)


def test_a_point_without_a_measured_latency_is_refused():
    with pytest.raises(DataError, match=r"sweep point\(s\) \[1\] have a NaN/inf"):
        pareto_flags([0.7, 0.8], [1.0, math.nan])


def test_lengths_must_match():
    with pytest.raises(DataError, match="one value per point, got 2 and 1"):
        pareto_flags([0.7, 0.8], [1.0])
