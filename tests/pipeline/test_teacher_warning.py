"""A run says when its teacher gives distillation nothing to transfer (validation figures only)."""

from __future__ import annotations

from pathlib import Path

import pytest

from coarserank.config import load_config
from coarserank.errors import DistillWarning
from coarserank.pipeline.run import run


def test_a_teacher_weaker_than_the_hard_student_on_validation_is_reported(tmp_path: Path, tiny_overrides):
    weak = [*tiny_overrides, "teacher.lr=1e-7", "teacher.epochs=1", "teacher.blend=[]", "distill.sampled=0",
            "report.enabled=false"]
    with pytest.warns(DistillWarning, match="the teacher is not stronger than the hard-label student on validation"):
        result = run(load_config(overrides=weak), tmp_path / "run")
    valid = result.metrics["valid"]
    assert valid["teacher"]["gauc"] <= valid["student_hard"]["gauc"]
    assert result.metrics["notes"][0].startswith("the teacher is not stronger")


def test_a_stronger_teacher_adds_no_note(tmp_path: Path, tiny_overrides):
    result = run(load_config(overrides=[*tiny_overrides, "distill.sampled=0", "report.enabled=false"]),
                 tmp_path / "run")
    valid = result.metrics["valid"]
    assert valid["teacher"]["gauc"] > valid["student_hard"]["gauc"]
    assert "notes" not in result.metrics
