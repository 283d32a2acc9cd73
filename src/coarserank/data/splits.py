"""Typed data handed between the read-side stages: candidate sets, and aligning stored values to rows.

A :class:`CandidateSets` is what consistency metrics read: encoded candidate rows grouped into one
set per request, with the reference's logit per row when it is known. It is frozen: stages pass it
explicitly instead of sharing a mutable context. (Encoded splits: :mod:`coarserank.data.dataset`.)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from coarserank.errors import DataError

__all__ = ["CandidateSets", "aligned"]


@dataclass(frozen=True)
class CandidateSets:
    """Encoded candidate rows grouped into sets (one set per request): ``inputs`` (field -> array),
    ``groups`` (the set of each row), ``teacher`` (the reference's logit per row, when known) and a
    ``description`` of how the sets were drawn."""

    inputs: Mapping[str, np.ndarray]
    groups: np.ndarray
    teacher: np.ndarray | None = None
    description: str = ""

    def __post_init__(self) -> None:
        n = len(self.groups)
        bad = [k for k, v in self.inputs.items() if len(v) != n]
        if bad or (self.teacher is not None and len(self.teacher) != n):
            raise DataError(f"candidate sets: arrays disagree on the number of rows ({n} group ids; "
                            f"{', '.join(bad) or 'teacher'} differ)")

    def __len__(self) -> int:
        return len(self.groups)


def aligned(values: np.ndarray, rows: np.ndarray, expected: np.ndarray, where: str) -> np.ndarray:
    """``values`` (one per ``rows``) reordered to follow ``expected`` row ids.

    Raises
    ------
    DataError
        If the two sets of row ids differ.
    """
    if len(rows) == len(expected) and np.array_equal(rows, expected):
        return values
    order = np.argsort(rows, kind="stable")
    pos = np.searchsorted(rows, expected, sorter=order).clip(max=max(len(rows) - 1, 0))
    hit = len(rows) == len(expected) and bool((rows[order[pos]] == expected).all())
    if not hit:
        raise DataError(f"{where} does not hold one value per row of the split ({len(rows)} rows, "
                        f"{len(expected)} expected)")
    return values[order[pos]]
