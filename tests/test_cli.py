"""The `distill` command, in-process with click's CliRunner: what a user types and sees."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from coarserank.cli import distill

pytestmark = pytest.mark.slow


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_overrides):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    result = CliRunner().invoke(distill, ["run", "--rows", "4000", "--seed", "3", "--out", str(out), *_sets(tiny_overrides)])
    return out, result


def test_run_writes_the_run_directory_contract(tiny_run):
    out, result = tiny_run
    assert result.exit_code == 0, result.output
    for name in ("manifest.json", "config.toml", "schema.json", "encoder.json", "teacher.pt", "student.pt",
                 "student_hard.pt", "metrics.json", "logits/train.parquet", "logits/valid.parquet",
                 "logits/test.parquet", "gbdt.txt"):
        assert (out / name).is_file(), name
    manifest = json.loads((out / "manifest.json").read_text())
    assert all(stage["status"] == "done" for stage in manifest["stages"].values())
    assert "student.pt" in manifest["files"]


def test_metrics_have_every_model_split_and_key(tiny_run):
    out, _ = tiny_run
    metrics = json.loads((out / "metrics.json").read_text())
    for split in ("valid", "test"):
        for model in ("teacher", "student", "student_hard", "gbdt", "oracle"):
            for key in ("auc", "gauc", "logloss"):
                assert 0.0 < metrics[split][model][key] < 2.0


def test_run_prints_the_metrics_table(tiny_run):
    _, result = tiny_run
    assert "split  model" in result.output
    assert "test   teacher" in result.output and "test   oracle" in result.output


def test_rerun_with_the_same_config_resumes_without_training(tiny_run, tiny_overrides):
    out, _ = tiny_run
    before = json.loads((out / "manifest.json").read_text())["files"]["teacher.pt"]
    result = CliRunner().invoke(distill, ["run", "--rows", "4000", "--seed", "3", "--out", str(out),
                                          *_sets(tiny_overrides)])
    assert result.exit_code == 0, result.output
    assert "teacher: epoch" not in result.output
    assert json.loads((out / "manifest.json").read_text())["files"]["teacher.pt"] == before


def test_different_run_in_the_same_directory_is_refused(tiny_run):
    out, _ = tiny_run
    result = CliRunner().invoke(distill, ["run", "--rows", "4000", "--seed", "4", "--out", str(out)])
    assert result.exit_code != 0
    assert "already holds a different run" in result.output and "--overwrite" in result.output
    assert "Traceback" not in result.output
    assert (out / "student.pt").is_file()  # nothing lost


def test_overwrite_never_deletes_a_directory_that_is_not_a_run(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    result = CliRunner().invoke(distill, ["run", "--rows", "4000", "--out", str(tmp_path), "--overwrite"])
    assert result.exit_code == 1
    assert "not a coarserank run" in result.output and "--overwrite" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_overwrite_keeps_the_old_run_when_the_new_data_fails_its_checks(tiny_run, tmp_path):
    out, _ = tiny_run
    before = (out / "manifest.json").read_text()
    result = CliRunner().invoke(distill, ["run", "--dataset", "movielens-100k", "--data-dir", str(tmp_path / "none"),
                                          "--out", str(out), "--overwrite"])
    assert result.exit_code == 1 and "does not exist" in result.output
    assert (out / "manifest.json").read_text() == before and (out / "student.pt").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]


def test_unknown_config_key_is_a_one_line_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[teacher]\nepoch = 3\n")
    result = CliRunner().invoke(distill, ["run", "--config", str(cfg), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert "unknown key 'teacher.epoch'; did you mean 'teacher.epochs'" in result.output
    assert not (tmp_path / "r").exists()


def test_missing_data_directory_is_a_one_line_error(tmp_path):
    result = CliRunner().invoke(distill, ["run", "--dataset", "movielens-100k", "--data-dir",
                                          str(tmp_path / "missing"), "--out", str(tmp_path / "r")])
    assert result.exit_code != 0
    assert "missing does not exist" in result.output and "Traceback" not in result.output
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["stages"]["data"]["status"] == "failed"


def test_help_explains_every_run_option():
    result = CliRunner().invoke(distill, ["run", "--help"])
    for option in ("--config", "--dataset", "--data-dir", "--rows", "--seed", "--out", "--device", "--overwrite"):
        assert option in result.output


def test_changing_a_report_setting_reruns_only_the_report(tiny_run, tiny_overrides):
    out, _ = tiny_run
    before = json.loads((out / "manifest.json").read_text())
    result = CliRunner().invoke(distill, ["run", "--rows", "4000", "--seed", "3", "--out", str(out),
                                          *_sets(tiny_overrides), "--set", "report.sampled=50"])
    assert result.exit_code == 0, result.output
    after = json.loads((out / "manifest.json").read_text())
    assert "teacher: epoch" not in result.output
    assert after["files"]["teacher.pt"] == before["files"]["teacher.pt"]
    assert after["stages"]["report"]["section_hash"] != before["stages"]["report"]["section_hash"]
    assert "sampled = 50" in (out / "config.toml").read_text()


def test_run_prints_data_warnings_as_one_line_each(tiny_run):
    _, result = tiny_run
    warned = [line for line in result.output.splitlines() if line.startswith("warning: data.")]
    assert warned and all("folded into the out-of-vocabulary bucket" in w or "have no value" in w
                          or "more than max_len" in w for w in warned)
    assert "DataWarning" not in result.output and "warnings.warn" not in result.output


def test_resume_with_a_changed_checkpoint_says_what_it_rebuilds_and_rebuilds_downstream(tiny_run, tiny_overrides,
                                                                                      tmp_path):
    out = Path(shutil.copytree(tiny_run[0], tmp_path / "run"))
    with (out / "student.pt").open("ab") as fh:
        fh.write(b"\0")
    result = CliRunner().invoke(distill, ["run", "--rows", "4000", "--seed", "3", "--out", str(out),
                                          *_sets(tiny_overrides)])
    assert result.exit_code == 0, result.output
    assert (f"warning: run {out}: student.pt does not match its sha256 in manifest.json (modified or corrupt); "
            "rebuilding stage 'student', then what depends on it: metrics, export, report") in result.output
    assert "teacher: epoch" not in result.output and "student: epoch 1" in result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert json.loads((out / "serving.json").read_text())["model_hash"] == manifest["files"]["student.pt"]
    assert all(stage["status"] == "done" for stage in manifest["stages"].values())


def test_report_on_a_changed_checkpoint_is_a_one_line_error_not_a_retrain(tiny_run, tmp_path):
    out = Path(shutil.copytree(tiny_run[0], tmp_path / "run"))
    (out / "teacher.pt").write_bytes(b"not a checkpoint")
    result = CliRunner().invoke(distill, ["report", "--run", str(out)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: run {out}: teacher.pt does not match its sha256 in manifest.json (modified or "
        f"corrupt); `distill run --config {out / 'config.toml'} --out {out}` rebuilds stage 'teacher' and what "
        "depends on it"]
