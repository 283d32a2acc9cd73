"""Which users, items and item sets retrieval over the catalogue is measured on."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from coarserank.config import DataConfig, FeatureConfig, StudentConfig
from coarserank.data.encode import Encoder
from coarserank.errors import DataError
from coarserank.pipeline.retrieval_data import POPULARITY, retrieval_data, retrieval_table, tower_vectors
from coarserank.ranking_eval.retrieval import evaluate_retrieval, popularity_item_vectors
from coarserank.student import build_student

CFG = DataConfig(features=(FeatureConfig("user_id", "user", "categorical"), FeatureConfig("hour", "context",
                                                                                          "categorical"),
                           FeatureConfig("item_id", "item", "categorical")))
# (user, item, label, time, split)
ROWS = [(1, 10, 1, 1, "train"), (1, 11, 0, 2, "train"), (2, 10, 1, 1, "train"), (2, 12, 1, 2, "train"),
        (3, 13, 1, 1, "train"), (1, 12, 0, 5, "valid"), (3, 14, 0, 5, "valid"),
        (1, 13, 1, 10, "test"), (1, 10, 1, 9, "test"), (2, 12, 1, 9, "test"), (3, 15, 0, 9, "test")]


def _frames() -> tuple[dict[str, pl.DataFrame], pl.DataFrame]:
    u, i, y, t, s = zip(*ROWS)
    frame = pl.DataFrame({"user_id": u, "item_id": i, "_label": y, "_time": t, "_split": s,
                          "hour": [h % 24 for h in t]}).with_row_index("_row").with_columns(
        pl.col("_row").cast(pl.Int64), pl.col("user_id").alias("_user"))
    return {s: frame.filter(pl.col("_split") == s) for s in ("train", "valid", "test")}, frame


@pytest.fixture
def data():
    frames, frame = _frames()
    encoder = Encoder(CFG).fit(frames["train"])
    return retrieval_data(frames, frame, encoder, CFG), encoder


def test_only_users_with_a_positive_outside_their_known_items_are_evaluated(data):
    d, _ = data
    assert d.users.tolist() == [1]  # user 2's test positive was known; user 3 has none


def test_known_items_are_train_and_valid_exposures_and_held_out_items_are_test_positives(data):
    d, _ = data
    assert d.item_ids.tolist() == [10, 11, 12, 13, 14, 15]
    assert d.item_ids[d.known.row(0)].tolist() == [10, 11, 12]
    assert d.item_ids[d.heldout.row(0)].tolist() == [10, 13]


def test_the_query_is_the_users_first_test_row(data):
    d, encoder = data
    first = encoder.transform(pl.DataFrame({"user_id": [1], "hour": [9], "item_id": [10]}), fields=["hour"])
    assert d.user_inputs["hour"].tolist() == first["hour"].tolist()


def test_popularity_counts_train_positives_per_catalogue_item(data):
    d, _ = data
    assert d.counts.tolist() == [2, 0, 1, 1, 0, 0]


def test_retrieval_table_holds_every_model_and_the_popularity_baseline(data):
    d, _ = data
    torch.manual_seed(0)
    model = build_student(Encoder(CFG).fit(_frames()[0]["train"]).schema_, StudentConfig(dim=4, embed_dim=2,
                                                                                         hidden=(4,)))
    table = retrieval_table(d, {"student": tower_vectors(model, d, torch.device("cpu"))}, (1, 3))
    assert set(table) == {"student", POPULARITY}
    want = evaluate_retrieval(np.ones((1, 1), np.float32), popularity_item_vectors(d.counts), d.heldout, d.known,
                              (1, 3), d.counts)
    assert table[POPULARITY]["recall@3"] == want.recall[3] == 1.0  # 13 is the most popular unknown item
    assert table[POPULARITY]["coverage"] == 3 / 6


def test_a_test_split_without_positives_is_a_data_error():
    frames, frame = _frames()
    frames["test"] = frames["test"].with_columns(pl.lit(0).alias("_label"))
    with pytest.raises(DataError, match="the test split has no positive rows"):
        retrieval_data(frames, frame, Encoder(CFG).fit(frames["train"]), CFG)


def test_on_the_valid_split_known_items_are_the_train_exposures():
    frames, frame = _frames()
    frames["valid"] = frames["valid"].with_columns(pl.lit(1).alias("_label"))
    d = retrieval_data(frames, frame, Encoder(CFG).fit(frames["train"]), CFG, split="valid")
    assert d.users.tolist() == [1, 3]
    assert [d.item_ids[d.known.row(u)].tolist() for u in range(2)] == [[10, 11], [13]]
    assert [d.item_ids[d.heldout.row(u)].tolist() for u in range(2)] == [[12], [14]]
