"""Label metrics on plain numpy arrays: AUC, GAUC, log loss and NDCG@k (calibration: :mod:`.calibration`).

Every function takes 1-D arrays of equal length, checks them and raises
:class:`~coarserank.errors.DataError` (naming the array) on a length mismatch, an empty
array, or a NaN/inf score. Rows are never dropped silently. Nothing here imports torch.

What is computed
----------------
AUC
    The Mann-Whitney statistic: the probability that a random positive row scores higher
    than a random negative row, a tie counting one half. With ``P`` positives, ``N``
    negatives and ``R`` the sum of the positives' average ranks (ties share the mean of
    their ranks), ``AUC = (R - P (P + 1) / 2) / (P N)``. Equal to scikit-learn's
    ``roc_auc_score``.
GAUC
    Rows are grouped by ``groups`` (a user or a request id; integers or strings). For
    each group ``g`` with both classes, ``AUC_g`` is the AUC above over that group's rows
    only (ties within the group count one half). Groups whose labels are all 0 or all 1
    have no AUC: they are skipped and counted in ``groups_skipped``. GAUC is the mean of
    the per-group AUCs weighted by the group's number of rows (all of its rows, positives
    and negatives), ``GAUC = sum_g n_g AUC_g / sum_g n_g`` over the groups used. Other
    toolkits weight by clicks or impressions, or not at all; this is what we compute.
    If no group has both classes there is no GAUC and ``DataError`` is raised.
Log loss
    ``mean(-(y log p + (1 - y) log(1 - p)))`` with ``p`` clipped to ``[eps, 1 - eps]``.
NDCG@k
    Per group: DCG@k of the rows ordered by score, with linear gains and discount
    ``1 / log2(rank + 1)``, over the ideal DCG@k. Tied scores share the mean gain of the
    tie (scikit-learn's ``ndcg_score`` with ``ignore_ties=False``). Groups with zero ideal
    DCG are skipped and counted; the result is the unweighted mean over the other groups.

Per-group arrays (``per_group``) are aligned with ``np.unique(groups)`` (sorted group
ids) and hold NaN for skipped groups.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coarserank.errors import ConfigError, DataError

__all__ = [
    "GaucResult",
    "GroupMetric",
    "auc",
    "gauc",
    "label_metrics",
    "logloss",
    "ndcg_at_k",
]


def _empty() -> np.ndarray:
    return np.empty(0, dtype=np.float64)


@dataclass(frozen=True, eq=False)
class GaucResult:
    """Row-weighted mean of per-group AUCs.

    Attributes
    ----------
    value : float
        GAUC over the groups used.
    groups_used, groups_skipped : int
        Groups with both classes; groups with a single class (skipped).
    rows_used : int
        Rows in the groups used (the total weight).
    per_group : np.ndarray
        AUC per group in ``np.unique(groups)`` order; NaN for skipped groups.
    group_rows : np.ndarray
        Rows per group, same order (the weights; use with ``bootstrap_ci``).

    Examples
    --------
    >>> r = gauc(np.array([0, 1, 0, 1]), np.array([0.1, 0.9, 0.8, 0.2]), np.array([1, 1, 2, 2]))
    >>> r.value, r.groups_used
    (0.5, 2)
    """

    value: float
    groups_used: int
    groups_skipped: int
    rows_used: int
    per_group: np.ndarray = field(default_factory=_empty, repr=False)
    group_rows: np.ndarray = field(default_factory=_empty, repr=False)


@dataclass(frozen=True, eq=False)
class GroupMetric:
    """A per-group metric and its unweighted mean over the groups used.

    Attributes
    ----------
    value : float
        Mean of ``per_group`` over the groups used.
    groups_used : int
        Groups that had a defined value.
    per_group : np.ndarray
        Value per group in ``np.unique(groups)`` order; NaN for skipped groups.
    groups_skipped : int
        Groups without a defined value (too few rows, zero ideal DCG, constant scores).

    Examples
    --------
    >>> m = GroupMetric(value=0.5, groups_used=2, per_group=np.array([0.25, 0.75, np.nan]), groups_skipped=1)
    >>> m.used_values.tolist()
    [0.25, 0.75]
    """

    value: float
    groups_used: int
    per_group: np.ndarray
    groups_skipped: int = 0

    @property
    def used_values(self) -> np.ndarray:
        """Per-group values of the groups used (NaN entries removed)."""
        return np.asarray(self.per_group[~np.isnan(self.per_group)])


# --------------------------------------------------------------------------- validation


def _as_1d(name: str, x: np.ndarray) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise DataError(f"'{name}' must be a 1-D array, got shape {a.shape}")
    if a.size == 0:
        raise DataError(f"'{name}' is empty; need at least one row")
    return a


def _finite(name: str, x: np.ndarray) -> np.ndarray:
    a = _as_1d(name, x)
    if a.dtype.kind not in "biuf":
        raise DataError(f"'{name}' must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    bad = ~np.isfinite(a)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"'{name}' has {int(bad.sum())} NaN/inf value(s) (first at row {first}: {a[first]}); "
            "every value must be finite - rows are never dropped silently"
        )
    return a


def _binary(name: str, x: np.ndarray) -> np.ndarray:
    a = _finite(name, x)
    bad = (a != 0.0) & (a != 1.0)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise DataError(f"'{name}' must hold only 0 and 1, got {a[first]} at row {first}")
    return a


def _same_length(**arrays: np.ndarray) -> int:
    lengths = {name: len(a) for name, a in arrays.items()}
    if len(set(lengths.values())) != 1:
        shown = ", ".join(f"'{n}' has {m}" for n, m in lengths.items())
        raise DataError(f"arrays must have the same length: {shown} rows")
    return next(iter(lengths.values()))


def _group_codes(groups: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense codes in ``np.unique(groups)`` order, and the number of groups."""
    g = _as_1d("groups", groups)
    if g.dtype.kind == "f":
        raise DataError(
            f"'groups' must hold integer or string ids, got dtype {g.dtype}; "
            "cast to an integer type (a float column often means missing ids)"
        )
    if g.dtype.kind in "iub":
        lo = int(g.min())
        span = int(g.max()) - lo
        if span < 4 * len(g) + 1024:  # dense enough: no sort needed
            present = np.zeros(span + 1, dtype=bool)
            shifted = (g - lo).astype(np.intp)
            present[shifted] = True
            remap = np.cumsum(present, dtype=np.intp) - 1
            return remap[shifted], int(remap[-1]) + 1
    try:
        uniq, codes = np.unique(g, return_inverse=True)
    except TypeError as exc:
        raise DataError(
            f"'groups' ids must be mutually comparable (all integers or all strings): {exc}"
        ) from exc
    return codes.reshape(-1).astype(np.intp, copy=False), len(uniq)


