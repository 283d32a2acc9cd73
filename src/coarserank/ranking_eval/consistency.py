"""Teacher-student ranking consistency, per group (a user or a request).

Both models score the same candidate rows; ``groups`` says which rows are ranked together.
Each metric is computed per group and averaged without weights over the groups where it
is defined; the result is a :class:`~coarserank.ranking_eval.metrics.GroupMetric` whose
``per_group`` follows ``np.unique(groups)`` order with NaN for skipped groups.

Metrics
-------
``kendall_tau``
    Kendall's tau-b (ties in either score handled by the tau-b denominator). Groups with
    fewer than two rows or a constant score in either model are skipped.
``spearman``
    Pearson correlation of the within-group average ranks (ties share their mean rank).
    Same groups skipped as for tau-b.
``recall_k_in_n``
    Share of the teacher's top-k that the student keeps in its top-n (COLD's alignment
    recall), ``|T_k ∩ S_n| / k``. Only groups with at least ``n`` rows count.
``overlap_at_k``
    ``|T_k ∩ S_k| / k``; only groups with at least ``k`` rows count.
``ndcg_consistency``
    NDCG@k of the student's order with the teacher's probabilities as gains (see
    :func:`~coarserank.ranking_eval.metrics.ndcg_at_k`; tied student scores share gains).

Top-k sets break ties deterministically by row order: among rows with equal scores in a
group, the row that comes first in the input arrays ranks higher. Every input must be
finite (a NaN/inf raises :class:`~coarserank.errors.DataError` naming the array).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from coarserank.errors import ConfigError, DataError
from coarserank.ranking_eval.metrics import (
    GroupMetric,
    _finite,
    _group_codes,
    _group_metric,
    _group_starts,
    _ndcg_per_group,
    _positive_int,
    _same_length,
    _sort_by_group,
    _stable_argsort_codes,
)

__all__ = [
    "consistency_table",
    "kendall_tau",
    "ndcg_consistency",
    "overlap_at_k",
    "recall_k_in_n",
    "spearman",
]


@dataclass(frozen=True, eq=False)
class _Ranked:
    """Both scores ranked within groups (descending; ties by row order)."""

    teacher: np.ndarray
    student: np.ndarray
    codes: np.ndarray
    n_groups: int
    size: np.ndarray  # rows per group
    order_t: np.ndarray  # rows sorted by (group, -teacher), stable
    order_s: np.ndarray
    rank_t: np.ndarray  # 0-based rank within group, per row
    rank_s: np.ndarray


def _prepare(teacher: np.ndarray, student: np.ndarray, groups: np.ndarray) -> _Ranked:
    t, s = _finite("teacher", teacher), _finite("student", student)
    codes, n_groups = _group_codes(groups)
    n = _same_length(teacher=t, student=s, groups=codes)
    size = np.bincount(codes, minlength=n_groups)
    start = np.concatenate(([0], np.cumsum(size)[:-1]))
    ranks = []
    orders = []
    for x in (t, s):
        order = _sort_by_group(codes, -x, stable=True)
        rank = np.empty(n, dtype=np.int64)
        rank[order] = np.arange(n) - start[codes[order]]
        orders.append(order)
        ranks.append(rank)
    return _Ranked(t, s, codes, n_groups, size, orders[0], orders[1], ranks[0], ranks[1])


def _tie_blocks(cs: np.ndarray, *keys: np.ndarray) -> np.ndarray:
    """Start flags of runs of equal (group, keys...) in sorted rows."""
    flags = np.empty(len(cs), dtype=bool)
    flags[0] = True
    np.not_equal(cs[1:], cs[:-1], out=flags[1:])
    for k in keys:
        flags[1:] |= k[1:] != k[:-1]
    return flags


def _tied_pairs(cs: np.ndarray, flags: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, the number of pairs inside the tie runs marked by ``flags``."""
    starts = np.flatnonzero(flags)
    size = np.diff(np.append(starts, len(cs))).astype(np.float64)
    return np.bincount(cs[starts], weights=size * (size - 1.0) * 0.5, minlength=n_groups)


