"""The serving contract travels with the files: one run id across every artifact, separators,
history-cross statistics in the ONNX metadata, and ``distill describe`` reading them back."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import polars as pl
import pytest
from click.testing import CliRunner

from coarserank.cli import distill
from coarserank.config import load_config
from coarserank.artifacts import Manifest
from coarserank.pipeline.export_stage import rebuild_index
from coarserank.pipeline.run import load_context, run
from coarserank.serving.faiss_index import sidecar_path
from coarserank.serving.kv_file import FileKVStore
from coarserank.serving.onnx_inputs import MISSING_INT64

ONNX = ("user_tower.onnx", "item_tower.onnx", "teacher.onnx")
ORT_DTYPES = {"tensor(int64)": "int64", "tensor(string)": "string", "tensor(float)": "float32"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Path:
    path = tmp_path_factory.getbasetemp() / "served-run"  # the session's tiny run (tests/serving/test_ranker.py)
    run(load_config(overrides=[*tiny_overrides, "report.enabled=false", f'run.out="{path}"']), path)
    return path


def _meta(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _run_ids(run_dir: Path) -> dict[str, str]:
    ids = {name: _meta(run_dir / name)["run_id"] for name in ONNX}
    with FileKVStore(run_dir / "items.kv") as kv:
        ids["items.kv"] = kv.run_id
    ids["items.faiss.json"] = json.loads(sidecar_path(run_dir / "items.faiss").read_text())["run_id"]
    ids["serving.json"] = json.loads((run_dir / "serving.json").read_text())["run_id"]
    return ids


def test_every_artifact_of_a_run_carries_the_same_run_id(run_dir: Path) -> None:
    ids = _run_ids(run_dir)
    assert len(set(ids.values())) == 1, ids
    assert len(ids["serving.json"]) == 32 and int(ids["serving.json"], 16) >= 0


def test_the_run_id_is_no_file_hash(run_dir: Path) -> None:
    run_id = _run_ids(run_dir)["serving.json"]
    hashes = json.loads((run_dir / "manifest.json").read_text())["files"].values()
    assert not any(h.startswith(run_id) for h in hashes)


def test_the_run_id_follows_the_student_and_is_recomputed_from_the_manifest(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert Manifest(manifest).run_id == _run_ids(run_dir)["serving.json"]
    retrained = {**manifest, "files": {**manifest["files"], "student.pt": "0" * 64}}
    assert Manifest(retrained).run_id != Manifest(manifest).run_id


def test_a_rebuilt_index_keeps_the_run_id(run_dir: Path, tmp_path: Path) -> None:
    copied = Path(shutil.copytree(run_dir, tmp_path / "run"))
    rebuild_index(copied, "hnsw")
    assert json.loads(sidecar_path(copied / "items.faiss").read_text())["run_id"] == _run_ids(run_dir)["serving.json"]


def test_multi_valued_inputs_carry_their_separator_and_max_len(run_dir: Path) -> None:
    cfg = load_config(run_dir / "config.toml")
    multi = {f.name: (f.sep, f.max_len) for f in cfg.data.features if f.kind == "multi"}
    assert multi, "the tiny run has a multi-valued feature"
    for name in ("item_tower.onnx", "teacher.onnx"):
        inputs = {i["name"]: i for i in json.loads(_meta(run_dir / name)["inputs"])}
        for feature, (sep, max_len) in multi.items():
            assert (inputs[feature]["sep"], inputs[feature]["max_len"]) == (sep, max_len)
            assert inputs[feature]["shape"] == ["N", max_len]


def _naive_rate(frame: pl.DataFrame, h: dict, row: dict) -> float:
    """The documented formula, one row at a time, from the frame's labelled rows."""
    earlier = frame.filter((pl.col(h["key_column"]) == row[h["key_column"]])
                           & (pl.col(h["over_column"]) == row[h["over_column"]])
                           & (pl.col("_time") < row["_time"]) & pl.col("_label").is_not_null())
    pos, cnt = float(earlier["_label"].sum()), float(earlier.height)
    return (pos + h["prior"] * h["base_rate"]) / (cnt + h["prior"])


def test_history_cross_metadata_lets_a_client_recompute_the_column(run_dir: Path) -> None:
    ctx, _ = load_context(run_dir)
    history = json.loads(_meta(run_dir / "teacher.onnx")["history_crosses"])
    assert [h["name"] for h in history] == [h.name for h in ctx.cfg.data.history_crosses]
    h = history[0]
    frame = ctx.frame
    assert h["prior"] == ctx.cfg.data.history_crosses[0].prior
    assert h["base_rate"] == pytest.approx(frame.filter(pl.col("_split") == "train")["_label"].mean(), abs=1e-15)
    assert json.loads((run_dir / "serving.json").read_text())["history_crosses"] == history
    sample = frame.sample(150, seed=7)
    got = [_naive_rate(frame, h, row) for row in sample.to_dicts()]
    np.testing.assert_allclose(got, sample[h["name"]].to_numpy(), rtol=0, atol=1e-12)


def _describe(run_dir: Path, *args: str) -> str:
    result = CliRunner().invoke(distill, ["describe", "--run", str(run_dir), *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_describe_json_lists_the_inputs_each_onnx_file_takes(run_dir: Path) -> None:
    body = json.loads(_describe(run_dir, "--json"))
    assert [d["file"] for d in body["files"]] == list(ONNX)
    assert body["run_id"] == _run_ids(run_dir)["serving.json"]
    for d in body["files"]:
        session = ort.InferenceSession(str(run_dir / d["file"]), providers=["CPUExecutionProvider"])
        graph = [(i.name, ORT_DTYPES[i.type], list(i.shape)) for i in session.get_inputs()]
        assert [(i["name"], i["dtype"], i["shape"]) for i in d["inputs"]] == graph
        assert d["output"]["name"] == session.get_outputs()[0].name
        for i in d["inputs"]:
            assert i["missing"] == {"int64": str(MISSING_INT64), "string": "", "float32": "NaN"}[i["dtype"]]


def test_describe_text_shows_separators_derivations_and_history_statistics(run_dir: Path) -> None:
    text = _describe(run_dir)
    history = json.loads(_meta(run_dir / "teacher.onnx")["history_crosses"])[0]
    assert f"base rate {history['base_rate']}" in text and f"prior {history['prior']}" in text
    tags = next(line for line in text.splitlines() if line.strip().startswith("tags "))
    assert "'|'" in tags and "keep the first 4" in tags
    assert "computed in the graph: topic_match = match cross of fav_topic and topic" in text


def test_describe_refuses_a_modified_onnx_file(run_dir: Path, tmp_path: Path) -> None:
    copied = Path(shutil.copytree(run_dir, tmp_path / "run"))
    with open(copied / "item_tower.onnx", "ab") as f:
        f.write(b"\0")
    result = CliRunner().invoke(distill, ["describe", "--run", str(copied)])
    assert result.exit_code != 0
    assert "item_tower.onnx" in result.output and "Traceback" not in result.output
