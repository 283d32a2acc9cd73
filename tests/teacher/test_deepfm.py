from __future__ import annotations

import pytest
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


PAIR_SCHEMA = Schema((
    Field("user_id", "user", "categorical", 20),
    Field("hist", "user", "sequence", 9, 3, of="item_id"),
    Field("hour", "context", "categorical", 5),
    Field("item_id", "item", "categorical", 9),
    Field("tags", "item", "multi", 9, 3),
    Field("price", "item", "numeric"),
    Field("u_x_tags", "cross", "multi", 15, 3),
    Field("rate", "cross", "numeric"),
))


def _pair_batch(rows: int, items: int, pairs: int) -> tuple[dict, dict, dict, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    row_inputs = {"user_id": torch.randint(0, 20, (rows,), generator=g), "hour": torch.randint(0, 5, (rows,), generator=g),
                  "hist": torch.randint(0, 9, (rows, 3), generator=g)}
    item_inputs = {"item_id": torch.randint(0, 9, (items,), generator=g), "tags": torch.randint(0, 9, (items, 3), generator=g),
                   "price": torch.randn(items, generator=g)}
    cross = {"u_x_tags": torch.randint(0, 15, (pairs, 3), generator=g), "rate": torch.randn(pairs, generator=g)}
    return row_inputs, item_inputs, cross, torch.randint(0, rows, (pairs,), generator=g), torch.randint(0, items, (pairs,), generator=g)


@pytest.mark.parametrize("per_row", [None, 3])  # 3: row-major pairs, three to a row (the row side broadcast)
def test_pair_logits_equal_the_forward_pass_on_the_pairs_full_rows(per_row):
    torch.manual_seed(0)
    teacher = build_teacher(PAIR_SCHEMA, TeacherConfig(embed_dim=4, hidden=(8, 6), attention=False)).eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_(0, 0.5)  # trained-like weights: every term of the logit matters
        rows, items, cross, row, item = _pair_batch(rows=6, items=5, pairs=18)
        if per_row is not None:
            row = torch.arange(6).repeat_interleave(per_row)
        full = {**{k: v[row] for k, v in rows.items()}, **{k: v[item] for k, v in items.items()}, **cross}
        torch.testing.assert_close(teacher.pair_logits(rows, items, cross, row, item, per_row=per_row), teacher(full))


def test_pair_logits_refuse_a_teacher_attending_over_a_sequence():
    teacher = build_teacher(PAIR_SCHEMA, TeacherConfig(embed_dim=4, hidden=(8,), attention=True))
    assert not teacher.scores_pairs
    with pytest.raises(ValueError, match="target attention"):
        teacher.pair_logits(*_pair_batch(rows=2, items=2, pairs=3))
