"""Shared helpers for benchmark scripts: machine description and mean with a t-interval."""

from __future__ import annotations

import os
import platform

import numpy as np

__all__ = ["machine", "mean_ci"]


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
