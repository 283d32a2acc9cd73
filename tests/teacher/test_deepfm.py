from __future__ import annotations

import torch

from coarserank.config import TeacherConfig
from coarserank.data.schema import Field, Schema
from coarserank.layers import FeatureEmbedding, fm_interaction
from coarserank.teacher import build_teacher

SCHEMA = Schema((
    Field("user_id", "user", "categorical", 20),
    Field("tags", "item", "multi", 9, 3),
    Field("price", "item", "numeric"),
    Field("u_x_tags", "cross", "multi", 15, 3),
))


def _batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"user_id": torch.randint(0, 20, (n,), generator=g), "tags": torch.randint(0, 9, (n, 3), generator=g),
            "price": torch.randn(n, generator=g), "u_x_tags": torch.randint(0, 15, (n, 3), generator=g)}


def test_fm_interaction_equals_the_sum_over_field_pairs():
    v = torch.randn(5, 4, 3, dtype=torch.float64)
    naive = sum((v[:, i] * v[:, j]).sum(-1) for i in range(4) for j in range(i + 1, 4))
    torch.testing.assert_close(fm_interaction(v), naive)


def test_multi_valued_fields_are_mean_pooled_over_non_padding():
    emb = FeatureEmbedding(Schema((Field("tags", "item", "multi", 9, 3),)), dim=2)
    out = emb({"tags": torch.tensor([[3, 5, 0], [0, 0, 0]])})
    table = emb.tables["tags"].weight
    torch.testing.assert_close(out[0, 0], (table[3] + table[5]) / 2)
    torch.testing.assert_close(out[1, 0], torch.zeros(2))


def test_teacher_returns_one_logit_per_row_and_uses_cross_fields():
    torch.manual_seed(0)
    model = build_teacher(SCHEMA, TeacherConfig(embed_dim=4, hidden=(8,), dropout=0.0)).eval()
    batch = _batch(12, 0)
    out = model(batch)
    assert out.shape == (12,)
    changed = {**batch, "u_x_tags": _batch(12, 1)["u_x_tags"]}
    assert not torch.allclose(out, model(changed))


def test_same_seed_builds_the_same_teacher():
    torch.manual_seed(3)
    a = build_teacher(SCHEMA, TeacherConfig(embed_dim=4, hidden=(8,)))
    torch.manual_seed(3)
    b = build_teacher(SCHEMA, TeacherConfig(embed_dim=4, hidden=(8,)))
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(pa, pb, msg=name)