def _positive_int(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"'{name}' must be an integer >= 1, got {value!r}")
    return int(value)


# --------------------------------------------------------------------------- grouped ranking core


def _stable_argsort_codes(codes: np.ndarray) -> np.ndarray:
    """Stable argsort of non-negative integer codes (LSD radix on 16-bit digits when they fit)."""
    top = int(codes.max()) if len(codes) else 0
    if top < 1 << 16:
        return np.argsort(codes.astype(np.uint16), kind="stable")
    if top < 1 << 32:
        by_low = np.argsort((codes & 0xFFFF).astype(np.uint16), kind="stable")
        return by_low[np.argsort((codes[by_low] >> 16).astype(np.uint16), kind="stable")]
    return np.argsort(codes, kind="stable")


def _sort_by_group(codes: np.ndarray, key: np.ndarray, stable: bool = False) -> np.ndarray:
    """Order rows by (group code, key) ascending.

    With ``stable=True`` rows tied in both keep their row order; otherwise the order among
    exact ties is unspecified (fine for anything that averages over ties).
    """
    by_key = np.argsort(key, kind="stable" if stable else "quicksort")
    return np.asarray(by_key[_stable_argsort_codes(codes[by_key])])


def _starts(flags: np.ndarray) -> np.ndarray:
    return np.flatnonzero(flags)


def _avg_ranks_sorted(cs: np.ndarray, ks: np.ndarray, group_start: np.ndarray) -> np.ndarray:
    """1-based average ranks within group for rows sorted by (group, key)."""
    n = len(cs)
    new_block = np.empty(n, dtype=bool)
    new_block[0] = True
    np.not_equal(cs[1:], cs[:-1], out=new_block[1:])
    new_block[1:] |= ks[1:] != ks[:-1]
    starts = _starts(new_block)
    ends = np.append(starts[1:], n) - 1
    block = np.cumsum(new_block) - 1
    mid = (starts + ends) * 0.5
    return np.asarray(mid[block] - group_start[cs] + 1.0)


