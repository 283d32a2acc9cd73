"""Specification of `distill rank`, `distill bench`, `distill index` and `distill recall` (CliRunner)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from coarserank.cli import distill
from coarserank.config import load_config
from coarserank.pipeline.run import run

USER = json.dumps({"user_id": 12, "age": 30, "gender": "F", "region": "r03", "fav_topic": 17, "device": "ios",
                   "hour": 21})


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Path:
    path = tmp_path_factory.getbasetemp() / "served-run"
    run(load_config(overrides=[*tiny_overrides, "report.enabled=false", f'run.out="{path}"']), path)
    return path


@pytest.fixture
def candidates(tmp_path: Path) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(str(i) for i in [*range(30), 10**9, 10**9 + 1]) + "\n")
    return path


def _invoke(*args: str, stdin: str | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(distill, list(args), input=stdin)
    return result.exit_code, result.stdout, result.stderr


def test_rank_prints_top_n_ids_scores_and_the_dropped_count(run_dir: Path, candidates: Path) -> None:
    code, out, _ = _invoke("rank", "--run", str(run_dir), "--user", USER, "--candidates", str(candidates),
                           "--top-n", "5")
    body = json.loads(out)
    assert code == 0
    assert len(body["ids"]) == len(body["scores"]) == 5
    assert (body["dropped"], body["candidates"]) == (2, 32)


def test_rank_reads_candidates_from_stdin_and_the_user_from_a_file(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "user.json").write_text(USER)
    code, out, _ = _invoke("rank", "--run", str(run_dir), "--user", f"@{tmp_path / 'user.json'}",
                           "--candidates", "-", "--top-n", "2", stdin="4\n5\n6\n")
    assert code == 0 and set(json.loads(out)["ids"]) <= {4, 5, 6}


def test_rank_names_a_non_integer_candidate_line(run_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "ids.txt").write_text("1\nitem-2\n")
    ids = str(tmp_path / "ids.txt")
    code, _, err = _invoke("rank", "--run", str(run_dir), "--user", USER, "--candidates", ids)
    assert code == 1 and "line 2: 'item-2' is not an integer item id" in err


def test_rank_names_a_missing_user_feature(run_dir: Path, candidates: Path) -> None:
    user = json.dumps({"user_id": 12})
    code, _, err = _invoke("rank", "--run", str(run_dir), "--user", user, "--candidates", str(candidates))
    assert code == 1 and "the user lacks feature 'age'" in err


def test_rank_names_a_wrongly_typed_user_feature(run_dir: Path, candidates: Path) -> None:
    user = json.dumps({**json.loads(USER), "gender": 1})
    code, _, err = _invoke("rank", "--run", str(run_dir), "--user", user, "--candidates", str(candidates))
    assert code == 1 and "feature 'gender' needs a string or null, got int 1" in err


def test_rank_explains_a_directory_that_is_not_a_run(tmp_path: Path, candidates: Path) -> None:
    code, _, err = _invoke("rank", "--run", str(tmp_path), "--user", USER, "--candidates", str(candidates))
    assert code == 1 and "is not a coarserank run directory" in err


def test_rank_explains_a_run_missing_an_artifact(run_dir: Path, tmp_path: Path, candidates: Path) -> None:
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    (copy / "user_tower.onnx").unlink()
    code, _, err = _invoke("rank", "--run", str(copy), "--user", USER, "--candidates", str(candidates))
    assert code == 1 and "user_tower.onnx is missing" in err


def test_recall_prints_k_item_ids(run_dir: Path) -> None:
    code, out, _ = _invoke("recall", "--run", str(run_dir), "--user", USER, "--k", "7")
    assert code == 0 and len(json.loads(out)["ids"]) == 7


def test_recall_explains_invalid_user_json(run_dir: Path) -> None:
    code, _, err = _invoke("recall", "--run", str(run_dir), "--user", "{user_id: 12}")
    assert code == 1 and "the user is not valid JSON" in err


def test_index_rebuilds_and_prints_a_table_of_recall_and_qps(run_dir: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    code, out, _ = _invoke("index", "--run", str(copy), "--kind", "ivf")
    assert code == 0
    head, row = out.splitlines()
    assert head.split() == ["index", "items", "recall@10", "recall@100", "queries/s", "exact", "q/s", "speedup",
                            "search"]
    assert row.split()[:2] == ["ivf", "100"] and row.split()[-1].startswith("nprobe=")
    assert "{" not in out


def test_index_on_a_read_only_run_directory_is_a_one_line_error(run_dir: Path, tmp_path: Path, read_only) -> None:
    copy = Path(shutil.copytree(run_dir, tmp_path / "run"))
    read_only(copy)
    result = CliRunner().invoke(distill, ["index", "--run", str(copy)])
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        f"Error: run directory {copy} is not writable (Read-only file system); this command writes into it"]


def test_index_rejects_an_unknown_kind(run_dir: Path) -> None:
    code, _, err = _invoke("index", "--run", str(run_dir), "--kind", "annoy")
    assert code == 2 and "'annoy' is not one of" in err


def test_bench_writes_json_shaped_per_candidate_count_and_path(run_dir: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "bench.json"
    code, out, _ = _invoke("bench", "--run", str(run_dir), "--candidates", "50,200", "--repeats", "3",
                           "--users", "2", "--json", str(out_json))
    body = json.loads(out_json.read_text())
    assert code == 0 and "student p50" in out
    assert set(body["candidates"]) == {"50", "200"}
    for path in ("student", "teacher"):
        assert {"p50_ms", "p99_ms"} <= body["candidates"]["200"][path].keys()
    assert {"cpu", "cores_available"} <= body["machine"].keys()


def test_bench_rejects_malformed_candidate_counts(run_dir: Path) -> None:
    code, _, err = _invoke("bench", "--run", str(run_dir), "--candidates", "1000,lots")
    assert code == 2 and "expected comma-separated integers" in err
