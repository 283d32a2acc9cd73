"""The recall objective's distillation term: the teacher's logits over the same in-batch candidates."""

from __future__ import annotations

import pytest
import torch
from numpy.testing import assert_allclose

from coarserank.config import TeacherConfig, load_config
from coarserank.data.dataset import encode_splits
from coarserank.data.prepare import prepare
from coarserank.data.sources import load_source
from coarserank.distill.api import split_table
from coarserank.distill.recall import PairView, RecallFields, recall_loss_fn, teacher_candidate_logits
from coarserank.student import build_student
from coarserank.teacher import build_teacher

FIELDS = RecallFields(item="item_id", user="user_id")


@pytest.fixture(scope="module")
def prepared():
    cfg = load_config(overrides=["synthetic.rows=3000", "student.dim=8", "student.embed_dim=4",
                                 "student.hidden=[8]", 'student.objective="sampled_softmax"', "student.softmax_alpha=0.5",
                                 "student.softmax_teacher_rows=5", "student.extra_negatives=7"])
    data = encode_splits(prepare(load_source(cfg.data, cfg.synthetic, 0), cfg.data), cfg.data)
    torch.manual_seed(0)
    teacher = build_teacher(data.schema, TeacherConfig(embed_dim=4, hidden=(8,))).eval()
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p) * 0.3)
    return cfg, data, teacher


def test_the_teachers_logit_for_a_row_and_its_own_item_is_its_logit_on_the_row(prepared):
    cfg, data, teacher = prepared
    batch = split_table(data.train).take(torch.arange(200))
    positive = batch.label > 0.5
    ids = batch.inputs["_item"]
    z, rows = teacher_candidate_logits(teacher, data.pairs, batch, positive, ids, None, cfg.student,
                                       torch.Generator().manual_seed(0))
    chosen = torch.nonzero(positive, as_tuple=True)[0][rows]
    with torch.no_grad():
        direct = teacher(batch.inputs)[chosen]
    assert z.shape == (5, 200)
    assert_allclose(z[torch.arange(5), chosen].numpy(), direct.numpy(), rtol=1e-5, atol=1e-5)


def test_the_distillation_term_trains_the_towers_on_the_teachers_candidate_softmax(prepared):
    cfg, data, teacher = prepared
    table = split_table(data.train)
    student = build_student(data.schema, cfg.student)
    loss_fn = recall_loss_fn(table, data.schema, cfg.student, FIELDS, pairs=data.pairs, teacher=teacher)
    batch = table.take(torch.arange(256))
    loss = loss_fn(PairView(student).train(), batch)
    loss.backward()
    assert torch.isfinite(loss.detach()) and student.user_tower.mlp.net[0].weight.grad.abs().sum() > 0
