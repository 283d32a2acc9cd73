"""docs/api.md's example runs as written (on a smaller configuration) and agrees with `distill run`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from coarserank.cli import distill

pytestmark = pytest.mark.slow

DOC = Path(__file__).resolve().parents[1] / "docs" / "api.md"
SMALL = ["teacher.epochs=1", "student.epochs=1", "gbdt.rounds=10", "teacher.hidden=[32]", "student.hidden=[32]",
         "report.max_users=20", "report.sampled=50", "report.bootstrap=5", "serving.index_queries=50",
         'run.device="cpu"']


def _example(name: str) -> str:
    text = DOC.read_text()
    match = re.search(rf"<!-- example: {name} -->\n```python\n(.*?)```", text, re.S)
    assert match, f"docs/api.md has no example {name!r}"
    return match.group(1)


def _smaller(code: str, data_dir: Path, out: Path) -> str:
    """The example with its data and output paths replaced and the training shortened."""
    code = code.replace('data_dir = "../shared/data/ml-100k"', f'data_dir = "{data_dir}"')
    code = code.replace('out = "runs/ml100k-api"', f'out = "{out}"')
    code = code.replace('overrides=[f\'data.path="{data_dir}"\']', f"overrides=[f'data.path=\"{{data_dir}}\"', *{SMALL!r}]")
    code = code.replace('"examples/movielens-100k.toml"', repr(str(DOC.parents[1] / "examples" / "movielens-100k.toml")))
    assert str(out) in code and repr(SMALL) in code, "the example's lines changed: update this test"
    return code


def test_the_api_example_runs_and_matches_distill_run(ml100k_dir: Path, tmp_path: Path, capsys) -> None:
    namespace: dict = {}
    exec(compile(_smaller(_example("movielens"), ml100k_dir, tmp_path / "api"), str(DOC), "exec"), namespace)
    printed = capsys.readouterr().out
    assert "student test GAUC" in printed and "top items:" in printed and "Kendall tau" in printed
    assert len(namespace["ranked"].ids) == 3
    assert namespace["shipped"].checks["score_path"] <= namespace["shipped"].checks["tolerance"]
    assert (tmp_path / "api" / "items.kv").is_file() and (tmp_path / "api" / "user_tower.onnx").is_file()

    cli = tmp_path / "cli"
    args = ["run", "--config", str(DOC.parents[1] / "examples" / "movielens-100k.toml"), "--data-dir",
            str(ml100k_dir), "--out", str(cli), "-q", *(a for s in SMALL for a in ("--set", s))]
    result = CliRunner().invoke(distill, args)
    assert result.exit_code == 0, result.output
    expected = json.loads((cli / "metrics.json").read_text())["test"]
    got = {"student": namespace["scores"].to_json(),
           "teacher": namespace["cr"].evaluate(namespace["teacher"], namespace["data"].test).to_json()}
    for model in got:
        for key in ("auc", "gauc", "logloss"):
            assert got[model][key] == pytest.approx(expected[model][key], abs=1e-6), (model, key)


def test_the_from_frame_example_splits_each_users_last_rows_by_time() -> None:
    namespace: dict = {}
    exec(compile(_example("from_frame"), str(DOC), "exec"), namespace)
    train, valid, test = namespace["train"], namespace["valid"], namespace["test"]
    assert (len(train), len(valid), len(test)) == (4, 2, 2)
    assert sorted(test.frame["ts"].to_list()) == [4, 4] and sorted(valid.frame["ts"].to_list()) == [3, 3]
