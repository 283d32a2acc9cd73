"""The history crosses a COLD ranker looks up per request equal a naive count over the history rows."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import polars as pl
import pytest

from coarserank.config import HistoryCrossConfig, load_config
from coarserank.data.prepare import base_rate, prepare
from coarserank.data.sources import load_source
from coarserank.serving.catalogue import build_catalogue
from coarserank.serving.cold_ranker import HistoryLookup

CROSSES = (HistoryCrossConfig("user_category_rate", "user_id", "category", 5.0),  # user key, item values
           HistoryCrossConfig("user_tag_rate", "user_id", "tags", 4.0),  # user key, item values (multi)
           HistoryCrossConfig("item_tag_rate", "item_id", "tags", 2.0),  # item key, item values (multi)
           HistoryCrossConfig("category_region_rate", "category", "region", 3.0))  # item key, user values


@pytest.fixture(scope="module")
def world(tiny_overrides: list[str]):
    cfg = load_config(overrides=[*tiny_overrides, "synthetic.rows=1500"])
    data = replace(cfg.data, history_crosses=CROSSES)
    frame = prepare(load_source(data, cfg.synthetic, 0), data)
    labelled = frame.filter(pl.col("_label").is_not_null())
    return data, labelled, build_catalogue(frame, data), base_rate(frame)


def _naive(history: pl.DataFrame, key_col: str, key: str, values: list[str], prior: float, base: float) -> float:
    """Mean over ``values`` of the key's smoothed positive rate on each, from every history row."""
    if not values:
        return base
    rates = []
    for v in values:
        pos = cnt = 0.0
        for k, over, y in zip(history[key_col].cast(pl.Utf8), history["_over"], history["_label"]):
            if k == key and v in over:
                pos, cnt = pos + y, cnt + 1
        rates.append((pos + prior * base) / (cnt + prior))
    return float(np.mean(rates))


@pytest.mark.parametrize("cross", CROSSES, ids=[c.name for c in CROSSES])
def test_a_history_cross_read_per_request_equals_a_naive_count_over_the_history(world, cross) -> None:
    data, labelled, catalogue, base = world
    lookup = HistoryLookup.build(data, cross.name, labelled, catalogue, base)
    sep = {f.name: f.sep for f in data.features if f.kind == "multi"}
    split = (lambda s: [] if s is None else [p for p in s.split(sep[cross.over]) if p]) if cross.over in sep \
        else (lambda s: [] if s is None else [s])
    history = labelled.with_columns(pl.col(cross.over).cast(pl.Utf8).map_elements(split, return_dtype=pl.List(pl.Utf8))
                                    .alias("_over"))
    user = labelled.row(7, named=True)
    rows = np.arange(0, catalogue.height, max(catalogue.height // 15, 1))
    got = lookup.values({"user_id": int(user["user_id"]), "region": user["region"]}, rows)
    sides = {f.name: f.side for f in data.features}
    want = []
    for r in rows:
        item = catalogue.row(int(r), named=True)
        key = str(item[cross.key] if sides[cross.key] == "item" else user[cross.key])
        over = item[cross.over] if sides[cross.over] == "item" else user[cross.over]
        want.append(_naive(history, cross.key, key, split(None if over is None else str(over)), cross.prior, base))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)
    assert np.std(want) > 0 or cross.key == "category"


def test_a_user_key_given_as_a_string_reads_the_same_rates_as_the_integer(world) -> None:
    data, labelled, catalogue, base = world
    lookup = HistoryLookup.build(data, "user_category_rate", labelled, catalogue, base)
    user = int(labelled["user_id"][3])
    rows = np.arange(catalogue.height)
    np.testing.assert_array_equal(lookup.values({"user_id": str(user)}, rows), lookup.values({"user_id": user}, rows))
    assert np.all(lookup.values({"user_id": 10**12}, rows) == base)


@pytest.mark.parametrize("name", ["user_category_rate", "user_tag_rate"])
def test_a_request_key_reads_the_same_rates_for_many_candidates_as_for_a_few(world, name) -> None:
    """Many candidates read every value's rate once and gather; a few look each pair up (the naive test)."""
    data, labelled, catalogue, base = world
    lookup = HistoryLookup.build(data, name, labelled, catalogue, base)
    user = {"user_id": int(labelled["user_id"][11])}
    rows = np.arange(catalogue.height)
    few = np.concatenate([lookup.values(user, rows[i:i + 2]) for i in range(0, rows.size, 2)])
    assert len(lookup.stats.values) > 2 and len(lookup.stats.values) <= rows.size  # both paths are taken
    np.testing.assert_allclose(lookup.values(user, rows), few, rtol=0, atol=1e-15)
