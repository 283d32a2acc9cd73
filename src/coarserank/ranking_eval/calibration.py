"""Calibration of predicted probabilities against 0/1 labels, on plain numpy arrays.

Expected calibration error over ``bins`` equal-width bins of the predicted
probability, ``[i/b, (i+1)/b)`` with the last bin closed (``np.histogram``'s bins):
``ECE = sum_b (n_b / n) |mean(p in b) - mean(y in b)|``; plus the predicted/observed
click ratio ``mean(p) / mean(y)``.
Bad arrays raise :class:`~coarserank.errors.DataError` naming the array, as in :mod:`.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from coarserank.errors import DataError
from coarserank.ranking_eval.metrics import _binary, _finite, _positive_int, _same_length

__all__ = ["CalibrationResult", "calibration"]


@dataclass(frozen=True, eq=False)
class CalibrationResult:
    """Expected calibration error and the data for a reliability plot.

    Attributes
    ----------
    ece : float
        Expected calibration error (bins weighted by their row count).
    ratio : float
        Predicted/observed click ratio ``mean(p) / mean(y)``.
    mean_predicted, mean_observed : float
        ``mean(p)`` and ``mean(y)`` over all rows.
    bin_edges : np.ndarray
        ``bins + 1`` edges from 0 to 1.
    bin_predicted, bin_observed : np.ndarray
        Mean probability and mean label per bin; NaN for empty bins.
    bin_count : np.ndarray
        Rows per bin.

    Examples
    --------
    >>> c = calibration(np.array([0, 1, 1, 0]), np.array([0.2, 0.8, 0.6, 0.4]), bins=2)
    >>> round(c.ece, 3), c.bin_count.tolist()
    (0.3, [2, 2])
    """

    ece: float
    ratio: float
    mean_predicted: float
    mean_observed: float
    bin_edges: np.ndarray = field(repr=False)
    bin_predicted: np.ndarray = field(repr=False)
    bin_observed: np.ndarray = field(repr=False)
    bin_count: np.ndarray = field(repr=False)


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> CalibrationResult:
    """Compute the expected calibration error over equal-width bins, and the click ratio.

    Parameters
    ----------
    labels : np.ndarray
        0/1 labels.
    probs : np.ndarray
        Predicted probabilities in [0, 1].
    bins : int
        Number of equal-width bins on [0, 1].

    Returns
    -------
    CalibrationResult
        ECE, ``mean(p) / mean(y)`` and per-bin means and counts.

    Raises
    ------
    DataError
        Bad or mismatched arrays, probabilities outside [0, 1], or no positive label
        (the ratio would divide by zero).
    """
    bins = _positive_int("bins", bins)
    y, p = _binary("labels", labels), _finite("probs", probs)
    n = _same_length(labels=y, probs=p)
    if p.min() < 0.0 or p.max() > 1.0:
        raise DataError(f"'probs' must lie in [0, 1], got values in [{p.min()}, {p.max()}]")
    if not y.any():
        raise DataError(f"calibration ratio mean(p)/mean(y) is undefined: all {n} labels are 0")
    edges = np.linspace(0.0, 1.0, bins + 1)
    idx = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, bins - 1)
    count = np.bincount(idx, minlength=bins)
    sum_p = np.bincount(idx, weights=p, minlength=bins)
    sum_y = np.bincount(idx, weights=y, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        bin_p = np.where(count > 0, sum_p / count, np.nan)
        bin_y = np.where(count > 0, sum_y / count, np.nan)
    ece = float(np.abs(sum_p - sum_y).sum() / n)  # sum_b n_b/n |mean_p - mean_y|
    mean_p, mean_y = float(p.mean()), float(y.mean())
    return CalibrationResult(
        ece=ece,
        ratio=mean_p / mean_y,
        mean_predicted=mean_p,
        mean_observed=mean_y,
        bin_edges=edges,
        bin_predicted=bin_p,
        bin_observed=bin_y,
        bin_count=count,
    )
