"""`distill sweep` in-process with click's CliRunner: what a user types and sees."""

from __future__ import annotations

import json
import shutil

import pytest
from click.testing import CliRunner

from coarserank.cli import distill
from coarserank.config import load_config

pytestmark = pytest.mark.slow

FAST = ["cold.epochs=1", "cold.hidden=[16]", "cold.embed_dim=4", "cold.latency_repeats=5", "cold.latency_warmup=1",
        "cold.permutation_repeats=1", "report.max_users=10", "report.sampled=100", "report.bootstrap=5"]


def _sets(overrides: list[str]) -> list[str]:
    return [arg for o in overrides for arg in ("--set", o)]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_overrides):
    out = tmp_path_factory.mktemp("cli_sweep") / "run"
    result = CliRunner().invoke(distill, ["run", "--out", str(out), *_sets([*tiny_overrides, *FAST])])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def swept(tiny_run, tmp_path_factory):
    chosen = tmp_path_factory.mktemp("chosen") / "chosen.toml"
    result = CliRunner().invoke(distill, ["sweep", "--run", str(tiny_run), "--k", "2,all", "--budget-ms", "1000",
                                          "--write-config", str(chosen)])
    return result, chosen


def test_sweep_prints_the_frontier_table_and_the_choice(swept):
    result, _ = swept
    assert result.exit_code == 0, result.output
    assert "p99 ms" in result.output and "<- chosen" in result.output
    assert "rank agreement (Kendall tau-b)" in result.output


def test_sweep_uses_the_report_candidate_sets(swept, tiny_run):
    body = json.loads((tiny_run / "sweep" / "sweep.json").read_text())
    assert body["candidates"].startswith("the report's candidate sets")
    assert all(p["recall_10_in_100"] is not None for p in body["points"])


def test_written_config_is_accepted_by_distill_run_and_holds_the_chosen_features(swept, tiny_run):
    _, chosen = swept
    body = json.loads((tiny_run / "sweep" / "sweep.json").read_text())
    features = body["points"][body["chosen"]]["features"]
    cfg = load_config(chosen)
    declared = {f.name for f in cfg.data.features} | {c.name for c in cfg.data.crosses}
    assert set(features) - {h.name for h in cfg.data.history_crosses} <= declared


def test_a_budget_no_point_meets_is_a_one_line_error(swept, tiny_run):
    result = CliRunner().invoke(distill, ["sweep", "--run", str(tiny_run), "--k", "2,all", "--budget-ms", "0.000001"])
    assert result.exit_code == 1
    assert "Error: no sweep point meets the p99 latency budget of 1e-06 ms" in result.output
    assert "Traceback" not in result.output


def test_k_larger_than_the_features_is_a_one_line_error(swept, tiny_run):
    result = CliRunner().invoke(distill, ["sweep", "--run", str(tiny_run), "--k", "50"])
    assert result.exit_code == 1
    assert "k=50 is larger than the 16 features the cold family can use" in result.output


def test_a_run_directory_without_a_teacher_is_a_clear_error(swept, tiny_run, tmp_path):
    copy = tmp_path / "no_teacher"
    shutil.copytree(tiny_run, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["stages"]["teacher"]["status"] = "failed"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    result = CliRunner().invoke(distill, ["sweep", "--run", str(copy)])
    assert result.exit_code == 1
    assert "stage 'teacher' is failed" in result.output and "Traceback" not in result.output


def test_a_directory_that_is_not_a_run_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(distill, ["sweep", "--run", str(tmp_path)])
    assert result.exit_code == 1
    assert "is not a coarserank run directory" in result.output
