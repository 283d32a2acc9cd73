"""Bootstrap intervals over groups: determinism, agreement with scipy and theory, errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import bootstrap

from coarserank.errors import ConfigError, DataError
from coarserank.ranking_eval.bootstrap import bootstrap_ci, paired_bootstrap_ci


def test_bootstrap_is_deterministic_by_seed(rng: np.random.Generator, seed: int) -> None:
    values = rng.normal(size=300)
    assert bootstrap_ci(values, seed=seed) == bootstrap_ci(values, seed=seed)
    assert bootstrap_ci(values, seed=seed) != bootstrap_ci(values, seed=seed + 1)


def test_bootstrap_mean_is_the_plain_or_weighted_mean(rng: np.random.Generator) -> None:
    values, weights = rng.random(100), rng.integers(1, 50, 100)
    assert bootstrap_ci(values)[0] == pytest.approx(values.mean())
    assert bootstrap_ci(values, weights)[0] == pytest.approx(np.average(values, weights=weights))


def test_bootstrap_interval_agrees_with_scipy_percentile(rng: np.random.Generator, seed: int) -> None:
    values = rng.exponential(size=400)
    _, lo, hi = bootstrap_ci(values, n_boot=4000, seed=seed, level=0.9)
    ref = bootstrap((values,), np.mean, n_resamples=4000, confidence_level=0.9, method="percentile", rng=seed)
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert lo == pytest.approx(ref.confidence_interval.low, abs=0.1 * width)
    assert hi == pytest.approx(ref.confidence_interval.high, abs=0.1 * width)


def test_bootstrap_width_matches_normal_theory(rng: np.random.Generator) -> None:
    values = rng.normal(0.0, 2.0, 1000)
    _, lo, hi = bootstrap_ci(values, n_boot=2000)
    assert hi - lo == pytest.approx(2 * 1.96 * values.std() / np.sqrt(1000), rel=0.15)


def test_bootstrap_weighted_interval_contains_the_weighted_mean(rng: np.random.Generator) -> None:
    values, weights = rng.random(200), rng.integers(1, 500, 200)
    mean, lo, hi = bootstrap_ci(values, weights)
    assert lo < mean < hi


def test_bootstrap_higher_level_gives_wider_interval(rng: np.random.Generator) -> None:
    values = rng.random(200)
    _, lo90, hi90 = bootstrap_ci(values, level=0.9)
    _, lo99, hi99 = bootstrap_ci(values, level=0.99)
    assert lo99 < lo90
    assert hi90 < hi99


def test_bootstrap_of_constant_values_is_degenerate() -> None:
    assert bootstrap_ci(np.full(30, 0.7)) == pytest.approx((0.7, 0.7, 0.7))


def test_bootstrap_raises_on_nan_unless_skipped() -> None:
    values = np.array([0.2, np.nan, 0.4, 0.6])
    with pytest.raises(DataError, match=r"'per_group_values' has 1 NaN value.*skip_nan=True"):
        bootstrap_ci(values)
    assert bootstrap_ci(values, skip_nan=True) == bootstrap_ci(np.array([0.2, 0.4, 0.6]))


def test_bootstrap_skip_nan_drops_the_matching_weights() -> None:
    values, weights = np.array([0.2, np.nan, 0.8]), np.array([3.0, 100.0, 1.0])
    assert bootstrap_ci(values, weights, skip_nan=True)[0] == pytest.approx((0.6 + 0.8) / 4)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"n_boot": 0}, ConfigError, "'n_boot' must be an integer >= 1, got 0"),
        ({"level": 1.0}, ConfigError, r"'level' must be in \(0, 1\), got 1.0"),
        ({"weights": np.ones(2)}, DataError, "'weights' has 2 entries but 'per_group_values' has 3"),
        ({"weights": np.array([1.0, 0.0, 1.0])}, DataError, "'weights' must be positive"),
    ],
    ids=["n_boot", "level", "weights_length", "weights_zero"],
)
def test_bootstrap_rejects_bad_arguments(kwargs: dict, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        bootstrap_ci(np.array([0.1, 0.2, 0.3]), **kwargs)


def test_paired_bootstrap_equals_bootstrap_of_differences(rng: np.random.Generator, seed: int) -> None:
    a, b, w = rng.random(150), rng.random(150), rng.integers(1, 9, 150)
    assert paired_bootstrap_ci(a, b, w, seed=seed) == bootstrap_ci(a - b, w, seed=seed)


def test_paired_bootstrap_is_narrower_than_unpaired_for_correlated_groups(rng: np.random.Generator) -> None:
    base = rng.normal(size=300)
    a, b = base + rng.normal(0, 0.1, 300), base + 0.05 + rng.normal(0, 0.1, 300)
    _, lo, hi = paired_bootstrap_ci(a, b)
    _, lo_a, hi_a = bootstrap_ci(a)
    _, lo_b, hi_b = bootstrap_ci(b)
    assert hi - lo < 0.5 * min(hi_a - lo_a, hi_b - lo_b)


def test_paired_bootstrap_skip_nan_drops_groups_nan_on_either_side() -> None:
    a = np.array([0.5, np.nan, 0.7, 0.9])
    b = np.array([0.4, 0.1, np.nan, 0.6])
    assert paired_bootstrap_ci(a, b, skip_nan=True)[0] == pytest.approx((0.1 + 0.3) / 2)


def test_paired_bootstrap_raises_on_nan_naming_the_side() -> None:
    with pytest.raises(DataError, match="'b' has 1 NaN value"):
        paired_bootstrap_ci(np.array([0.1, 0.2]), np.array([0.1, np.nan]))


def test_paired_bootstrap_raises_on_length_mismatch() -> None:
    with pytest.raises(DataError, match="'a' has 3 groups but 'b' has 2"):
        paired_bootstrap_ci(np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.2]))


def test_gap_closed_is_the_ratio_of_mean_gain_to_mean_gap():
    from coarserank.ranking_eval.bootstrap import gap_closed_ci

    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 0.7, 200)
    reference = base + rng.uniform(0.01, 0.05, 200)
    model = base + 0.5 * (reference - base) + rng.normal(0, 0.005, 200)
    w = rng.integers(1, 20, 200).astype(float)
    share, lo, hi, groups = gap_closed_ci(model, base, reference, w, n_boot=500)
    assert share == pytest.approx(np.dot(w, model - base) / np.dot(w, reference - base), rel=1e-12)
    assert lo < share < hi and groups == 200
    assert 0.4 < lo and hi < 0.6


def test_gap_closed_leaves_out_groups_a_model_could_not_score():
    from coarserank.ranking_eval.bootstrap import gap_closed_ci

    share, *_ , groups = gap_closed_ci(np.array([0.6, np.nan, 0.55]), np.array([0.5, 0.5, 0.5]),
                                       np.array([0.7, 0.7, 0.6]))
    assert groups == 2 and share == pytest.approx((0.1 + 0.05) / (0.2 + 0.1))
