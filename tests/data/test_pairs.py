from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from coarserank.config import CrossConfig, DataConfig, FeatureConfig, HistoryCrossConfig, load_config
from coarserank.data.catalogue import item_catalogue
from coarserank.data.dataset import encode_splits
from coarserank.data.encode import Encoder
from coarserank.data.pairs import ROW_ITEM, PairEncoder
from coarserank.data.prepare import add_history_crosses, base_rate, prepare
from coarserank.data.sources import load_source
from coarserank.data.tables import RawTables
from coarserank.errors import DataError


def _movielens_like() -> tuple[DataConfig, RawTables]:
    cfg = DataConfig(source="table", group_col="", timestamp_col="ts", features=(
        FeatureConfig("user_id", "user", "categorical"), FeatureConfig("gender", "user", "categorical"),
        FeatureConfig("item_id", "item", "categorical"), FeatureConfig("genres", "item", "multi", max_len=3),
        FeatureConfig("lead", "item", "categorical"),
        FeatureConfig("hist", "user", "sequence", of="item_id", max_len=3)),
        crosses=(CrossConfig("gender_x_genres", "gender", "genres", min_count=1),
                 CrossConfig("likes_lead", "gender", "lead", op="match")),
        history_crosses=(HistoryCrossConfig("user_genre_rate", "user_id", "genres", prior=2.0),))
    rng = np.random.default_rng(0)
    n = 600
    exposures = pl.DataFrame({"user_id": rng.integers(0, 30, n), "item_id": rng.integers(0, 40, n),
                              "ts": rng.integers(0, 300, n).astype(np.int64), "label": rng.integers(0, 2, n)})
    users = pl.DataFrame({"user_id": np.arange(30), "gender": rng.choice(["f", "m", "x"], 30)})
    genres = ["a|b", "b", "c", "a|c|d", "d", "b|d", "", "a"]
    items = pl.DataFrame({"item_id": np.arange(40), "genres": [genres[i % 8] for i in range(40)],
                          "lead": rng.choice(["f", "m", "q"], 40)})
    return cfg, RawTables(exposures, users, items)


@pytest.fixture(params=["movielens_like", "synthetic"])
def prepared(request):
    if request.param == "synthetic":
        cfg = load_config(overrides=["synthetic.rows=4000"])
        return cfg.data, prepare(load_source(cfg.data, cfg.synthetic, 0), cfg.data)
    cfg, raw = _movielens_like()
    return cfg, prepare(raw, cfg)


def test_a_row_paired_with_its_own_item_encodes_like_the_row(prepared):
    cfg, frame = prepared
    data = encode_splits(frame, cfg)
    for split in data.splits.values():
        rows = split.inputs
        pairs = data.pairs.encode(rows, rows[ROW_ITEM])
        for name in data.schema.names:
            np.testing.assert_allclose(pairs[name], rows[name], atol=1e-6, err_msg=f"{split.name}: {name}")


def test_pairs_with_other_items_encode_like_the_raw_pair_rows():
    cfg, raw = _movielens_like()
    frame = prepare(raw, cfg)
    data = encode_splits(frame, cfg)
    test = data.test
    rng = np.random.default_rng(1)
    item = rng.integers(0, data.pairs.n_items, len(test))
    encoded = data.pairs.encode(test.inputs, item)
    # the same pairs built the slow way: raw columns swapped in, crosses recomputed at the row's time
    item_cols = ["item_id", "genres", "lead"]
    swapped = test.frame.drop(item_cols).with_columns(data.catalogue.select(item_cols)[item].get_columns())
    swapped = add_history_crosses(swapped.with_columns(pl.lit(None, dtype=pl.Int8).alias("_label")), cfg,
                                  base_rate(frame), history=frame)
    expected = data.encoder.transform(swapped)
    for name in data.schema.names:
        np.testing.assert_allclose(encoded[name], expected[name], atol=1e-6, err_msg=name)


def test_an_item_index_outside_the_catalogue_is_an_error():
    cfg, raw = _movielens_like()
    data = encode_splits(prepare(raw, cfg), cfg)
    with pytest.raises(DataError, match="outside the catalogue"):
        data.pairs.encode(data.test.inputs, np.full(len(data.test), data.pairs.n_items))


def test_catalogue_holds_every_item_once_with_its_train_count():
    cfg, raw = _movielens_like()
    frame = prepare(raw, cfg)
    cat = item_catalogue(frame, cfg)
    assert cat["item_id"].to_list() == sorted(frame["item_id"].unique().to_list())
    counts = frame.filter(pl.col("_split") == "train").group_by("item_id").len()
    joined = cat.join(counts, on="item_id", how="left").with_columns(pl.col("len").fill_null(0))
    assert (joined["item_train_rows"] == joined["len"]).all()
