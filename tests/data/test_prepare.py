from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from coarserank.config import DataConfig, FeatureConfig, HistoryCrossConfig
from coarserank.data.prepare import check_label_mix, prepare
from coarserank.data.tables import RawTables
from coarserank.errors import DataError, SchemaError


def _cfg(**kw) -> DataConfig:
    base = DataConfig(
        source="table", group_col="", timestamp_col="ts",
        features=(FeatureConfig("user_id", "user", "categorical"), FeatureConfig("item_id", "item", "categorical"),
                  FeatureConfig("genres", "item", "multi")),
    )
    return dataclasses.replace(base, **kw)


def _log(n_users: int = 5, per_user: int = 20, seed: int = 0) -> RawTables:
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    exposures = pl.DataFrame({
        "user_id": np.repeat(np.arange(n_users), per_user),
        "item_id": rng.integers(0, 8, n),
        "ts": rng.permutation(n).astype(np.int64),
        "label": rng.integers(0, 2, n),
    })
    items = pl.DataFrame({"item_id": np.arange(8), "genres": ["a|b", "b", "c", "a", "b|c", "c", "a|c", "b"]})
    return RawTables(exposures, None, items)


def test_missing_feature_column_lists_existing_columns():
    cfg = _cfg(features=(*_cfg().features, FeatureConfig("age", "user", "categorical")))
    with pytest.raises(SchemaError, match=r"'age' not found; columns that exist: .*user_id.*genres"):
        prepare(_log(), cfg)


def test_label_with_nulls_is_rejected():
    raw = _log()
    exposures = raw.exposures.with_columns(pl.when(pl.col("ts") == 3).then(None).otherwise(pl.col("label"))
                                           .alias("label"))
    with pytest.raises(DataError, match=r"label column 'label' has 1 missing \(null or NaN\) value"):
        prepare(dataclasses.replace(raw, exposures=exposures), _cfg())


def test_label_outside_zero_one_is_rejected_with_examples():
    raw = _log()
    exposures = raw.exposures.with_columns(pl.col("label") * 3)
    with pytest.raises(DataError, match=r"must hold only 0 and 1; found values such as \[3\]"):
        prepare(dataclasses.replace(raw, exposures=exposures), _cfg())


def test_rating_threshold_makes_the_label():
    raw = _log()
    exposures = raw.exposures.with_columns(pl.Series("stars", np.arange(len(raw.exposures)) % 5 + 1))
    frame = prepare(dataclasses.replace(raw, exposures=exposures), _cfg(rating_col="stars", label_threshold=4.0))
    assert (frame["_label"].to_numpy() == (frame["stars"].to_numpy() >= 4)).all()


def test_split_puts_each_users_latest_rows_in_test_and_the_ones_before_in_valid():
    frame = prepare(_log(per_user=20), _cfg())
    for _, user in frame.group_by("user_id"):
        ordered = user.sort("ts")["_split"].to_list()
        assert ordered == ["train"] * 16 + ["valid"] * 2 + ["test"] * 2


def test_user_with_one_row_keeps_it_for_training():
    raw = _log(per_user=20)
    lone = pl.DataFrame({"user_id": [99], "item_id": [1], "ts": [5], "label": [1]})
    frame = prepare(dataclasses.replace(raw, exposures=pl.concat([raw.exposures, lone])), _cfg())
    assert frame.filter(pl.col("user_id") == 99)["_split"].to_list() == ["train"]


def test_empty_split_is_an_error():
    with pytest.raises(DataError, match="the valid split is empty"):
        prepare(_log(per_user=1), _cfg())


def test_duplicate_ids_in_a_side_table_are_rejected():
    raw = _log()
    items = pl.concat([raw.items, raw.items.head(1)])
    with pytest.raises(DataError, match="item table: key column 'item_id' has duplicate ids"):
        prepare(dataclasses.replace(raw, items=items), _cfg())


HIST = HistoryCrossConfig("user_genre_rate", key="user_id", over="genres", prior=2.0)


def _naive_history(frame: pl.DataFrame, base: float, prior: float) -> np.ndarray:
    rows = frame.sort("_row").to_dicts()
    out = []
    for r in rows:
        genres = [g for g in r["genres"].split("|") if g]
        rates = []
        for g in genres:
            earlier = [q for q in rows if q["user_id"] == r["user_id"] and q["ts"] < r["ts"]
                       and g in q["genres"].split("|")]
            pos = sum(q["label"] for q in earlier)
            rates.append((pos + prior * base) / (len(earlier) + prior))
        out.append(np.mean(rates) if rates else base)
    return np.array(out)


def test_history_cross_matches_a_naive_loop():
    frame = prepare(_log(n_users=3, per_user=15), _cfg(history_crosses=(HIST,)))
    base = frame.filter(pl.col("_split") == "train")["label"].mean()
    np.testing.assert_allclose(frame["user_genre_rate"].to_numpy(), _naive_history(frame, base, 2.0), rtol=1e-12)


