"""An exposure log stored as parquet partitions, read one partition at a time.

The streaming path (``data.streaming = true``) never holds the whole log: :meth:`PartitionedLog.open`
checks every partition's footer and columns and reads only the time column to place the
``global_time`` split cutoffs; :meth:`PartitionedLog.read` then prepares one partition (side-table
joins, reserved columns, split) with global row ids, so the rows of partition ``i`` are
``offset_i, offset_i + 1, ...`` whichever process reads it.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from coarserank.config import DataConfig
from coarserank.data.prepare import annotate, split_by_time, time_cutoffs
from coarserank.data.sources import read_table
from coarserank.data.tables import RawTables
from coarserank.errors import ConfigError, DataError

__all__ = ["Partition", "PartitionedLog", "write_partitions"]


@dataclass(frozen=True)
class Partition:
    """One parquet file of the log: its path, row count and the global id of its first row."""

    path: Path
    rows: int
    offset: int


def _partition_files(root: Path) -> list[Path]:
    if root.is_file():
        return [root]
    if not root.is_dir():
        raise DataError(f"exposure log {root} does not exist")
    files = sorted(p for p in root.rglob("*.parquet") if p.is_file())
    if not files:
        raise DataError(f"exposure log directory {root} holds no *.parquet partitions")
    return files


def _read(path: Path, columns: list[str] | None = None, data: bytes | None = None) -> pl.DataFrame:
    """``path`` as a frame (from ``data`` when its bytes were already read); errors name the file."""
    try:
        return pl.read_parquet(io.BytesIO(data) if data is not None else path, columns=columns)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"parquet partition {path} cannot be read: {str(exc).splitlines()[0]}") from exc


class PartitionedLog:
    """The partitions of ``data.exposures`` under ``data.path``, with the side tables in memory.

    Example
    -------
    >>> log = PartitionedLog(cfg.data).open()      # doctest: +SKIP
    >>> frame = log.read(0)                        # partition 0, prepared, with ``_split``  # doctest: +SKIP
    """

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg

    def open(self) -> PartitionedLog:
        """Find and check the partitions, read the side tables, place the split cutoffs."""
        cfg = self.cfg
        if not cfg.exposures:
            raise ConfigError("data.exposures must name the exposure log (a directory of parquet partitions)")
        base = Path(cfg.path) if cfg.path else Path(".")
        files = _partition_files(base / cfg.exposures)
        time_col = cfg.timestamp_col
        needed = [c for c in (cfg.user_col, cfg.item_col, cfg.rating_col or cfg.label_col, time_col) if c]
        parts: list[Partition] = []
        times: list[np.ndarray] = []
        offset = 0
        for path in files:
            try:
                schema = pl.read_parquet_schema(path)
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise DataError(f"parquet partition {path} cannot be read: {str(exc).splitlines()[0]}") from exc
            missing = [c for c in needed if c not in schema]
            if missing:
                raise DataError(f"parquet partition {path}: column(s) {', '.join(map(repr, missing))} not found; "
                                f"columns that exist: {', '.join(schema)}")
            if time_col:
                t = _read(path, [time_col])[time_col]
                if t.null_count():
                    raise DataError(f"parquet partition {path}: timestamp column {time_col!r} has null values")
                times.append(t.cast(pl.Int64).to_numpy())
                rows = len(t)
            else:
                rows = int(pl.scan_parquet(path).select(pl.len()).collect().item())
                times.append(np.arange(offset, offset + rows, dtype=np.int64))
            parts.append(Partition(path, rows, offset))
            offset += rows
        if offset == 0:
            raise DataError(f"exposure log {base / cfg.exposures} has no rows")
        self.partitions_ = tuple(parts)
        self.cutoffs_ = time_cutoffs(np.concatenate(times), cfg.valid_frac, cfg.test_frac)
        valid_from, test_from = self.cutoffs_
        self.train_rows_ = tuple(int((t < valid_from).sum()) for t in times)
        test_rows = sum(int((t >= test_from).sum()) for t in times)
        self.split_rows_ = {"train": sum(self.train_rows_), "valid": offset - sum(self.train_rows_) - test_rows,
                            "test": test_rows}
        self.users_ = read_table(base / cfg.users, cfg.format, cfg.csv_separator) if cfg.users else None
        self.items_ = read_table(base / cfg.items, cfg.format, cfg.csv_separator) if cfg.items else None
        return self

    @property
    def rows(self) -> int:
        return sum(p.rows for p in self.partitions_)

    def read(self, i: int, digest: Any = None) -> pl.DataFrame:
        """Partition ``i`` prepared: joined, labelled, with global ``_row`` ids and ``_split``.
        With ``digest``, the file's bytes are fed to it (one read serves both)."""
        part = self.partitions_[i]
        data = None
        if digest is not None:
            data = part.path.read_bytes()
            digest.update(part.path.name.encode())
            digest.update(hashlib.sha256(data).digest())
        frame = _read(part.path, data=data)
        if frame.height != part.rows:
            raise DataError(f"parquet partition {part.path} changed while the run read it "
                            f"({part.rows} rows at the start, {frame.height} now)")
        prepared = annotate(RawTables(frame, self.users_, self.items_), self.cfg, part.offset,
                            f"parquet partition {part.path}")
        return prepared.with_columns(split_by_time(prepared["_time"], self.cutoffs_))


def write_partitions(raw: RawTables, directory: Path | str, rows_per_partition: int) -> list[Path]:
    """Write ``raw`` as a partitioned log: ``exposures/part-NNNNN.parquet`` (in row order) plus
    ``users.parquet`` and ``items.parquet`` when present; each file written whole, then renamed."""
    from coarserank.atomic import atomic_write_with

    if rows_per_partition < 1:
        raise ConfigError(f"rows_per_partition must be >= 1, got {rows_per_partition}")
    out = Path(directory)
    written = []
    for k, lo in enumerate(range(0, raw.exposures.height, rows_per_partition)):
        part = raw.exposures.slice(lo, rows_per_partition)
        written.append(atomic_write_with(out / "exposures" / f"part-{k:05d}.parquet", part.write_parquet, ".parquet"))
    for name, table in (("users", raw.users), ("items", raw.items)):
        if table is not None:
            written.append(atomic_write_with(out / f"{name}.parquet", table.write_parquet, ".parquet"))
    return written
