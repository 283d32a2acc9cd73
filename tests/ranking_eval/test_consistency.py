"""Teacher-student consistency against scipy, scikit-learn and naive per-group loops."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.stats import kendalltau, spearmanr
from sklearn.metrics import ndcg_score

from coarserank.errors import ConfigError, DataError
from coarserank.ranking_eval.consistency import (
    consistency_table,
    kendall_tau,
    ndcg_consistency,
    overlap_at_k,
    recall_k_in_n,
    spearman,
)


def _pairs(rng: np.random.Generator, n_groups: int, max_size: int, tie_levels: int | None, min_size: int = 1):
    """Shuffled rows; teacher probabilities and a noisy student, from few levels when tie_levels."""
    sizes = rng.integers(min_size, max_size + 1, n_groups)
    codes = rng.permutation(np.repeat(np.arange(n_groups), sizes))
    n = len(codes)
    teacher = rng.random(n)
    student = teacher + rng.normal(0, 0.3, n)
    if tie_levels is not None:
        teacher = np.round(teacher * (tie_levels - 1)) / (tie_levels - 1)
        student = np.round(student * (tie_levels - 1))
    return teacher, student, codes


def _top(scores: np.ndarray, rows: np.ndarray, k: int) -> set[int]:
    """Top-k row indices, higher score first, ties broken by earlier row."""
    return set(sorted(rows.tolist(), key=lambda i: (-scores[i], i))[:k])


def _naive_recall(teacher, student, codes, k: int, n: int) -> tuple[list[float], list[int]]:
    values, used = [], []
    for g in np.unique(codes):
        rows = np.flatnonzero(codes == g)
        if len(rows) < n:
            continue
        values.append(len(_top(teacher, rows, k) & _top(student, rows, n)) / k)
        used.append(int(g))
    return values, used


def _defined(x: np.ndarray, y: np.ndarray) -> bool:
    return len(x) > 1 and np.ptp(x) > 0 and np.ptp(y) > 0


@pytest.mark.parametrize(
    ("max_size", "tie_levels"),
    [(3, None), (40, None), (40, 4), (300, 6)],
    ids=["tiny", "small", "ties", "large"],
)
def test_kendall_tau_matches_scipy_tau_b(
    rng: np.random.Generator, max_size: int, tie_levels: int | None
) -> None:
    teacher, student, codes = _pairs(rng, 30, max_size, tie_levels)
    result = kendall_tau(teacher, student, codes)
    expected = []
    for g in range(30):
        m = codes == g
        if not _defined(teacher[m], student[m]):
            assert np.isnan(result.per_group[g])
            continue
        ref = kendalltau(teacher[m], student[m], variant="b").statistic
        assert result.per_group[g] == pytest.approx(ref, abs=1e-12)
        expected.append(ref)
    assert result.value == pytest.approx(np.mean(expected))
    assert result.groups_used + result.groups_skipped == 30


def test_kendall_tau_matches_scipy_on_one_big_group_with_ties(rng: np.random.Generator) -> None:
    teacher = rng.integers(0, 50, 5000).astype(np.float64)
    student = teacher + rng.integers(-20, 20, 5000)
    result = kendall_tau(teacher, student, np.zeros(5000, dtype=np.int64))
    assert result.value == pytest.approx(kendalltau(teacher, student).statistic, abs=1e-12)


def test_kendall_tau_skips_single_row_and_constant_groups() -> None:
    teacher = np.array([0.1, 0.5, 0.5, 0.2, 0.9])
    student = np.array([0.3, 0.1, 0.2, 0.4, 0.8])
    groups = np.array([1, 2, 2, 3, 3])  # group 1: one row; group 2: constant teacher
    result = kendall_tau(teacher, student, groups)
    assert (result.value, result.groups_used, result.groups_skipped) == (1.0, 1, 2)


@pytest.mark.parametrize("tie_levels", [None, 4], ids=["continuous", "ties"])
def test_spearman_matches_scipy(rng: np.random.Generator, tie_levels: int | None) -> None:
    teacher, student, codes = _pairs(rng, 30, 40, tie_levels)
    result = spearman(teacher, student, codes)
    for g in range(30):
        m = codes == g
        if _defined(teacher[m], student[m]):
            assert result.per_group[g] == pytest.approx(
                spearmanr(teacher[m], student[m]).statistic, abs=1e-12
            )
        else:
            assert np.isnan(result.per_group[g])


def test_identical_scores_are_fully_consistent(rng: np.random.Generator) -> None:
    teacher, _, codes = _pairs(rng, 10, 30, None, min_size=20)
    table = consistency_table(teacher, teacher.copy(), codes, ks=(5,), ns=(10,))
    assert {name: m.value for name, m in table.items()} == pytest.approx(
        {"kendall_tau": 1.0, "spearman": 1.0, "recall@5_in_10": 1.0, "ndcg@5": 1.0, "overlap@5": 1.0}
    )


def test_reversed_scores_give_minus_one(rng: np.random.Generator) -> None:
    teacher, _, codes = _pairs(rng, 10, 30, None, min_size=2)
    assert kendall_tau(teacher, -teacher, codes).value == pytest.approx(-1.0)
    assert spearman(teacher, -teacher, codes).value == pytest.approx(-1.0)


@pytest.mark.parametrize(("k", "n"), [(1, 1), (3, 5), (10, 50), (5, 100)])
@pytest.mark.parametrize("tie_levels", [None, 3], ids=["continuous", "ties"])
def test_recall_k_in_n_matches_naive_loop(
    rng: np.random.Generator, k: int, n: int, tie_levels: int | None
) -> None:
    teacher, student, codes = _pairs(rng, 25, 120, tie_levels, min_size=60)
    values, used = _naive_recall(teacher, student, codes, k, n)
    result = recall_k_in_n(teacher, student, codes, k, n)
    assert_allclose(result.per_group[used], values)
    assert result.value == pytest.approx(np.mean(values))
    assert result.groups_used == len(used)


def test_recall_raises_when_no_group_has_n_candidates() -> None:
    with pytest.raises(DataError, match=r"recall@1-in-5 \(no group has 5 rows\)"):
        recall_k_in_n(np.array([0.1, 0.2, 0.3]), np.array([0.3, 0.2, 0.1]), np.array([1, 1, 2]), k=1, n=5)


def test_recall_breaks_ties_by_row_order() -> None:
    teacher = np.array([0.5, 0.5, 0.5, 0.1])  # teacher top-1: row 0 (first of the tie)
    student = np.array([0.2, 0.9, 0.9, 0.9])  # student top-2: rows 1, 2
    assert recall_k_in_n(teacher, student, np.zeros(4, dtype=int), k=1, n=2).value == 0.0
    assert recall_k_in_n(teacher, student, np.zeros(4, dtype=int), k=1, n=4).value == 1.0


def test_recall_counts_only_groups_with_n_candidates() -> None:
    teacher = np.array([0.9, 0.1, 0.5, 0.9, 0.1])
    student = np.array([0.1, 0.9, 0.5, 0.9, 0.1])
    groups = np.array(["big", "big", "big", "small", "small"])
    result = recall_k_in_n(teacher, student, groups, k=1, n=3)
    assert (result.value, result.groups_used, result.groups_skipped) == (1.0, 1, 1)


@pytest.mark.parametrize("k", [1, 5, 20])
def test_overlap_at_k_matches_naive_loop(rng: np.random.Generator, k: int) -> None:
    teacher, student, codes = _pairs(rng, 25, 60, 5)
    values, used = _naive_recall(teacher, student, codes, k, k)
    result = overlap_at_k(teacher, student, codes, k)
    assert_allclose(result.per_group[used], values)
    assert result.groups_used == len(used)


@pytest.mark.parametrize("k", [1, 10])
def test_ndcg_consistency_matches_sklearn_with_teacher_gains(rng: np.random.Generator, k: int) -> None:
    teacher, student, codes = _pairs(rng, 20, 40, None, min_size=2)
    result = ndcg_consistency(teacher, student, codes, k)
    for g in range(20):
        m = codes == g
        assert result.per_group[g] == pytest.approx(ndcg_score(teacher[m][None], student[m][None], k=k))


def test_consistency_table_has_the_documented_keys(rng: np.random.Generator) -> None:
    teacher, student, codes = _pairs(rng, 5, 60, None, min_size=60)
    table = consistency_table(teacher, student, codes, ks=(10, 50), ns=(50, 60))
    assert set(table) == {
        "kendall_tau",
        "spearman",
        "recall@10_in_50",
        "recall@10_in_60",
        "recall@50_in_50",
        "recall@50_in_60",
        "ndcg@10",
        "ndcg@50",
        "overlap@10",
        "overlap@50",
    }


def test_consistency_table_equals_the_single_metrics(rng: np.random.Generator) -> None:
    teacher, student, codes = _pairs(rng, 20, 80, 6)
    groups = np.array([f"req{c}" for c in codes])
    table = consistency_table(teacher, student, groups, ks=(3,), ns=(10,))
    singles = {
        "kendall_tau": kendall_tau(teacher, student, groups),
        "spearman": spearman(teacher, student, groups),
        "recall@3_in_10": recall_k_in_n(teacher, student, groups, 3, 10),
        "ndcg@3": ndcg_consistency(teacher, student, groups, 3),
        "overlap@3": overlap_at_k(teacher, student, groups, 3),
    }
    for name, metric in singles.items():
        assert_allclose(table[name].per_group, metric.per_group, err_msg=name)
        assert table[name].groups_used == metric.groups_used


def test_consistency_table_leaves_out_metrics_no_group_qualifies(rng: np.random.Generator) -> None:
    teacher, student, codes = _pairs(rng, 5, 30, None, min_size=20)
    table = consistency_table(teacher, student, codes, ks=(10,), ns=(20, 500))
    assert "recall@10_in_20" in table
    assert "recall@10_in_500" not in table


@pytest.mark.parametrize("which", ["teacher", "student"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_input_raises_naming_the_array(which: str, bad: float) -> None:
    arrays = {"teacher": np.array([0.1, 0.2, 0.3]), "student": np.array([0.3, 0.2, 0.1])}
    arrays[which][1] = bad
    with pytest.raises(DataError, match=f"'{which}' has 1 NaN/inf value"):
        consistency_table(arrays["teacher"], arrays["student"], np.zeros(3, dtype=int))


def test_length_mismatch_raises() -> None:
    with pytest.raises(DataError, match="'teacher' has 3, 'student' has 2, 'groups' has 3 rows"):
        kendall_tau(np.array([0.1, 0.2, 0.3]), np.array([0.1, 0.2]), np.zeros(3, dtype=int))


def test_recall_with_n_below_k_raises() -> None:
    with pytest.raises(ConfigError, match=r"'n' must be >= 'k'.*k=5, n=2"):
        recall_k_in_n(np.array([0.1, 0.2]), np.array([0.1, 0.2]), np.zeros(2, dtype=int), k=5, n=2)


def test_ndcg_consistency_rejects_teacher_logits() -> None:
    with pytest.raises(DataError, match=r"'teacher' is used as NDCG gains.*not its logits"):
        ndcg_consistency(np.array([-1.0, 2.0]), np.array([0.1, 0.2]), np.zeros(2, dtype=int), k=2)