def _dense_in_group(cs: np.ndarray, flags: np.ndarray) -> np.ndarray:
    """0-based dense rank within group of sorted rows whose tie runs start at ``flags``."""
    block = np.cumsum(flags) - 1
    first = np.empty(len(cs), dtype=bool)
    first[0] = True
    np.not_equal(cs[1:], cs[:-1], out=first[1:])
    group_first_block = block[first]
    return np.asarray(block - group_first_block[np.cumsum(first) - 1])


def _inversions(cs: np.ndarray, v: np.ndarray, n_groups: int) -> np.ndarray:
    """Per group, #{i < j in the same group: v_i > v_j}, for rows sorted by group.

    A most-significant-bit-first radix partition run on every group at once: at bit ``b``
    rows sit in buckets of equal (group, ``v >> (b + 1)``) in their original order, and each
    row whose bit ``b`` is 0 counts the earlier rows of its bucket whose bit is 1 (a pair is
    an inversion exactly at the first bit where the values differ). Each bucket is then
    split stably into its 0s and 1s. ``O(n log max(v))``, no Python loop over groups.
    """
    n = len(cs)
    itype = np.int32 if n < 2**31 - 1 else np.int64
    vals = v.astype(itype)
    idx = np.arange(n, dtype=itype)
    flags = np.empty(n, dtype=bool)
    flags[0] = True
    np.not_equal(cs[1:], cs[:-1], out=flags[1:])
    acc = np.zeros(n, dtype=np.int64)  # per position; positions never leave their group
    moved = np.empty_like(vals)
    for b in reversed(range(int(vals.max()).bit_length())):
        bit = np.bitwise_and(np.right_shift(vals, b), 1)
        starts = np.flatnonzero(flags).astype(itype)
        ends = np.append(starts[1:], itype(n))
        bucket = np.cumsum(flags, dtype=itype) - 1
        bstart = starts[bucket]
        ones_incl = np.cumsum(bit, dtype=itype)
        ones_excl = ones_incl - bit
        ones_before = ones_excl - ones_excl[bstart]  # 1s earlier in the same bucket
        acc += ones_before * (bit ^ 1)
        zeros_total = (ends - starts) - (ones_incl[ends - 1] - ones_excl[starts])
        slot = np.where(bit, bstart + zeros_total[bucket] + ones_before, idx - ones_before)
        moved[slot] = vals
        vals, moved = moved, vals
        split = starts + zeros_total
        flags[split[split < n]] = True
    return np.bincount(cs, weights=acc, minlength=n_groups)


def _kendall_per_group(r: _Ranked) -> np.ndarray:
    g = r.n_groups
    cs_t = r.codes[r.order_t]
    flags_t = _tie_blocks(cs_t, r.teacher[r.order_t])
    cs_s = r.codes[r.order_s]
    flags_s = _tie_blocks(cs_s, r.student[r.order_s])
    ties_t = _tied_pairs(cs_t, flags_t, g)
    ties_s = _tied_pairs(cs_s, flags_s, g)
    dense_t = np.empty(len(cs_t), dtype=np.int64)
    dense_t[r.order_t] = _dense_in_group(cs_t, flags_t)
    dense_s = np.empty(len(cs_s), dtype=np.int64)
    dense_s[r.order_s] = _dense_in_group(cs_s, flags_s)
    # rows by (group, teacher desc, student desc); within a teacher tie students ascend in
    # dense rank, so tied-teacher pairs never count as inversions (Knight's algorithm)
    order = r.order_s  # (group, dense_s); two stable radix passes add dense_t, then group
    order = order[_stable_argsort_codes(dense_t[order])]
    order = order[_stable_argsort_codes(r.codes[order])]
    cs = r.codes[order]
    dt, ds = dense_t[order], dense_s[order]
    ties_both = _tied_pairs(cs, _tie_blocks(cs, dt, ds), g)
    discordant = _inversions(cs, ds, g)
    size = r.size.astype(np.float64)
    n0 = size * (size - 1.0) * 0.5
    numer = n0 - ties_t - ties_s + ties_both - 2.0 * discordant
    denom = np.sqrt((n0 - ties_t) * (n0 - ties_s))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, numer / denom, np.nan)


