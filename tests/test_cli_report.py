"""`distill report`, in-process with click's CliRunner: a run's report and comparing two scorers' files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from coarserank.cli import distill

REPORT = ["report.max_users=40", "report.sampled=120", "report.bootstrap=20"]


def _scores(rng: np.random.Generator, groups: int = 15, size: int = 110) -> tuple[pl.DataFrame, pl.DataFrame]:
    """A reference scorer, a noisy copy of it, and labels on the first 10 candidates of each group."""
    n = groups * size
    ref = rng.random(n)
    keys = {"group": np.repeat([f"req{g}" for g in range(groups)], size),
            "item_id": np.tile(np.arange(size), groups)}
    label = np.where(np.tile(np.arange(size), groups) < 10, (rng.random(n) < ref).astype(float), np.nan)
    a = pl.DataFrame({**keys, "score": ref})
    b = pl.DataFrame({**keys, "student": ref + rng.normal(0, 0.2, n)})
    labels = pl.DataFrame({**keys, "label": pl.Series(label).fill_nan(None).cast(pl.Int8)})
    return a.join(b, on=["group", "item_id"]), labels


@pytest.fixture
def files(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path, Path]:
    both, labels = _scores(rng)
    a, b, lab = tmp_path / "prod.parquet", tmp_path / "B.parquet", tmp_path / "labels.parquet"
    both.select("group", "item_id", "score").write_parquet(a)
    both.select("group", "item_id", "student").write_parquet(b)
    labels.write_parquet(lab)
    return a, b, lab


def _compare(tmp_path: Path, *args: str) -> object:
    return CliRunner().invoke(distill, ["report", *args, "--out", str(tmp_path / "cmp"), "--bootstrap", "20"])


def test_comparing_two_scorers_writes_the_report_and_prints_a_summary(tmp_path: Path, files: tuple) -> None:
    a, b, lab = files
    result = _compare(tmp_path, "--scores", str(a), "--scores", str(b), "--labels", str(lab))
    assert result.exit_code == 0, result.output
    assert "reference prod" in result.output and "gain student - prod: gauc" in result.output
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert report["setup"]["reference"] == "prod" and report["setup"]["models"] == ["student"]
    assert 0.0 <= report["consistency"]["student"]["recall@10_in_100"] <= 1.0
    assert report["label_metrics"]["prod"]["rows"] == 150
    assert (tmp_path / "cmp" / "report.html").is_file() and (tmp_path / "cmp" / "scores.parquet").is_file()


def test_comparing_without_labels_reports_consistency_only(tmp_path: Path, files: tuple) -> None:
    a, b, _ = files
    result = _compare(tmp_path, "--scores", str(a), "--scores", str(b))
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "cmp" / "report.json").read_text())
    assert report["label_metrics"] == {} and "kendall_tau" in report["consistency"]["student"]


def test_score_files_with_mismatched_rows_name_both_files(tmp_path: Path, files: tuple) -> None:
    a, b, _ = files
    pl.read_parquet(b).head(-3).write_parquet(b)
    result = _compare(tmp_path, "--scores", str(a), "--scores", str(b))
    assert result.exit_code == 1
    assert f"score files {a} and {b} do not hold the same rows: 3 candidate(s) only in {a}" in result.output
    assert "columns 'group', 'item_id' must match" in result.output


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_a_non_finite_score_names_the_file_and_column(tmp_path: Path, files: tuple, bad: float) -> None:
    a, b, _ = files
    body = pl.read_parquet(b)
    body.with_columns(pl.when(pl.int_range(pl.len()) == 5).then(bad).otherwise(pl.col("student"))
                      .alias("student")).write_parquet(b)
    result = _compare(tmp_path, "--scores", str(a), "--scores", str(b))
    assert result.exit_code == 1
    assert f"{b}: score column 'student' has 1 NaN, infinite or null score(s)" in result.output


def test_a_missing_group_column_names_the_file_and_column(tmp_path: Path, files: tuple) -> None:
    a, b, _ = files
    pl.read_parquet(a).drop("group").write_parquet(a)
    result = _compare(tmp_path, "--scores", str(a), "--scores", str(b))
    assert result.exit_code == 1 and f"{a}: column 'group' is missing" in result.output


def test_an_empty_group_id_names_the_file_and_column(tmp_path: Path, files: tuple) -> None:
    a, b, _ = files
    body = pl.read_parquet(b)
    body.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("")).otherwise(pl.col("group"))
                      .alias("group")).write_parquet(b)
    result = _compare(tmp_path, "--scores", str(a), "--scores", str(b))
    assert result.exit_code == 1
    assert f"{b}: column 'group' has 1 empty (null or blank) group id" in result.output


def test_labels_for_candidates_nobody_scored_are_an_error(tmp_path: Path, files: tuple) -> None:
    a, b, lab = files
    labels = pl.read_parquet(lab)
    pl.concat([labels, labels.head(1).with_columns(pl.lit("req-x").alias("group"))]).write_parquet(lab)
    result = _compare(tmp_path, "--scores", str(a), "--scores", str(b), "--labels", str(lab))
    assert result.exit_code == 1 and f"{lab}: 1 labelled row(s) are not in the score files" in result.output


def test_a_file_with_several_score_columns_needs_file_colon_column(tmp_path: Path, files: tuple) -> None:
    a, b, _ = files
    pl.read_parquet(b).with_columns(pl.col("student").alias("other")).write_parquet(b)
    result = _compare(tmp_path, "--scores", str(a), "--scores", str(b))
    assert result.exit_code == 1 and "say which column holds the scores (FILE:COLUMN)" in result.output
    assert _compare(tmp_path, "--scores", str(a), "--scores", f"{b}:other").exit_code == 0


@pytest.mark.parametrize(("args", "message"), [
    ([], "give either --run DIR or --scores FILE --scores FILE"),
    (["--run", "x", "--scores", "a"], "give either --run DIR or --scores FILE --scores FILE"),
    (["--scores", "a.parquet"], "--scores needs at least two files"),
    (["--run", "x", "--labels", "l.parquet"], "--out and --labels apply to --scores"),
])
def test_usage_errors_say_what_to_give(args: list[str], message: str) -> None:
    result = CliRunner().invoke(distill, ["report", *args])
    assert result.exit_code == 2 and message in result.output


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Path:
    out = tmp_path_factory.mktemp("runs") / "tiny"
    sets = [arg for o in [*tiny_overrides, *REPORT] for arg in ("--set", o)]
    result = CliRunner().invoke(distill, ["run", "--out", str(out), "-q", *sets])
    assert result.exit_code == 0, result.output
    return out


@pytest.mark.slow
def test_report_of_a_run_rebuilds_its_report_directory(tiny_run: Path) -> None:
    result = CliRunner().invoke(distill, ["report", "--run", str(tiny_run), "--force", "-q"])
    assert result.exit_code == 0, result.output
    assert "40 candidate sets" in result.output and "gain student - student_hard: gauc" in result.output
    assert f"report: {tiny_run / 'report' / 'report.html'}" in result.output


@pytest.mark.slow
def test_a_runs_scores_parquet_recomputes_its_numbers(tiny_run: Path, tmp_path: Path) -> None:
    scores = tiny_run / "report" / "scores.parquet"
    result = _compare(tmp_path, "--scores", f"{scores}:teacher", "--scores", f"{scores}:student",
                      "--labels", str(scores))
    assert result.exit_code == 0, result.output
    again = json.loads((tmp_path / "cmp" / "report.json").read_text())
    saved = json.loads((tiny_run / "report" / "report.json").read_text())
    for key in ("kendall_tau", "recall@10_in_50", "ndcg@10"):
        assert again["consistency"]["student"][key] == pytest.approx(saved["consistency"]["student"][key])
    for key in ("auc", "gauc", "logloss"):
        assert again["label_metrics"]["student"][key] == pytest.approx(saved["label_metrics"]["student"][key])


@pytest.mark.slow
def test_report_of_a_run_prints_its_timing_line_once_and_says_whose_labels(tiny_run: Path) -> None:
    result = CliRunner().invoke(distill, ["report", "--run", str(tiny_run)])
    assert result.exit_code == 0, result.output
    assert sum(line.startswith("report: ") and "report.html" in line for line in result.output.splitlines()) == 1
    assert "metrics.json scores every test row" in result.output
