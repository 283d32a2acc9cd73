"""The item catalogue: one row per item with its item-side raw feature columns.

The export stage derives the catalogue from the prepared frame (every item seen in any split; an
item's values are those of its latest exposure) and writes it to ``items.parquet``. Item vectors in
the KV store and the Faiss index are the item tower's output on these raw columns, through the same
ONNX graph a serving system uses for new items (:func:`encode_items`).

The teacher scores a (user, item) pair from the raw user, context *and* item columns plus its
history crosses. :func:`teacher_frame` assembles those rows for a candidate list: the catalogue's
item columns gathered by id, the request's user and context values repeated per row, and the
history-cross columns, which a serving system reads from its feature store (per user and item
attribute, e.g. the user's click rate on the candidate's category) and which coarserank computes
from the run's labelled rows with :func:`coarserank.data.prepare.add_history_crosses`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
import polars as pl

from coarserank.atomic import atomic_write_with
from coarserank.config import DataConfig
from coarserank.data.catalogue import item_columns
from coarserank.data.encode import Encoder
from coarserank.data.prepare import add_history_crosses, feature_column
from coarserank.errors import ArtifactError, DataError, ServingError
from coarserank.serving.onnx_inputs import feeds_from_frame

__all__ = ["item_columns", "user_columns", "build_catalogue", "write_catalogue", "read_catalogue",
           "catalogue_ids", "RowIndex",
           "encode_items", "gather_items", "teacher_frame"]

_ENCODE_CHUNK: Final[int] = 65_536
_DIRECT_SPREAD: Final[int] = 8


def user_columns(cfg: DataConfig) -> dict[str, str]:
    """``{feature name: source column}`` of the user- and context-side features (what a request carries)."""
    return {f.name: feature_column(f.name, f.column) for f in cfg.features if f.side in ("user", "context")}


def build_catalogue(frame: pl.DataFrame, cfg: DataConfig) -> pl.DataFrame:
    """Unique items of ``frame`` with their item columns (latest exposure wins), sorted by id.

    Raises
    ------
    DataError
        If the item id column is not integer (the KV store and Faiss key items by int64).
    """
    cols = item_columns(cfg)
    ids = frame[cfg.item_col]
    if not ids.dtype.is_integer():
        raise DataError(f"item id column {cfg.item_col!r} is {ids.dtype}; the KV store and the Faiss index "
                        "need integer item ids (map them to integers in the source table)")
    return (frame.select(*cols, "_time", "_row").sort("_time", "_row")
            .unique(subset=cfg.item_col, keep="last", maintain_order=False)
            .select(cols).with_columns(pl.col(cfg.item_col).cast(pl.Int64)).sort(cfg.item_col))


def write_catalogue(path: Path | str, catalogue: pl.DataFrame) -> Path:
    """Write the catalogue as parquet, atomically."""
    return atomic_write_with(path, catalogue.write_parquet, ".parquet")


def read_catalogue(path: Path | str, cfg: DataConfig) -> pl.DataFrame:
    """Read a catalogue and check it has the run's item columns.

    Raises
    ------
    ArtifactError
        A missing or unreadable file, or missing columns.
    """
    try:
        catalogue = pl.read_parquet(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise ArtifactError(f"item catalogue {path} is missing or unreadable: {exc}") from exc
    missing = [c for c in item_columns(cfg) if c not in catalogue.columns]
    if missing:
        raise ArtifactError(f"item catalogue {path} lacks column(s) {missing}")
    return catalogue


def catalogue_ids(catalogue: pl.DataFrame, cfg: DataConfig) -> np.ndarray:
    """The catalogue's item ids as int64."""
    return catalogue[cfg.item_col].cast(pl.Int64).to_numpy()


