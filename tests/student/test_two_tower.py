from __future__ import annotations

import torch

from coarserank.config import StudentConfig
from coarserank.data.schema import Field, Schema
from coarserank.student import build_student

SCHEMA = Schema((
    Field("user_id", "user", "categorical", 50),
    Field("device", "context", "categorical", 5),
    Field("item_id", "item", "categorical", 40),
    Field("tags", "item", "multi", 12, 3),
    Field("price", "item", "numeric"),
    Field("u_x_i", "cross", "categorical", 30),
))


def _batch(n: int, gen: torch.Generator) -> dict[str, torch.Tensor]:
    return {
        "user_id": torch.randint(0, 50, (n,), generator=gen), "device": torch.randint(0, 5, (n,), generator=gen),
        "item_id": torch.randint(0, 40, (n,), generator=gen), "tags": torch.randint(0, 12, (n, 3), generator=gen),
        "price": torch.randn(n, generator=gen), "u_x_i": torch.randint(0, 30, (n,), generator=gen),
    }


def _student():
    torch.manual_seed(0)
    return build_student(SCHEMA, StudentConfig(dim=8, embed_dim=4, hidden=(16,), dropout=0.0)).eval()


def test_user_tower_sees_only_user_and_context_fields():
    model = _student()
    assert model.user_tower.schema.names == ["user_id", "device"]
    assert model.item_tower.schema.names == ["item_id", "tags", "price"]


def test_changing_item_features_never_changes_the_user_vector():
    model, gen = _student(), torch.Generator().manual_seed(1)
    batch = _batch(64, gen)
    other = {**batch, **{k: v for k, v in _batch(64, gen).items() if k in ("item_id", "tags", "price", "u_x_i")}}
    torch.testing.assert_close(model.user_tower(batch), model.user_tower(other), rtol=0, atol=0)
    assert not torch.allclose(model.item_tower(batch), model.item_tower(other))


def test_changing_user_features_never_changes_the_item_vector():
    model, gen = _student(), torch.Generator().manual_seed(2)
    batch = _batch(64, gen)
    other = {**batch, **{k: v for k, v in _batch(64, gen).items() if k in ("user_id", "device", "u_x_i")}}
    torch.testing.assert_close(model.item_tower(batch), model.item_tower(other), rtol=0, atol=0)


def test_tower_vectors_are_unit_length():
    model = _student()
    u = model.user_tower(_batch(32, torch.Generator().manual_seed(3)))
    torch.testing.assert_close(u.norm(dim=-1), torch.ones(32), rtol=1e-5, atol=1e-5)


def test_score_is_a_times_inner_product_plus_b():
    model, batch = _student(), _batch(16, torch.Generator().manual_seed(4))
    with torch.no_grad():
        model.a.fill_(3.0)
        model.b.fill_(-0.5)
        expected = 3.0 * (model.user_tower(batch) * model.item_tower(batch)).sum(-1) - 0.5
    torch.testing.assert_close(model(batch), expected)


def test_batch_scores_equal_per_row_scores():
    model, batch = _student(), _batch(10, torch.Generator().manual_seed(5))
    full = model(batch)
    rows = torch.stack([model({k: v[i:i + 1] for k, v in batch.items()})[0] for i in range(10)])
    torch.testing.assert_close(full, rows, rtol=1e-6, atol=1e-6)
