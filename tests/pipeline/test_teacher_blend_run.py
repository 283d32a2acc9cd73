"""A run whose validation split prefers the teacher blended with the hard-label student."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import coarserank as cr
from coarserank.config import load_config
from coarserank.pipeline.run import run
from coarserank.teacher.blend import TeacherBlend

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cfg(tiny_overrides: list[str]):
    # a teacher that barely trains: blending in the hard-label two-tower wins on validation
    return load_config(overrides=[*tiny_overrides, "teacher.lr=1e-7", "teacher.epochs=1", "teacher.blend=[0.5]",
                                  "distill.sampled=0", "report.enabled=false"])


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, cfg) -> Path:
    path = tmp_path_factory.mktemp("blend") / "run"
    run(cfg, path)
    return path


def test_the_teacher_stage_records_the_chosen_weight_and_every_weight_tried(run_dir: Path) -> None:
    facts = cr.Run.open(run_dir).manifest.stage_facts("teacher")
    assert facts["blend_weight"] == 0.5
    assert set(facts["blend_valid_gauc"]) == {"0", "0.5"}
    assert facts["blend_valid_gauc"]["0.5"] > facts["blend_valid_gauc"]["0"]


def test_the_blended_teacher_reads_back_with_the_logits_the_run_distilled_from(run_dir: Path) -> None:
    view = cr.Run.open(run_dir)
    teacher = view.model("teacher")
    assert isinstance(teacher, TeacherBlend)
    valid = view.split("valid")
    np.testing.assert_allclose(cr.score_split(teacher, valid), view.teacher_logits("valid"), rtol=1e-5, atol=1e-5)


def test_the_blended_teacher_exports_with_parity(run_dir: Path) -> None:
    checks = json.loads((run_dir / "manifest.json").read_text())["checks"]["export"]
    assert checks["onnx_vs_torch"]["teacher"] <= 1e-5


def test_a_resumed_run_reads_the_blended_teacher_back_instead_of_training_it(run_dir: Path, cfg) -> None:
    before = json.loads((run_dir / "manifest.json").read_text())["stages"]["teacher"]
    again = run(cfg, run_dir)
    after = json.loads((run_dir / "manifest.json").read_text())["stages"]["teacher"]
    assert after == before
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert again.metrics["valid"]["teacher"] == metrics["valid"]["teacher"]
