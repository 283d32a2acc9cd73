"""Distilling the student families: the COLD student's entire-space scorer and DAT's mimic term."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from coarserank.config import ColdStudentOptions, DistillConfig, load_config
from coarserank.data.dataset import encode_splits
from coarserank.data.prepare import prepare
from coarserank.data.sources import load_source
from coarserank.distill.api import distill, split_table, train_teacher
from coarserank.distill.entire_space import PairScorer, RowPairScorer, pair_scorer
from coarserank.student import build_student

FIELDS = ("user_id", "item_id", "topic_match", "region_x_category", "user_category_rate", "tags")


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(overrides=["synthetic.rows=3000", "teacher.epochs=1", "student.epochs=1",
                                 "student.hidden=[16]", "student.dim=8"])
    data = encode_splits(prepare(load_source(cfg.data, cfg.synthetic, 0), cfg.data), cfg.data)
    teacher = train_teacher(data.train, data.valid, data.schema, cfg.teacher).model
    return cfg, data, teacher


def _cold(cfg):
    return replace(cfg.student, family="cold", cold=ColdStudentOptions(features=FIELDS))


def test_the_entire_space_scorer_follows_whether_the_student_has_towers(tiny):
    cfg, data, _ = tiny
    assert isinstance(pair_scorer(build_student(data.schema, cfg.student)), PairScorer)
    assert isinstance(pair_scorer(build_student(data.schema, _cold(cfg))), RowPairScorer)


def test_row_pair_scorer_scores_pairs_like_the_cold_student_on_the_encoded_pair_rows(tiny):
    cfg, data, _ = tiny
    torch.manual_seed(0)
    student = build_student(data.schema, _cold(cfg)).eval()
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn(p.shape) * 0.3)  # far from the near-zero initialisation
    batch = split_table(data.valid).take(torch.arange(8))
    row, item = np.repeat(np.arange(8), 3), np.arange(24) % data.pairs.n_items
    rows = {k: v.numpy()[row] for k, v in batch.inputs.items()}
    pairs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in data.pairs.encode(rows, item).items()}
    with torch.no_grad():
        s, scored = RowPairScorer(student)(batch.inputs, pairs)
        direct = torch.stack([student({k: v[i:i + 1] for k, v in pairs.items()})[0] for i in range(24)])
        own = student(batch.inputs)
    torch.testing.assert_close(scored, direct, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(s, own)
    assert float(scored.std()) > 0


def test_entire_space_distillation_trains_a_cold_student_on_sampled_rows(tiny):
    cfg, data, teacher = tiny
    trained = distill(teacher, data.train, data.valid, data.schema, _cold(cfg), DistillConfig(sampled=3),
                      pairs=data.pairs)
    assert 0.9 * 3 * len(data.train) <= trained.sampled_rows <= 3 * len(data.train)
    assert trained.model.schema.names == [n for n in data.schema.names if n in FIELDS]


def test_distilling_a_dat_student_adds_the_mimic_term_to_the_loss(tiny):
    cfg, data, teacher = tiny
    dat = replace(cfg.student, family="dat")
    without = replace(dat, dat=replace(dat.dat, mimic_weight=0.0))
    a = distill(teacher, data.train, data.valid, data.schema, dat, DistillConfig(sampled=0), seed=0)
    b = distill(teacher, data.train, data.valid, data.schema, without, DistillConfig(sampled=0), seed=0)
    c = distill(teacher, data.train, data.valid, data.schema, without, DistillConfig(sampled=0), seed=0)
    assert a.history.history[0].train_loss != pytest.approx(b.history.history[0].train_loss, rel=1e-6)
    assert b.history.history[0].train_loss == c.history.history[0].train_loss  # same seed, same run
    assert not torch.equal(a.model.user_tower.augment.weight, b.model.user_tower.augment.weight)
