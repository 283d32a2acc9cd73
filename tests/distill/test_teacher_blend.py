"""The distilled teacher blended with the hard-label two-tower: the weighted sum, chosen on validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from coarserank.config import load_config
from coarserank.distill.api import blend_teacher
from coarserank.distill.tensors import make_table
from coarserank.errors import ConfigError
from coarserank.teacher.blend import TeacherBlend


class Column(nn.Module):
    """A stand-in model whose logit is one input column."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs[self.name].float()


def _valid(rng: np.random.Generator, n: int = 600):
    label = rng.integers(0, 2, n).astype(np.float32)
    group = np.repeat(np.arange(n // 20), 20)
    signal = label + rng.normal(0, 1.0, n)
    return make_table({"good": signal.astype(np.float32), "noise": rng.normal(0, 1, n).astype(np.float32),
                       "other": (label + rng.normal(0, 1.0, n)).astype(np.float32)}, label, group), label, group


def _gauc(label: np.ndarray, score: np.ndarray, group: np.ndarray) -> float:
    """Row-weighted per-group AUC with scikit-learn (groups with one class skipped)."""
    total, weight = 0.0, 0
    for g in np.unique(group):
        at = group == g
        if len(np.unique(label[at])) == 2:
            total += roc_auc_score(label[at], score[at]) * at.sum()
            weight += at.sum()
    return total / weight


def test_the_blend_scores_the_weighted_sum_of_the_heavy_model_and_the_tower(rng) -> None:
    table, _, _ = _valid(rng)
    blend = TeacherBlend(Column("good"), Column("noise"), 0.25)
    expected = 0.75 * table.inputs["good"] + 0.25 * table.inputs["noise"]
    torch.testing.assert_close(blend(table.inputs), expected)


def test_the_weight_with_the_best_validation_gauc_is_chosen(rng) -> None:
    table, label, group = _valid(rng)
    got = blend_teacher(Column("good"), Column("other"), table, [0.25, 0.5, 0.75])
    assert set(got.valid_gauc) == {0.0, 0.25, 0.5, 0.75}
    good, other = table.inputs["good"].numpy(), table.inputs["other"].numpy()
    reference = {w: _gauc(label, (1 - w) * good + w * other, group) for w in got.valid_gauc}
    for w, value in got.valid_gauc.items():
        assert abs(value - reference[w]) < 1e-9
    assert got.weight == max(reference, key=reference.get) and got.weight > 0
    assert isinstance(got.model, TeacherBlend) and float(got.model.weight) == got.weight


def test_a_tower_that_only_hurts_leaves_the_heavy_model_itself(rng) -> None:
    table, _, _ = _valid(rng)
    heavy = Column("good")
    got = blend_teacher(heavy, Column("noise"), table, [0.5])
    assert got.weight == 0.0 and got.model is heavy


def test_no_tower_or_no_weights_never_blends(rng) -> None:
    table, _, _ = _valid(rng)
    heavy = Column("good")
    assert blend_teacher(heavy, None, table, [0.5]).model is heavy
    assert blend_teacher(heavy, Column("other"), table, []).valid_gauc.keys() == {0.0}


def test_the_report_names_the_teacher_it_compares_against() -> None:
    from coarserank.pipeline.report_scoring import _teacher_text

    assert _teacher_text("deepfm", Column("good")) == "deepfm alone"
    assert "blended with the hard-label two-tower at w = 0.25" in _teacher_text(
        "deepfm", TeacherBlend(Column("good"), Column("other"), 0.25))


def test_a_blend_weight_outside_zero_to_one_fails_at_load_naming_the_key() -> None:
    with pytest.raises(ConfigError, match=r"teacher\.blend"):
        load_config(overrides=["teacher.blend=[0.5, 1.0]"])
