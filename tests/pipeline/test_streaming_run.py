"""A streaming run (``data.streaming = true``) over a partitioned log, end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import polars as pl
import pytest

from coarserank.config import load_config
from coarserank.data.partitions import PartitionedLog, write_partitions
from coarserank.data.synthetic import generate
from coarserank.errors import DataError
from coarserank.artifacts import Run
from coarserank.pipeline.run import run
from coarserank.pipeline.stream_data import train_logits_path

SMALL = ["teacher.epochs=2", "student.epochs=2", "teacher.hidden=[32]", "student.hidden=[32]", "student.dim=16",
         "teacher.batch_size=512", "student.batch_size=512", "gbdt.rounds=20", "run.device=\"cpu\"",
         "run.threads=1", "report.max_users=50", "serving.index_queries=200", "data.sample_rows=2000"]
STREAM = ["data.source=\"table\"", "data.exposures=\"exposures\"", "data.users=\"users.parquet\"",
          "data.items=\"items.parquet\"", "data.split=\"global_time\"", "data.streaming=true", "distill.sampled=0",
          "data.history_crosses=[]"]


def _log(path, rows=8000, per=1000, seed=5):
    write_partitions(generate(load_config(overrides=[f"synthetic.rows={rows}"]).synthetic, seed), path, per)
    return path


def _sets(log_dir, *extra):
    return [*STREAM, *SMALL, f'data.path="{log_dir}"', *extra]


@pytest.fixture(scope="module")
def streamed(tmp_path_factory):
    base = tmp_path_factory.mktemp("stream")
    log_dir = _log(base / "log")
    cfg = load_config(overrides=_sets(log_dir))
    return cfg, run(cfg, base / "run")


def test_a_streaming_run_finishes_every_stage(streamed):
    _, result = streamed
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    assert {s: v["status"] for s, v in manifest["stages"].items()} == {s: "done" for s in manifest["stages"]}
    assert {"data", "teacher", "logits", "student", "student_hard", "gbdt", "metrics", "export", "report"} <= set(
        manifest["stages"])


def test_every_train_row_gets_a_teacher_logit_in_its_partition_file(streamed):
    cfg, result = streamed
    log = PartitionedLog(cfg.data).open()
    for i in range(len(log.partitions_)):
        train = log.read(i).filter(pl.col("_split") == "train")
        path = train_logits_path(result.run_dir, i)
        if train.height == 0:
            assert not path.exists()
            continue
        body = pl.read_parquet(path)
        assert body["row"].to_list() == train["_row"].to_list()
        assert body["soft"].to_numpy() == pytest.approx(body["logit"].to_numpy() / cfg.distill.temperature)


def test_logit_partitions_are_recorded_with_their_checksums(streamed):
    _, result = streamed
    manifest = json.loads((result.run_dir / "manifest.json").read_text())
    parts = [f for f in manifest["stages"]["logits"]["outputs"] if f.startswith("logits/train/")]
    assert parts and all(f in manifest["files"] for f in parts)


def test_the_data_stage_records_what_it_held_in_memory(streamed):
    cfg, result = streamed
    data = json.loads((result.run_dir / "manifest.json").read_text())["stages"]["data"]
    assert data["partitions"] == 8
    assert data["train_sample_rows"] <= cfg.data.sample_rows * 1.2
    assert data["in_memory_rows"] < sum(data["rows"].values())


def test_the_streamed_teacher_learns(streamed):
    _, result = streamed
    assert result.metrics["test"]["teacher"]["auc"] > 0.6


def test_a_finished_streaming_run_reads_back_without_its_log(streamed):
    _, result = streamed
    finished = Run.open(result.run_dir, require=("data", "teacher", "logits", "student", "student_hard"))
    assert set(finished.models()) == {"teacher", "student", "student_hard"}
    data = json.loads((result.run_dir / "manifest.json").read_text())["stages"]["data"]
    sample = finished.split("train")  # the in-memory train sample, its teacher logits from the partitions
    assert len(sample) == data["train_sample_rows"] == len(finished.teacher_logits("train"))
    assert finished.frame().height == data["in_memory_rows"]


def test_a_corrupt_partition_fails_the_data_stage_with_its_name(tmp_path):
    log_dir = _log(tmp_path / "log", rows=3000)
    (log_dir / "exposures" / "part-00001.parquet").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"part-00001\.parquet cannot be read"):
        run(load_config(overrides=_sets(log_dir)), tmp_path / "run")
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["stages"]["data"]["status"] == "failed"
    assert "part-00001.parquet" in manifest["stages"]["data"]["error"]


def _torchrun(out, log_dir, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           "-m", "coarserank.cli", "run", "--out", str(out), "-q"]
    for s in _sets(log_dir, "report.enabled=false", *extra):
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                          timeout=300)


@pytest.mark.slow
def test_two_processes_stream_their_own_shards_to_a_complete_run(tmp_path, streamed):
    _, single = streamed
    log_dir = _log(tmp_path / "log")
    proc = _torchrun(tmp_path / "two", log_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert all(v["status"] == "done" for v in manifest["stages"].values())
    one = json.loads((single.run_dir / "manifest.json").read_text())
    assert sorted(f for f in manifest["files"] if f.startswith("logits/")) == sorted(
        f for f in one["files"] if f.startswith("logits/"))
    metrics = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert metrics["test"]["teacher"]["auc"] > 0.6


@pytest.mark.slow
def test_every_rank_reports_a_corrupt_partition(tmp_path):
    log_dir = _log(tmp_path / "log", rows=3000)
    (log_dir / "exposures" / "part-00002.parquet").write_bytes(b"garbage")
    proc = _torchrun(tmp_path / "two", log_dir)
    assert proc.returncode != 0
    assert (proc.stdout + proc.stderr).count("part-00002.parquet cannot be read") >= 2
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["stages"]["data"]["status"] == "failed"


@pytest.mark.slow
def test_every_rank_reports_a_shard_without_rows(tmp_path):
    # one partition holds all train rows: the second rank's shard is empty
    log_dir = _log(tmp_path / "log", rows=3000, per=3000)
    proc = _torchrun(tmp_path / "two", log_dir)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert out.count("gets 0 training row(s)") >= 2, out[-3000:]
    manifest = json.loads((tmp_path / "two" / "manifest.json").read_text())
    assert manifest["stages"]["student_hard"]["status"] == "failed"  # the first model trained
    assert "teacher" not in manifest["stages"] and not (tmp_path / "two" / "metrics.json").exists()
