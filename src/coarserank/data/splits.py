"""Typed data handed between stages: an encoded split and its prepared rows.

An :class:`EncodedSplit` is what every model and metric reads: the encoder's arrays per field,
the label, the group ids (GAUC, listwise losses) and the global row ids that tie each row back to
the prepared frame and to the teacher's logits files. It is frozen: stages pass it explicitly
instead of sharing a mutable context.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import polars as pl

from coarserank.data.encode import Encoder
from coarserank.errors import DataError

__all__ = ["CandidateSets", "EncodedSplit", "aligned"]


@dataclass(frozen=True)
class EncodedSplit:
    """One split, encoded: ``inputs`` (field -> array, first axis = rows), ``label`` (0/1),
    ``group`` (int64 group ids), ``rows`` (the prepared frame's ``_row`` ids), all in row order."""

    name: str
    inputs: Mapping[str, np.ndarray]
    label: np.ndarray
    group: np.ndarray
    rows: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.rows)
        bad = [k for k, v in self.inputs.items() if len(v) != n]
        if bad or len(self.label) != n or len(self.group) != n:
            raise DataError(f"split {self.name!r}: arrays disagree on the number of rows ({n} row ids; "
                            f"{', '.join(bad) or 'label or group'} differ)")

    def __len__(self) -> int:
        return len(self.rows)

    @classmethod
    def encode(cls, name: str, frame: pl.DataFrame, encoder: Encoder) -> EncodedSplit:
        """Encode a prepared split frame (``_label``, ``_group`` and ``_row`` columns)."""
        return cls(name, encoder.transform(frame), frame["_label"].to_numpy(), frame["_group"].to_numpy(),
                   frame["_row"].to_numpy())

    def select(self, fields: Iterable[str]) -> EncodedSplit:
        """The same rows with only ``fields`` as inputs."""
        return EncodedSplit(self.name, {f: self.inputs[f] for f in fields}, self.label, self.group, self.rows)


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
