"""The one latency helper: warm-up, repeats, percentiles, and the machine the figures came from.

Every latency coarserank reports (``distill bench``, the Faiss build facts, ``benchmarks/``) goes
through :func:`measure` (or :func:`measure_side_by_side`, for paths compared as ratios), so the
figures mean the same thing everywhere:

- ``warmup`` calls first, not recorded (first calls pay for lazy allocation and cold caches);
- then ``repeats`` calls, each timed alone with :func:`time.perf_counter_ns`;
- ``p50_ms`` and ``p99_ms`` are numpy's linear-interpolation percentiles of those calls,
  ``mean_ms`` and ``std_ms`` their mean and standard deviation, ``min_ms`` the fastest;
- ``threads`` is what the caller says its code path uses (ONNX Runtime intra-op threads, Faiss
  OpenMP threads), recorded beside the figures because latency means little without it.

Timing is never asserted in a unit test (DESIGN.md); tests check the arithmetic only.

Example
-------
>>> t = measure(lambda: sum(range(1000)), repeats=50, warmup=5, threads=1)
>>> t.repeats, t.p50_ms <= t.p99_ms
(50, True)
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from coarserank.errors import ConfigError

__all__ = ["Timing", "measure", "measure_side_by_side", "summarise", "machine", "available_cores", "cpu_model"]


@dataclass(frozen=True)
class Timing:
    """Latency summary of repeated calls, in milliseconds."""

    p50_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    min_ms: float
    repeats: int
    warmup: int
    threads: int

    def to_json(self) -> dict[str, Any]:
        """Plain dict, floats rounded to 4 decimals (0.1 microsecond)."""
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def summarise(samples_ns: np.ndarray, *, warmup: int, threads: int) -> Timing:
    """Summarise per-call durations in nanoseconds into a :class:`Timing`.

    Raises
    ------
    ConfigError
        If there are no samples.
    """
    x = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if x.size == 0:
        raise ConfigError("cannot summarise zero timing samples; repeats must be >= 1")
    p50, p99 = np.percentile(x, [50.0, 99.0])
    return Timing(p50_ms=float(p50), p99_ms=float(p99), mean_ms=float(x.mean()), std_ms=float(x.std()),
                  min_ms=float(x.min()), repeats=int(x.size), warmup=warmup, threads=threads)


def measure(fn: Callable[[], object], *, repeats: int = 200, warmup: int = 20, threads: int = 1) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeats`` times timed one by one.

    Parameters
    ----------
    fn
        The call to time; its return value is ignored.
    repeats, warmup
        Timed and untimed call counts (``repeats >= 1``, ``warmup >= 0``).
    threads
        Threads the timed code path uses, recorded in the result.

    Raises
    ------
    ConfigError
        If ``repeats < 1`` or ``warmup < 0``.
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"measure needs repeats >= 1 and warmup >= 0, "
                          f"got repeats={repeats}, warmup={warmup}")
    for _ in range(warmup):
        fn()
    samples = np.empty(repeats, dtype=np.int64)
    clock = time.perf_counter_ns
    for i in range(repeats):
        start = clock()
        fn()
        samples[i] = clock() - start
    return summarise(samples, warmup=warmup, threads=threads)


def measure_side_by_side(fns: dict[str, Callable[[], object]], *, repeats: int = 200, warmup: int = 20,
                         rounds: int = 10, rewarm: int = 2, threads: int = 1) -> dict[str, Timing]:
    """:func:`measure` for several code paths whose figures are compared as ratios: their timed calls
    are spread over the same stretch of time, so a slow spell of the machine (a busy neighbour, a
    frequency change) reaches every path alike instead of whichever was timed during it.

    Each path gets ``warmup`` untimed calls, then ``rounds`` rounds in which every path in turn makes
    ``rewarm`` untimed calls (the caches the other path evicted) and its share of ``repeats`` timed
    calls. Each :class:`Timing` summarises ``repeats`` calls.

    Raises
    ------
    ConfigError
        If ``repeats < 1``, ``warmup < 0``, ``rounds < 1`` or ``rewarm < 0``.
    """
    if repeats < 1 or warmup < 0 or rounds < 1 or rewarm < 0:
        raise ConfigError(f"measure_side_by_side needs repeats >= 1, warmup >= 0, rounds >= 1 and rewarm >= 0, "
                          f"got repeats={repeats}, warmup={warmup}, rounds={rounds}, rewarm={rewarm}")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    rounds = min(rounds, repeats)
    shares = [repeats // rounds + (1 if r < repeats % rounds else 0) for r in range(rounds)]
    samples = {name: np.empty(repeats, dtype=np.int64) for name in fns}
    clock = time.perf_counter_ns
    at = 0
    for share in shares:
        for name, fn in fns.items():
            for _ in range(rewarm):
                fn()
            out = samples[name]
            for i in range(at, at + share):
                start = clock()
                fn()
                out[i] = clock() - start
        at += share
    return {name: summarise(x, warmup=warmup, threads=threads) for name, x in samples.items()}


def available_cores() -> int:
    """CPUs this process may keep busy: its affinity mask capped by its cgroup CPU quota
    (:class:`coarserank.threads.CpuBudget`)."""
    from coarserank.threads import cpu_budget

    return cpu_budget(stat=None).usable


def cpu_model() -> str:
    """The CPU model name (from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, Any]:
    """Description of this machine and the libraries on the timed paths, for benchmark JSON."""
    import faiss
    import onnxruntime

    return {"cpu": cpu_model(), "cores_available": available_cores(), "cores_total": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__,
            "onnxruntime": onnxruntime.__version__, "faiss": faiss.__version__}
