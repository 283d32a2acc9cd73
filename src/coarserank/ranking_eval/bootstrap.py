"""Bootstrap confidence intervals over groups.

Groups (users, requests) are the unit that is resampled: rows of one group are not
independent, groups roughly are. Each replicate draws as many groups as there are, with
replacement, and recomputes the (optionally weighted) mean of the per-group values; the
interval is the percentile interval of the replicates (``np.quantile``, linear). The same
seed gives the same interval. Per-group values come from
:class:`~coarserank.ranking_eval.metrics.GroupMetric` or
:class:`~coarserank.ranking_eval.metrics.GaucResult` (``per_group``, with ``group_rows``
as weights for GAUC); their NaN entries mark skipped groups and are an error unless
``skip_nan=True`` says to leave those groups out.
"""

from __future__ import annotations

import numpy as np

from coarserank.errors import ConfigError, DataError
from coarserank.ranking_eval.metrics import _as_1d, _positive_int

__all__ = ["bootstrap_ci", "paired_bootstrap_ci", "gap_closed_ci"]

_CHUNK_DRAWS = 1 << 22  # group indices drawn per chunk of replicates (bounds memory)


def _values(name: str, x: np.ndarray) -> np.ndarray:
    a = _as_1d(name, x)
    if a.dtype.kind not in "biuf":
        raise DataError(f"'{name}' must be numeric, got dtype {a.dtype}")
    a = a.astype(np.float64, copy=False)
    if np.isinf(a).any():
        raise DataError(f"'{name}' has infinite values; per-group values must be finite")
    return a


def _nan_error(name: str, count: int) -> DataError:
    return DataError(
        f"'{name}' has {count} NaN value(s) (groups a metric skipped); pass skip_nan=True to "
        "leave those groups out, or drop them first (GroupMetric.used_values)"
    )


