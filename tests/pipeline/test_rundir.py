"""The run directory: what --overwrite may replace, when, and one writer at a time."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest
import torch

from coarserank.errors import ArtifactError, ConfigError
from coarserank.pipeline.rundir import STAGE_INPUTS, RunDir


def _started(path: Path, config_hash: str) -> RunDir:
    """A run directory with one recorded file, as a finished stage leaves it."""
    run = RunDir.create(path, config_hash)
    run.begin("data")
    (path / "encoder.json").write_text(config_hash)
    run.record("data", path / "encoder.json")
    run.finish("data")
    run.close()
    return run


def _siblings(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir() if p.name != path.name)


@pytest.mark.parametrize("overwrite", [False, True])
def test_a_directory_of_other_files_is_never_replaced(tmp_path: Path, overwrite: bool) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(ConfigError, match="not a coarserank run") as info:
        RunDir.create(out, "a" * 64, overwrite=overwrite)
    assert "--overwrite" not in str(info.value)
    assert (out / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in out.iterdir()) == ["thesis.tex"]


def test_a_foreign_manifest_is_not_taken_for_a_run(tmp_path: Path) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"name": "my own manifest"}))
    with pytest.raises(ConfigError, match="not a coarserank run"):
        RunDir.create(out, "a" * 64, overwrite=True)
    assert (out / "manifest.json").is_file()


def test_overwrite_keeps_the_old_run_until_the_new_data_passes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _started(out, "a" * 64)
    new = RunDir.create(out, "b" * 64, overwrite=True)
    try:
        assert json.loads((out / "manifest.json").read_text())["config_hash"] == "a" * 64
        assert (out / "encoder.json").read_text() == "a" * 64
    finally:
        new.close()


def test_overwrite_replaces_the_old_run_when_the_data_stage_finishes(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _started(out, "a" * 64)
    new = RunDir.create(out, "b" * 64, overwrite=True)
    new.begin("data")
    new.finish("data")
    new.close()
    assert new.path == out
    assert json.loads((out / "manifest.json").read_text())["config_hash"] == "b" * 64
    assert not (out / "encoder.json").exists()
    assert _siblings(out) == []  # no staging or trash directory left behind


def test_overwrite_that_fails_its_data_checks_leaves_the_old_run_untouched(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _started(out, "a" * 64)
    before = (out / "manifest.json").read_text()
    new = RunDir.create(out, "b" * 64, overwrite=True)
    new.begin("data")
    new.fail("data", "label column 'label' has 3 NaN values")
    new.close()
    assert (out / "manifest.json").read_text() == before
    assert (out / "encoder.json").read_text() == "a" * 64
    assert _siblings(out) == []


def test_a_different_run_without_overwrite_is_refused_with_the_hint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _started(out, "a" * 64)
    with pytest.raises(ConfigError, match="already holds a different run.*--overwrite"):
        RunDir.create(out, "b" * 64)


def _try_create(path: str, queue: multiprocessing.Queue) -> None:
    try:
        RunDir.create(path, "a" * 64)
        queue.put("created")
    except ArtifactError as exc:
        queue.put(str(exc))


def test_a_second_writer_is_refused_while_the_first_holds_the_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = RunDir.create(out, "a" * 64)
    try:
        queue: multiprocessing.Queue = multiprocessing.get_context("spawn").Queue()
        child = multiprocessing.get_context("spawn").Process(target=_try_create, args=(str(out), queue))
        child.start()
        child.join(60)
        assert "being written by another coarserank process" in queue.get(timeout=5)
    finally:
        first.close()


def test_the_writer_lock_is_released_on_close(tmp_path: Path) -> None:
    out = tmp_path / "run"
    RunDir.create(out, "a" * 64).close()
    with RunDir.writer(out):
        pass
    RunDir.create(out, "a" * 64).close()


def test_a_writer_is_refused_within_the_same_process_too(tmp_path: Path) -> None:
    out = tmp_path / "run"
    with RunDir.create(out, "a" * 64):
        with pytest.raises(ArtifactError, match="being written by another"):
            RunDir.writer(out)


def _run_with_stages(path: Path) -> RunDir:
    """Every pipeline stage done, each with one output file named after it."""
    run = RunDir.create(path, "a" * 64)
    for stage in STAGE_INPUTS:
        run.begin(stage)
        (path / f"{stage}.out").write_text(stage)
        run.record(stage, path / f"{stage}.out")
        run.finish(stage)
    return run


def test_a_changed_file_makes_its_stage_and_everything_downstream_stale(tmp_path: Path) -> None:
    with _run_with_stages(tmp_path / "run") as run:
        (run.path / "student.out").write_text("tampered")
        messages = run.invalidate_changed()
        stale = sorted(s for s in run.manifest.stage_names() if run.manifest.stage_status(s) == "stale")
    assert stale == ["export", "metrics", "report", "student"]
    assert messages == [f"run {run.path}: student.out does not match its sha256 in manifest.json (modified or "
                        "corrupt); rebuilding stage 'student', then what depends on it: metrics, export, report"]
    saved = json.loads((run.path / "manifest.json").read_text())
    assert saved["stages"]["student"]["status"] == "stale" and saved["stages"]["teacher"]["status"] == "done"


def test_intact_stages_stay_done(tmp_path: Path) -> None:
    with _run_with_stages(tmp_path / "run") as run:
        assert run.invalidate_changed() == []
        assert all(run.manifest.stage_status(s) == "done" for s in run.manifest.stage_names())


def test_a_reader_is_told_which_file_changed_and_how_to_rebuild_it(tmp_path: Path) -> None:
    with _run_with_stages(tmp_path / "run") as run:
        (run.path / "teacher.out").unlink()
        with pytest.raises(ArtifactError, match=r"teacher\.out is missing; `distill run .*` rebuilds "
                                                r"stage 'teacher'"):
            run.check_intact()


def _checkpoint(run: RunDir, obj: object) -> str:
    run.begin("teacher")
    torch.save(obj, run.path / "teacher.pt")
    run.record("teacher", run.path / "teacher.pt")
    run.finish("teacher")
    return "teacher.pt"


def test_a_checkpoint_holding_code_is_refused_without_advice_to_run_it(tmp_path: Path) -> None:
    with RunDir.create(tmp_path / "run", "a" * 64) as run:
        rel = _checkpoint(run, {"weight": torch.zeros(2), "hook": print})
        with pytest.raises(ArtifactError, match=r"teacher\.pt is not a checkpoint of tensors .*Unsupported global") as info:
            run.load_state(rel, torch.nn.Linear(2, 1))
    assert "weights_only" not in str(info.value) and "\n" not in str(info.value)


def test_a_checkpoint_of_another_model_is_named(tmp_path: Path) -> None:
    with RunDir.create(tmp_path / "run", "a" * 64) as run:
        rel = _checkpoint(run, torch.nn.Linear(4, 3).state_dict())
        with pytest.raises(ArtifactError, match=r"teacher\.pt holds the weights of another model \(size mismatch"):
            run.load_state(rel, torch.nn.Linear(2, 3))


def test_a_checkpoint_that_is_not_a_state_dict_is_named(tmp_path: Path) -> None:
    with RunDir.create(tmp_path / "run", "a" * 64) as run:
        rel = _checkpoint(run, torch.zeros(3))
        with pytest.raises(ArtifactError, match=r"teacher\.pt holds a Tensor, not a state dict"):
            run.load_state(rel, torch.nn.Linear(2, 3))


def test_resuming_in_a_read_only_directory_is_a_one_line_error(tmp_path: Path, read_only) -> None:
    out = tmp_path / "run"
    RunDir.create(out, "a" * 64).close()
    read_only(out)
    with pytest.raises(ArtifactError, match=rf"^run directory {out} is not writable \(Read-only file system\); "
                                            "this command writes into it$"):
        RunDir.create(out, "a" * 64)
