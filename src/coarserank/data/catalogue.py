"""The item catalogue of a prepared frame: one row per item with its item-side raw columns.

Entire-space distillation samples unexposed items from it, and serving encodes it into the KV
store. An item's columns are those of its latest row (by ``_time``, then ``_row``); the catalogue
holds every item of the frame (an item first shown in valid or test was in the catalogue at
training time too) with its train exposure count.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import polars as pl

from coarserank.config import DataConfig
from coarserank.data.prepare import feature_column
from coarserank.errors import ConfigError, DataError

__all__ = ["item_columns", "item_catalogue", "sample_items", "sampling_weights"]

_CHUNK_CELLS = 1 << 22  # users x catalogue keys drawn at once (32 MiB of float64)


def item_columns(cfg: DataConfig) -> list[str]:
    """The item id column, then the source column of every item-side feature (each once)."""
    cols = [cfg.item_col]
    for f in cfg.features:
        col = feature_column(f.name, f.column)
        if f.side == "item" and col not in cols:
            cols.append(col)
    return cols


def item_catalogue(frame: pl.DataFrame, cfg: DataConfig) -> pl.DataFrame:
    """Unique items of ``frame`` sorted by id: the item columns (latest row wins) and
    ``item_train_rows`` (exposures in the train split)."""
    cols = item_columns(cfg)
    latest = (frame.select(*cols, "_time", "_row").sort("_time", "_row")
              .unique(subset=cfg.item_col, keep="last", maintain_order=False).select(cols))
    counts = (frame.filter(pl.col("_split") == "train").group_by(cfg.item_col)
              .agg(pl.len().cast(pl.Int64).alias("item_train_rows")))
    return (latest.join(counts, on=cfg.item_col, how="left")
            .with_columns(pl.col("item_train_rows").fill_null(0)).sort(cfg.item_col))


def sample_items(weights: np.ndarray, n_users: int, excluded_user: np.ndarray, excluded_item: np.ndarray,
                 m: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw up to ``m`` catalogue items per user without replacement, proportional to ``weights``.

    Parameters
    ----------
    weights : np.ndarray
        Positive weight per catalogue item.
    n_users : int
        Users numbered ``0 .. n_users - 1``.
    excluded_user, excluded_item : np.ndarray
        Pairs (user number, catalogue index) that must not be drawn.
    m : int
        Items per user; a user gets fewer only when the catalogue minus exclusions is smaller.
    seed : int
        Seed of the draw; the same inputs and seed give the same sample.

    Returns
    -------
    tuple[np.ndarray, np.ndarray, np.ndarray]
        ``(user, item, order)``: user number, catalogue index and 0-based draw order per sampled
        candidate, sorted by user then order. Every prefix of a user's draw order is itself a
        weighted sample without replacement (Efraimidis-Spirakis keys ``log(u) / w``).
    """
    w = np.asarray(weights, dtype=np.float64)
    if m < 1:
        raise ConfigError(f"report.sampled must be >= 1, got {m}")
    if w.size == 0 or not (np.isfinite(w).all() and (w > 0).all()):
        raise DataError("sampling weights must be positive and finite, one per catalogue item")
    n_items = w.size
    take = min(m, n_items)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5A3B1E]))
    by_user = np.argsort(excluded_user, kind="stable")
    ex_user, ex_item = np.asarray(excluded_user)[by_user], np.asarray(excluded_item)[by_user]
    per_chunk = max(1, _CHUNK_CELLS // n_items)
    users, items, orders = [], [], []
    for lo in range(0, n_users, per_chunk):
        hi = min(n_users, lo + per_chunk)
        keys = np.log1p(-rng.random((hi - lo, n_items))) / w  # log(u), u in (0, 1]
        a, b = np.searchsorted(ex_user, [lo, hi])
        keys[ex_user[a:b] - lo, ex_item[a:b]] = -np.inf
        top = (np.argpartition(-keys, take - 1, axis=1)[:, :take] if take < n_items
               else np.broadcast_to(np.arange(n_items), keys.shape))
        top_keys = np.take_along_axis(keys, top, axis=1)
        by_key = np.argsort(-top_keys, axis=1, kind="stable")
        top, top_keys = np.take_along_axis(top, by_key, 1), np.take_along_axis(top_keys, by_key, 1)
        keep = np.isfinite(top_keys)  # excluded items sort last
        users.append(np.repeat(np.arange(lo, hi), take).reshape(hi - lo, take)[keep])
        items.append(top[keep])
        orders.append(np.broadcast_to(np.arange(take), top.shape)[keep])
    return np.concatenate(users), np.concatenate(items), np.concatenate(orders)


SamplingKind = Literal["uniform", "popularity"]


def sampling_weights(train_rows: np.ndarray, sampling: SamplingKind) -> np.ndarray:
    """Catalogue weights: all ones (uniform) or train exposures + 1 (popularity)."""
    if sampling == "uniform":
        return np.ones(len(train_rows), dtype=np.float64)
    if sampling == "popularity":
        return np.asarray(train_rows, dtype=np.float64) + 1.0
    raise ConfigError(f"report.sampling must be 'uniform' or 'popularity', got {sampling!r}")

