"""``cr.Dataset``: a prepared, encoded log built from a configuration or from a polars frame.

Both ways go through the data stage's own code (:func:`~coarserank.data.prepare.prepare`, then
:func:`~coarserank.data.dataset.encode_splits`): labels, the time split, history crosses and an
encoder fitted on the train rows only, exactly as ``distill run`` prepares a log.

Example
-------
>>> ds = Dataset.from_frame(log, features=[{"name": "user_id", "side": "user", "kind": "categorical"},
...                                        {"name": "item_id", "side": "item", "kind": "categorical"}],
...                         label="click", timestamp="ts")                          # doctest: +SKIP
>>> train, valid, test = ds.splits()                                                  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Mapping, Sequence
from typing import Any

import polars as pl

from coarserank.config import DataConfig, FeatureConfig, RunConfig, config_to_dict, load_config, validate
from coarserank.config_rules import check_keys, coerce_tree
from coarserank.data.dataset import EncodedSplit, PreparedData, encode_splits
from coarserank.data.pairs import PairEncoder
from coarserank.data.prepare import prepare
from coarserank.data.schema import Schema
from coarserank.data.sources import load_source
from coarserank.data.tables import RawTables
from coarserank.errors import ConfigError

__all__ = ["Dataset"]

_FROM_FRAME = "Dataset.from_frame"
_OWN_KEYS = {"source": "", "path": "", "exposures": "", "users": "users=", "items": "items=", "format": "",
             "csv_separator": "", "streaming": "", "features": "features=", "user_col": "user=",
             "item_col": "item=", "label_col": "label=", "group_col": "group=", "timestamp_col": "timestamp="}
"""data keys ``from_frame`` sets itself -> the argument that gives them ('' when none does)."""


def _plain(value: Any) -> Any:
    """A config dataclass (or a list of them) as the plain dicts the config loader coerces."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _table(value: Any, arg: str, key: str) -> pl.DataFrame | None:
    if value is None or isinstance(value, pl.DataFrame):
        return value
    raise ConfigError(f"{_FROM_FRAME}: {arg}= takes the {arg[:-1]} side table (a polars DataFrame keyed by the "
                      f"{arg[:-1]} id), got {type(value).__name__}; name the id column with {key}=")


@dataclass(frozen=True)
class Dataset:
    """A prepared log: ``prepared`` (the :class:`PreparedData`), ``schema``, ``splits()``.

    ``config`` is the run configuration it was built from (:meth:`from_config`), or a default
    configuration holding the ``data`` section :meth:`from_frame` built.
    """

    prepared: PreparedData
    config: RunConfig

    @classmethod
    def from_config(cls, source: str | Path | RunConfig, *, overrides: Sequence[str] = ()) -> Dataset:
        """The log a configuration (a TOML path with optional ``--set``-style ``overrides``, or a
        :class:`RunConfig`) describes, read and prepared in memory (``data.streaming`` logs are
        read by ``distill run`` instead)."""
        if overrides and isinstance(source, RunConfig):
            raise ConfigError("Dataset.from_config: overrides apply to a config file, not to a RunConfig")
        cfg = source if isinstance(source, RunConfig) else load_config(source, overrides=list(overrides))
        if cfg.data.streaming:
            raise ConfigError("a Dataset holds the whole log in memory; a data.streaming log is read by `distill run`")
        raw = load_source(cfg.data, cfg.synthetic, cfg.run.seed)
        return cls(encode_splits(prepare(raw, cfg.data), cfg.data), cfg)

    @classmethod
    def from_frame(cls, frame: pl.DataFrame, *, features: Sequence[FeatureConfig | Mapping[str, Any]],
                   label: str = "label", user: str = "user_id", item: str = "item_id", group: str | None = None,
                   timestamp: str | None = None, users: pl.DataFrame | None = None,
                   items: pl.DataFrame | None = None, **options: Any) -> Dataset:
        """A log already in memory: one row per exposure of ``frame`` (``user`` and ``item`` id
        columns, a 0/1 ``label`` column), with optional ``users`` / ``items`` side tables joined on
        those ids. ``group`` is the GAUC / listwise group column (default: the user); without
        ``timestamp`` row order is time. ``features`` are :class:`FeatureConfig` or dicts of its
        keys; ``options`` are other ``[data]`` keys (``valid_frac``, ``test_frac``, ``split``,
        ``rating_col``, ``label_threshold``, ``crosses``, ``history_crosses``), checked as the
        config loader checks them.

        Raises
        ------
        ConfigError
            An unknown or invalid key (named), or a side table that is not a DataFrame.
        SchemaError, DataError
            A declared column missing from the frame, bad labels or ids (one line, naming it).
        """
        if not isinstance(frame, pl.DataFrame):
            raise ConfigError(f"{_FROM_FRAME}: frame must be a polars DataFrame, got {type(frame).__name__}")
        for key in options:
            if key in _OWN_KEYS:
                how = f"pass {_OWN_KEYS[key]}" if _OWN_KEYS[key] else "a frame is its own source"
                raise ConfigError(f"{_FROM_FRAME}: data.{key} is not an option here ({how})")
        raw: dict[str, Any] = {"source": "table", "features": _plain(list(features)), "label_col": label,
                               "user_col": user, "item_col": item, "group_col": group or "",
                               "timestamp_col": timestamp or "", **{k: _plain(v) for k, v in options.items()}}
        check_keys(RunConfig, {"data": raw}, _FROM_FRAME, prefix="")
        data_cfg: DataConfig = coerce_tree(DataConfig, raw, _FROM_FRAME, "data.")
        cfg = dataclasses.replace(RunConfig(), data=data_cfg)
        validate(cfg)
        tables = RawTables(exposures=frame, users=_table(users, "users", "user"), items=_table(items, "items", "item"))
        return cls(encode_splits(prepare(tables, data_cfg, where="frame"), data_cfg), cfg)

    @property
    def schema(self) -> Schema:
        """The model inputs (fields, kinds, vocabularies) of the encoder fitted on train."""
        return self.prepared.schema

    @property
    def pairs(self) -> PairEncoder:
        """The pair encoder entire-space distillation samples unexposed items with."""
        return self.prepared.pairs

    def splits(self) -> tuple[EncodedSplit, EncodedSplit, EncodedSplit]:
        """``(train, valid, test)``, each encoded with the encoder fitted on train only."""
        return self.prepared.train, self.prepared.valid, self.prepared.test