def _avg_ranks(r: _Ranked, order: np.ndarray, x: np.ndarray) -> np.ndarray:
    cs = r.codes[order]
    flags = _tie_blocks(cs, x[order])
    starts = np.flatnonzero(flags)
    ends = np.append(starts[1:], len(cs)) - 1
    mid = (starts + ends) * 0.5
    ranks_sorted = mid[np.cumsum(flags) - 1] - _group_starts(cs, r.n_groups)[cs] + 1.0
    out = np.empty(len(cs), dtype=np.float64)
    out[order] = ranks_sorted
    return out


def _spearman_per_group(r: _Ranked) -> np.ndarray:
    mean = (r.size + 1.0) * 0.5
    dt = _avg_ranks(r, r.order_t, r.teacher) - mean[r.codes]
    ds = _avg_ranks(r, r.order_s, r.student) - mean[r.codes]
    g = r.n_groups
    cov = np.bincount(r.codes, weights=dt * ds, minlength=g)
    var_t = np.bincount(r.codes, weights=dt * dt, minlength=g)
    var_s = np.bincount(r.codes, weights=ds * ds, minlength=g)
    denom = np.sqrt(var_t * var_s)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, cov / denom, np.nan)


def _recall_per_group(r: _Ranked, k: int, n: int) -> np.ndarray:
    hits = np.bincount(r.codes, weights=(r.rank_t < k) & (r.rank_s < n), minlength=r.n_groups)
    return np.where(r.size >= n, hits / k, np.nan)


def _check_k_n(k: int, n: int) -> tuple[int, int]:
    k, n = _positive_int("k", k), _positive_int("n", n)
    if n < k:
        raise ConfigError(f"'n' must be >= 'k' for recall@k-in-n, got k={k}, n={n}")
    return k, n


def _check_gains(teacher: np.ndarray) -> None:
    if teacher.min() < 0.0:
        raise DataError(
            f"'teacher' is used as NDCG gains and must be non-negative, got minimum {teacher.min()} "
            "(pass the teacher's probabilities, not its logits)"
        )


def kendall_tau(teacher: np.ndarray, student: np.ndarray, groups: np.ndarray) -> GroupMetric:
    """Per-group Kendall tau-b between teacher and student scores, averaged over groups.

    Parameters
    ----------
    teacher, student : np.ndarray
        Finite scores of the same rows.
    groups : np.ndarray
        Group id per row (integers or strings).

    Returns
    -------
    GroupMetric
        Mean tau-b over groups with two or more rows and non-constant scores.
    """
    return _group_metric(_kendall_per_group(_prepare(teacher, student, groups)), "Kendall tau-b")


def spearman(teacher: np.ndarray, student: np.ndarray, groups: np.ndarray) -> GroupMetric:
    """Per-group Spearman rho (average ranks for ties), averaged over groups.

    Parameters
    ----------
    teacher, student : np.ndarray
        Finite scores of the same rows.
    groups : np.ndarray
        Group id per row.

    Returns
    -------
    GroupMetric
        Mean rho over groups with two or more rows and non-constant scores.
    """
    return _group_metric(_spearman_per_group(_prepare(teacher, student, groups)), "Spearman rho")


def recall_k_in_n(
    teacher: np.ndarray, student: np.ndarray, groups: np.ndarray, k: int, n: int
) -> GroupMetric:
    """Share of the teacher's top-k that the student keeps in its top-n, averaged over groups.

    Parameters
    ----------
    teacher, student : np.ndarray
        Finite scores of the same rows.
    groups : np.ndarray
        Group id per row.
    k, n : int
        Teacher cut-off and student cut-off, ``1 <= k <= n``.

    Returns
    -------
    GroupMetric
        Mean recall over groups with at least ``n`` rows (ties broken by row order).
    """
    k, n = _check_k_n(k, n)
    per = _recall_per_group(_prepare(teacher, student, groups), k, n)
    return _group_metric(per, f"recall@{k}-in-{n} (no group has {n} rows)")


