"""Candidate sets that look like production, built from a finished run's data (no models here).

A coarse ranker sees hundreds to thousands of candidates per request, not only the items a user
was shown. For each selected test user the candidate set is the user's test exposures plus ``M``
items drawn from the catalogue without replacement:

Catalogue
    Every item of the prepared frame with its item-side raw columns taken from its latest row,
    its train exposure count and a popularity segment (:func:`build_catalogue`).
Sampling
    ``uniform``: every catalogue item has weight 1; ``popularity``: weight = train exposures + 1
    (add-one, so items never exposed in train can still be drawn). Items the user was exposed to
    in test are excluded. Draws follow Efraimidis-Spirakis keys ``log(u) / w``: the items with
    the largest keys, in key order, are a weighted sample without replacement, and every prefix
    of that order is one too, so smaller candidate sets are nested prefixes.
Candidate rows
    A sampled candidate copies the user's first test row (user and context columns, ``_time``)
    and takes the item columns from the catalogue (:func:`sampled_frame`).
Segments
    User activity by train rows (tertiles over the selected users) and item popularity by share
    of train exposures (:data:`POPULARITY_SHARES`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import polars as pl

from coarserank.config import DataConfig, RunConfig
from coarserank.data.catalogue import sample_items, sampling_weights
from coarserank.data.prepare import add_history_crosses, base_rate, feature_column
from coarserank.data.synthetic import oracle_probability
from coarserank.errors import ConfigError
from coarserank.serving.catalogue import build_catalogue as latest_items
from coarserank.serving.catalogue import item_columns

__all__ = [
    "ORACLES",
    "POPULARITY_SHARES",
    "Oracle",
    "ReportCandidates",
    "activity_segments",
    "build_catalogue",
    "candidate_sets",
    "item_raw_columns",
    "sample_items",
    "sampled_frame",
    "sampling_weights",
    "select_users",
    "side_raw_columns",
]

POPULARITY_SHARES = (0.5, 0.8)
"""Cumulative shares of train exposures that end the head and the torso."""

@dataclass(frozen=True)
class Oracle:
    """A data source's true click probability for arbitrary rows.

    ``columns`` are the raw columns ``probability(cfg, frame)`` reads; candidate rows copy the
    non-item ones from the user's first test row.
    """

    columns: tuple[str, ...]
    probability: Callable[[RunConfig, pl.DataFrame], np.ndarray]


def _synthetic_oracle(cfg: RunConfig, frame: pl.DataFrame) -> np.ndarray:
    cols = [frame[c].to_numpy() for c in ("user_id", "item_id", "device", "hour")]
    return oracle_probability(cfg.synthetic, cfg.run.seed, *cols)


ORACLES: dict[str, Oracle] = {
    "synthetic": Oracle(("user_id", "item_id", "device", "hour"), _synthetic_oracle),
}
"""Sources that can compute the oracle for unseen (user, item, context) rows, by ``data.source``."""


def side_raw_columns(cfg: DataConfig, sides: tuple[str, ...]) -> list[str]:
    """Raw source columns of the features on ``sides``, in declaration order, without repeats."""
    cols = [feature_column(f.name, f.column) for f in cfg.features if f.side in sides]
    return list(dict.fromkeys(cols))


def item_raw_columns(cfg: DataConfig) -> list[str]:
    """The item id column followed by the raw columns of every item-side feature."""
    return item_columns(cfg)


def build_catalogue(frame: pl.DataFrame, cfg: DataConfig) -> pl.DataFrame:
    """Unique items with their latest item-side raw columns, train counts and popularity segment.

    Parameters
    ----------
    frame : pl.DataFrame
        The prepared frame (``_split``, ``_time``, ``_row`` and the raw item columns).
    cfg : DataConfig
        Names the item id column and the item-side features.

    Returns
    -------
    pl.DataFrame
        One row per item, sorted by id: the item columns, ``item_train_rows`` (Int64) and
        ``item_popularity``: ``head`` for the most-exposed items that hold the first 50% of train
        exposures (an item is head when the items ranked above it hold less than 50%), ``torso``
        up to 80%, ``tail`` for the rest, items never exposed in train included.
    """
    latest = latest_items(frame, cfg)  # the serving catalogue: latest item columns, one row per item
    counts = (frame.filter(pl.col("_split") == "train").group_by(pl.col(cfg.item_col).cast(pl.Int64))
              .agg(pl.len().cast(pl.Int64).alias("item_train_rows")))
    cat = (latest.join(counts, on=cfg.item_col, how="left")
           .with_columns(pl.col("item_train_rows").fill_null(0))
           .sort(pl.col("item_train_rows"), pl.col(cfg.item_col), descending=[True, False]))
    rows = cat["item_train_rows"].to_numpy().astype(np.float64)
    before = (np.cumsum(rows) - rows) / max(rows.sum(), 1.0)
    head, torso = POPULARITY_SHARES
    segment = np.where((before < head) & (rows > 0), "head",
                       np.where((before < torso) & (rows > 0), "torso", "tail"))
    return cat.with_columns(pl.Series("item_popularity", segment, dtype=pl.String)).sort(cfg.item_col)


def select_users(users: pl.Series, max_users: int, seed: int) -> np.ndarray:
    """Up to ``max_users`` distinct users drawn uniformly (seeded), sorted; all when fewer."""
    if max_users < 1:
        raise ConfigError(f"report.max_users must be >= 1, got {max_users}")
    distinct = users.unique().sort().to_numpy()
    if len(distinct) <= max_users:
        return distinct
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x7E57]))
    return np.sort(distinct[rng.choice(len(distinct), max_users, replace=False)])


def sampled_frame(base: pl.DataFrame, catalogue: pl.DataFrame, user: np.ndarray, item: np.ndarray,
                  item_cols: list[str], first_row: int) -> pl.DataFrame:
    """Candidate rows: ``base`` row ``user[j]`` with its item columns taken from catalogue row ``item[j]``.

    ``base`` holds one row per user (its non-item columns are copied); the result gets fresh ``_row``
    ids from ``first_row`` on and a null ``_label`` (the candidate was never shown).
    """
    own = base.drop([c for c in item_cols if c in base.columns])
    left = own.select(pl.all().gather(user))
    right = catalogue.select(item_cols).select(pl.all().gather(item))
    rows = pl.Series("_row", np.arange(first_row, first_row + len(user), dtype=np.int64))
    return pl.concat([left, right], how="horizontal").with_columns(
        rows, pl.lit(None, dtype=pl.Int8).alias("_label"))


def activity_segments(train_rows: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Light / medium / heavy by train rows: tertile cut points over the given users.

    Returns the label per user and the cut points ``(q1, q2)``: light ``<= q1``, medium
    ``<= q2``, heavy above.
    """
    x = np.asarray(train_rows, dtype=np.float64)
    q1, q2 = (float(v) for v in np.quantile(x, [1 / 3, 2 / 3])) if x.size else (0.0, 0.0)
    labels = np.where(x <= q1, "light", np.where(x <= q2, "medium", "heavy"))
    return labels, (q1, q2)


