"""A rank that dies mid-run: a clear error on every surviving rank, a non-zero exit, and a run
directory that never passes for complete (tests/distill/_dying_rank.py does the dying)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from coarserank.errors import ArtifactError
from coarserank.pipeline.rundir import RunDir

pytestmark = pytest.mark.slow

LAUNCHER = Path(__file__).with_name("_dying_rank.py")
SETS = ["synthetic.rows=6000", "teacher.epochs=3", "student.epochs=3", "teacher.hidden=[32]",
        "student.hidden=[32]", "student.dim=16", "teacher.batch_size=512", "student.batch_size=512",
        "gbdt.rounds=20", "run.device=\"cpu\"", "run.threads=1", "report.enabled=false"]
CLEAR = "another process of this distributed run stopped"


def _launch(out: Path, **dying: str) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", str(LAUNCHER),
           "run", "--out", str(out), "-q"]
    for s in SETS:
        cmd += ["--set", s]
    env = {**os.environ, "OMP_NUM_THREADS": "1", **dying}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180)


def _stages(out: Path) -> dict[str, str]:
    manifest = json.loads((out / "manifest.json").read_text())
    return {name: entry["status"] for name, entry in manifest["stages"].items()}


@pytest.fixture(scope="module")
def rank1_dies_in_teacher(tmp_path_factory):
    """Rank 1 exits mid teacher training: rank 0's gradient allreduce fails."""
    out = tmp_path_factory.mktemp("rank1") / "run"
    return out, _launch(out, DYING_RANK="1", DYING_IN="hard_loss")


@pytest.fixture(scope="module")
def rank0_dies_in_teacher(tmp_path_factory):
    """Rank 0, the one writing the run directory, exits mid teacher training."""
    out = tmp_path_factory.mktemp("rank0") / "run"
    return out, _launch(out, DYING_RANK="0", DYING_IN="hard_loss")


@pytest.fixture(scope="module")
def rank1_dies_while_rank0_works_alone(tmp_path_factory):
    """Rank 1 exits while rank 0 is in no collective: torchrun's SIGTERM is all rank 0 hears."""
    out = tmp_path_factory.mktemp("alone") / "run"
    return out, _launch(out, DYING_RANK="1", DYING_IN="barrier")


def test_a_dying_rank_makes_the_run_exit_non_zero(rank1_dies_in_teacher):
    _, proc = rank1_dies_in_teacher
    assert proc.returncode != 0
    assert "exitcode  : 3" in proc.stderr  # torchrun names the dead rank's own exit status


def test_the_surviving_rank_prints_a_clear_error(rank1_dies_in_teacher):
    out, proc = rank1_dies_in_teacher
    lines = [line for line in proc.stderr.splitlines() if CLEAR in line]
    assert len(lines) == 1, proc.stderr[-3000:]
    assert lines[0].startswith("Error: rank 0 of 2: ")
    assert "in stage 'teacher'" in lines[0] and "by peer" in lines[0]
    assert f"{out} is marked incomplete: stage 'teacher' failed" in lines[0]
    assert "[rank0]: Traceback" not in proc.stderr


def test_a_run_with_a_dead_rank_is_never_marked_complete(rank1_dies_in_teacher):
    out, _ = rank1_dies_in_teacher
    stages = _stages(out)
    assert stages["teacher"] == "failed"
    assert not all(status == "done" for status in stages.values())
    assert not (out / "metrics.json").exists() and not (out / "teacher.pt").exists()


def test_a_run_with_a_dead_rank_is_refused_by_readers(rank1_dies_in_teacher):
    out, _ = rank1_dies_in_teacher
    with pytest.raises(ArtifactError, match="stage 'metrics' is missing"):
        RunDir.open(out, require=("metrics",))
    with pytest.raises(ArtifactError, match="stage 'teacher' is failed"):
        RunDir.open(out, require=("teacher",))


def test_a_dead_rank_0_leaves_the_other_rank_with_a_clear_error(rank0_dies_in_teacher):
    out, proc = rank0_dies_in_teacher
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if CLEAR in line]
    assert len(lines) == 1 and lines[0].startswith("Error: rank 1 of 2: "), proc.stderr[-3000:]
    assert _stages(out)["teacher"] != "done"  # rank 0 died mid-stage: it still says "running"


def test_a_rank_stopped_by_the_launcher_marks_its_stage_failed(rank1_dies_while_rank0_works_alone):
    out, proc = rank1_dies_while_rank0_works_alone
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if CLEAR in line]
    assert len(lines) == 1 and lines[0].startswith("Error: rank 0 of 2: "), proc.stderr[-3000:]
    assert "SIGTERM" in lines[0] and "[rank0]: Traceback" not in proc.stderr
    stages = _stages(out)
    failed = [name for name, status in stages.items() if status == "failed"]
    assert len(failed) == 1 and failed[0] in ("gbdt", "recall", "metrics", "export"), stages
    assert "running" not in stages.values()
