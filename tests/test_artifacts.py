"""The run-directory contract: the typed manifest, the serving bundle and the read-only run model.

One tiny finished run is shared; tests that break it work on a copy.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from coarserank.artifacts import ColdBundle, Manifest, Run, ServingBundle, read_bundle, sha256_file
from coarserank.cli import distill
from coarserank.config import load_config
from coarserank.errors import ArtifactError
from coarserank.pipeline.rundir import RunDir
from coarserank.pipeline.run import run
from coarserank.student import TwoTower
from coarserank.teacher import DeepFM

USER = {"user_id": 12, "age": 30, "gender": "F", "region": "r03", "fav_topic": 17, "device": "ios", "hour": 21}
REPORT = ["report.max_users=20", "report.sampled=40", "report.bootstrap=5", "report.sizes=[20]", "report.ns=[20]"]
READS = ("data", "teacher", "logits", "student", "student_hard")


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Path:
    out = tmp_path_factory.mktemp("artifacts") / "run"
    run(load_config(overrides=[*tiny_overrides, *REPORT]), out)
    return out


@pytest.fixture
def copied(finished: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(finished, tmp_path / "run"))


def _snapshot(root: Path) -> dict[str, tuple[int, str]]:
    """Every file's mtime and sha256, but the empty lock files readers and writers open
    (``.coarserank.lock``, ``.coarserank.publish``): they hold no data."""
    return {p.relative_to(root).as_posix(): (p.stat().st_mtime_ns, sha256_file(p))
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".coarserank.")}


# --------------------------------------------------------------------------- Run: typed access


def test_run_open_reads_config_encoder_rows_and_metrics(finished: Path) -> None:
    view = Run.open(finished, require=READS)
    assert view.config == load_config(finished / "config.toml")
    assert view.schema.names == view.encoder.schema_.names and len(view.schema) > 0
    test = view.split("test")
    assert len(test) == view.split_frame("test").height == json.loads(
        (finished / "manifest.json").read_text())["stages"]["data"]["rows"]["test"]
    assert set(test.inputs) == set(view.schema.names)
    assert view.metrics() == json.loads((finished / "metrics.json").read_text())


def test_run_teacher_logits_follow_the_split_rows(finished: Path) -> None:
    view = Run.open(finished)
    stored = pl.read_parquet(finished / "logits" / "valid.parquet")
    by_row = dict(zip(stored["row"].to_list(), stored["logit"].to_list(), strict=True))
    rows = view.split_frame("valid")["_row"].to_list()
    np.testing.assert_array_equal(view.teacher_logits("valid"), np.array([by_row[r] for r in rows], dtype=np.float32))


def test_run_models_are_fresh_modules_with_the_saved_weights(finished: Path) -> None:
    view = Run.open(finished)
    teacher, student = view.model("teacher"), view.model("student")
    assert isinstance(teacher, DeepFM) and isinstance(student, TwoTower) and not student.training
    saved = torch.load(finished / "student.pt", weights_only=True)
    for name, value in student.state_dict().items():
        assert torch.equal(value, saved[name]), name


def test_run_serving_bundle_matches_serving_json(finished: Path) -> None:
    bundle = Run.open(finished).serving()
    body = json.loads((finished / "serving.json").read_text())
    assert bundle.to_json() == body
    assert bundle.model_hash == sha256_file(finished / "student.pt") and bundle.file("kv") == "items.kv"


# --------------------------------------------------------------------------- Run: refusing bad files


def test_a_tampered_file_is_one_line_naming_it_and_the_rebuild_command(copied: Path) -> None:
    with open(copied / "teacher.pt", "ab") as fh:
        fh.write(b"\0")
    rebuild = f"`distill run --config {copied / 'config.toml'} --out {copied}`"
    with pytest.raises(ArtifactError, match=r"teacher\.pt does not match its sha256") as err:
        Run.open(copied, require=("teacher",))
    assert str(err.value).endswith(f"{rebuild} rebuilds stage 'teacher' and what depends on it")
    assert "\n" not in str(err.value)


def test_a_missing_file_is_one_line_naming_it(copied: Path) -> None:
    (copied / "data" / "test.parquet").unlink()
    view = Run.open(copied, require=())
    with pytest.raises(ArtifactError, match=r"data/test\.parquet is missing; `distill run .*` rebuilds stage 'data'"):
        view.split("test")


def test_a_changed_file_leaves_what_read_it_stale(copied: Path) -> None:
    with open(copied / "teacher.pt", "ab") as fh:
        fh.write(b"\0")
    writer = RunDir.open(copied)
    assert writer.invalidate_changed()  # what a resumed `distill run` does first
    with pytest.raises(ArtifactError, match=r"stage 'logits' is stale; `distill run --config .*` rebuilds it"):
        Run.open(copied, require=("logits",))
    assert not writer.is_done("logits") and writer.is_done("student_hard")  # a resume redoes what read the teacher


def test_the_rebuild_command_redoes_a_tampered_teacher_and_what_read_it(copied: Path) -> None:
    before = json.loads((copied / "manifest.json").read_text())["stages"]
    with open(copied / "teacher.pt", "ab") as fh:
        fh.write(b"\0")
    run(load_config(copied / "config.toml"), copied)  # what the error message says to run
    after = json.loads((copied / "manifest.json").read_text())["stages"]
    redone = {s for s in after if after[s].get("finished") != before[s].get("finished")}
    assert {"teacher", "logits", "student", "export", "report"} <= redone
    assert not redone & {"data", "student_hard", "gbdt"}
    Run.open(copied, require=(*READS, "export", "report"))


def test_an_unfinished_stage_is_refused(copied: Path) -> None:
    writer = RunDir.open(copied)
    writer.fail("report", "interrupted")
    with pytest.raises(ArtifactError, match=r"stage 'report' is failed; `distill run .*` rebuilds it"):
        Run.open(copied, require=("report",))


def test_a_checkpoint_holding_code_is_refused_without_running_it(copied: Path) -> None:
    marker = copied / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return (os.system, (f"touch {marker}",))

    torch.save({"weights": Payload()}, copied / "teacher.pt")
    RunDir.open(copied).record("teacher", copied / "teacher.pt")  # even a hash that vouches for it
    with pytest.raises(ArtifactError, match=r"teacher\.pt is not a checkpoint of tensors coarserank can load"):
        Run.open(copied).model("teacher")
    assert not marker.exists()


def test_a_directory_without_a_manifest_is_not_a_run(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"is not a coarserank run directory \(no manifest.json\)"):
        Run.open(tmp_path)


def test_a_run_written_before_prepared_rows_were_stored_is_prepared_again(copied: Path) -> None:
    expected = pl.read_parquet(copied / "data" / "test.parquet")
    body = json.loads((copied / "manifest.json").read_text())
    for rel in [r for r in body["files"] if r.startswith("data/")]:
        del body["files"][rel]
        body["stages"]["data"]["outputs"].remove(rel)
        (copied / rel).unlink()
    (copied / "manifest.json").write_text(json.dumps(body))
    assert Run.open(copied).split_frame("test").equals(expected)


# --------------------------------------------------------------------------- read commands


def test_report_after_tampering_fails_in_one_line_and_retrains_nothing(copied: Path) -> None:
    with open(copied / "teacher.pt", "ab") as fh:
        fh.write(b"corrupt")
    before = _snapshot(copied)
    result = CliRunner().invoke(distill, ["report", "--run", str(copied), "-q"])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: run {copied}: teacher.pt does not match its sha256 in manifest.json (modified or corrupt); "
        f"`distill run --config {copied / 'config.toml'} --out {copied}` rebuilds stage 'teacher' and what "
        "depends on it"]
    assert _snapshot(copied) == before


def test_report_rebuild_writes_only_report_and_reproduces_it(copied: Path) -> None:
    before = _snapshot(copied)
    result = CliRunner().invoke(distill, ["report", "--run", str(copied), "--force", "-q"])
    assert result.exit_code == 0, result.output
    after = _snapshot(copied)
    changed = {rel for rel in after if before.get(rel) != after[rel]}
    assert changed and all(rel.startswith("report/") for rel in changed) and set(before) == set(after)
    recorded = json.loads((copied / "manifest.json").read_text())["files"]
    assert recorded["report/scores.parquet"] == after["report/scores.parquet"][1]  # the scores `distill run` wrote


def test_a_current_report_is_left_as_it_is(copied: Path) -> None:
    before = _snapshot(copied)
    result = CliRunner().invoke(distill, ["report", "--run", str(copied), "-q"])
    assert result.exit_code == 0, result.output
    assert "current: not rebuilt" in result.output and "gain student - student_hard" in result.output
    assert _snapshot(copied) == before


def test_a_report_names_its_run_the_same_whichever_way_the_path_is_given(copied: Path, monkeypatch) -> None:
    monkeypatch.chdir(copied.parent)
    runner = CliRunner()
    texts = []
    for given in (copied.name, str(copied)):
        assert runner.invoke(distill, ["report", "--run", given, "--force", "-q"]).exit_code == 0
        texts.append((copied / "report" / "report.json").read_bytes())
    assert texts[0] == texts[1]


def test_a_report_missing_a_file_is_rebuilt(copied: Path) -> None:
    (copied / "report" / "report.html").unlink()
    result = CliRunner().invoke(distill, ["report", "--run", str(copied), "-q"])
    assert result.exit_code == 0, result.output
    assert "not rebuilt" not in result.output and (copied / "report" / "report.html").is_file()


def test_serving_commands_write_nothing(copied: Path, tmp_path: Path) -> None:
    before = _snapshot(copied)
    ids = tmp_path / "ids.txt"
    ids.write_text("1\n2\n3\n")
    runner = CliRunner()
    for args in (["bench", "--run", str(copied), "--candidates", "20", "--repeats", "2", "--users", "2"],
                 ["rank", "--run", str(copied), "--user", json.dumps(USER), "--candidates", str(ids)],
                 ["recall", "--run", str(copied), "--user", json.dumps(USER), "--k", "5"]):
        result = runner.invoke(distill, args)
        assert result.exit_code == 0, result.output
    assert _snapshot(copied) == before


# --------------------------------------------------------------------------- manifest and bundle


def test_manifest_records_verifies_and_round_trips(tmp_path: Path) -> None:
    m = Manifest.new("c0ffee")
    m.begin("data")
    (tmp_path / "a.txt").write_text("x")
    m.record("data", "a.txt", sha256_file(tmp_path / "a.txt"))
    m.finish("data", rows=3)
    again = Manifest(json.loads(m.dumps()))
    assert again.stage_status("data") == "done" and again.stage_facts("data")["rows"] == 3
    assert again.run_id == m.run_id and len(m.run_id) == 32 and again.config_hash == "c0ffee"
    assert again.verified(tmp_path, "a.txt") == tmp_path / "a.txt" and again.intact(tmp_path, "data")


def test_manifest_of_another_format_is_refused_with_the_fix() -> None:
    with pytest.raises(ArtifactError, match=r"manifest format 2; this coarserank reads format 1: re-run"):
        Manifest({"format": 2, "stages": {}, "files": {}})


def test_manifest_written_before_stages_noted_their_inputs_still_reads(finished: Path) -> None:
    body = json.loads((finished / "manifest.json").read_text())
    for entry in body["stages"].values():
        entry.pop("inputs", None)
        entry.pop("finished", None)
    old = Manifest(body)
    assert all(old.stage_status(s) == "done" for s in old.stage_names())
    assert old.run_id == json.loads((finished / "serving.json").read_text())["run_id"]


def test_serving_bundle_names_a_missing_key(tmp_path: Path, finished: Path) -> None:
    body = json.loads((finished / "serving.json").read_text())
    assert ServingBundle.from_json(body) == ServingBundle.read(finished / "serving.json")
    del body["dim"]
    with pytest.raises(ArtifactError, match=r"serving.json: key 'dim' is missing or has the wrong type"):
        ServingBundle.from_json(body)


def _cold_bundle() -> ColdBundle:
    return ColdBundle("ab" * 32, 7, ("user_id", "item_id"), {"student": "student.onnx", "teacher": "teacher.onnx",
                                                              "catalogue": "items.parquet"}, run_id="r1",
                      history_base_rate=0.25, history_crosses=[])


def test_a_cold_bundle_round_trips_and_read_bundle_picks_its_family(tmp_path: Path, finished: Path) -> None:
    path = _cold_bundle().write(tmp_path / "serving.json")
    assert json.loads(path.read_text())["family"] == "cold"
    assert read_bundle(path) == _cold_bundle()
    assert read_bundle(finished / "serving.json") == ServingBundle.read(finished / "serving.json")


def test_a_cold_bundle_is_refused_where_towers_are_needed(tmp_path: Path, finished: Path) -> None:
    path = _cold_bundle().write(tmp_path / "serving.json")
    with pytest.raises(ArtifactError, match=r"serves a COLD student: it scores candidate rows"):
        ServingBundle.read(path)
    with pytest.raises(ArtifactError, match=r"serves a two_tower student, not a COLD one"):
        ColdBundle.from_json(json.loads((finished / "serving.json").read_text()))


def test_a_cold_bundle_names_a_missing_file_role() -> None:
    body = _cold_bundle().to_json()
    del body["files"]["catalogue"]
    with pytest.raises(ArtifactError, match=r"serving.json: files lacks catalogue"):
        ColdBundle.from_json(body)
