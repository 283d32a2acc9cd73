"""Shared helpers for benchmark scripts: machine description and mean with a t-interval."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

__all__ = ["machine", "mean_ci", "run_all"]


def machine() -> str:
    """One line describing where a benchmark ran."""
    import torch

    from coarserank.serving.timing import cpu_model

    cpu = cpu_model()
    return (f"{platform.system()} {platform.machine()}, {os.cpu_count()} CPU cores ({cpu}), "
            f"python {platform.python_version()}, torch {torch.__version__} threads {torch.get_num_threads()}")


def mean_ci(values: list[float] | np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval of the mean."""
    from scipy import stats

    x = np.asarray(values, dtype=float)
    m = float(x.mean())
    if len(x) < 2:
        return m, float("nan"), float("nan")
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return m, m - half, m + half


def run_all(datasets: Sequence[str], seeds: Sequence[int], run_seed: Callable[[str, int], list[dict[str, Any]]],
            out: str | Path) -> list[dict[str, Any]]:
    """``run_seed(dataset, seed)`` for every pair, each seed's rows appended to ``out/results.jsonl`` as
    they come (an interrupted benchmark keeps what it measured); returns every row."""
    Path(out).mkdir(parents=True, exist_ok=True)
    results = Path(out) / "results.jsonl"
    rows: list[dict[str, Any]] = []
    for dataset in datasets:
        for seed in seeds:
            new = run_seed(dataset, seed)
            rows += new
            with results.open("a") as fh:
                fh.writelines(json.dumps(r) + "\n" for r in new)
    return rows


def read_results(paths: Sequence[str | Path]) -> list[dict[str, Any]]:
    """Every row of these ``results.jsonl`` files (e.g. seeds run in parallel, or by separate runs)."""
    return [json.loads(line) for path in paths for line in Path(path).read_text().splitlines() if line]