def test_history_cross_never_sees_a_later_row(rng):
    raw = _log(n_users=4, per_user=30, seed=3)
    cfg = _cfg(history_crosses=(HIST,), valid_frac=0.0, test_frac=0.0)
    cutoff = 60
    later = (raw.exposures["ts"] >= cutoff).to_numpy()
    labels = raw.exposures["label"].to_numpy().copy()
    labels[later] = rng.permutation(labels[later])  # same base rate, different later labels
    assert (labels != raw.exposures["label"].to_numpy()).any()
    before = prepare(raw, cfg)
    after = prepare(dataclasses.replace(raw, exposures=raw.exposures.with_columns(pl.Series("label", labels))), cfg)
    early = ~later
    np.testing.assert_array_equal(before["user_genre_rate"].to_numpy()[early],
                                  after["user_genre_rate"].to_numpy()[early])
    assert not np.array_equal(before["user_genre_rate"].to_numpy()[later], after["user_genre_rate"].to_numpy()[later])


def test_history_cross_ignores_rows_at_the_same_instant():
    exposures = pl.DataFrame({"user_id": [1, 1, 1, 1], "item_id": [0, 0, 0, 0], "ts": [1, 1, 2, 3],
                              "label": [1, 1, 0, 0]})
    items = pl.DataFrame({"item_id": [0], "genres": ["a"]})
    cfg = _cfg(history_crosses=(dataclasses.replace(HIST, prior=0.0),), valid_frac=0.0, test_frac=0.0)
    frame = prepare(RawTables(exposures, None, items), cfg)
    rates = frame.sort("_row")["user_genre_rate"].to_list()
    assert rates[2] == 1.0 and rates[3] == pytest.approx(2 / 3)
    assert rates[0] == rates[1] == pytest.approx(0.5)  # no history yet: the train base rate


def test_unlabelled_query_rows_get_the_history_value_at_their_time():
    from coarserank.data.prepare import add_history_cross

    history = pl.DataFrame({"_row": [0, 1, 2], "user_id": [1, 1, 1], "genres": ["a", "a", "b"],
                            "_time": [1, 2, 3], "_label": [1, 0, 1]})
    queries = pl.DataFrame({"_row": [10, 11, 12], "user_id": [1, 1, 2], "genres": ["a", "a|b", "a"],
                            "_time": [2, 9, 9]})
    out = add_history_cross(queries, dataclasses.replace(HIST, prior=0.0), "user_id", "genres", "|", 0.3, history)
    rates = dict(zip(out["_row"].to_list(), out["user_genre_rate"].to_list()))
    assert rates == {10: 1.0, 11: pytest.approx((0.5 + 1.0) / 2), 12: 0.3}


def _with_item_ids(raw: RawTables, ids: pl.Series) -> RawTables:
    lookup = dict(zip(range(8), ids.to_list()))
    exposures = raw.exposures.with_columns(pl.col("item_id").replace_strict(lookup, return_dtype=ids.dtype))
    return RawTables(exposures, None, raw.items.with_columns(ids.alias("item_id")))


def test_string_item_ids_are_refused_before_training():
    raw = _with_item_ids(_log(), pl.Series([f"sku-{i}" for i in range(8)]))
    with pytest.raises(DataError, match=r"item id column 'item_id' must hold integer ids .* such as "
                                        r"\['sku-\d', 'sku-\d', 'sku-\d'\]; map the item ids to integers"):
        prepare(raw, _cfg())


def test_integral_float_and_numeric_string_item_ids_are_accepted():
    for ids in (pl.Series([float(i) for i in range(8)]), pl.Series([str(i) for i in range(8)])):
        frame = prepare(_with_item_ids(_log(), ids), _cfg())
        assert frame.height == 100


def test_a_split_without_positive_labels_is_named():
    raw = _log(n_users=5, per_user=20)
    exposures = raw.exposures.with_columns(pl.lit(0).alias("label"))
    with pytest.raises(DataError, match=r"^the train split has no positive label among its \d+ rows"):
        check_label_mix(prepare(dataclasses.replace(raw, exposures=exposures), _cfg()), _cfg())


def test_a_split_whose_groups_all_hold_one_label_is_named():
    raw = _log(n_users=5, per_user=20)
    late = pl.col("ts") >= 90  # the valid and test rows: positive for odd users, negative for even ones
    exposures = raw.exposures.with_columns(pl.when(late).then(pl.col("user_id") % 2).otherwise(pl.col("label"))
                                           .alias("label"))
    cfg = _cfg(split="global_time", valid_frac=0.05, test_frac=0.05)
    with pytest.raises(DataError, match=r"^the (valid|test) split has no group \(by 'user_id'\) with both a positive "
                                        r"and a negative label"):
        check_label_mix(prepare(dataclasses.replace(raw, exposures=exposures), cfg), cfg)
