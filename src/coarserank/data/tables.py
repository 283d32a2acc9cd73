"""The raw tables every data source returns, before joins, labels, splits and encoding."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

__all__ = ["RawTables"]


@dataclass(frozen=True)
class RawTables:
    """An exposure log plus optional side tables, as read from a source.

    ``exposures`` holds one row per shown item (user id, item id, label or rating, optional
    timestamp, group id and context columns). ``users`` and ``items`` hold side features keyed by
    the user and item id columns; either may be ``None`` when the log already carries them.
    ``oracle_col`` names a column of ``exposures`` holding the true click probability, when the
    source knows it (synthetic data), else ``""``.
    """

    exposures: pl.DataFrame
    users: pl.DataFrame | None = None
    items: pl.DataFrame | None = None
    oracle_col: str = ""
