"""Time-respecting positive rates of (key, value) pairs: the statistics behind history crosses.

A history cross is the key's smoothed positive rate on the row's ``over`` values, from that key's
labelled rows with a strictly earlier ``_time`` (rows at the same instant never see each other):
``(pos + prior * base_rate) / (cnt + prior)``, or ``base_rate`` when ``cnt + prior == 0``; a
multi-valued ``over`` averages its values' rates, and a row without values gets ``base_rate``.

:class:`HistoryStats` holds the cumulative counts of every (key, value) pair over time as sorted
arrays, so any (key, value, time) query is one ``searchsorted``: prepared rows, report candidates
and the sampled pairs of entire-space distillation all read the same statistics.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import polars as pl

from coarserank.errors import DataError

__all__ = ["NONE", "HistoryStats", "dictionary_codes", "raw_keys", "raw_values", "value_matrix", "row_means"]

NONE = -1  # the code of a key or value the history never saw (or an empty slot)
_DENSE_PAIRS = 1 << 22  # (key, value) grids up to this size are indexed by a direct table


def raw_keys(series: pl.Series) -> pl.Series:
    """Keys as the strings history crosses compare (integers print as integers)."""
    return series.cast(pl.Utf8)


def raw_values(series: pl.Series, sep: str | None) -> pl.Series:
    """Per row, the list of ``over`` values: split on ``sep`` (multi) or the value itself; blanks dropped."""
    s = series.cast(pl.Utf8)
    lists = s.str.split(sep) if sep is not None else s.to_frame().select(pl.concat_list(pl.all()))[s.name]
    return lists.list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element() != "")))


def dictionary_codes(values: pl.Series, dictionary: pl.Series) -> np.ndarray:
    """Position of each value in the sorted ``dictionary``, :data:`NONE` when absent or null."""
    if not len(dictionary):
        return np.full(len(values), NONE, dtype=np.int64)
    codes = values.replace_strict(dictionary, pl.Series(np.arange(len(dictionary), dtype=np.int64)),
                                  default=NONE, return_dtype=pl.Int64)
    return codes.fill_null(NONE).to_numpy().astype(np.int64)


def value_matrix(lists: pl.Series, dictionary: pl.Series) -> np.ndarray:
    """``[n, width]`` value codes of per-row value lists (:data:`NONE` pads); width >= 1."""
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    width = max(int(lengths.max()) if len(lengths) else 0, 1)
    out = np.full((len(lengths), width), NONE, dtype=np.int64)
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.arange(len(rows)) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    out[rows, cols] = dictionary_codes(lists.explode().drop_nulls(), dictionary)
    return out


def row_means(rates: np.ndarray, valid: np.ndarray, default: float) -> np.ndarray:
    """Mean over the valid slots of each row of ``rates`` ``[n, width]``; ``default`` where none."""
    count = valid.sum(axis=1)
    total = np.where(valid, rates, 0.0).sum(axis=1)
    return np.where(count > 0, total / np.maximum(count, 1), default)


@dataclass(frozen=True)
class HistoryStats:
    """Cumulative positives and counts per (key, value) pair, indexed by time; see the module doc."""

    prior: float
    base_rate: float
    keys: pl.Series  # sorted distinct keys (strings)
    values: pl.Series  # sorted distinct values (strings)
    times: np.ndarray  # sorted distinct times of the history
    pairs: np.ndarray  # sorted distinct pair codes key * len(values) + value
    composite: np.ndarray  # sorted pair index * (len(times) + 1) + time rank, one per (pair, instant)
    pos_upto: np.ndarray  # positives of the pair up to and including that instant
    cnt_upto: np.ndarray
    dense: np.ndarray | None  # pair code -> index into pairs (NONE if unseen), for small key x value grids

    @classmethod
    def fit(cls, keys: pl.Series, values: pl.Series, times: np.ndarray, labels: np.ndarray, *,
            prior: float, base_rate: float) -> HistoryStats:
        """Statistics from labelled history rows: raw keys, per-row value lists, times and 0/1 labels."""
        key_dict = raw_keys(keys).drop_nulls().unique().sort()
        long = pl.DataFrame({"k": raw_keys(keys), "v": values, "t": times, "y": labels}).explode("v")
        long = long.filter(pl.col("k").is_not_null() & pl.col("v").is_not_null())
        value_dict = long["v"].unique().sort()
        k, v = dictionary_codes(long["k"], key_dict), dictionary_codes(long["v"], value_dict)
        pair_code = k * max(len(value_dict), 1) + v
        distinct_times = np.unique(long["t"].to_numpy())
        rank = np.searchsorted(distinct_times, long["t"].to_numpy())
        pairs, pair_index = np.unique(pair_code, return_inverse=True)
        stride = len(distinct_times) + 1
        if len(pairs) and len(pairs) > np.iinfo(np.int64).max // stride:
            raise DataError("history cross: too many (key, value) pairs x distinct times to index")
        composite = pair_index.astype(np.int64) * stride + rank
        instants, inverse = np.unique(composite, return_inverse=True)
        pos = np.bincount(inverse, weights=long["y"].to_numpy().astype(np.float64), minlength=len(instants))
        cnt = np.bincount(inverse, minlength=len(instants)).astype(np.float64)
        pair_of = instants // stride
        starts = np.flatnonzero(np.r_[True, pair_of[1:] != pair_of[:-1]]) if len(instants) else np.zeros(0, int)
        block = np.repeat(starts, np.diff(np.r_[starts, len(instants)]))
        pos_cum, cnt_cum = np.cumsum(pos), np.cumsum(cnt)
        pos_before = np.where(block > 0, pos_cum[np.maximum(block - 1, 0)], 0.0)
        cnt_before = np.where(block > 0, cnt_cum[np.maximum(block - 1, 0)], 0.0)
        grid = len(key_dict) * max(len(value_dict), 1)
        dense = None
        if grid <= _DENSE_PAIRS:
            dense = np.full(grid, NONE, dtype=np.int64)
            dense[pairs] = np.arange(len(pairs), dtype=np.int64)
        return cls(prior, base_rate, key_dict, value_dict, distinct_times, pairs, instants,
                   pos_cum - pos_before, cnt_cum - cnt_before, dense)

    def key_codes(self, keys: pl.Series) -> np.ndarray:
        return dictionary_codes(raw_keys(keys), self.keys)

    def value_codes(self, lists: pl.Series) -> np.ndarray:
        return value_matrix(lists, self.values)

    def rates(self, key: np.ndarray, value: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Rates of same-shape arrays of key codes, value codes and query times (strictly earlier
        history only); entries with a :data:`NONE` key or value have no history: ``base_rate``."""
        out = np.full(key.shape, self.base_rate, dtype=np.float64)
        asked = (key != NONE) & (value != NONE)
        at = self.pair_index(key[asked], value[asked])
        stride = len(self.times) + 1
        query = at * stride + np.searchsorted(self.times, time[asked], side="left")  # ranks strictly before
        last = np.searchsorted(self.composite, query, side="left") - 1
        found = (at != NONE) & (last >= 0) & (self.composite[np.maximum(last, 0)] // stride == at)
        pos = np.where(found, self.pos_upto[np.maximum(last, 0)], 0.0)
        cnt = np.where(found, self.cnt_upto[np.maximum(last, 0)], 0.0)
        denominator = cnt + self.prior
        with np.errstate(invalid="ignore", divide="ignore"):
            out[asked] = np.where(denominator > 0, (pos + self.prior * self.base_rate) / denominator, self.base_rate)
        return out

    def final_rates(self, key: np.ndarray, value: np.ndarray) -> np.ndarray:
        """:meth:`rates` at a time after every history row (what serving reads), from each pair's
        final counts: one index lookup per entry instead of a search over time."""
        out = np.full(key.shape, self.base_rate, dtype=np.float64)
        asked = (key != NONE) & (value != NONE)
        at = self.pair_index(key[asked], value[asked])
        out[asked] = np.where(at != NONE, self._final[np.maximum(at, 0)], self.base_rate)
        return out

    @cached_property
    def _final(self) -> np.ndarray:
        """Each seen pair's rate after every history row (``[len(pairs)]``)."""
        if not len(self.pairs):
            return np.zeros(0, dtype=np.float64)
        width = max(len(self.values), 1)
        return self.rates(self.pairs // width, self.pairs % width, np.full(len(self.pairs), self.times[-1] + 1))

    def pair_index(self, key: np.ndarray, value: np.ndarray) -> np.ndarray:
        """Index into :attr:`pairs` of each (key, value) code pair, :data:`NONE` for pairs never seen."""
        code = key * max(len(self.values), 1) + value
        if self.dense is not None:
            return self.dense[code]
        at = np.searchsorted(self.pairs, code).clip(max=max(len(self.pairs) - 1, 0))
        hit = self.pairs[at] == code if len(self.pairs) else np.zeros(code.shape, dtype=bool)
        return np.where(hit, at, NONE)


_DENSE_PAIRS = 1 << 24  # (key, value) grids up to this size are indexed by a direct table

