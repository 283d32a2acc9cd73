"""The match channel: shared codes of match-cross values and towers that end with their shared embeddings."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from coarserank.config import CrossConfig, DataConfig, FeatureConfig, RecallConfig
from coarserank.data.encode import Encoder
from coarserank.data.matches import match_pairs
from coarserank.pipeline.recall_stage import build_recall_model
from coarserank.student import MatchedTower

FEATURES = (
    FeatureConfig("user_id", "user", "categorical"),
    FeatureConfig("city", "user", "categorical"),
    FeatureConfig("home", "user", "categorical"),
    FeatureConfig("item_id", "item", "categorical"),
    FeatureConfig("shop_city", "item", "categorical"),
    FeatureConfig("genre", "item", "categorical"),
)
CROSSES = (
    CrossConfig("city_match", "city", "shop_city", op="match"),
    CrossConfig("home_match", "genre", "home", op="match"),       # operands in item, user order
    CrossConfig("same_user_side", "city", "home", op="match"),    # both on the user side: no channel
    CrossConfig("city_x_genre", "city", "genre"),                  # a product cross: no channel
)
TRAIN = pl.DataFrame({
    "user_id": [1, 2, 3, 4], "city": ["a", "b", "c", "b"], "home": ["7", "8", "8", "9"],
    "item_id": [10, 11, 12, 13], "shop_city": ["b", "c", "d", "d"], "genre": [7, 9, 5, 5],
})


def _encoder() -> Encoder:
    return Encoder(DataConfig(features=FEATURES, crosses=CROSSES)).fit(TRAIN)


def test_equal_raw_values_on_both_sides_get_one_shared_code_and_the_rest_none():
    enc = _encoder()
    (city, home) = match_pairs(enc)
    assert (city.name, city.user_field, city.item_field) == ("city_match", "city", "shop_city")
    user = dict(zip(enc.vocabs_["city"].values, city.user_codes[2:]))
    item = dict(zip(enc.vocabs_["shop_city"].values, city.item_codes[2:]))
    assert user["b"] == item["b"] >= 1 and user["c"] == item["c"] >= 1 and user["b"] != user["c"]
    assert user["a"] == 0 and item["d"] == 0            # known to one side only: can never match
    assert city.user_codes[:2].tolist() == [0, 0] and city.item_codes[:2].tolist() == [0, 0]  # padding, OOV
    assert city.size == 3


def test_values_of_different_dtypes_are_compared_as_text_like_the_match_cross():
    enc = _encoder()
    home = match_pairs(enc)[1]
    assert (home.user_field, home.item_field) == ("home", "genre")  # the user-side operand first
    user = dict(zip(enc.vocabs_["home"].values, home.user_codes[2:]))   # strings "7", "8", "9"
    item = dict(zip(enc.vocabs_["genre"].values, home.item_codes[2:]))  # integers 5, 7, 9
    assert user["7"] == item[7] >= 1 and user["9"] == item[9] >= 1 and user["8"] == 0 and item[5] == 0


def test_only_match_crosses_between_a_user_and_an_item_field_give_pairs():
    assert [p.name for p in match_pairs(_encoder())] == ["city_match", "home_match"]


def _model(match_channel: bool = True) -> torch.nn.Module:
    enc = _encoder()
    torch.manual_seed(0)
    cfg = RecallConfig(family="two_tower", dim=8, embed_dim=4, hidden=(16,), match_channel=match_channel)
    model = build_recall_model(enc.schema_, cfg, match_pairs(enc))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape) * 0.5)
        if isinstance(model.user_tower, MatchedTower):
            for table in model.user_tower.match.tables.values():
                table.weight[0].zero_()  # index 0 (no match) stays the zero vector
    return model.eval()


def _inputs() -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(v) for k, v in _encoder().transform(TRAIN).items()}


def test_the_towers_vectors_end_with_the_shared_embeddings_of_their_sides_values():
    model, inputs = _model(), _inputs()
    assert isinstance(model.user_tower, MatchedTower) and model.user_tower.match is model.item_tower.match
    u, v = model.user_tower(inputs), model.item_tower(inputs)
    assert u.shape == v.shape == (4, 8 + 2 * 4 + 1)
    torch.testing.assert_close(u[:, :8], model.user_tower.tower(inputs))
    match = model.user_tower.match
    city = match.tables["city_match"]
    codes = match.user_city_match[inputs["city"]]
    torch.testing.assert_close(u[:, 8:12], city.weight[codes])


def test_a_user_and_an_item_with_equal_values_score_the_shared_vectors_squared_norm():
    model, inputs = _model(), _inputs()
    u, v = model.user_tower(inputs), model.item_tower(inputs)
    # row 1: user city "b", shop city "c" -> different; pair user 1 ("b") with item 0 (shop "b")
    e = model.user_tower.match.tables["city_match"].weight
    code_b = int(model.user_tower.match.user_city_match[inputs["city"][1]])
    assert float(u[1, 8:12] @ v[0, 8:12]) == pytest.approx(float(e[code_b] @ e[code_b]), rel=1e-6)
    assert float(u[0, 8:12].abs().sum()) == 0.0  # city "a": no item has it


def test_every_item_vector_has_the_same_norm_and_the_inner_product_is_unchanged():
    model, inputs = _model(), _inputs()
    unseen = {**inputs, "shop_city": torch.tensor([0, 1, 0, 1]), "genre": torch.tensor([1, 0, 1, 0])}
    match = model.user_tower.match
    bound = 1.01 * (1.0 + sum(float((t.weight ** 2).sum(dim=1).max()) for t in match.tables.values()))
    for rows in (inputs, unseen):
        v = model.item_tower(rows)
        torch.testing.assert_close((v * v).sum(dim=1), torch.full((4,), bound))
    u, v = model.user_tower(inputs), model.item_tower(inputs)
    assert float(u[:, -1].abs().sum()) == 0.0
    want = (model.user_tower.tower(inputs) @ model.item_tower.tower(inputs).T
            + match.side("user", inputs) @ match.side("item", inputs).T)
    torch.testing.assert_close(u @ v.T, want)


def test_changing_item_features_never_changes_the_user_vector_with_a_match_channel():
    model, inputs = _model(), _inputs()
    swapped = {**inputs, **{k: inputs[k].flip(0) for k in ("item_id", "shop_city", "genre")}}
    torch.testing.assert_close(model.user_tower(swapped), model.user_tower(inputs), rtol=0, atol=0)
    swapped = {**inputs, **{k: inputs[k].flip(0) for k in ("user_id", "city", "home")}}
    torch.testing.assert_close(model.item_tower(swapped), model.item_tower(inputs), rtol=0, atol=0)


def test_match_channel_off_leaves_the_towers_as_they_are():
    model = _model(match_channel=False)
    assert not isinstance(model.user_tower, MatchedTower)
    assert model.user_tower(_inputs()).shape == (4, 8)


def test_the_match_codes_are_part_of_the_saved_model():
    state = _model().state_dict()
    np.testing.assert_array_equal(state["user_tower.match.user_city_match"].numpy(),
                                  match_pairs(_encoder())[0].user_codes)