@dataclass(frozen=True)
class ReportCandidates:
    """Candidate sets before scoring: users numbered ``_u``, items ``_c``, nesting order ``_pos``."""

    users: pl.DataFrame  # _user, _u
    catalogue: pl.DataFrame  # _c, item columns, item_train_rows, item_popularity
    exposed: pl.DataFrame  # the users' test rows, one per item, plus _i (row in the test split)
    sampled: pl.DataFrame  # sampled candidate rows with history crosses
    base: pl.DataFrame  # per user (in _u order) the first test row, whose context sampled rows copy
    repeated: int  # repeated exposures left out


def candidate_sets(cfg: RunConfig, frame: pl.DataFrame, test: pl.DataFrame,
                   oracle: Oracle | None = None) -> ReportCandidates:
    """The report's candidate sets: for up to ``report.max_users`` test users (seeded), the user's
    test exposures (each item once, by time) then ``report.sampled`` catalogue items drawn by
    ``report.sampling`` with the user's first test row as context and history crosses from
    ``frame``'s labelled rows. ``oracle``'s extra columns are copied into the sampled rows."""
    d, r = cfg.data, cfg.report
    picked = select_users(test["_user"], r.max_users, cfg.run.seed)
    users = pl.DataFrame({"_user": pl.Series(picked).cast(test["_user"].dtype), "_u": np.arange(len(picked))})
    catalogue = build_catalogue(frame, d).with_row_index("_c")
    shown = test.with_row_index("_i").join(users, on="_user").sort("_u", "_time", "_row")
    exposed = (shown.unique(subset=["_u", d.item_col], keep="first", maintain_order=True)
               .with_columns(pl.int_range(pl.len()).over("_u").alias("_pos"))
               .join(catalogue.select(d.item_col, "_c"), on=d.item_col, how="left").sort("_u", "_pos"))
    n_exposed = np.bincount(exposed["_u"].to_numpy(), minlength=users.height)
    weights = sampling_weights(catalogue["item_train_rows"].to_numpy(), r.sampling)
    su, si, order = sample_items(weights, users.height, exposed["_u"].to_numpy(), exposed["_c"].to_numpy(),
                                 r.sampled, cfg.run.seed)
    item_cols = item_raw_columns(d)
    extra = [c for c in (oracle.columns if oracle else ()) if c not in item_cols]
    own = [*side_raw_columns(d, ("user", "context")), d.user_col, *extra, "_user", "_time", "_u"]
    base = exposed.group_by("_u", maintain_order=True).first().sort("_u").select(list(dict.fromkeys(own)))
    sampled = sampled_frame(base, catalogue, su, si, item_cols, int(frame["_row"].max()) + 1)
    sampled = (add_history_crosses(sampled, d, base_rate(frame), history=frame).sort("_row")
               .with_columns(pl.Series("_c", si, dtype=exposed["_c"].dtype),
                             pl.Series("_pos", n_exposed[su] + order, dtype=pl.Int64)))
    return ReportCandidates(users, catalogue, exposed, sampled, base, shown.height - exposed.height)
