"""The public API's evaluation and export calls give what `distill run` records for the same models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

import coarserank as cr
from coarserank.api import model_hash
from coarserank.artifacts import sha256_file
from coarserank.config import load_config
from coarserank.pipeline.run import run
from coarserank.pipeline.run_data import RunData
from coarserank.pipeline.sweep_stage import report_candidates
from coarserank.serving.kv_file import FileKVStore

REPORT = ["report.max_users=25", "report.sampled=60", "report.bootstrap=5", "report.sizes=[50]", "report.ns=[20, 50]"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Path:
    out = tmp_path_factory.mktemp("api") / "run"
    run(load_config(overrides=[*tiny_overrides, *REPORT]), out)
    return out


@pytest.fixture(scope="module")
def opened(finished: Path) -> cr.Run:
    return cr.Run.open(finished, require=("data", "teacher", "logits", "student", "student_hard"))


@pytest.mark.parametrize("split", ["valid", "test"])
@pytest.mark.parametrize("model", ["teacher", "student", "student_hard"])
def test_evaluate_gives_the_metrics_the_run_recorded(opened: cr.Run, split: str, model: str) -> None:
    got = cr.evaluate(opened.model(model), opened.split(split)).to_json()
    assert got == pytest.approx(opened.metrics()[split][model], abs=1e-12, rel=0)


def test_evaluate_auc_agrees_with_scikit_learn(opened: cr.Run) -> None:
    test = opened.split("test")
    logits = opened.teacher_logits("test")
    assert cr.evaluate(opened.model("teacher"), test).auc == pytest.approx(roc_auc_score(test.label, logits))


def test_consistency_gives_the_numbers_the_report_prints(opened: cr.Run, finished: Path) -> None:
    teacher = opened.model("teacher")
    data = RunData.from_run(opened, {"teacher": teacher})
    sets = report_candidates(data, opened.split("test"), teacher)
    cfg = opened.config.report
    got = cr.consistency(opened.model("student"), teacher, sets, ks=cfg.ks, ns=cfg.ns)
    reported = json.loads((finished / "report" / "report.json").read_text())["consistency"]["student"]
    assert got.keys() <= reported.keys() and "recall@10_in_50" in got
    for name, value in got.items():
        assert value == pytest.approx(reported[name], abs=1e-6), name


def test_consistency_of_the_teacher_with_itself_is_perfect(opened: cr.Run) -> None:
    teacher = opened.model("teacher")
    test = opened.split("test")
    sets = cr.CandidateSets(test.inputs, test.group)
    got = cr.consistency(teacher, teacher, sets, ks=(1,), ns=(1,))
    assert got["kendall_tau"] == pytest.approx(1.0) and got["recall@1_in_1"] == pytest.approx(1.0)


def test_export_of_the_runs_models_reproduces_its_serving_files(opened: cr.Run, finished: Path,
                                                                 tmp_path: Path) -> None:
    result = cr.export(opened.model("student"), opened.model("teacher"), opened, tmp_path / "out")
    assert {p.name for p in result.files} == {"user_tower.onnx", "item_tower.onnx", "teacher.onnx", "items.parquet",
                                              "items.kv", "items.faiss", "items.faiss.json", "index_queries.npy",
                                              "serving.json"}
    assert result.bundle == opened.serving()  # same weights: the run's checkpoint hashes, same score
    checks = result.checks
    assert max(*checks["onnx_vs_torch"].values(), checks["score_path"]) <= checks["tolerance"]
    with FileKVStore(tmp_path / "out" / "items.kv") as ours, FileKVStore(finished / "items.kv") as theirs:
        np.testing.assert_array_equal(ours.ids(), theirs.ids())
        np.testing.assert_allclose(ours.get_strict(ours.ids()), theirs.get_strict(theirs.ids()), atol=1e-6)
    assert sha256_file(tmp_path / "out" / "items.parquet") == sha256_file(finished / "items.parquet")


def test_export_keys_other_weights_by_their_own_hash(opened: cr.Run, tmp_path: Path) -> None:
    student = opened.model("student")
    student.b.data += 0.5  # other weights than the run's checkpoint
    result = cr.export(student, opened.model("teacher"), opened, tmp_path / "out")
    assert result.bundle.model_hash == model_hash(student) != opened.serving().model_hash
    assert result.bundle.b == pytest.approx(opened.serving().b + 0.5)
