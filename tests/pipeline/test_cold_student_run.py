"""A run whose student is the COLD model: config written by the sweep, export, `distill rank` and `bench`.

The run's configuration is what ``distill sweep --write-config`` writes for a chosen COLD point
(:func:`coarserank.cold.sweep.write_chosen_config`), run as is: the chosen model is trained,
distilled and served directly.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from coarserank.cli import distill
from coarserank.cold.sweep import write_chosen_config
from coarserank.config import load_config
from coarserank.data.prepare import base_rate
from coarserank.pipeline.export_cold import COLD_FILES
from coarserank.pipeline.run import load_context, run
from coarserank.pipeline.rundir import sha256_file
from coarserank.serving.catalogue import read_catalogue, teacher_frame

pytestmark = pytest.mark.slow

FIELDS = ["user_id", "gender", "item_id", "tags", "topic_match", "region_x_category", "user_category_rate"]
USER = {"user_id": 12, "age": 30, "gender": "F", "region": "r03", "fav_topic": 17, "device": "ios", "hour": 21}


@pytest.fixture(scope="module")
def chosen(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Path:
    cfg = load_config(overrides=[*tiny_overrides, "cold.epochs=2", "cold.hidden=[16]", "cold.embed_dim=4",
                                 "report.max_users=10", "report.sampled=20", "report.bootstrap=5",
                                 "cold.batch_size=512"])
    return write_chosen_config(cfg, FIELDS, tmp_path_factory.mktemp("cold") / "chosen.toml", family="cold")


@pytest.fixture(scope="module")
def run_dir(chosen: Path) -> Path:
    path = chosen.parent / "run"
    run(load_config(chosen), path)
    return path


@pytest.fixture(scope="module")
def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _invoke(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(distill, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_the_written_config_makes_the_chosen_cold_model_the_student(chosen: Path) -> None:
    cfg = load_config(chosen)
    assert cfg.student.family == "cold" and list(cfg.student.cold.features) == FIELDS
    assert (cfg.student.embed_dim, cfg.student.hidden, cfg.student.epochs) == (4, (16,), 2)
    assert len(cfg.data.features) == len(load_config().data.features)  # the teacher keeps every feature


def test_a_cold_run_exports_its_scorer_teacher_catalogue_and_history(run_dir: Path, manifest: dict) -> None:
    outputs = manifest["stages"]["export"]["outputs"]
    assert set(outputs) == {*COLD_FILES.values(), "history.parquet", "serving.json"}
    for rel in outputs:
        assert manifest["files"][rel] == sha256_file(run_dir / rel)
    serving = json.loads((run_dir / "serving.json").read_text())
    assert serving["family"] == "cold" and set(serving["fields"]) == set(FIELDS)


def test_a_cold_runs_export_checks_are_recorded_within_tolerance(manifest: dict) -> None:
    checks = manifest["checks"]["export"]
    assert set(checks["onnx_vs_torch"]) == {"cold", "teacher"}
    assert max(*checks["onnx_vs_torch"].values(), checks["rank_path"]) <= 1e-5


def test_the_cold_students_gate_means_are_recorded_in_manifest_and_metrics(run_dir: Path, manifest: dict) -> None:
    gates = manifest["stages"]["student"]["field_gates"]["rows"]
    assert sorted(gates) == sorted(FIELDS) and all(0 < w < 1 for w in gates.values())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["field_gates"]["student"]["rows"] == gates


def test_distill_rank_with_a_cold_student_matches_its_pytorch_scores(run_dir: Path, tmp_path: Path) -> None:
    ctx, models = load_context(run_dir)
    catalogue = read_catalogue(run_dir / "items.parquet", ctx.cfg.data)
    ids = catalogue["item_id"].to_numpy()[::2][:40]
    (tmp_path / "ids.txt").write_text("\n".join(str(i) for i in [*ids, 10**9]) + "\n")
    code, out, err = _invoke("rank", "--run", str(run_dir), "--user", json.dumps(USER), "--candidates",
                             str(tmp_path / "ids.txt"), "--top-n", "10")
    assert code == 0, err
    body = json.loads(out)
    frame = teacher_frame(catalogue, ctx.cfg.data, ids, USER, ctx.frame, base_rate(ctx.frame))
    student = models["student"]
    with torch.no_grad():
        want = student({k: torch.from_numpy(v) for k, v in ctx.encoder.transform(frame, student.schema.names)
                        .items()}).numpy()
    order = np.argsort(-want, kind="stable")[:10]
    assert body["ids"] == ids[order].tolist() and body["dropped"] == 1
    np.testing.assert_allclose(body["scores"], want[order], rtol=0, atol=2e-6)
    assert np.std(want) > 0


def test_distill_bench_times_the_cold_student_beside_the_teacher(run_dir: Path, tmp_path: Path) -> None:
    code, out, err = _invoke("bench", "--run", str(run_dir), "--candidates", "50", "--repeats", "3", "--users", "2",
                             "--json", str(tmp_path / "bench.json"))
    assert code == 0, err
    body = json.loads((tmp_path / "bench.json").read_text())
    assert "ONNX COLD student" in body["student_path"]
    assert body["candidates"]["50"]["student"]["p50_ms"] > 0 and "ratio p50" in out


def test_a_cold_run_has_no_student_item_vectors_to_index_or_store(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_text("1\n")
    user, ids = json.dumps(USER), str(tmp_path / "ids.txt")
    for args in (("index", "--run", str(run_dir)),
                 ("rank", "--run", str(run_dir), "--user", user, "--candidates", ids, "--store", str(tmp_path / "x"))):
        code, _, err = _invoke(*args)
        assert code == 1 and "COLD student" in err and "Traceback" not in err, args


def test_a_cold_run_recalls_through_its_recall_model(run_dir: Path) -> None:
    code, out, err = _invoke("recall", "--run", str(run_dir), "--user", json.dumps(USER), "--k", "5")
    assert code == 0, err
    body = json.loads(out)
    assert body["model"] == "recall" and len(body["ids"]) == 5


def test_a_cold_run_without_a_recall_model_has_nothing_to_recall_from(chosen: Path, tmp_path: Path) -> None:
    path = tmp_path / "run"
    run(load_config(chosen, overrides=["recall.enabled=false", "report.enabled=false"]), path)
    code, _, err = _invoke("recall", "--run", str(path), "--user", json.dumps(USER))
    assert code == 1 and "COLD student" in err and "Traceback" not in err


def test_the_report_scores_the_cold_student_on_sampled_candidate_rows(run_dir: Path) -> None:
    scores = pl.read_parquet(run_dir / "report" / "scores.parquet")
    sampled = scores.filter(~pl.col("exposed"))
    assert sampled.height > 0 and sampled["student"].is_not_null().all()
    assert sampled["student"].n_unique() > 1


def test_distill_describe_lists_the_cold_scorer_and_the_teacher(run_dir: Path) -> None:
    code, out, err = _invoke("describe", "--run", str(run_dir))
    assert code == 0, err
    assert "student.onnx: cold model, output logit" in out and "teacher.onnx: teacher model" in out


def test_a_cold_run_measures_catalogue_retrieval_without_the_towerless_student(run_dir: Path) -> None:
    retrieval = json.loads((run_dir / "metrics.json").read_text())["test"]["retrieval"]
    assert "student" not in retrieval and "popularity" in retrieval
