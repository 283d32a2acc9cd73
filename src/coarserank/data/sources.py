"""Data sources: each reads raw tables (:class:`RawTables`) and nothing more.

A source is chosen by ``data.source`` through the :data:`SOURCES` table, never by an ``if`` on a
data-set name; what the columns mean is declared in the config, not here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import polars as pl

from coarserank.config import DataConfig, SyntheticConfig
from coarserank.data.tables import RawTables
from coarserank.errors import ConfigError, DataError

__all__ = ["SOURCES", "DERIVED_COLUMNS", "load_source", "read_table", "read_movielens_100k", "read_tables"]

DERIVED_COLUMNS: dict[str, dict[str, str]] = {
    "movielens-100k": {
        "zip_prefix": "the first 3 characters of u.user's zip code, as a string (e.g. '55105' -> '551')",
        "genres": "the names of u.item's genre flags that are 1, in u.genre's order, joined by '|' "
                  "(e.g. 'Action|Comedy'; '' when none)",
        "year": "the last 4 characters of u.item's release date as an integer (e.g. '01-Jan-1995' -> 1995); "
                "missing when the date is empty",
    },
}
"""Columns a built-in source derives from its raw files, by source and column: what a serving client
must compute the same way (``distill describe``, ``docs/serving.md``). Kept beside the code that
derives them."""


def read_table(path: Path, fmt: str = "auto", separator: str = ",") -> pl.DataFrame:
    """Read one parquet or CSV file (or a directory of parquet partitions) with a clear error."""
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    kind = fmt
    if kind == "auto":
        kind = "parquet" if path.is_dir() or path.suffix in (".parquet", ".pq") else "csv"
    try:
        if kind == "parquet":
            target = str(path / "**" / "*.parquet") if path.is_dir() else str(path)
            return pl.read_parquet(target)
        return pl.read_csv(path, separator=separator, infer_schema_length=10_000)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"cannot read {path} as {kind}: {str(exc).splitlines()[0]}") from exc


def _data_dir(cfg: DataConfig) -> Path:
    if not cfg.path:
        raise ConfigError(f"data.path must name the data directory for source {cfg.source!r} (or use --data-dir)")
    path = Path(cfg.path)
    if not path.is_dir():
        raise DataError(f"data directory {path} does not exist")
    return path


def read_movielens_100k(cfg: DataConfig) -> RawTables:
    """MovieLens 100K from its original files (u.data, u.user, u.item, u.genre) in ``data.path``."""
    root = _data_dir(cfg)
    for name in ("u.data", "u.user", "u.item", "u.genre"):
        if not (root / name).is_file():
            raise DataError(f"{root} is not a MovieLens-100K directory: {name} is missing")
    ratings = pl.read_csv(root / "u.data", separator="\t", has_header=False,
                          new_columns=["user_id", "item_id", "rating", "timestamp"],
                          schema_overrides={"user_id": pl.Int64, "item_id": pl.Int64,
                                            "rating": pl.Int64, "timestamp": pl.Int64})
    users = pl.read_csv(root / "u.user", separator="|", has_header=False,
                        new_columns=["user_id", "age", "gender", "occupation", "zip"],
                        schema_overrides={"user_id": pl.Int64, "age": pl.Int64, "zip": pl.Utf8})
    users = users.with_columns(pl.col("zip").str.slice(0, 3).alias("zip_prefix")).drop("zip")
    genre_names = [line.split("|")[0] for line in (root / "u.genre").read_text().splitlines() if line.strip()]
    item_cols = ["item_id", "title", "release_date", "video_release_date", "url", *genre_names]
    items = pl.read_csv(root / "u.item", separator="|", has_header=False, new_columns=item_cols,
                        encoding="latin-1", quote_char=None,
                        schema_overrides={"item_id": pl.Int64, "release_date": pl.Utf8})
    flags = pl.concat_list([pl.when(pl.col(g) == 1).then(pl.lit(g)).otherwise(None) for g in genre_names])
    items = items.select(
        "item_id",
        flags.list.drop_nulls().list.join("|").alias("genres"),
        pl.col("release_date").str.slice(-4).cast(pl.Int64, strict=False).alias("year"),
    )
    return RawTables(exposures=ratings, users=users, items=items)


def read_tables(cfg: DataConfig) -> RawTables:
    """Any exposure log (parquet or CSV) with optional user and item tables, as the config names them."""
    if not cfg.exposures:
        raise ConfigError("data.exposures must name the exposure log file for source 'table'")
    base = Path(cfg.path) if cfg.path else Path(".")
    if cfg.path and not base.is_dir():
        raise DataError(f"data directory {base} does not exist")

    def read(name: str) -> pl.DataFrame | None:
        return read_table(base / name, cfg.format, cfg.csv_separator) if name else None

    return RawTables(exposures=read_table(base / cfg.exposures, cfg.format, cfg.csv_separator),
                     users=read(cfg.users), items=read(cfg.items))


def _synthetic(cfg: DataConfig, synthetic: SyntheticConfig, seed: int) -> RawTables:
    from coarserank.data.synthetic import generate

    return generate(synthetic, seed)


SOURCES: dict[str, Callable[[DataConfig, SyntheticConfig, int], RawTables]] = {
    "synthetic": _synthetic,
    "movielens-100k": lambda cfg, _syn, _seed: read_movielens_100k(cfg),
    "table": lambda cfg, _syn, _seed: read_tables(cfg),
}


def load_source(cfg: DataConfig, synthetic: SyntheticConfig, seed: int) -> RawTables:
    """Read the raw tables of ``cfg.source``."""
    return SOURCES[cfg.source](cfg, synthetic, seed)
