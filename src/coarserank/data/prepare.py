"""From raw tables to one joined, labelled, split frame with time-respecting statistical crosses.

The frame keeps the raw feature columns (encoding happens later, fitted on train rows only) plus
reserved columns: ``_row`` (row id, the key of logits and scores), ``_label`` (0/1), ``_group``
(GAUC / listwise group), ``_user``, ``_time``, ``_split`` (train/valid/test) and ``_oracle`` when
the source knows the true click probability.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from coarserank.config import DataConfig, HistoryCrossConfig
from coarserank.data.history import NONE, HistoryStats, raw_values, row_means
from coarserank.data.sequences import add_sequences
from coarserank.data.tables import RawTables
from coarserank.errors import DataError, SchemaError

__all__ = [
    "SPLITS",
    "add_history_cross",
    "add_history_crosses",
    "annotate",
    "base_rate",
    "check_label_mix",
    "check_splits",
    "feature_column",
    "history_stats",
    "prepare",
    "split_by_time",
    "split_per_user",
    "time_cutoffs",
]

SPLITS = ("train", "valid", "test")


def feature_column(name: str, column: str) -> str:
    """Source column of a feature: its ``column`` if given, else its name."""
    return column or name


def _require(frame: pl.DataFrame, columns: list[str], where: str) -> None:
    missing = [c for c in columns if c and c not in frame.columns]
    if missing:
        raise SchemaError(f"{where}: column(s) {', '.join(map(repr, missing))} not found; "
                          f"columns that exist: {', '.join(frame.columns)}")


def _join(raw: RawTables, cfg: DataConfig, row_offset: int, where: str) -> pl.DataFrame:
    frame = raw.exposures
    _require(frame, [cfg.user_col, cfg.item_col], where)
    frame = frame.with_row_index("_row").with_columns(pl.col("_row").cast(pl.Int64) + row_offset)
    for table, key, what in ((raw.users, cfg.user_col, "user table"), (raw.items, cfg.item_col, "item table")):
        if table is None:
            continue
        _require(table, [key], what)
        if table[key].is_duplicated().any():
            raise DataError(f"{what}: key column {key!r} has duplicate ids")
        extra = [c for c in table.columns if c == key or c not in frame.columns]
        frame = frame.join(table.select(extra), on=key, how="left")
    return frame.sort("_row")


def _label(frame: pl.DataFrame, cfg: DataConfig, where: str) -> pl.Series:
    """0/1 labels: a 0/1 column (integers, booleans or integral floats such as pandas writes) or a
    numeric rating column thresholded at ``label_threshold``; nulls and NaN are errors naming rows."""
    col = cfg.rating_col or cfg.label_col
    _require(frame, [col], f"{where} (label)")
    series = frame[col]
    what = "rating" if cfg.rating_col else "label"
    missing = series.is_null()
    if series.dtype.is_float():
        missing = missing | series.is_nan().fill_null(False)
    if missing.any():
        rows = missing.arg_true()
        raise DataError(f"{where}: {what} column {col!r} has {rows.len()} missing (null or NaN) value(s), first at "
                        f"row {int(rows[0])}; every exposure needs a {what}")
    if cfg.rating_col:
        if not series.dtype.is_numeric():
            raise DataError(f"{where}: rating column {col!r} must be numeric, got {series.dtype}")
        return (series.cast(pl.Float64) >= cfg.label_threshold).cast(pl.Int8)
    if series.dtype == pl.Boolean:
        return series.cast(pl.Int8)
    if series.dtype.is_numeric():
        x = series.cast(pl.Float64)
        bad = series.filter((x != 0.0) & (x != 1.0)).unique().sort().head(5).to_list()
    else:
        bad = series.unique().sort().head(5).to_list()
    if bad:
        raise DataError(f"{where}: label column {col!r} must hold only 0 and 1; found values such as {bad} "
                        "(for ratings set data.rating_col and data.label_threshold)")
    return series.cast(pl.Float64).cast(pl.Int8)


def split_per_user(frame: pl.DataFrame, valid_frac: float, test_frac: float) -> pl.Series:
    """train/valid/test per user by time: the last ``test_frac`` of each user's rows (rounded, at
    least one row left for train) go to test and the ``valid_frac`` before them to valid."""
    ranked = (frame.select("_row", "_user", "_time").sort("_user", "_time", "_row")
              .with_columns(pl.int_range(1, pl.len() + 1, dtype=pl.Int64).over("_user").alias("r"),
                            pl.len().over("_user").cast(pl.Int64).alias("n")))
    n = pl.col("n")
    n_test = pl.min_horizontal((n * test_frac + 0.5).floor().cast(pl.Int64), n - 1)
    n_valid = pl.min_horizontal((n * valid_frac + 0.5).floor().cast(pl.Int64), n - 1 - n_test)
    split = (pl.when(pl.col("r") > n - n_test).then(pl.lit("test"))
             .when(pl.col("r") > n - n_test - n_valid).then(pl.lit("valid"))
             .otherwise(pl.lit("train")))
    return ranked.select("_row", split.alias("_split")).sort("_row")["_split"]


def add_history_cross(frame: pl.DataFrame, h: HistoryCrossConfig, key_col: str, over_col: str,
                      over_sep: str | None, base_rate: float, history: pl.DataFrame | None = None) -> pl.DataFrame:
    """Add column ``h.name``: the key's positive rate on the row's ``over`` values, smoothed toward
    ``base_rate`` with ``h.prior`` pseudo-rows, from that key's labelled rows with a strictly earlier
    ``_time`` only (rows at the same instant never see each other); see :mod:`coarserank.data.history`.
    ``history`` (default: ``frame`` itself) supplies the labelled rows, so unlabelled query rows
    (candidates to score) get the value they would have at their ``_time``."""
    stats = history_stats(frame if history is None else history, h, key_col, over_col, over_sep, base_rate)
    values = stats.value_codes(raw_values(frame[over_col], over_sep))
    keys = np.broadcast_to(stats.key_codes(frame[key_col])[:, None], values.shape)
    times = np.broadcast_to(frame["_time"].to_numpy()[:, None], values.shape)
    rates = row_means(stats.rates(keys, values, times), values != NONE, base_rate)
    return frame.with_columns(pl.Series(h.name, rates, dtype=pl.Float64))


def history_stats(history: pl.DataFrame, h: HistoryCrossConfig, key_col: str, over_col: str,
                  over_sep: str | None, base_rate: float) -> HistoryStats:
    """The statistics of history cross ``h`` over the labelled rows of ``history``."""
    labelled = history.filter(pl.col("_label").is_not_null())
    return HistoryStats.fit(labelled[key_col], raw_values(labelled[over_col], over_sep), labelled["_time"].to_numpy(),
                            labelled["_label"].to_numpy(), prior=h.prior, base_rate=base_rate)


def annotate(raw: RawTables, cfg: DataConfig, row_offset: int = 0, where: str = "exposure log") -> pl.DataFrame:
    """Join the side tables and add the reserved columns ``_row`` (from ``row_offset``), ``_label``,
    ``_user``, ``_time``, ``_group`` (and ``_oracle``); checks every declared column exists.
    ``where`` names the input in errors (a partition's file, say)."""
    frame = _join(raw, cfg, row_offset, where)
    feature_cols = [feature_column(f.name, f.column) for f in cfg.features if f.kind != "sequence" or f.column]
    _require(frame, feature_cols, f"{where}: data.features")
    time = pl.col(cfg.timestamp_col) if cfg.timestamp_col else pl.col("_row")
    if cfg.timestamp_col:
        _require(frame, [cfg.timestamp_col], f"{where}: data.timestamp_col")
        if frame[cfg.timestamp_col].null_count():
            raise DataError(f"{where}: timestamp column {cfg.timestamp_col!r} has null values")
    if cfg.group_col:
        _require(frame, [cfg.group_col], f"{where}: data.group_col")
    if frame[cfg.user_col].null_count():
        raise DataError(f"{where}: user id column {cfg.user_col!r} has null values")
    _check_item_ids(frame[cfg.item_col], where)
    frame = frame.with_columns(
        _label(frame, cfg, where).alias("_label"),
        pl.col(cfg.user_col).alias("_user"),
        time.cast(pl.Int64).alias("_time"),
        pl.col(cfg.group_col or cfg.user_col).alias("_group"),
    )
    if raw.oracle_col:
        frame = frame.with_columns(pl.col(raw.oracle_col).cast(pl.Float64).alias("_oracle"))
    return frame


def _check_item_ids(ids: pl.Series, where: str) -> None:
    """Item ids must be int64 numbers: the KV store and the Faiss index key items by them."""
    if ids.null_count():
        raise DataError(f"{where}: item id column {ids.name!r} has {ids.null_count()} null value(s)")
    if ids.dtype.is_integer():
        return
    if ids.dtype.is_float():
        bad = ids.filter(ids.is_nan() | (ids != ids.round()) | (ids.abs() >= 2.0**63))
    else:
        as_int = ids.cast(pl.Utf8).str.strip_chars().cast(pl.Int64, strict=False)
        bad = ids.filter(as_int.is_null())
    if bad.len():
        raise DataError(f"{where}: item id column {ids.name!r} must hold integer ids (the KV store and the Faiss "
                        f"index key items by int64); found {bad.len()} {ids.dtype} value(s) such as "
                        f"{bad.unique(maintain_order=True).head(3).to_list()}; map the item ids to integers first")


def check_label_mix(frame: pl.DataFrame, cfg: DataConfig) -> None:
    """Every split holds both labels, and valid and test hold at least one group with both (GAUC,
    early stopping and the metrics need one); the error names the split."""
    group = cfg.group_col or cfg.user_col
    per_split = (frame.group_by("_split", "_group")
                 .agg(pl.col("_label").sum().alias("pos"), pl.len().alias("n"))
                 .group_by("_split")
                 .agg(pl.col("pos").sum(), pl.col("n").sum(),
                      ((pl.col("pos") > 0) & (pl.col("pos") < pl.col("n"))).sum().alias("mixed"),
                      pl.len().alias("groups")))
    facts = {row["_split"]: row for row in per_split.iter_rows(named=True)}
    for split in SPLITS:
        f = facts.get(split)
        if f is None:
            continue  # check_splits names empty splits
        if f["pos"] in (0, f["n"]):
            which = "positive" if f["pos"] == 0 else "negative"
            raise DataError(f"the {split} split has no {which} label among its {f['n']:,} rows; every split needs "
                            "both (more data, or other data.valid_frac / data.test_frac)")
        if split != "train" and f["mixed"] == 0:
            raise DataError(f"the {split} split has no group (by {group!r}) with both a positive and a negative "
                            f"label among its {f['groups']:,} groups of {f['n']:,} rows; GAUC, early stopping and "
                            "the metrics need some (more data, or a larger data.valid_frac / data.test_frac)")


def time_cutoffs(times: np.ndarray, valid_frac: float, test_frac: float) -> tuple[int, int]:
    """``(valid_from, test_from)``: rows at or after ``test_from`` are the last ``test_frac`` of the
    log by time, those from ``valid_from`` the ``valid_frac`` before them (rows at one instant stay
    together, so shares are approximate when times repeat)."""
    n = len(times)
    n_test = int(n * test_frac + 0.5)
    n_valid = int(n * valid_frac + 0.5)
    never = np.iinfo(np.int64).max

    def kth(k: int) -> int:
        return int(np.partition(times, k)[k]) if 0 <= k < n else never

    test_from = kth(n - n_test) if n_test else never
    valid_from = kth(n - n_test - n_valid) if n_valid else test_from
    return valid_from, test_from


def split_by_time(times: pl.Series, cutoffs: tuple[int, int]) -> pl.Series:
    """train / valid / test by the ``(valid_from, test_from)`` cutoffs of :func:`time_cutoffs`."""
    valid_from, test_from = cutoffs
    t = pl.col("_time")
    split = (pl.when(t >= test_from).then(pl.lit("test")).when(t >= valid_from).then(pl.lit("valid"))
             .otherwise(pl.lit("train")))
    return times.alias("_time").to_frame().select(split.alias("_split"))["_split"]


def check_splits(counts: dict[str, int], cfg: DataConfig) -> None:
    """Every split the fractions ask for has rows."""
    for split, frac in (("train", 1.0), ("valid", cfg.valid_frac), ("test", cfg.test_frac)):
        if frac > 0 and not counts.get(split):
            how = "users need more rows for" if cfg.split == "user_time" else "the log needs more distinct times for"
            raise DataError(f"the {split} split is empty: {how} a "
                            f"valid_frac={cfg.valid_frac}, test_frac={cfg.test_frac} split ({cfg.split})")


def prepare(raw: RawTables, cfg: DataConfig, where: str = "exposure log") -> pl.DataFrame:
    """Join, label, split and add history crosses; checks every declared column exists (errors
    name the input as ``where``)."""
    if raw.exposures.height == 0:
        raise DataError(f"the {where} has no rows")
    frame = annotate(raw, cfg, where=where)
    if cfg.split == "global_time":
        split = split_by_time(frame["_time"], time_cutoffs(frame["_time"].to_numpy(), cfg.valid_frac, cfg.test_frac))
    else:
        split = split_per_user(frame, cfg.valid_frac, cfg.test_frac)
    frame = frame.with_columns(split)
    check_splits(dict(frame.group_by("_split").len().iter_rows()), cfg)
    frame = add_sequences(frame, cfg)
    return add_history_crosses(frame, cfg, base_rate(frame)).sort("_row")


def base_rate(frame: pl.DataFrame) -> float:
    """Positive rate of the train rows: the prior every history cross is smoothed toward."""
    return float(frame.filter(pl.col("_split") == "train")["_label"].mean() or 0.0)


def add_history_crosses(frame: pl.DataFrame, cfg: DataConfig, prior_rate: float,
                        history: pl.DataFrame | None = None) -> pl.DataFrame:
    """Every configured history cross of ``frame`` (rows need ``_row`` and ``_time``), computed from
    the labelled rows of ``history`` (default: ``frame``)."""
    by_name = {f.name: f for f in cfg.features}
    for h in cfg.history_crosses:
        key, over = by_name[h.key], by_name[h.over]
        frame = add_history_cross(frame, h, feature_column(key.name, key.column),
                                  feature_column(over.name, over.column),
                                  over.sep if over.kind == "multi" else None, prior_rate, history)
    return frame
