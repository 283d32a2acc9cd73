"""The recall stage of ``distill run``: a multi-interest recall model (K = 3) beside the coarse ranker,
its serving files and checks, retrieval metrics for every model, ``distill recall``, resuming, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from coarserank.cli import distill
from coarserank.config import config_to_dict, load_config
from coarserank.errors import ConfigError
from coarserank.pipeline.recall_export import RECALL_FILES
from coarserank.pipeline.run import run
from coarserank.pipeline.rundir import sha256_file
from coarserank.serving.kv_file import FileKVStore
from coarserank.serving.ranker import onnx_session
from coarserank.serving.recall import RECALL_META, Recaller

USER = {"user_id": 12, "age": 30, "gender": "F", "region": "r03", "fav_topic": 17, "device": "ios", "hour": 21}
RECALL = ["recall.enabled=true", "recall.interests=3", "recall.epochs=2", "recall.hidden=[32]", "recall.dim=16",
          "report.enabled=false"]


def _with_sequence(overrides: list[str]) -> list[str]:
    """The default features plus ``hist_item``: the last 8 positive item ids before each row."""
    features = config_to_dict(load_config(overrides=overrides))["data"]["features"]
    features.append({"name": "hist_item", "side": "user", "kind": "sequence", "of": "item_id", "max_len": 8})

    def value(v: object) -> str:
        return json.dumps(v) if isinstance(v, str) else ("[" + ", ".join(map(str, v)) + "]" if isinstance(v, list)
                                                         else str(v).lower() if isinstance(v, bool) else str(v))

    tables = ", ".join("{" + ", ".join(f"{k} = {value(v)}" for k, v in f.items()) + "}" for f in features)
    return [*overrides, f"data.features=[{tables}]"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Path:
    path = tmp_path_factory.getbasetemp() / "recall-run"
    run(load_config(overrides=_with_sequence([*tiny_overrides, *RECALL])), path)
    return path


@pytest.fixture(scope="module")
def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def _user() -> dict:
    return {**USER, "hist_item": "3|17|25"}


def test_the_recall_stage_records_every_serving_file_with_its_sha256(run_dir: Path, manifest: dict) -> None:
    outputs = set(manifest["stages"]["recall"]["outputs"])
    assert outputs == {"recall.pt", *RECALL_FILES.values(), "recall_items.faiss.json", RECALL_META}
    for rel in outputs:
        assert manifest["files"][rel] == sha256_file(run_dir / rel)


def test_the_k_interest_user_tower_is_exported_with_parity_on_raw_rows(run_dir: Path, manifest: dict) -> None:
    checks = manifest["checks"]["recall"]
    assert max(checks["onnx_vs_torch"].values()) <= 1e-5
    assert checks["score_path"] <= checks["tolerance"] and checks["faiss_vs_kv"] <= checks["tolerance"]
    meta = json.loads((run_dir / RECALL_META).read_text())
    assert meta["interests"] == 3 and manifest["stages"]["recall"]["family"] == "multi_interest"
    session = onnx_session(run_dir / "recall_user_tower.onnx")
    assert session.get_outputs()[0].shape[1:] == [3, 16 + 16 + 1]  # dim, topic_match's embed_dim, the norm coordinate


def test_recall_returns_the_exact_top_k_by_the_maximum_over_interests(run_dir: Path) -> None:
    recaller = Recaller.from_run(run_dir)
    got = recaller.recall(_user(), 20)
    with FileKVStore(run_dir / "recall_items.kv") as store:
        ids = np.array(store.ids())
        scores = (store.get_strict(ids) @ recaller.user_vectors(_user()).T).max(axis=1)
    order = np.lexsort((ids, -scores))[:20]
    assert got.ids.tolist() == ids[order].tolist()
    np.testing.assert_allclose(got.scores, scores[order], rtol=1e-5)


def test_metrics_hold_retrieval_over_the_catalogue_for_recall_student_and_popularity(run_dir: Path) -> None:
    retrieval = json.loads((run_dir / "metrics.json").read_text())["test"]["retrieval"]
    assert set(retrieval) == {"recall", "student", "popularity"}
    for row in retrieval.values():
        assert {"recall@50", "recall@100", "recall@500", "ndcg@100", "coverage"} <= set(row)
        assert 0.0 <= row["recall@100"] <= row["recall@500"] <= 1.0


def test_distill_recall_answers_from_the_recall_model(run_dir: Path) -> None:
    result = CliRunner().invoke(distill, ["recall", "--run", str(run_dir), "--user", json.dumps(_user()), "--k", "9"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.output)
    assert body["model"] == "recall" and len(body["ids"]) == 9


def test_changing_only_the_recall_section_retrains_only_the_recall_model(run_dir: Path, tmp_path: Path,
                                                                        tiny_overrides: list[str]) -> None:
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    before = json.loads((copy / "manifest.json").read_text())
    run(load_config(overrides=_with_sequence([*tiny_overrides, *RECALL, "recall.interests=2"])), copy)
    after = json.loads((copy / "manifest.json").read_text())
    assert after["files"]["teacher.pt"] == before["files"]["teacher.pt"]
    assert after["files"]["student.pt"] == before["files"]["student.pt"]
    assert after["files"]["recall.pt"] != before["files"]["recall.pt"]
    assert json.loads((copy / RECALL_META).read_text())["interests"] == 2


def test_a_multi_interest_recall_model_without_a_sequence_fails_when_the_config_loads(
        tiny_overrides: list[str]) -> None:
    with pytest.raises(ConfigError, match="no data.features entry has kind = \"sequence\""):
        load_config(overrides=[*tiny_overrides, *RECALL, 'recall.family="multi_interest"'])


def test_sampled_softmax_batches_without_positives_fail_before_the_teacher_trains(
        tmp_path: Path, tiny_overrides: list[str]) -> None:
    cfg = load_config(overrides=[*tiny_overrides, 'student.objective="sampled_softmax"', "student.batch_size=2"])
    with pytest.raises(ConfigError, match="student.batch_size = 2 holds 0.[0-9]+ positive rows per batch"):
        run(cfg, tmp_path / "run")
    assert "teacher" not in json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]


def test_a_default_recall_model_this_data_cannot_train_fails_first_and_says_how_to_skip_it(
        tmp_path: Path, tiny_overrides: list[str]) -> None:
    cfg = load_config(overrides=[*tiny_overrides, "recall.batch_size=2"])  # recall.enabled: the default
    with pytest.raises(ConfigError, match=r"recall.batch_size = 2 holds .*; or set recall.enabled = false"):
        run(cfg, tmp_path / "run")
    assert "student_hard" not in json.loads((tmp_path / "run" / "manifest.json").read_text())["stages"]
