"""What `distill run` tells the user while it trains, and what it refuses before training."""

from __future__ import annotations

from pathlib import Path

import pytest

from coarserank.config import SyntheticConfig, load_config
from coarserank.data.synthetic import generate
from coarserank.errors import DataError
from coarserank.pipeline.run import run

REPO = Path(__file__).resolve().parents[2]


def test_early_stopping_is_announced_with_the_epoch_kept(tmp_path: Path, tiny_overrides: list[str]) -> None:
    # lr 1e-30 leaves the weights (float32) unchanged: valid GAUC cannot improve after epoch 1
    cfg = load_config(overrides=[*tiny_overrides, "teacher.epochs=5", "teacher.patience=1", "teacher.lr=1e-30",
                                 "report.enabled=false"])
    said: list[str] = []
    run(cfg, tmp_path / "run", progress=said.append, extra_stages=False)
    assert ("teacher: early stop after epoch 2 of 5: valid gauc did not improve for 1 epoch(s); keeping epoch 1"
            in said)
    assert not any(line.startswith("student: early stop") for line in said)  # 2 epochs of 2: no early stop


def test_fifty_rows_fail_before_any_model_trains(tmp_path: Path, tiny_overrides: list[str]) -> None:
    tables = generate(SyntheticConfig(rows=2000), 0)
    tables.exposures.drop("p_true").rename({"label": "clicked"}).head(50).write_parquet(tmp_path / "exposures.parquet")
    tables.users.write_csv(tmp_path / "users.csv")
    tables.items.write_parquet(tmp_path / "items.parquet")
    cfg = load_config(REPO / "examples" / "table.toml", overrides=[*tiny_overrides, f'data.path="{tmp_path}"'])
    with pytest.raises(DataError, match=r"^the valid split has no group \(by 'request_id'\) with both a positive "
                                        r"and a negative label"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "teacher.pt").exists()
