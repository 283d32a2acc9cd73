"""What `distill run` tells the user while it trains."""

from __future__ import annotations

from pathlib import Path

from coarserank.config import load_config
from coarserank.pipeline.run import run


def test_early_stopping_is_announced_with_the_epoch_kept(tmp_path: Path, tiny_overrides: list[str]) -> None:
    # lr 1e-30 leaves the weights (float32) unchanged: valid GAUC cannot improve after epoch 1
    cfg = load_config(overrides=[*tiny_overrides, "teacher.epochs=5", "teacher.patience=1", "teacher.lr=1e-30",
                                 "report.enabled=false"])
    said: list[str] = []
    run(cfg, tmp_path / "run", progress=said.append, extra_stages=False)
    assert ("teacher: early stop after epoch 2 of 5: valid gauc did not improve for 1 epoch(s); keeping epoch 1"
            in said)
    assert not any(line.startswith("student: early stop") for line in said)  # 2 epochs of 2: no early stop
