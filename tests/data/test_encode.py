from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

from coarserank.config import CrossConfig, DataConfig, FeatureConfig
from coarserank.data.encode import Encoder
from coarserank.data.schema import FIRST_ID, OOV, PAD
from coarserank.errors import ArtifactError, DataWarning, SchemaError

FEATURES = (
    FeatureConfig("user_id", "user", "categorical"),
    FeatureConfig("city", "user", "categorical", min_count=2),
    FeatureConfig("age", "user", "categorical", boundaries=(20.0, 40.0)),
    FeatureConfig("item_id", "item", "categorical"),
    FeatureConfig("tags", "item", "multi", max_len=3),
    FeatureConfig("price", "item", "numeric"),
)
CROSSES = (CrossConfig("city_x_tags", "city", "tags", min_count=1), CrossConfig("same", "user_id", "item_id", op="match"))

TRAIN = pl.DataFrame({
    "user_id": [1, 2, 3, 1], "city": ["x", "x", "y", "z"], "age": [18, 25, 45, None],
    "item_id": [1, 2, 9, 9], "tags": ["a|b", "b", "", "c|a|b|d"], "price": [1.0, 2.0, 3.0, None],
})


def _enc() -> Encoder:
    return Encoder(DataConfig(features=FEATURES, crosses=CROSSES)).fit(TRAIN)


def test_known_values_start_after_padding_and_oov_in_sorted_order():
    codes = _enc().transform(TRAIN)["user_id"]
    assert codes.tolist() == [FIRST_ID, FIRST_ID + 1, FIRST_ID + 2, FIRST_ID]


def test_unseen_and_null_values_go_to_the_oov_bucket():
    frame = TRAIN.with_columns(pl.Series("user_id", [77, None, 2, 1]))
    assert _enc().transform(frame)["user_id"].tolist() == [OOV, OOV, FIRST_ID + 1, FIRST_ID]


def test_values_rarer_than_min_count_are_oov():
    assert _enc().transform(TRAIN)["city"].tolist() == [FIRST_ID, FIRST_ID, OOV, OOV]


def test_boundaries_bucket_numbers_with_right_closed_edges():
    # buckets: x < 20 -> 0, 20 <= x < 40 -> 1, x >= 40 -> 2; null -> OOV
    frame = TRAIN.with_columns(pl.Series("age", [19.9, 20.0, 40.0, None]))
    assert _enc().transform(frame)["age"].tolist() == [FIRST_ID, FIRST_ID + 1, FIRST_ID + 2, OOV]


def test_multi_valued_keeps_first_max_len_values_and_pads():
    tags = _enc().transform(TRAIN)["tags"]
    a, b, c, d = FIRST_ID, FIRST_ID + 1, FIRST_ID + 2, FIRST_ID + 3
    assert tags.tolist() == [[a, b, PAD], [b, PAD, PAD], [PAD, PAD, PAD], [c, a, b]]
    assert d not in tags  # 'd' was beyond max_len in training, never counted


def test_numeric_is_normalised_with_train_statistics_only():
    enc = _enc()
    frame = pl.DataFrame({**{c: TRAIN[c] for c in TRAIN.columns if c != "price"}, "price": [2.0, 100.0, None, 1.0]})
    out = enc.transform(frame)["price"]
    mean, std = 2.0, np.std([1.0, 2.0, 3.0])
    np.testing.assert_allclose(out, [(2 - mean) / std, (100 - mean) / std, 0.0, (1 - mean) / std], rtol=1e-6)


def test_product_cross_codes_pairs_and_keeps_padding():
    out = _enc().transform(TRAIN)["city_x_tags"]
    assert out.shape == (4, 3)
    assert (out[2] == PAD).all()  # no tags -> nothing to cross
    assert (out[:, 0][[0, 1]] >= FIRST_ID).all()
    assert out[0, 2] == PAD and out[0, 1] != out[0, 0]


def test_unseen_cross_pair_is_oov():
    frame = TRAIN.with_columns(pl.Series("city", ["x"] * 4), pl.Series("tags", ["c"] * 4))  # x never met c
    assert (_enc().transform(frame)["city_x_tags"][:, 0] == OOV).all()


def test_match_cross_compares_raw_values():
    enc = _enc()
    raw = (TRAIN["user_id"] == TRAIN["item_id"]).cast(pl.Float64).to_numpy()
    mean, std = raw.mean(), raw.std()
    np.testing.assert_allclose(enc.transform(TRAIN)["same"], (raw - mean) / std, rtol=1e-6)


def test_schema_lists_features_then_crosses_with_sizes():
    schema = _enc().schema_
    assert schema.names == ["user_id", "city", "age", "item_id", "tags", "price", "city_x_tags", "same"]
    assert schema["user_id"].size == 3 + FIRST_ID
    assert schema["city_x_tags"].side == "cross" and schema["city_x_tags"].kind == "multi"


def test_fractional_column_declared_categorical_is_rejected():
    cfg = DataConfig(features=(FeatureConfig("price", "item", "categorical"),))
    with pytest.raises(SchemaError, match="'price': column 'price' holds fractional numbers"):
        Encoder(cfg).fit(TRAIN.with_columns(pl.Series("price", [0.5, 1.0, 2.0, 3.0])))


