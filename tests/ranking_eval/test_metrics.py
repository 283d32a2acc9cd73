"""Label metrics against scikit-learn and against naive per-group loops written here."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.calibration import calibration_curve
from sklearn.metrics import log_loss, ndcg_score, roc_auc_score

from coarserank.errors import ConfigError, DataError
from coarserank.ranking_eval.calibration import calibration
from coarserank.ranking_eval.metrics import auc, gauc, logloss, ndcg_at_k

GROUP_ID_KINDS = ["int", "sparse_int", "negative_int", "str", "object"]


def _ids(codes: np.ndarray, kind: str) -> np.ndarray:
    """Turn dense codes into group ids of the given kind (order of ids = order of codes)."""
    if kind == "int":
        return codes.astype(np.int64)
    if kind == "sparse_int":
        return codes.astype(np.int64) * 1_000_000_007 + 3
    if kind == "negative_int":
        return codes.astype(np.int64) - 500
    names = np.array([f"user-{c:06d}" for c in range(int(codes.max()) + 1)])[codes]
    return names.astype(object) if kind == "object" else names


def _grouped(rng: np.random.Generator, n_groups: int, max_size: int, tie_levels: int | None):
    """Shuffled rows of groups sized 1..max_size; scores drawn from few levels when tie_levels."""
    sizes = rng.integers(1, max_size + 1, n_groups)
    codes = rng.permutation(np.repeat(np.arange(n_groups), sizes))
    n = len(codes)
    labels = (rng.random(n) < 0.3).astype(np.int64)
    if tie_levels is None:
        scores = rng.normal(size=n) + labels
    else:
        scores = (rng.integers(0, tie_levels, n) + labels).astype(np.float64)
    return labels, scores, codes


def _naive_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Pairwise Mann-Whitney count, ties one half."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    wins = sum(float((p > neg).sum()) + 0.5 * float((p == neg).sum()) for p in pos)
    return wins / (len(pos) * len(neg))


def _naive_gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> tuple[float, int, int]:
    num = den = 0.0
    used = skipped = 0
    for g in sorted(set(groups.tolist())):
        m = groups == g
        y = labels[m]
        if y.min() == y.max():
            skipped += 1
            continue
        used += 1
        num += m.sum() * _naive_auc(y, scores[m])
        den += m.sum()
    return num / den, used, skipped


# --------------------------------------------------------------------------- auc


@pytest.mark.parametrize("tie_levels", [None, 3, 1], ids=["continuous", "few_levels", "all_tied"])
def test_auc_matches_sklearn(rng: np.random.Generator, tie_levels: int | None) -> None:
    labels, scores, _ = _grouped(rng, 1, 400, tie_levels)
    labels[:2] = [0, 1]
    assert auc(labels, scores) == pytest.approx(roc_auc_score(labels, scores), abs=1e-12)


def test_auc_counts_ties_one_half() -> None:
    assert auc(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.1, 0.9])) == pytest.approx(0.875)


def test_auc_accepts_bool_and_float_labels(rng: np.random.Generator) -> None:
    labels = rng.random(50) < 0.5
    scores = rng.normal(size=50)
    assert auc(labels, scores) == auc(labels.astype(np.float32), scores)


def test_auc_raises_on_single_class() -> None:
    with pytest.raises(DataError, match=r"both classes.*all 3 labels are 1"):
        auc(np.ones(3), np.array([0.1, 0.2, 0.3]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_auc_raises_on_non_finite_score(bad: float) -> None:
    with pytest.raises(DataError, match=r"'scores' has 1 NaN/inf value\(s\) \(first at row 2"):
        auc(np.array([0, 1, 0, 1]), np.array([0.1, 0.2, bad, 0.4]))


def test_auc_raises_on_length_mismatch() -> None:
    with pytest.raises(DataError, match="'labels' has 3, 'scores' has 2 rows"):
        auc(np.array([0, 1, 0]), np.array([0.1, 0.2]))


def test_auc_raises_on_non_binary_label() -> None:
    with pytest.raises(DataError, match=r"'labels' must hold only 0 and 1, got 2\.0 at row 1"):
        auc(np.array([0, 2, 1]), np.array([0.1, 0.2, 0.3]))


# --------------------------------------------------------------------------- gauc


@pytest.mark.parametrize("kind", GROUP_ID_KINDS)
@pytest.mark.parametrize(
    ("max_size", "tie_levels"),
    [(2, None), (12, None), (12, 2), (40, 4)],
    ids=["tiny", "small", "ties", "mixed"],
)
def test_gauc_matches_naive_loop(
    rng: np.random.Generator, kind: str, max_size: int, tie_levels: int | None
) -> None:
    labels, scores, codes = _grouped(rng, 60, max_size, tie_levels)
    groups = _ids(codes, kind)
    value, used, skipped = _naive_gauc(labels, scores, groups)
    result = gauc(labels, scores, groups)
    assert result.value == pytest.approx(value, abs=1e-12)
    assert (result.groups_used, result.groups_skipped) == (used, skipped)


def test_gauc_weights_groups_by_rows() -> None:
    # group 1: 4 rows, AUC 1; group 2: 2 rows, AUC 0 -> (4*1 + 2*0) / 6
    labels = np.array([0, 0, 1, 1, 1, 0])
    scores = np.array([0.1, 0.2, 0.8, 0.9, 0.1, 0.9])
    groups = np.array([1, 1, 1, 1, 2, 2])
    assert gauc(labels, scores, groups).value == pytest.approx(4 / 6)


def test_gauc_differs_from_pooled_auc() -> None:
    # each group is ranked perfectly, but group 2's scores sit below group 1's negatives
    labels = np.array([0, 1, 0, 1])
    scores = np.array([0.8, 0.9, 0.1, 0.2])
    groups = np.array(["a", "a", "b", "b"])
    assert gauc(labels, scores, groups).value == 1.0
    assert auc(labels, scores) == 0.75


def test_gauc_skips_and_counts_single_class_groups() -> None:
    labels = np.array([1, 1, 0, 0, 1, 0])
    scores = np.array([0.3, 0.4, 0.2, 0.1, 0.9, 0.5])
    groups = np.array([7, 7, 8, 8, 9, 9])
    result = gauc(labels, scores, groups)
    assert (result.value, result.groups_used, result.groups_skipped, result.rows_used) == (1.0, 1, 2, 2)


def test_gauc_per_group_follows_sorted_ids(rng: np.random.Generator) -> None:
    labels, scores, codes = _grouped(rng, 30, 10, None)
    groups = _ids(codes, "str")
    result = gauc(labels, scores, groups)
    for i, g in enumerate(np.unique(groups)):
        m = groups == g
        expected = _naive_auc(labels[m], scores[m]) if 0 < labels[m].sum() < m.sum() else np.nan
        assert_allclose(result.per_group[i], expected, atol=1e-12)
        assert result.group_rows[i] == m.sum()


def test_gauc_is_the_same_for_string_and_int_ids(rng: np.random.Generator) -> None:
    labels, scores, codes = _grouped(rng, 50, 8, 3)
    as_int = gauc(labels, scores, _ids(codes, "int"))
    as_str = gauc(labels, scores, _ids(codes, "str"))
    assert as_int.value == as_str.value
    assert_allclose(as_int.per_group, as_str.per_group)


def test_gauc_raises_when_no_group_has_both_classes() -> None:
    with pytest.raises(DataError, match="none of the 2 groups has both a positive and a negative"):
        gauc(np.array([1, 1, 0]), np.array([0.1, 0.2, 0.3]), np.array([1, 1, 2]))


def test_gauc_raises_on_nan_score() -> None:
    with pytest.raises(DataError, match="'scores' has 1 NaN/inf"):
        gauc(np.array([0, 1, 0, 1]), np.array([0.1, np.nan, 0.3, 0.4]), np.array([1, 1, 2, 2]))


def test_gauc_raises_on_float_group_ids() -> None:
    with pytest.raises(DataError, match="'groups' must hold integer or string ids, got dtype float64"):
        gauc(np.array([0, 1]), np.array([0.1, 0.2]), np.array([1.0, np.nan]))


def test_gauc_raises_on_group_length_mismatch() -> None:
    with pytest.raises(DataError, match="'groups' has 3 rows"):
        gauc(np.array([0, 1]), np.array([0.1, 0.2]), np.array([1, 1, 2]))


# --------------------------------------------------------------------------- logloss


def test_logloss_matches_sklearn(rng: np.random.Generator) -> None:
    labels = (rng.random(500) < 0.4).astype(np.int64)
    probs = rng.uniform(0.01, 0.99, 500)
    assert logloss(labels, probs) == pytest.approx(log_loss(labels, probs), rel=1e-12)


def test_logloss_clips_probabilities_to_eps() -> None:
    eps = 1e-4
    got = logloss(np.array([1, 0]), np.array([0.0, 1.0]), eps=eps)
    assert got == pytest.approx(-np.log(eps))


def test_logloss_accepts_soft_labels() -> None:
    y, p = np.array([0.2, 0.9]), np.array([0.5, 0.6])
    expected = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    assert logloss(y, p) == pytest.approx(expected)


def test_logloss_raises_on_probs_outside_unit_interval() -> None:
    with pytest.raises(DataError, match=r"'probs' must lie in \[0, 1\]"):
        logloss(np.array([0, 1]), np.array([0.5, 1.5]))


def test_logloss_raises_on_nan_prob() -> None:
    with pytest.raises(DataError, match="'probs' has 1 NaN/inf"):
        logloss(np.array([0, 1]), np.array([0.5, np.nan]))


# --------------------------------------------------------------------------- calibration


@pytest.mark.parametrize("bins", [1, 5, 10])
def test_calibration_matches_sklearn_curve(rng: np.random.Generator, bins: int) -> None:
    probs = rng.beta(2, 5, 2000)
    labels = (rng.random(2000) < probs * 1.2).astype(np.int64)
    result = calibration(labels, probs, bins=bins)
    prob_true, prob_pred = calibration_curve(labels, probs, n_bins=bins, strategy="uniform")
    counts, _ = np.histogram(probs, bins=bins, range=(0.0, 1.0))
    filled = counts > 0
    assert_allclose(result.bin_count, counts)
    assert_allclose(result.bin_predicted[filled], prob_pred)
    assert_allclose(result.bin_observed[filled], prob_true)
    assert np.isnan(result.bin_predicted[~filled]).all()
    expected_ece = np.sum(counts[filled] / 2000 * np.abs(prob_pred - prob_true))
    assert result.ece == pytest.approx(expected_ece)


def test_calibration_ratio_is_mean_predicted_over_observed() -> None:
    result = calibration(np.array([1, 0, 0, 0]), np.array([0.5, 0.5, 0.25, 0.25]))
    assert result.ratio == pytest.approx(0.375 / 0.25)


def test_calibration_puts_edge_values_in_upper_bin() -> None:
    result = calibration(np.array([0, 1, 1]), np.array([0.0, 0.5, 1.0]), bins=2)
    assert result.bin_count.tolist() == [1, 2]


def test_calibration_raises_without_positives() -> None:
    with pytest.raises(DataError, match="all 2 labels are 0"):
        calibration(np.array([0, 0]), np.array([0.1, 0.2]))


def test_calibration_raises_on_zero_bins() -> None:
    with pytest.raises(ConfigError, match="'bins' must be an integer >= 1, got 0"):
        calibration(np.array([0, 1]), np.array([0.1, 0.2]), bins=0)


# --------------------------------------------------------------------------- ndcg


@pytest.mark.parametrize("k", [1, 3, 10, 100])
@pytest.mark.parametrize("tie_levels", [None, 3], ids=["continuous", "ties"])
def test_ndcg_matches_sklearn_per_group(rng: np.random.Generator, k: int, tie_levels: int | None) -> None:
    _, scores, codes = _grouped(rng, 40, 25, tie_levels)
    gains = rng.integers(0, 4, len(codes)).astype(np.float64) * (rng.random(len(codes)) < 0.5)
    result = ndcg_at_k(gains, scores, codes, k)
    expected = []
    for g in range(40):
        m = codes == g
        if gains[m].sum() == 0:
            assert np.isnan(result.per_group[g])
            continue
        ref = ndcg_score(gains[m][None], scores[m][None], k=k) if m.sum() > 1 else 1.0
        assert result.per_group[g] == pytest.approx(ref, abs=1e-12)
        expected.append(ref)
    assert result.value == pytest.approx(np.mean(expected))
    assert (result.groups_used, result.groups_skipped) == (len(expected), 40 - len(expected))


def test_ndcg_averages_gains_over_tied_scores() -> None:
    # both rows tied at the top: each position gets gain 0.5
    result = ndcg_at_k(np.array([1.0, 0.0]), np.array([0.3, 0.3]), np.array([0, 0]), k=2)
    assert result.value == pytest.approx((0.5 + 0.5 / np.log2(3)) / 1.0)


def test_ndcg_skips_groups_with_zero_ideal_dcg() -> None:
    result = ndcg_at_k(np.array([0.0, 0.0, 1.0]), np.array([0.1, 0.2, 0.3]), np.array(["a", "a", "b"]), k=5)
    assert (result.value, result.groups_used, result.groups_skipped) == (1.0, 1, 1)
    assert np.isnan(result.per_group[0])


def test_ndcg_raises_on_negative_gains() -> None:
    with pytest.raises(DataError, match=r"'labels_or_gains' must be non-negative.*not logits"):
        ndcg_at_k(np.array([-1.0, 1.0]), np.array([0.1, 0.2]), np.array([0, 0]), k=2)


def test_ndcg_raises_on_nan_score() -> None:
    with pytest.raises(DataError, match="'scores' has 1 NaN/inf"):
        ndcg_at_k(np.array([0.0, 1.0]), np.array([np.nan, 0.2]), np.array([0, 0]), k=2)


def test_ndcg_raises_on_non_positive_k() -> None:
    with pytest.raises(ConfigError, match="'k' must be an integer >= 1, got 0"):
        ndcg_at_k(np.array([0.0, 1.0]), np.array([0.1, 0.2]), np.array([0, 0]), k=0)


def test_ranking_eval_imports_neither_torch_nor_scipy() -> None:
    code = (
        "import sys, coarserank.ranking_eval; "
        "print(sorted(m for m in ('torch', 'scipy', 'sklearn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
