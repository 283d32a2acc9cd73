"""`distill sweep --nproc 2`: two gloo processes (DDP) match the one-process sweep; rank 0 alone writes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from coarserank.cli import distill
from coarserank.config import load_config
from coarserank.pipeline.run import run

pytestmark = pytest.mark.slow

FAST = ["cold.epochs=3", "cold.batch_size=256", "cold.hidden=[16]", "cold.embed_dim=4",
        "cold.latency_repeats=5", "cold.latency_warmup=1", "cold.permutation_repeats=1",
        "report.max_users=10", "report.sampled=100", "report.bootstrap=5", "run.threads=1"]
# gbdt: the LightGBM ranking is computed by rank 0 alone, so both sweeps pick the same top-k features
SWEEP = ["sweep", "--k", "2,all", "--rank-by", "gbdt"]
# the same global batches and DDP-averaged gradients; only floating-point summation order differs
GAUC_TOLERANCE = 0.01


def _files(root: Path) -> dict[str, bytes]:
    """Every file of the run outside ``sweep/`` (what a sweep must never touch)."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.relative_to(root).parts[0] != "sweep"}


def _distributed_sweep(run_dir: Path, torchrun: bool = False) -> subprocess.CompletedProcess[str]:
    """``distill sweep --nproc 2``, or the torchrun command it stands for (``--run-dir``: torchrun's
    parser would take ``--run`` for its own ``--run-path``)."""
    if torchrun:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
               "-m", "coarserank.cli", *SWEEP, "--run-dir", str(run_dir)]
    else:
        cmd = [sys.executable, "-m", "coarserank.cli", *SWEEP, "--run", str(run_dir), "--nproc", "2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


@pytest.fixture(scope="module")
def sweeps(tmp_path_factory, tiny_overrides):
    base = tmp_path_factory.mktemp("ddp_sweep")
    run(load_config(overrides=[*tiny_overrides, *FAST]), base / "run")
    one, two = base / "one", base / "two"  # separate copies: neither sweep may reuse the other's points
    shutil.copytree(base / "run", one)
    shutil.copytree(base / "run", two)
    before = _files(two)
    single = CliRunner().invoke(distill, [*SWEEP, "--run", str(one), "-q"])
    assert single.exit_code == 0, single.output
    proc = _distributed_sweep(two)
    return one, two, before, proc


def _body(run_dir: Path) -> dict:
    return json.loads((run_dir / "sweep" / "sweep.json").read_text())


def test_two_gloo_processes_finish_the_sweep(sweeps):
    _, two, _, proc = sweeps
    assert proc.returncode == 0, proc.stderr[-3000:]
    body = _body(two)
    assert [p["k"] for p in body["points"]] == [2, 16]
    for p in body["points"]:
        assert (two / "sweep" / "points" / f"cold-k{p['k']}.json").is_file()
        assert (two / "sweep" / "points" / f"cold-k{p['k']}" / "scorer.onnx").is_file()
    assert (two / "sweep" / "frontier.png").is_file()
    assert not [p.name for p in (two / "sweep").rglob("*") if ".tmp" in p.name]


def test_only_rank_0_reports(sweeps):
    _, _, _, proc = sweeps
    assert proc.stdout.count("p99 ms") == 1  # the table, printed once
    assert proc.stderr.count("sweep [1/2] cold-k2: training on") == 1  # progress, from rank 0 only
    assert proc.stderr.count("sweep [2/2] cold-k16: valid gauc") == 1


def test_the_run_itself_is_left_untouched(sweeps):
    _, two, before, _ = sweeps
    assert _files(two) == before  # manifest, models, logits: no rank wrote outside sweep/


def test_two_processes_reach_the_single_process_gauc(sweeps):
    one, two, _, _ = sweeps
    single, double = _body(one), _body(two)
    rankings = [body["importance"]["methods"]["gbdt"]["ranking"] for body in (single, double)]
    assert rankings[0] == rankings[1]
    for a, b in zip(single["points"], double["points"], strict=True):
        assert a["features"] == b["features"]
        assert b["gauc"] == pytest.approx(a["gauc"], abs=GAUC_TOLERANCE), a["k"]
        valid = [p["train"]["best_valid_gauc"] for p in (a, b)]
        assert valid[1] == pytest.approx(valid[0], abs=GAUC_TOLERANCE), a["k"]


def test_a_second_distributed_sweep_under_torchrun_reuses_every_point(sweeps):
    _, two, _, first = sweeps
    assert first.returncode == 0, first.stderr[-3000:]
    points = _body(two)["points"]
    again = _distributed_sweep(two, torchrun=True)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("reusing") == 3  # importance and both points, rank 0 reporting, nothing trained
    assert "training on" not in again.stderr
    assert [p["gauc"] for p in _body(two)["points"]] == [p["gauc"] for p in points]


def test_a_run_whose_files_changed_is_refused_by_every_rank_before_anything_is_written(sweeps, tmp_path):
    one, _, _, _ = sweeps
    copy = tmp_path / "changed"
    shutil.copytree(one, copy, ignore=shutil.ignore_patterns("sweep"))
    with (copy / "logits" / "test.parquet").open("ab") as f:  # every process reads the run and refuses it
        f.write(b"\0")
    manifest = (copy / "manifest.json").read_bytes()
    proc = _distributed_sweep(copy)
    assert proc.returncode != 0
    assert proc.stderr.count("logits/test.parquet does not match its sha256") == 2  # rank 0 and rank 1
    assert (copy / "manifest.json").read_bytes() == manifest and not (copy / "sweep").exists()