def test_saved_encoder_loads_and_encodes_identically(tmp_path):
    enc = _enc()
    enc.save(tmp_path)
    again = Encoder.from_json(enc.cfg, json.loads((tmp_path / "encoder.json").read_text()))
    for name, arr in enc.transform(TRAIN).items():
        np.testing.assert_array_equal(arr, again.transform(TRAIN)[name])
    assert (tmp_path / "vocab" / "tags.txt").read_text().splitlines()[1] == "2\ta"


def test_transform_before_fit_is_an_error():
    with pytest.raises(ArtifactError, match="Encoder is not fitted"):
        Encoder(DataConfig(features=FEATURES)).transform(TRAIN)


def test_nan_in_a_bucketed_column_is_missing():
    frame = TRAIN.with_columns(pl.Series("age", [float("nan"), 20.0, 50.0, None]))
    assert _enc().transform(frame)["age"].tolist() == [OOV, FIRST_ID + 1, FIRST_ID + 2, OOV]


def _fit_warnings(cfg: DataConfig, train: pl.DataFrame) -> list[str]:
    with pytest.warns(DataWarning) as record:
        Encoder(cfg).fit(train)
    return [str(w.message) for w in record if issubclass(w.category, DataWarning)]


def _about(messages: list[str], where: str) -> list[str]:
    return [m for m in messages if m.startswith(where)]


def test_lists_cut_at_max_len_are_counted_in_a_warning():
    longest = max(len([v for v in s.split("|") if v]) for s in TRAIN["tags"].to_list())
    over = sum(len([v for v in s.split("|") if v]) > 3 for s in TRAIN["tags"].to_list())
    message, = _about(_fit_warnings(DataConfig(features=FEATURES, crosses=CROSSES), TRAIN), "data.features 'tags'")
    assert message == (f"data.features 'tags': {over} of 4 train rows hold more than max_len = 3 values (up to "
                       f"{longest}); the values after the first 3 are dropped (raise max_len to keep them)")


def test_missing_values_of_a_bucketed_feature_are_counted_with_where_they_go():
    train = TRAIN.with_columns(pl.Series("age", [18.0, float("nan"), 45.0, None]))
    message, = _about(_fit_warnings(DataConfig(features=FEATURES, crosses=CROSSES), train), "data.features 'age'")
    assert message.startswith("data.features 'age': 2 of 4 train rows have no value (null or NaN); they take the "
                              "out-of-vocabulary bucket (id 1)")


def test_missing_numbers_are_counted_with_what_they_become():
    message, = _about(_fit_warnings(DataConfig(features=FEATURES, crosses=CROSSES), TRAIN), "data.features 'price'")
    assert message == ("data.features 'price': 1 of 4 train rows have no value (null or NaN); they are encoded as "
                       "the train mean (0 after normalisation)")


def test_an_all_missing_numeric_feature_is_warned():
    train = TRAIN.with_columns(pl.Series("price", [float("nan")] * 4))
    message, = _about(_fit_warnings(DataConfig(features=FEATURES, crosses=CROSSES), train), "data.features 'price'")
    assert "every train row (4) has no value" in message and "carries no information" in message


def test_values_folded_into_oov_by_min_count_are_counted():
    counts = TRAIN["city"].value_counts()
    rare = counts.filter(pl.col("count") < 2)
    message, = _about(_fit_warnings(DataConfig(features=FEATURES, crosses=CROSSES), TRAIN), "data.features 'city'")
    assert message.startswith(f"data.features 'city': {rare.height} distinct values seen fewer than min_count = 2 "
                              f"times in train ({rare['count'].sum()} occurrences) are folded into the "
                              "out-of-vocabulary bucket")


def test_cross_pairs_folded_by_min_count_are_counted():
    pairs = {}
    for city, tags in zip(TRAIN["city"], TRAIN["tags"]):
        for tag in [t for t in tags.split("|") if t][:3]:
            if TRAIN["city"].to_list().count(city) >= 2:  # only cities in the vocabulary keep their own code
                pairs[(city, tag)] = pairs.get((city, tag), 0) + 1
            else:
                pairs[("OOV", tag)] = pairs.get(("OOV", tag), 0) + 1
    rare = [n for n in pairs.values() if n < 2]
    cfg = DataConfig(features=FEATURES, crosses=(CrossConfig("city_x_tags", "city", "tags", min_count=2),))
    message, = _about(_fit_warnings(cfg, TRAIN), "data.crosses 'city_x_tags'")
    assert message.startswith(f"data.crosses 'city_x_tags': {len(rare)} distinct value pairs seen fewer than "
                              f"min_count = 2 times in train ({sum(rare)} occurrences)")


def test_nothing_lost_means_no_warning(recwarn):
    train = TRAIN.with_columns(pl.Series("tags", ["a", "b", "", "c|a"]), pl.Series("age", [18, 25, 45, 50]),
                               pl.Series("price", [1.0, 2.0, 3.0, 4.0]), pl.Series("city", ["x", "x", "y", "y"]))
    Encoder(DataConfig(features=FEATURES, crosses=CROSSES)).fit(train)
    assert not [w for w in recwarn if issubclass(w.category, DataWarning)]
