"""A run with a non-plain tower family (parallel towers, attention fusion): the served vectors are the
concatenated scaled channels, and every serving check holds as for the plain towers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from coarserank.cli import distill
from coarserank.config import load_config
from coarserank.data.prepare import base_rate
from coarserank.pipeline.run import load_context, run
from coarserank.serving.catalogue import read_catalogue, teacher_frame
from coarserank.serving.kv_file import FileKVStore
from coarserank.student import served_dim

pytestmark = pytest.mark.slow

USER = {"user_id": 12, "age": 30, "gender": "F", "region": "r03", "fav_topic": 17, "device": "ios", "hour": 21}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Path:
    path = tmp_path_factory.mktemp("parallel") / "run"
    run(load_config(overrides=[*tiny_overrides, 'student.family="parallel"', 'student.parallel.fusion="attention"',
                               "student.embed_dim=8",
                               "report.enabled=false"]), path)
    return path


def test_parallel_towers_pass_every_export_check(run_dir: Path) -> None:
    checks = json.loads((run_dir / "manifest.json").read_text())["checks"]["export"]
    assert max(*checks["onnx_vs_torch"].values(), checks["score_path"], checks["faiss_vs_kv"]) <= checks["tolerance"]


def test_the_kv_store_holds_the_concatenated_channel_vectors(run_dir: Path) -> None:
    _, models = load_context(run_dir)
    cfg = load_config(run_dir / "config.toml")
    with FileKVStore(run_dir / "items.kv") as store:
        assert store.dim == served_dim(models["student"]) == cfg.student.dim


def test_distill_rank_with_parallel_towers_matches_the_pytorch_scores(run_dir: Path, tmp_path: Path) -> None:
    ctx, models = load_context(run_dir)
    catalogue = read_catalogue(run_dir / "items.parquet", ctx.cfg.data)
    ids = catalogue["item_id"].to_numpy()[:30]
    (tmp_path / "ids.txt").write_text("\n".join(map(str, ids)) + "\n")
    result = CliRunner().invoke(distill, ["rank", "--run", str(run_dir), "--user", json.dumps(USER),
                                          "--candidates", str(tmp_path / "ids.txt"), "--top-n", "5"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    frame = teacher_frame(catalogue, ctx.cfg.data, ids, USER, ctx.frame, base_rate(ctx.frame))
    with torch.no_grad():
        want = models["student"]({k: torch.from_numpy(v) for k, v in ctx.encoder.transform(frame).items()}).numpy()
    order = np.argsort(-want, kind="stable")[:5]
    assert body["ids"] == ids[order].tolist()
    np.testing.assert_allclose(body["scores"], want[order], rtol=0, atol=1e-5)
