"""A tiny `distill run` with sampled items: entire-space distillation end to end (well under a minute)."""

from __future__ import annotations

import json
from pathlib import Path

from coarserank.config import load_config
from coarserank.pipeline.run import run


def test_a_run_with_sampled_items_trains_exports_and_reports_sampled_throughput(tmp_path: Path, tiny_overrides):
    path = tmp_path / "run"
    result = run(load_config(overrides=[*tiny_overrides, "distill.sampled=3", "report.enabled=false"]), path)
    stages = json.loads((path / "manifest.json").read_text())["stages"]
    assert stages["student"]["sampled_rows_per_second"] > 0
    assert "sampled_rows_per_second" not in stages["student_hard"]  # the control never sees sampled items
    assert stages["export"]["status"] == "done"
    assert 0.5 < result.metrics["test"]["student"]["gauc"] <= 1.0