def _resample_means(
    values: np.ndarray, weights: np.ndarray | None, n_boot: int, rng: np.random.Generator
) -> np.ndarray:
    n = len(values)
    per_chunk = max(1, _CHUNK_DRAWS // n)
    out = np.empty(n_boot, dtype=np.float64)
    for lo in range(0, n_boot, per_chunk):
        hi = min(n_boot, lo + per_chunk)
        idx = rng.integers(0, n, size=(hi - lo, n))
        if weights is None:
            out[lo:hi] = values[idx].mean(axis=1)
        else:
            w = weights[idx]
            out[lo:hi] = (w * values[idx]).sum(axis=1) / w.sum(axis=1)
    return out


def bootstrap_ci(
    per_group_values: np.ndarray,
    weights: np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    skip_nan: bool = False,
) -> tuple[float, float, float]:
    """Mean of per-group values and its percentile bootstrap interval, resampling groups.

    Parameters
    ----------
    per_group_values : np.ndarray
        One value per group.
    weights : np.ndarray, optional
        Positive weight per group (e.g. rows per group for GAUC); unweighted if omitted.
    n_boot : int
        Number of bootstrap replicates.
    seed : int
        Seed of ``np.random.default_rng``; the same seed gives the same interval.
    level : float
        Confidence level in (0, 1).
    skip_nan : bool
        Leave out groups whose value is NaN instead of raising.

    Returns
    -------
    tuple[float, float, float]
        ``(mean, lo, hi)``: the (weighted) mean over all groups and the interval bounds.

    Raises
    ------
    DataError
        Empty, non-finite or mismatched inputs, or non-positive weights.
    ConfigError
        ``n_boot < 1`` or ``level`` outside (0, 1).
    """
    n_boot = _positive_int("n_boot", n_boot)
    if not 0.0 < level < 1.0:
        raise ConfigError(f"'level' must be in (0, 1), got {level!r}")
    v = _values("per_group_values", per_group_values)
    w = None if weights is None else _values("weights", weights)
    if w is not None:
        if len(w) != len(v):
            raise DataError(
                f"'weights' has {len(w)} entries but 'per_group_values' has {len(v)}; need one per group"
            )
        if np.isnan(w).any() or (w <= 0).any():
            raise DataError("'weights' must be positive and finite (one per group, e.g. its row count)")
    nan = np.isnan(v)
    if nan.any():
        if not skip_nan:
            raise _nan_error("per_group_values", int(nan.sum()))
        v = v[~nan]
        w = None if w is None else w[~nan]
        if len(v) == 0:
            raise DataError("'per_group_values' has no group left: every value is NaN")
    mean = float(v.mean() if w is None else np.dot(w, v) / w.sum())
    reps = _resample_means(v, w, n_boot, np.random.default_rng(seed))
    lo, hi = np.quantile(reps, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return mean, float(lo), float(hi)


def paired_bootstrap_ci(
    a: np.ndarray,
    b: np.ndarray,
    weights: np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
    skip_nan: bool = False,
) -> tuple[float, float, float]:
    """Mean per-group difference ``a - b`` and its bootstrap interval, resampling groups.

    Both arrays hold one value per group for the same groups in the same order (e.g.
    ``per_group`` of two models' metrics on one data set), so each replicate keeps the
    pairs together.

    Parameters
    ----------
    a, b : np.ndarray
        Per-group values of the two models.
    weights : np.ndarray, optional
        Positive weight per group.
    n_boot : int
        Number of bootstrap replicates.
    seed : int
        Seed of ``np.random.default_rng``.
    level : float
        Confidence level in (0, 1).
    skip_nan : bool
        Leave out groups where either value is NaN instead of raising.

    Returns
    -------
    tuple[float, float, float]
        ``(mean difference, lo, hi)``.
    """
    va, vb = _values("a", a), _values("b", b)
    if len(va) != len(vb):
        raise DataError(f"'a' has {len(va)} groups but 'b' has {len(vb)}; pair the same groups")
    if not skip_nan:
        for name, x in (("a", va), ("b", vb)):
            if np.isnan(x).any():
                raise _nan_error(name, int(np.isnan(x).sum()))
    return bootstrap_ci(va - vb, weights, n_boot=n_boot, seed=seed, level=level, skip_nan=skip_nan)


def gap_closed_ci(
    model: np.ndarray,
    base: np.ndarray,
    reference: np.ndarray,
    weights: np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float, int]:
    """Share of the ``base`` -> ``reference`` gap that ``model`` closes, with a bootstrap interval.

    ``share = mean(model - base) / mean(reference - base)`` over the groups where all three are
    defined (NaN values are left out), weighted like :func:`bootstrap_ci`; every replicate
    resamples the groups once for numerator and denominator. Replicates whose gap is not positive
    have no share and are left out of the percentiles.

    Returns
    -------
    tuple[float, float, float, int]
        ``(share, lo, hi, groups)``; NaN bounds when the gap itself is not positive.
    """
    n_boot = _positive_int("n_boot", n_boot)
    m, b, r = _values("model", model), _values("base", base), _values("reference", reference)
    if not len(m) == len(b) == len(r):
        raise DataError(f"'model', 'base' and 'reference' need one value per group each, got {len(m)}, "
                        f"{len(b)} and {len(r)}")
    keep = ~(np.isnan(m) | np.isnan(b) | np.isnan(r))
    if not keep.any():
        raise DataError("no group has all three values: the gap closed is undefined")
    gain, gap = (m - b)[keep], (r - b)[keep]
    w = np.ones(len(gain)) if weights is None else _values("weights", weights)[keep]
    share = float(np.dot(w, gain) / np.dot(w, gap)) if np.dot(w, gap) > 0 else float("nan")
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(gain), size=(n_boot, len(gain)))
    num, den = (w[idx] * gain[idx]).sum(axis=1), (w[idx] * gap[idx]).sum(axis=1)
    reps = num[den > 0] / den[den > 0]
    if not np.isfinite(share) or not len(reps):
        return share, float("nan"), float("nan"), int(keep.sum())
    lo, hi = np.quantile(reps, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    return share, float(lo), float(hi), int(keep.sum())
