"""``[distill.grid]`` in ``distill run``: side students measured on validation, plotted in the report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from coarserank.config import config_hash, load_config
from coarserank.errors import ConfigError
from coarserank.pipeline.run import run


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, tiny_overrides):
    path = tmp_path_factory.mktemp("grid") / "run"
    run(load_config(overrides=[*tiny_overrides, "distill.grid.alpha=[0.0, 0.8]", "distill.grid.sampled=[0, 2]"]), path)
    return path


def test_the_grid_stage_writes_one_point_per_combination_and_the_validation_choice(grid_run: Path):
    body = json.loads((grid_run / "distill_grid.json").read_text())
    assert [p["settings"] for p in body["points"]] == [
        {"alpha": 0.0, "sampled": 0}, {"alpha": 0.0, "sampled": 2}, {"sampled": 0}, {"sampled": 2}]  # vs the base
    valid = [p["valid_gauc"] for p in body["points"]]
    assert body["chosen"] == valid.index(max(valid))
    assert all(0.0 <= p["valid_recall_10_in_100"] <= 1.0 for p in body["points"])


def test_the_report_carries_the_grid_block_and_its_plot(grid_run: Path):
    report = json.loads((grid_run / "report" / "report.json").read_text())
    assert report["distill_grid"]["points"] == json.loads((grid_run / "distill_grid.json").read_text())["points"]
    page = (grid_run / "report" / "report.html").read_text()
    assert "Distillation trade-off (grid)" in page
    assert 'alt="validation GAUC and agreement over the distillation grid"' in page


def test_the_grid_is_not_part_of_the_runs_training_hash(tiny_overrides):
    plain = load_config(overrides=tiny_overrides)
    swept = load_config(overrides=[*tiny_overrides, "distill.grid.temperature=[1.0, 4.0]"])
    assert config_hash(plain) == config_hash(swept)


def test_a_grid_value_out_of_range_names_the_key(tiny_overrides):
    with pytest.raises(ConfigError, match=r"distill.grid.alpha must be an array with every value a number in \[0, 1\]"):
        load_config(overrides=[*tiny_overrides, "distill.grid.alpha=[0.5, 1.5]"])
