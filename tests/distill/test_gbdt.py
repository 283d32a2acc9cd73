"""The LightGBM reference: native categorical ids, frequent multi-hot values, and no weaker than a
plain LightGBM with native categorical ids on the same rows."""

from __future__ import annotations

import warnings

import lightgbm as lgb
import numpy as np
import polars as pl
import pytest

from coarserank.config import GbdtConfig, load_config
from coarserank.data.encode import Encoder
from coarserank.data.prepare import prepare
from coarserank.data.schema import Field, Schema
from coarserank.data.sources import load_source
from coarserank.distill.gbdt import GbdtReference, gbdt_matrix
from coarserank.ranking_eval.metrics import gauc

GBDT = GbdtConfig(num_leaves=15, learning_rate=0.1, rounds=300, early_stopping=20, multi_hot_top=8)


@pytest.fixture(scope="module")
def data() -> dict:
    cfg = load_config(overrides=["synthetic.rows=8000"])
    frame = prepare(load_source(cfg.data, cfg.synthetic, 0), cfg.data)
    parts = {s: frame.filter(pl.col("_split") == s) for s in ("train", "valid", "test")}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        enc = Encoder(cfg.data).fit(parts["train"])
    return {"schema": enc.schema_, "parts": parts, "x": {s: enc.transform(p) for s, p in parts.items()},
            "y": {s: p["_label"].to_numpy() for s, p in parts.items()}}


@pytest.fixture(scope="module")
def reference(data: dict) -> GbdtReference:
    return GbdtReference(data["schema"], GBDT, seed=0, threads=1).fit(data["x"]["train"], data["y"]["train"],
                                                                      data["x"]["valid"], data["y"]["valid"])


def _split_kinds(booster: lgb.Booster, feature: str) -> set[str]:
    """The decision types of every split on ``feature`` ('==' is a native categorical split)."""
    index = booster.feature_name().index(feature)
    kinds: set[str] = set()

    def walk(node: dict) -> None:
        if "split_feature" in node:
            if node["split_feature"] == index:
                kinds.add(node["decision_type"])
            walk(node["left_child"])
            walk(node["right_child"])

    for tree in booster.dump_model()["tree_info"]:
        walk(tree["tree_structure"])
    return kinds


def test_ids_are_split_as_native_categories(reference: GbdtReference) -> None:
    assert _split_kinds(reference.booster_, "item_id") == {"=="}
    assert _split_kinds(reference.booster_, "user_id") <= {"=="}


def test_multi_hot_columns_are_the_most_frequent_values() -> None:
    schema = Schema((Field("tags", "item", "multi", 10, 3),))
    tags = np.array([[9, 7, 0], [9, 0, 0], [7, 9, 3], [2, 9, 0]])  # 9: 4 rows, 7: 2, 3 and 2: 1 each
    _, names, _ = gbdt_matrix(schema, {"tags": tags}, top=3)
    assert names == ["tags=9", "tags=7", "tags=2"]  # a tie goes to the smaller code


def test_other_rows_get_the_train_rows_columns(data: dict) -> None:
    _, names, _ = gbdt_matrix(data["schema"], data["x"]["train"], GBDT.multi_hot_top)
    x, again, _ = gbdt_matrix(data["schema"], data["x"]["test"], GBDT.multi_hot_top, names=names)
    assert again == names and x.shape == (len(data["y"]["test"]), len(names))


def test_a_saved_booster_predicts_without_the_train_rows(reference: GbdtReference, data: dict, tmp_path) -> None:
    reference.booster_.save_model(str(tmp_path / "gbdt.txt"))
    loaded = GbdtReference(data["schema"], GBDT)
    loaded.booster_ = lgb.Booster(model_file=str(tmp_path / "gbdt.txt"))
    np.testing.assert_allclose(loaded.predict_logit(data["x"]["test"]), reference.predict_logit(data["x"]["test"]),
                               rtol=1e-6, atol=1e-6)


def test_it_is_no_weaker_than_plain_lightgbm_with_native_categorical_ids(reference: GbdtReference,
                                                                         data: dict) -> None:
    """A new user's LightGBM: the raw user and item ids as categorical features, nothing else."""
    raw = {s: p.select("user_id", "item_id").to_numpy().astype(np.float64) for s, p in data["parts"].items()}
    params = {"objective": "binary", "metric": "auc", "num_leaves": GBDT.num_leaves, "verbosity": -1, "seed": 0,
              "learning_rate": GBDT.learning_rate, "num_threads": 1, "deterministic": True}
    train = lgb.Dataset(raw["train"], data["y"]["train"], categorical_feature=[0, 1], free_raw_data=False)
    plain = lgb.train(params, train, GBDT.rounds, valid_sets=[lgb.Dataset(raw["valid"], data["y"]["valid"],
                                                                          reference=train)],
                      callbacks=[lgb.early_stopping(GBDT.early_stopping, verbose=False)])
    groups = data["parts"]["test"]["_group"].to_numpy()
    ours = gauc(data["y"]["test"], reference.predict_logit(data["x"]["test"]), groups).value
    theirs = gauc(data["y"]["test"], plain.predict(raw["test"], raw_score=True, num_iteration=plain.best_iteration),
                  groups).value
    assert ours >= theirs - 0.005, (ours, theirs)
