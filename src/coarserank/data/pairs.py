"""Encoded inputs for (exposure row, catalogue item) pairs the log never showed.

Entire-space distillation lets the teacher score items a user was not shown: the pair copies the
exposure row's user and context fields (its behaviour sequences included) and takes the item
fields from the catalogue. Cross fields that involve the item are rebuilt for the pair exactly as
:class:`~coarserank.data.encode.Encoder` would encode the raw pair at the row's time:

- product cross: the pair code of the operands' codes (:meth:`Encoder.product_codes`);
- match cross: equality of the raw values, through codes in the item operand's dictionary;
- history cross: the same :class:`~coarserank.data.history.HistoryStats` as prepared rows, queried
  at the row's ``_time``.

Everything is done on encoded arrays, a batch at a time, so no raw frame is re-encoded while
training. :meth:`PairEncoder.row_context` adds the hidden per-row columns (``_time``, ``_item``
and raw-value codes, names starting with ``_``) that pairs need; models ignore them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from coarserank.config import CrossConfig, DataConfig, HistoryCrossConfig
from coarserank.data.encode import Encoder, raw_categorical
from coarserank.data.history import NONE, HistoryStats, dictionary_codes, raw_values, row_means
from coarserank.data.prepare import base_rate, feature_column, history_stats
from coarserank.errors import DataError

__all__ = ["ROW_TIME", "ROW_ITEM", "PairEncoder"]

ROW_TIME = "_time"
ROW_ITEM = "_item"


@dataclass(frozen=True)
class _HistoryPlan:
    """A history cross that involves the item side: its statistics and where key and values come from."""

    cross: HistoryCrossConfig
    stats: HistoryStats
    key_from_item: bool
    over_from_item: bool


class PairEncoder:
    """Teacher inputs of (row, catalogue item) pairs; fitted on the prepared frame and the catalogue.

    Example
    -------
    >>> pairs = PairEncoder(cfg.data, encoder).fit(frame, catalogue)        # doctest: +SKIP
    >>> rows = encoder.transform(train) | pairs.row_context(train)          # doctest: +SKIP
    >>> inputs = pairs.encode({k: v[row] for k, v in rows.items()}, item)   # doctest: +SKIP
    """

    def __init__(self, cfg: DataConfig, encoder: Encoder) -> None:
        self.cfg = cfg
        self.encoder = encoder

    def _item_side(self, feature: str) -> bool:
        return next(f for f in self.cfg.features if f.name == feature).side == "item"

    def _column(self, feature: str) -> str:
        f = next(f for f in self.cfg.features if f.name == feature)
        return feature_column(f.name, f.column)

    def _sep(self, feature: str) -> str | None:
        f = next(f for f in self.cfg.features if f.name == feature)
        return f.sep if f.kind == "multi" else None

    def fit(self, frame: pl.DataFrame, catalogue: pl.DataFrame) -> PairEncoder:
        """``frame``: the prepared frame (its labelled rows are the history crosses' history);
        ``catalogue``: one row per item with the item columns (:func:`~coarserank.data.catalogue.item_catalogue`)."""
        schema = self.encoder.schema_
        self.item_ids_ = catalogue[self.cfg.item_col]
        self.item_train_rows_ = (catalogue["item_train_rows"].to_numpy().astype(np.int64)
                                 if "item_train_rows" in catalogue.columns else np.zeros(catalogue.height, np.int64))
        self.items_ = self.encoder.transform(catalogue, fields=schema.select(("item",)).names)
        self.products_ = [c for c in self.cfg.crosses
                          if c.op == "product" and (self._item_side(c.a) or self._item_side(c.b))]
        self.matches_: dict[str, tuple[CrossConfig, pl.Series, np.ndarray]] = {}
        for c in self.cfg.crosses:
            if c.op != "match" or not (self._item_side(c.a) or self._item_side(c.b)):
                continue
            if self._item_side(c.a) and self._item_side(c.b):  # no row operand: the item's own value
                self.items_[c.name] = self.encoder.transform(catalogue, fields=[c.name])[c.name]
                continue
            item_op = c.a if self._item_side(c.a) else c.b
            values = raw_categorical(catalogue, next(f for f in self.cfg.features if f.name == item_op)).cast(pl.Utf8)
            dictionary = values.drop_nulls().unique().sort()
            self.matches_[c.name] = (c, dictionary, dictionary_codes(values, dictionary))
        rate = base_rate(frame)
        self.histories_: dict[str, _HistoryPlan] = {}
        self.history_items_: dict[str, np.ndarray] = {}
        for h in self.cfg.history_crosses:
            key_item, over_item = self._item_side(h.key), self._item_side(h.over)
            if not (key_item or over_item):
                continue
            stats = history_stats(frame, h, self._column(h.key), self._column(h.over), self._sep(h.over), rate)
            self.histories_[h.name] = _HistoryPlan(h, stats, key_item, over_item)
            if over_item:
                self.history_items_[h.name] = stats.value_codes(raw_values(catalogue[self._column(h.over)],
                                                                           self._sep(h.over)))
            if key_item:
                self.history_items_["key:" + h.name] = stats.key_codes(catalogue[self._column(h.key)])
        return self

    @property
    def n_items(self) -> int:
        return len(self.item_ids_)

    def row_context(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        """Hidden per-row columns the pairs of ``frame``'s rows need (``_time``, ``_item``, raw codes)."""
        ids = frame[self.cfg.item_col].cast(self.item_ids_.dtype, strict=False)
        at = ids.replace_strict(self.item_ids_, pl.Series(np.arange(self.n_items, dtype=np.int64)), default=NONE,
                                return_dtype=pl.Int64).fill_null(NONE).to_numpy()
        out = {ROW_TIME: frame["_time"].to_numpy().astype(np.int64), ROW_ITEM: at.astype(np.int64)}
        for name, (c, dictionary, _) in self.matches_.items():
            row_op = c.b if self._item_side(c.a) else c.a
            values = raw_categorical(frame, next(f for f in self.cfg.features if f.name == row_op)).cast(pl.Utf8)
            out["_mr/" + name] = dictionary_codes(values, dictionary)
        for name, plan in self.histories_.items():
            h = plan.cross
            if not plan.key_from_item:
                out["_hk/" + name] = plan.stats.key_codes(frame[self._column(h.key)])
            if not plan.over_from_item:
                out["_hv/" + name] = plan.stats.value_codes(raw_values(frame[self._column(h.over)], self._sep(h.over)))
        return out

    def item_inputs(self, item: np.ndarray) -> dict[str, np.ndarray]:
        """Encoded item-side fields of catalogue rows ``item`` (what an item tower reads)."""
        return {name: self.items_[name][item] for name in self.encoder.schema_.select(("item",)).names}

    def encode(self, rows: dict[str, np.ndarray], item: np.ndarray) -> dict[str, np.ndarray]:
        """Every schema field for pairs: ``rows`` holds each pair's row (encoded fields and
        :meth:`row_context` columns, one entry per pair), ``item`` its catalogue index."""
        if len(item) and (item.min() < 0 or item.max() >= self.n_items):
            raise DataError(f"pair item index outside the catalogue of {self.n_items} items")
        out = {name: self.items_[name][item] if name in self.items_ else rows[name]
               for name in self.encoder.schema_.names if name in self.items_ or name in rows}
        for c in self.products_:
            out[c.name] = self.encoder.product_codes(c, out[c.a], out[c.b])
        for name, (_, _, item_codes) in self.matches_.items():
            row_codes = rows["_mr/" + name]
            equal = (row_codes == item_codes[item]) & (row_codes != NONE)
            out[name] = self.encoder.normalise(name, equal.astype(np.float64))
        for name, plan in self.histories_.items():
            out[name] = self.encoder.normalise(name, self._history(name, plan, rows, item))
        return {name: out[name] for name in self.encoder.schema_.names}

    def _history(self, name: str, plan: _HistoryPlan, rows: dict[str, np.ndarray], item: np.ndarray) -> np.ndarray:
        values = self.history_items_[name][item] if plan.over_from_item else rows["_hv/" + name]
        keys = self.history_items_["key:" + name][item] if plan.key_from_item else rows["_hk/" + name]
        keys = np.broadcast_to(keys[:, None], values.shape)
        times = np.broadcast_to(rows[ROW_TIME][:, None], values.shape)
        return row_means(plan.stats.rates(keys, values, times), values != NONE, plan.stats.base_rate)

