"""Specification of the export stage: the serving files, their manifest entries and the checks.

The run is the session's tiny run (see tests/serving/test_ranker.py); tests that re-run the stage
or rebuild the index work on a copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from coarserank.config import load_config
from coarserank.errors import ArtifactError
from coarserank.pipeline.export_stage import FILES, rebuild_index
from coarserank.pipeline.run import load_context, run
from coarserank.pipeline.rundir import sha256_file
from coarserank.serving.faiss_index import ItemIndex
from coarserank.serving.kv_file import FileKVStore
from coarserank.serving.ranker import CoarseRanker

USER = {"user_id": 12, "age": 30, "gender": "F", "region": "r03", "fav_topic": 17, "device": "ios",
        "hour": 21}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Path:
    path = tmp_path_factory.getbasetemp() / "served-run"
    run(load_config(overrides=[*tiny_overrides, "report.enabled=false", f'run.out="{path}"']), path)
    return path


@pytest.fixture(scope="module")
def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


@pytest.fixture(scope="module")
def context(run_dir: Path) -> tuple:
    return load_context(run_dir)


@pytest.fixture
def copied(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def test_export_writes_every_serving_file_and_records_its_sha256(run_dir: Path, manifest: dict) -> None:
    outputs = manifest["stages"]["export"]["outputs"]
    expected = {*FILES.values(), "items.faiss.json", "serving.json"}
    assert set(outputs) == expected
    for rel in expected:
        assert manifest["files"][rel] == sha256_file(run_dir / rel)


def test_onnx_parity_and_score_path_checks_are_recorded_within_tolerance(manifest: dict) -> None:
    checks = manifest["checks"]["export"]
    assert set(checks["onnx_vs_torch"]) == {"user", "item", "teacher"}
    worst = [*checks["onnx_vs_torch"].values(), checks["score_path"], checks["faiss_vs_kv"]]
    assert max(worst) <= checks["tolerance"] == 1e-3


def test_catalogue_holds_every_item_of_the_data_once(run_dir: Path, context: tuple) -> None:
    ctx, _ = context
    items = pl.read_parquet(run_dir / "items.parquet")
    assert items["item_id"].to_list() == sorted(ctx.frame["item_id"].unique().to_list())
    assert {"category", "topic", "tags", "price"} <= set(items.columns)


def test_kv_store_holds_the_catalogue_keyed_by_id_for_the_student(run_dir: Path, manifest: dict) -> None:
    items = pl.read_parquet(run_dir / "items.parquet")
    with FileKVStore(run_dir / "items.kv") as store:
        np.testing.assert_array_equal(store.ids(), items["item_id"].to_numpy())
        assert store.model_hash == manifest["files"]["student.pt"]


def test_serving_json_carries_the_students_score_scale_and_offset(run_dir: Path, context: tuple) -> None:
    _, models = context
    meta = json.loads((run_dir / "serving.json").read_text())
    assert meta["score"]["a"] == pytest.approx(float(models["student"].a.detach()))
    assert meta["score"]["b"] == pytest.approx(float(models["student"].b.detach()))
    assert meta["dim"] == 16


def test_index_sidecar_reports_recall_and_queries_per_second(run_dir: Path) -> None:
    facts = json.loads((run_dir / "items.faiss.json").read_text())
    assert facts["kind"] == "flat" and facts["recall@100"] == 1.0
    assert facts["qps"] > 0 and facts["exact_qps"] > 0


def test_index_queries_are_user_tower_vectors(run_dir: Path) -> None:
    q = np.load(run_dir / "index_queries.npy", allow_pickle=False)
    assert q.dtype == np.float32 and q.shape[1] == 16
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)


def _resume(run_dir: Path, *overrides: str) -> None:
    """Resume the run with other settings: only the stages they change run again."""
    run(load_config(run_dir / "config.toml", overrides=list(overrides)), run_dir)


def test_export_fails_naming_the_check_when_a_difference_exceeds_the_tolerance(copied: Path) -> None:
    problem = r"export check failed: .*score_path = .* exceeds the tolerance 1e-15 "
    with pytest.raises(ArtifactError, match=problem):
        _resume(copied, "serving.parity_tolerance=1e-15")


def test_float16_store_is_checked_against_a_widened_tolerance(copied: Path) -> None:
    _resume(copied, 'serving.kv_dtype="float16"')
    checks = json.loads((copied / "manifest.json").read_text())["checks"]["export"]
    a = json.loads((copied / "serving.json").read_text())["score"]["a"]
    assert checks["tolerance"] == pytest.approx(1e-3 + abs(a) * 2.0 ** -11)
    with FileKVStore(copied / "items.kv") as store:
        assert store.dtype == "float16"


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_rebuild_index_replaces_the_index_and_keeps_the_run_verifiable(copied: Path, kind: str) -> None:
    facts = rebuild_index(copied, kind)
    assert facts["kind"] == kind and 0 < facts["recall@100"] <= 1
    manifest = json.loads((copied / "manifest.json").read_text())
    assert manifest["checks"]["export"]["index_kind"] == kind
    assert ItemIndex.load(copied / "items.faiss").kind == kind
    assert CoarseRanker.from_run(copied).recall(USER, 5).ids.size == 5