def encode_items(session: Any, encoder: Encoder, items: pl.DataFrame) -> np.ndarray:
    """Item vectors ``float32 [n, dim]`` from raw item columns through the ONNX item tower.

    ``session`` is an ``onnxruntime.InferenceSession`` of ``item_tower.onnx``; works in chunks so a
    million-item catalogue stays within memory. New items (unseen ids, known content features) are
    encoded the same way: the id goes to the OOV bucket, the content features carry the vector.
    """
    if items.height == 0:
        raise DataError("no items to encode")
    output = session.get_outputs()[0].name
    parts = []
    for start in range(0, items.height, _ENCODE_CHUNK):
        feeds = feeds_from_frame(encoder, items.slice(start, _ENCODE_CHUNK), "item")
        parts.append(np.asarray(session.run([output], feeds)[0], dtype=np.float32))
    return np.concatenate(parts) if len(parts) > 1 else parts[0]


class RowIndex:
    """The catalogue row of each item id: a direct table when the ids are non-negative and dense
    enough (at most :data:`_DIRECT_SPREAD` slots per item), else a binary search over the sorted ids.

    A request's 1,000 candidates are a gather from the table, where a search costs ``log2(n)``
    probes per id through an indirection.
    """

    def __init__(self, ids: np.ndarray) -> None:
        self.ids = np.asarray(ids, dtype=np.int64)
        self._order = np.argsort(self.ids, kind="stable")
        self._table: np.ndarray | None = None
        if self.ids.size and int(self.ids.min()) >= 0 and int(self.ids.max()) < _DIRECT_SPREAD * self.ids.size:
            self._table = np.full(int(self.ids.max()) + 1, -1, dtype=np.int64)
            unique, first = np.unique(self.ids, return_index=True)  # the first row of a repeated id wins
            self._table[unique] = first

    def lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(rows, found)``: the catalogue row of each id (meaningless where not found) and the mask
        of ids in the catalogue."""
        if self.ids.size == 0:
            return np.zeros(ids.size, dtype=np.int64), np.zeros(ids.size, dtype=bool)
        if self._table is not None:
            inside = (ids >= 0) & (ids < self._table.size)
            rows = self._table[np.where(inside, ids, 0)]
            found = inside & (rows >= 0)
            return np.maximum(rows, 0), found
        at = np.searchsorted(self.ids, ids, sorter=self._order).clip(max=self.ids.size - 1)
        rows = self._order[at]
        return rows, self.ids[rows] == ids


def gather_items(catalogue: pl.DataFrame, cfg: DataConfig, ids: np.ndarray) -> pl.DataFrame:
    """Catalogue rows for ``ids`` in the order given.

    Raises
    ------
    ServingError
        If some ids are not in the catalogue (naming the first few).
    """
    rows, hit = RowIndex(catalogue_ids(catalogue, cfg)).lookup(ids)
    if not hit.all():
        raise ServingError(f"{int((~hit).sum())} item id(s) are not in the catalogue, "
                           f"e.g. {ids[~hit][:5].tolist()}")
    return catalogue[rows]


def teacher_frame(catalogue: pl.DataFrame, cfg: DataConfig, ids: np.ndarray, user: dict[str, Any],
                  history: pl.DataFrame | None = None, prior_rate: float = 0.0) -> pl.DataFrame:
    """One row per candidate with everything ``teacher.onnx`` reads: the candidate's item columns,
    the request's user/context values (``user`` keyed by feature name), and the history crosses
    computed from ``history`` (labelled rows with ``_time``) as of just after its last row; without
    ``history`` they are NaN (missing).

    Raises
    ------
    ServingError
        Unknown ids, or a user/context feature missing from ``user``.
    """
    frame = gather_items(catalogue, cfg, np.asarray(ids, dtype=np.int64))
    wanted = user_columns(cfg)
    missing = [name for name in wanted if name not in user]
    if missing:
        raise ServingError(f"the user lacks feature(s) {missing} the teacher reads")
    frame = frame.with_columns(pl.repeat(user[name], frame.height).alias(col) for name, col in wanted.items()
                               if col not in frame.columns)
    names = [h.name for h in cfg.history_crosses]
    if history is None or not names:
        return frame.with_columns(pl.lit(float("nan")).alias(n) for n in names)
    now = int(history["_time"].max()) + 1
    query = frame.with_columns(pl.int_range(frame.height, dtype=pl.Int64).alias("_row"),
                               pl.lit(now).alias("_time"))
    return add_history_crosses(query, cfg, prior_rate, history).sort("_row").drop("_row", "_time")