def overlap_at_k(teacher: np.ndarray, student: np.ndarray, groups: np.ndarray, k: int) -> GroupMetric:
    """``|top-k teacher ∩ top-k student| / k`` per group, averaged over groups.

    Parameters
    ----------
    teacher, student : np.ndarray
        Finite scores of the same rows.
    groups : np.ndarray
        Group id per row.
    k : int
        Cut-off.

    Returns
    -------
    GroupMetric
        Mean overlap over groups with at least ``k`` rows (ties broken by row order).
    """
    k = _positive_int("k", k)
    per = _recall_per_group(_prepare(teacher, student, groups), k, k)
    return _group_metric(per, f"overlap@{k} (no group has {k} rows)")


def ndcg_consistency(teacher: np.ndarray, student: np.ndarray, groups: np.ndarray, k: int) -> GroupMetric:
    """NDCG@k of the student's ranking with the teacher's probabilities as gains.

    Parameters
    ----------
    teacher : np.ndarray
        Teacher probabilities (non-negative gains).
    student : np.ndarray
        Finite student scores.
    groups : np.ndarray
        Group id per row.
    k : int
        Cut-off.

    Returns
    -------
    GroupMetric
        Mean NDCG@k over groups whose teacher gains are not all zero.
    """
    k = _positive_int("k", k)
    r = _prepare(teacher, student, groups)
    _check_gains(r.teacher)
    (per,) = _ndcg_per_group(r.teacher, r.student, r.codes, r.n_groups, [k], r.order_s, r.order_t)
    return _group_metric(per, f"NDCG@{k} (all teacher gains are zero)")


def consistency_table(
    teacher: np.ndarray,
    student: np.ndarray,
    groups: np.ndarray,
    ks: Sequence[int] = (10, 50),
    ns: Sequence[int] = (50, 100, 200, 500),
) -> dict[str, GroupMetric]:
    """All consistency metrics at once, sharing one ranking pass.

    Parameters
    ----------
    teacher : np.ndarray
        Teacher probabilities (used as NDCG gains, so non-negative).
    student : np.ndarray
        Finite student scores.
    groups : np.ndarray
        Group id per row.
    ks : Sequence[int]
        Cut-offs for ``recall@k_in_n``, ``ndcg@k`` and ``overlap@k``.
    ns : Sequence[int]
        Student cut-offs for ``recall@k_in_n``; pairs with ``n < k`` are left out.

    Returns
    -------
    dict[str, GroupMetric]
        Keys ``"kendall_tau"``, ``"spearman"``, ``"recall@{k}_in_{n}"``, ``"ndcg@{k}"`` and
        ``"overlap@{k}"``. A key whose metric no group qualifies for (e.g. no group has
        ``n`` rows) is left out rather than reported as NaN.
    """
    ks = [_positive_int("ks", k) for k in ks]
    ns = [_positive_int("ns", n) for n in ns]
    r = _prepare(teacher, student, groups)
    _check_gains(r.teacher)
    per: dict[str, np.ndarray] = {
        "kendall_tau": _kendall_per_group(r),
        "spearman": _spearman_per_group(r),
    }
    for k in ks:
        for n in ns:
            if n >= k:
                per[f"recall@{k}_in_{n}"] = _recall_per_group(r, k, n)
    ndcgs = _ndcg_per_group(r.teacher, r.student, r.codes, r.n_groups, ks, r.order_s, r.order_t)
    for k, values in zip(ks, ndcgs, strict=True):
        per[f"ndcg@{k}"] = values
    for k in ks:
        per[f"overlap@{k}"] = _recall_per_group(r, k, k)
    return {name: _group_metric(p, name) for name, p in per.items() if not np.isnan(p).all()}