def _group_starts(cs: np.ndarray, n_groups: int) -> np.ndarray:
    return np.concatenate(([0], np.cumsum(np.bincount(cs, minlength=n_groups))[:-1]))


def _auc_per_group(
    y: np.ndarray, s: np.ndarray, codes: np.ndarray, n_groups: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-group AUC (NaN where one class), positives and rows per group."""
    order = _sort_by_group(codes, s)
    cs, ss, ys = codes[order], s[order], y[order]
    ranks = _avg_ranks_sorted(cs, ss, _group_starts(cs, n_groups))
    rows = np.bincount(cs, minlength=n_groups).astype(np.float64)
    pos = np.bincount(cs, weights=ys, minlength=n_groups)
    rank_sum = np.bincount(cs, weights=ranks * ys, minlength=n_groups)
    neg = rows - pos
    with np.errstate(divide="ignore", invalid="ignore"):
        per = (rank_sum - pos * (pos + 1.0) * 0.5) / (pos * neg)
    per[(pos == 0) | (neg == 0)] = np.nan
    return per, pos, rows


# --------------------------------------------------------------------------- public metrics


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counting one half.

    Parameters
    ----------
    labels : np.ndarray
        0/1 labels (bool, integer or float).
    scores : np.ndarray
        Finite scores; higher means more likely positive.

    Returns
    -------
    float
        The AUC in [0, 1].

    Raises
    ------
    DataError
        Lengths differ, a score is NaN/inf, a label is not 0/1, or only one class occurs.
    """
    y, s = _binary("labels", labels), _finite("scores", scores)
    n = _same_length(labels=y, scores=s)
    per, pos, _ = _auc_per_group(y, s, np.zeros(n, dtype=np.intp), 1)
    if pos[0] == 0 or pos[0] == n:
        raise DataError(f"AUC needs both classes, but all {n} labels are {int(y[0])}")
    return float(per[0])


def gauc(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray) -> GaucResult:
    """Group AUC: per-group AUC (ties one half) weighted by the group's row count.

    Parameters
    ----------
    labels : np.ndarray
        0/1 labels.
    scores : np.ndarray
        Finite scores.
    groups : np.ndarray
        Group id per row (integers or strings), e.g. user or request id.

    Returns
    -------
    GaucResult
        Value, groups used/skipped, rows used, and per-group AUCs and row counts.

    Raises
    ------
    DataError
        Bad or mismatched arrays, or no group with both classes.
    """
    y, s = _binary("labels", labels), _finite("scores", scores)
    codes, n_groups = _group_codes(groups)
    _same_length(labels=y, scores=s, groups=codes)
    per, _, rows = _auc_per_group(y, s, codes, n_groups)
    used = ~np.isnan(per)
    n_used = int(used.sum())
    if n_used == 0:
        raise DataError(
            f"GAUC is undefined: none of the {n_groups} groups has both a positive and a negative label"
        )
    weight = rows[used]
    value = float(np.dot(per[used], weight) / weight.sum())
    return GaucResult(
        value=value,
        groups_used=n_used,
        groups_skipped=n_groups - n_used,
        rows_used=int(weight.sum()),
        per_group=per,
        group_rows=rows.astype(np.int64),
    )


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy with probabilities clipped to ``[eps, 1 - eps]``.

    Parameters
    ----------
    labels : np.ndarray
        Targets in [0, 1] (hard 0/1 labels or soft targets such as teacher probabilities).
    probs : np.ndarray
        Predicted probabilities in [0, 1].
    eps : float
        Clipping bound, ``0 <= eps < 0.5``.

    Returns
    -------
    float
        The mean log loss (natural log).

    Raises
    ------
    DataError
        Bad or mismatched arrays, or values outside [0, 1].
    ConfigError
        ``eps`` outside ``[0, 0.5)``.
    """
    if not 0.0 <= eps < 0.5:
        raise ConfigError(f"'eps' must be in [0, 0.5), got {eps!r}")
    y, p = _finite("labels", labels), _finite("probs", probs)
    _same_length(labels=y, probs=p)
    for name, a in (("labels", y), ("probs", p)):
        if a.min() < 0.0 or a.max() > 1.0:
            raise DataError(f"'{name}' must lie in [0, 1], got values in [{a.min()}, {a.max()}]")
    p = np.clip(p, eps, 1.0 - eps)
    with np.errstate(divide="ignore"):
        terms = y * np.log(p) + (1.0 - y) * np.log1p(-p)
    # with eps = 0 an exact 0/1 prediction that is right contributes 0, not 0 * -inf
    terms = np.where(((y == 0.0) & (p == 0.0)) | ((y == 1.0) & (p == 1.0)), 0.0, terms)
    return float(-terms.mean())


def _ndcg_per_group(
    gains: np.ndarray,
    scores: np.ndarray,
    codes: np.ndarray,
    n_groups: int,
    ks: list[int],
    by_score: np.ndarray | None = None,
    by_gain: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Tie-averaged NDCG@k per group for each k; NaN where the ideal DCG is zero.

    ``by_score`` / ``by_gain`` may pass precomputed orders by (group, -scores) and
    (group, -gains).
    """
    n = len(codes)
    order = _sort_by_group(codes, -scores) if by_score is None else by_score
    ideal = _sort_by_group(codes, -gains) if by_gain is None else by_gain
    cs, ss, gs = codes[order], scores[order], gains[order]
    rank = np.arange(n) - _group_starts(cs, n_groups)[cs]
    discount = 1.0 / np.log2(rank + 2.0)
    new_block = np.empty(n, dtype=bool)
    new_block[0] = True
    np.not_equal(cs[1:], cs[:-1], out=new_block[1:])
    new_block[1:] |= ss[1:] != ss[:-1]
    starts = _starts(new_block)
    mean_gain = np.add.reduceat(gs, starts) / np.diff(np.append(starts, n))
    block_group = cs[starts]
    ideal_codes, ideal_gains = codes[ideal], gains[ideal]  # same group layout as `cs`
    out = []
    for k in ks:
        cut = np.where(rank < k, discount, 0.0)
        dcg = np.bincount(block_group, weights=mean_gain * np.add.reduceat(cut, starts), minlength=n_groups)
        idcg = np.bincount(ideal_codes, weights=ideal_gains * cut, minlength=n_groups)
        with np.errstate(invalid="ignore", divide="ignore"):
            out.append(np.where(idcg > 0, dcg / idcg, np.nan))
    return out


def _group_metric(per: np.ndarray, what: str) -> GroupMetric:
    used = ~np.isnan(per)
    n_used = int(used.sum())
    if n_used == 0:
        raise DataError(f"{what} is undefined: none of the {len(per)} groups qualifies")
    return GroupMetric(
        value=float(per[used].mean()), groups_used=n_used, per_group=per, groups_skipped=len(per) - n_used
    )


def ndcg_at_k(labels_or_gains: np.ndarray, scores: np.ndarray, groups: np.ndarray, k: int) -> GroupMetric:
    """Per-group NDCG@k (linear gains, tie-averaged), averaged over groups.

    Parameters
    ----------
    labels_or_gains : np.ndarray
        Non-negative relevance per row: 0/1 labels or graded gains (e.g. teacher probabilities).
    scores : np.ndarray
        Finite ranking scores; tied scores share their mean gain.
    groups : np.ndarray
        Group id per row (integers or strings).
    k : int
        Cut-off; groups with fewer rows use all of them.

    Returns
    -------
    GroupMetric
        Unweighted mean over groups with positive ideal DCG; others skipped and counted.

    Raises
    ------
    DataError
        Bad or mismatched arrays, negative gains, or no group with a positive gain.
    """
    k = _positive_int("k", k)
    gains, s = _finite("labels_or_gains", labels_or_gains), _finite("scores", scores)
    if gains.min() < 0.0:
        raise DataError(
            f"'labels_or_gains' must be non-negative, got minimum {gains.min()} "
            "(pass probabilities, not logits)"
        )
    codes, n_groups = _group_codes(groups)
    _same_length(labels_or_gains=gains, scores=s, groups=codes)
    (per,) = _ndcg_per_group(gains, s, codes, n_groups, [k])
    return _group_metric(per, f"NDCG@{k} (no group has a positive gain)")


def label_metrics(labels: np.ndarray, probs: np.ndarray, groups: np.ndarray) -> dict[str, Any]:
    """AUC, GAUC (with the groups it used and skipped), log loss and the row count of one model's
    probabilities: the entry ``metrics.json`` holds per split and model."""
    g = gauc(labels, probs, groups)
    return {"auc": auc(labels, probs), "gauc": g.value, "logloss": logloss(labels, probs), "rows": int(len(labels)),
            "gauc_groups_used": g.groups_used, "gauc_groups_skipped": g.groups_skipped}
