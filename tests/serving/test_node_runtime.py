"""Another runtime: Node.js scores with the exported towers (onnxruntime-node) and the KV file.

Python writes a tiny run's user_tower.onnx and item_tower.onnx, an items.kv of PyTorch item
vectors, golden raw inputs and the scores PyTorch gives; ``js/score_check.js`` runs both towers
in onnxruntime-node, reads items.kv with ``js/kv_reader.js`` and scores the candidates. Everything
matches within 1e-5. Node.js and ``npm ci`` in tests/serving/js are required (CI has both): a
missing runtime fails the test with the fix, it is never skipped.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from coarserank.config import load_config
from coarserank.data.encode import Encoder
from coarserank.pipeline.run import load_context, run
from coarserank.serving.kv_file import write_kv_file
from coarserank.serving.onnx_export import export_item_tower, export_user_tower
from coarserank.serving.onnx_inputs import feeds_from_frame, input_specs
from coarserank.student import Tower, TwoTower

JS_DIR = Path(__file__).resolve().parent / "js"
TOLERANCE = 1e-5
RUN_HASH = "node-check-" + "5" * 20
USERS = 40
CANDIDATES = 25


def _node_or_fail() -> str:
    """The node binary with onnxruntime-node installed beside score_check.js, or a test failure saying
    what to install."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("Node.js is not on PATH: this test runs the exported towers in onnxruntime-node. Install "
                    "Node.js >= 18 and run `npm ci` in tests/serving/js (CI does both).", pytrace=False)
    if not (JS_DIR / "node_modules" / "onnxruntime-node").is_dir():
        pytest.fail(f"onnxruntime-node is not installed in {JS_DIR}: run `npm ci` there (CI does).",
                    pytrace=False)
    return node


def _tower_vectors(tower: Tower, encoder: Encoder, frame: pl.DataFrame) -> np.ndarray:
    inputs = {k: torch.from_numpy(v) for k, v in encoder.transform(frame, tower.schema.names).items()}
    with torch.no_grad():
        return tower.eval()(inputs).numpy()


def _json_input(array: np.ndarray) -> dict[str, Any]:
    """A graph input for golden.json: int64 as decimal strings, NaN as null, row-major data."""
    flat = array.ravel().tolist()
    if array.dtype == np.int64:
        return {"dtype": "int64", "shape": list(array.shape), "data": [str(v) for v in flat]}
    if array.dtype == np.float32:
        assert np.isfinite(array[~np.isnan(array)]).all(), "JSON has no infinity"
        return {"dtype": "float32", "shape": list(array.shape), "data": [None if v != v else v for v in flat]}
    return {"dtype": "string", "shape": list(array.shape), "data": flat}


@dataclass
class NodeCheck:
    result: dict[str, Any]
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    scores: np.ndarray
    user_inputs: list[str]
    item_inputs: list[str]


@pytest.fixture(scope="module")
def node_check(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> NodeCheck:
    node = _node_or_fail()
    root = tmp_path_factory.mktemp("node_runtime")
    run(load_config(overrides=[*tiny_overrides, "report.enabled=false"]), root / "run")
    ctx, models = load_context(root / "run")
    encoder, student = ctx.encoder, models["student"]
    assert encoder is not None and ctx.frame is not None and isinstance(student, TwoTower)
    out = root / "serving"
    out.mkdir()
    export_user_tower(student, encoder, out / "user_tower.onnx", run_hash=RUN_HASH)
    export_item_tower(student, encoder, out / "item_tower.onnx", run_hash=RUN_HASH)

    i = pl.int_range(pl.len())

    def put(col: str, row: int, value: object) -> pl.Expr:
        return pl.when(i == row).then(pl.lit(value)).otherwise(pl.col(col)).alias(col)

    items = (ctx.frame.unique("item_id", keep="first").sort("item_id")
             .with_columns(put("tags", 0, None), put("category", 1, "c-new"), put("price", 2, float("nan"))))
    ids = items["item_id"].to_numpy()
    item_vectors = _tower_vectors(student.item_tower, encoder, items)
    write_kv_file(out / "items.kv", ids, item_vectors, model_hash=RUN_HASH)

    users = (ctx.frame.filter(pl.col("_split") == "test").head(USERS)
             .with_columns(put("user_id", 0, 10_000_000), put("gender", 1, None), put("region", 2, "r-new"),
                           put("age", 3, None)))
    user_vectors = _tower_vectors(student.user_tower, encoder, users)
    candidates = np.random.default_rng(0).choice(ids, size=(USERS, CANDIDATES))
    a, b = float(student.a.detach()), float(student.b.detach())
    kv_rows = item_vectors[np.searchsorted(ids, candidates)].astype(np.float64)
    scores = a * np.einsum("ud,ucd->uc", user_vectors.astype(np.float64), kv_rows) + b

    user_feeds = feeds_from_frame(encoder, users, "user")
    item_feeds = feeds_from_frame(encoder, items.head(30), "item")
    golden = {
        "user_inputs": {k: _json_input(v) for k, v in user_feeds.items()},
        "item_inputs": {k: _json_input(v) for k, v in item_feeds.items()},
        "candidates": [[str(c) for c in row] for row in candidates.tolist()],
        "a": a, "b": b,
    }
    (out / "golden.json").write_text(json.dumps(golden))
    done = subprocess.run([node, str(JS_DIR / "score_check.js"), str(out)], cwd=JS_DIR, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    if done.returncode != 0:
        pytest.fail(f"node score_check.js failed ({done.returncode}):\n{done.stderr[-3000:]}", pytrace=False)
    documented = {kind: [s.name for s in input_specs(encoder, kind)] for kind in ("user", "item")}
    return NodeCheck(json.loads(done.stdout), user_vectors, item_vectors[:30], scores,
                     documented["user"], documented["item"])


def test_node_sessions_take_the_documented_raw_inputs(node_check: NodeCheck) -> None:
    assert node_check.result["user_inputs"] == node_check.user_inputs
    assert node_check.result["item_inputs"] == node_check.item_inputs


def test_node_user_vectors_match_pytorch(node_check: NodeCheck) -> None:
    got = np.asarray(node_check.result["user_vectors"])
    assert got.shape == node_check.user_vectors.shape == (USERS, 16)
    np.testing.assert_allclose(got, node_check.user_vectors, rtol=0, atol=TOLERANCE)


def test_node_item_vectors_match_the_kv_file(node_check: NodeCheck) -> None:
    got = np.asarray(node_check.result["item_vectors"])
    np.testing.assert_allclose(got, node_check.item_vectors, rtol=0, atol=TOLERANCE)


def test_node_scores_from_onnx_user_vectors_and_kv_items_match_python(node_check: NodeCheck) -> None:
    got = np.asarray(node_check.result["scores"])
    assert got.shape == (USERS, CANDIDATES)
    np.testing.assert_allclose(got, node_check.scores, rtol=0, atol=TOLERANCE)


def test_missing_node_fails_the_test_with_instructions(monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(pytest.fail.Exception, match=r"Node.js is not on PATH.*npm ci"):
        _node_or_fail()
