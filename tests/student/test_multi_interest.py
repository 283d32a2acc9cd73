"""Multi-interest user towers: shapes, padding, label-aware attention, isolation, ONNX parity (K > 1)."""

from __future__ import annotations

import io

import numpy as np
import onnxruntime as ort
import pytest
import torch
from numpy.testing import assert_allclose

from coarserank.config import RecallConfig
from coarserank.data.schema import PAD, Field, Schema
from coarserank.errors import ConfigError, SchemaError
from coarserank.student.multi_interest import build_multi_interest, label_aware

ITEMS = 40
MAX_LEN = 6
SCHEMA = Schema((
    Field("user_id", "user", "categorical", size=30),
    Field("hist", "user", "sequence", size=ITEMS, max_len=MAX_LEN, of="item_id"),
    Field("hour", "context", "categorical", size=26),
    Field("item_id", "item", "categorical", size=ITEMS),
    Field("genre", "item", "multi", size=8, max_len=3),
))


def _cfg(**kw) -> RecallConfig:
    base = {"dim": 8, "embed_dim": 4, "hidden": (16,), "interests": 3}
    return RecallConfig(**{**base, **kw})


def _batch(rng: np.random.Generator, n: int = 12) -> dict[str, torch.Tensor]:
    lengths = rng.integers(0, MAX_LEN + 1, n)
    hist = rng.integers(2, ITEMS, (n, MAX_LEN))
    hist[np.arange(MAX_LEN)[None, :] >= lengths[:, None]] = PAD
    return {"user_id": torch.from_numpy(rng.integers(0, 30, n)),
            "hist": torch.from_numpy(hist),
            "hour": torch.from_numpy(rng.integers(0, 26, n)),
            "item_id": torch.from_numpy(rng.integers(2, ITEMS, n)),
            "genre": torch.from_numpy(rng.integers(0, 8, (n, 3)))}


def _model(extractor: str = "attention", **kw):
    torch.manual_seed(0)
    model = build_multi_interest(SCHEMA, _cfg(extractor=extractor, **kw)).eval()
    with torch.no_grad():  # spread the weights so that interests differ visibly
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.3)
        model.user_tower.table.weight[PAD].zero_()
    return model


@pytest.mark.parametrize("extractor", ["attention", "routing"])
def test_user_tower_returns_k_unit_vectors_per_user(rng, extractor):
    u = _model(extractor).user_tower(_batch(rng))
    assert u.shape == (12, 3, 8)
    assert_allclose(u.norm(dim=-1).detach().numpy(), 1.0, rtol=1e-5)


@pytest.mark.parametrize("extractor", ["attention", "routing"])
def test_padding_slots_do_not_change_the_interests(rng, extractor):
    model = _model(extractor)
    batch = _batch(rng)
    before = model.user_tower(batch)
    with torch.no_grad():
        model.user_tower.table.weight[PAD].normal_()  # whatever sits in the padding row is ignored
    assert_allclose(model.user_tower(batch).detach().numpy(), before.detach().numpy(), atol=1e-6)


@pytest.mark.parametrize("extractor", ["attention", "routing"])
def test_a_user_without_history_gets_finite_equal_interests(rng, extractor):
    batch = _batch(rng, 3)
    batch["hist"][:] = PAD
    u = _model(extractor).user_tower(batch).detach()
    assert torch.isfinite(u).all()
    assert_allclose(u[:, 0].numpy(), u[:, 2].numpy(), atol=1e-6)


def test_interests_differ_for_a_user_with_history(rng):
    batch = _batch(rng, 4)
    batch["hist"][:, :4] = torch.tensor([3, 17, 25, 38])
    u = _model().user_tower(batch).detach()
    assert float((u[:, 0] - u[:, 1]).abs().max()) > 1e-3


def test_changing_item_features_never_changes_the_user_vectors(rng):
    model = _model()
    batch = _batch(rng)
    other = {**batch, "item_id": torch.roll(batch["item_id"], 1), "genre": torch.roll(batch["genre"], 2, 0)}
    assert torch.equal(model.user_tower(batch), model.user_tower(other))


def test_the_history_shares_the_item_towers_id_embedding():
    model = _model()
    assert model.user_tower.table is model.item_tower.embedding.tables["item_id"]


def test_coarse_score_is_the_maximum_over_interests(rng):
    model = _model()
    batch = _batch(rng)
    u, v = model.user_tower(batch), model.item_tower(batch)
    want = model.a * torch.stack([(u[:, k] * v).sum(-1) for k in range(3)], 1).max(dim=1).values + model.b
    assert_allclose(model(batch).detach().numpy(), want.detach().numpy(), rtol=1e-6)


def test_label_aware_attention_picks_the_interest_closest_to_the_target():
    interests = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    target = torch.tensor([[0.2, 0.98]])
    assert label_aware(interests, target, 0.0).tolist() == [[0.0, 1.0]]
    soft = label_aware(interests, target, 2.0)
    w = torch.softmax(torch.tensor([0.4, 1.96]), 0)
    assert_allclose(soft.numpy(), (w[:, None] * interests[0]).sum(0, keepdim=True).numpy(), rtol=1e-6)


def test_pair_vectors_hold_the_label_aware_user_vector_and_the_item_vector(rng):
    model = _model()
    batch = _batch(rng)
    pair = model.pair_vectors(batch)
    v = model.item_tower(batch)
    assert pair.shape == (12, 2, 8)
    assert torch.equal(pair[:, 1], v)
    assert_allclose(pair[:, 0].detach().numpy(),
                    label_aware(model.user_tower(batch), v, model.sharpness).detach().numpy(), rtol=1e-6)


@pytest.mark.parametrize("extractor", ["attention", "routing"])
def test_the_k_interest_user_tower_exports_to_onnx_with_parity(rng, extractor):
    tower = _model(extractor).user_tower
    names = tower.schema.names
    batch = _batch(rng, 7)

    class Positional(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tower = tower

        def forward(self, *xs: torch.Tensor) -> torch.Tensor:
            return self.tower(dict(zip(names, xs)))

    buf = io.BytesIO()
    torch.onnx.export(Positional(), tuple(batch[n] for n in names), buf, input_names=names, output_names=["vectors"],
                      dynamic_axes={n: {0: "N"} for n in [*names, "vectors"]}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    other = _batch(rng, 5)  # a different batch size than the traced one
    got = session.run(None, {n: other[n].numpy() for n in names})[0]
    assert got.shape == (5, 3, 8)
    assert_allclose(got, tower(other).detach().numpy(), atol=1e-5)


def test_fewer_than_one_interest_is_a_config_error():
    with pytest.raises(ConfigError, match="recall.interests \\(K\\) must be >= 1, got 0"):
        build_multi_interest(SCHEMA, _cfg(interests=0))


def test_a_schema_without_a_sequence_is_a_schema_error():
    schema = Schema(tuple(f for f in SCHEMA.fields if f.kind != "sequence"))
    with pytest.raises(SchemaError, match="no data.features entry has kind = \"sequence\""):
        build_multi_interest(schema, _cfg())


def test_a_schema_without_item_fields_is_a_schema_error():
    schema = Schema(tuple(f for f in SCHEMA.fields if f.side != "item"))
    with pytest.raises(SchemaError, match="needs item-side features"):
        build_multi_interest(schema, _cfg())
