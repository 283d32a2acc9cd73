from __future__ import annotations

import pytest
import torch

from coarserank.config import StudentConfig, TeacherConfig
from coarserank.data.schema import Field, Schema
from coarserank.layers import CrossNetwork, TargetAttention
from coarserank.student import build_student
from coarserank.teacher import build_teacher

SCHEMA = Schema((
    Field("user_id", "user", "categorical", 10),
    Field("hist", "user", "sequence", 12, 4, of="item_id"),
    Field("item_id", "item", "categorical", 12),
    Field("price", "item", "numeric"),
))


def _batch() -> dict[str, torch.Tensor]:
    return {"user_id": torch.tensor([2, 2]), "hist": torch.tensor([[3, 4, 5, 0], [3, 4, 5, 0]]),
            "item_id": torch.tensor([3, 9]), "price": torch.tensor([0.5, 0.5])}


@pytest.mark.parametrize("family", ["deepfm", "dcn"])
def test_teacher_attention_reads_the_history_against_the_candidate(family):
    torch.manual_seed(0)
    teacher = build_teacher(SCHEMA, TeacherConfig(family=family, embed_dim=4, hidden=(8,))).eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.normal_(0, 0.5)  # trained-like weights: the untrained init is near zero everywhere
        batch = _batch()
        base = teacher(batch)
        history_only = teacher({**batch, "hist": torch.tensor([[6, 7, 8, 0], [6, 7, 8, 0]])})
    # the same user and history against two candidates: the attention output differs ...
    attention = teacher.attention.units["hist"]
    table = teacher.embedding.table(SCHEMA["hist"])
    pooled = attention(table(batch["item_id"]), table(batch["hist"]), batch["hist"])
    assert not torch.allclose(pooled[0], pooled[1])
    # ... and the history matters to the score
    assert not torch.allclose(base, history_only)


def test_student_user_vector_ignores_the_candidate_but_reads_the_history():
    torch.manual_seed(0)
    student = build_student(SCHEMA, StudentConfig(embed_dim=4, hidden=(8,), dim=4)).eval()
    batch = _batch()
    with torch.no_grad():
        u = student.user_tower(batch)
        other_history = student.user_tower({**batch, "hist": torch.tensor([[6, 7, 0, 0], [6, 7, 0, 0]])})
    torch.testing.assert_close(u[0], u[1])  # the rows differ only in the candidate item
    assert not torch.allclose(u, other_history)


def test_target_attention_weighs_padding_zero():
    unit = TargetAttention(3, (5,))
    keys = torch.randn(1, 3, 3)
    query = torch.randn(1, 3)
    with torch.no_grad():
        full = unit(query, keys, torch.tensor([[2, 3, 0]]))
        two = unit(query, keys[:, :2], torch.tensor([[2, 3]]))
    torch.testing.assert_close(full, two)


def test_cross_network_layer_is_x0_times_linear_plus_residual():
    net = CrossNetwork(4, 1)
    x0 = torch.randn(3, 4)
    layer = net.layers[0]
    torch.testing.assert_close(net(x0), x0 * (x0 @ layer.weight.T + layer.bias) + x0)
