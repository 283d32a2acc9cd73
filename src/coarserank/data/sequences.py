"""Behaviour sequences: each row's user history of an item-side field, from strictly earlier rows.

A ``sequence`` feature (see :class:`~coarserank.config.FeatureConfig`) holds the raw values of the
item-side categorical feature ``of`` over the user's last ``max_len`` exposures with a ``_time``
strictly before the row's (rows at the same instant never see each other), most recent first,
joined by the feature's ``sep``. ``events = "positive"`` keeps only rows labelled 1. Built for a
whole frame at once by one sort over (user, time): no per-row Python.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from coarserank.config import DataConfig, FeatureConfig
from coarserank.errors import SchemaError

__all__ = ["built_sequences", "add_sequences", "history_positions"]


def built_sequences(cfg: DataConfig) -> list[FeatureConfig]:
    """The sequence features ``prepare`` builds (those without a ready-made ``column``)."""
    return [f for f in cfg.features if f.kind == "sequence" and not f.column]


def _raw_values(frame: pl.DataFrame, of: FeatureConfig) -> pl.Series:
    """The ``of`` feature's raw values as strings (integral floats as integers, like the encoder)."""
    col = of.column or of.name
    s = frame[col]
    if s.dtype.is_float():
        if (s.drop_nulls() != s.drop_nulls().round()).any():
            raise SchemaError(f"sequence source {of.name!r}: column {col!r} holds fractional numbers")
        s = s.cast(pl.Int64)
    return s.cast(pl.Utf8)


def history_positions(query_user: np.ndarray, query_time: np.ndarray, event_user: np.ndarray,
                      event_time: np.ndarray, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """For each query, the indices of its user's last ``max_len`` events strictly before its time.

    Users are integer codes shared by queries and events; events must be sorted by (user, time).
    Returns ``(offsets, flat)``: query ``i``'s event indices, most recent first, are
    ``flat[offsets[i]:offsets[i + 1]]``.
    """
    n_q, n_e = len(query_user), len(event_user)
    users = np.concatenate([query_user, event_user])
    times = np.concatenate([query_time, event_time])
    is_event = np.concatenate([np.zeros(n_q, dtype=np.int8), np.ones(n_e, dtype=np.int8)])
    order = np.lexsort((is_event, times, users))  # at one instant queries sort before events
    events_before = np.cumsum(is_event[order]) - is_event[order]
    end = np.empty(n_q, dtype=np.int64)
    queries = order[is_event[order] == 0]
    end[queries] = events_before[is_event[order] == 0]
    n_users = int(users.max()) + 1 if len(users) else 0
    user_start = np.concatenate([[0], np.cumsum(np.bincount(event_user, minlength=n_users))])[:-1]
    start = user_start[query_user] if n_q else np.zeros(0, dtype=np.int64)
    count = np.minimum(end - start, max_len).clip(min=0)
    offsets = np.concatenate([[0], np.cumsum(count)]).astype(np.int64)
    within = np.arange(offsets[-1], dtype=np.int64) - np.repeat(offsets[:-1], count)
    return offsets, np.repeat(end - 1, count) - within


def _sequence_column(frame: pl.DataFrame, history: pl.DataFrame, f: FeatureConfig, of: FeatureConfig) -> pl.Series:
    events = history.filter(pl.col("_label").is_not_null())
    if f.events == "positive":
        events = events.filter(pl.col("_label") == 1)
    events = events.with_columns(_raw_values(events, of).alias("_v")).filter(pl.col("_v").is_not_null())
    users = pl.concat([frame["_user"], events["_user"]]).rank("dense").cast(pl.Int64).to_numpy() - 1
    q_user, e_user = users[:frame.height], users[frame.height:]
    e_time, e_row = events["_time"].to_numpy(), events["_row"].to_numpy()
    by_time = np.lexsort((e_row, e_time, e_user))
    offsets, flat = history_positions(q_user, frame["_time"].to_numpy(), e_user[by_time], e_time[by_time],
                                      f.max_len)
    owner = np.repeat(np.arange(frame.height, dtype=np.int64), np.diff(offsets))
    long = pl.DataFrame({"q": owner, "v": events["_v"].gather(by_time[flat])})
    joined = long.group_by("q", maintain_order=True).agg(pl.col("v").str.join(f.sep))  # keeps row order
    empty = pl.Series(f.name, [""], dtype=pl.Utf8).extend_constant("", frame.height - 1) if frame.height else \
        pl.Series(f.name, [], dtype=pl.Utf8)
    return empty.scatter(joined["q"], joined["v"])


def add_sequences(frame: pl.DataFrame, cfg: DataConfig, history: pl.DataFrame | None = None) -> pl.DataFrame:
    """Add every built sequence feature of ``cfg`` to ``frame`` (rows need ``_user``, ``_time``).

    ``history`` (default: ``frame``) supplies the events: its labelled rows with ``_row``, so
    unlabelled query rows (candidates to score) get the history they would have at their ``_time``.
    """
    history = frame if history is None else history
    by_name = {f.name: f for f in cfg.features}
    columns = [_sequence_column(frame, history, f, by_name[f.of]) for f in built_sequences(cfg)]
    return frame.with_columns(columns) if columns else frame
