"""Specification of the latency helper: what is timed, how it is summarised, what is recorded.

Timing values themselves are never asserted (DESIGN.md); only the arithmetic and bookkeeping.
"""

from __future__ import annotations

import numpy as np
import pytest

from coarserank.errors import ConfigError
from coarserank.serving.timing import Timing, available_cores, machine, measure, summarise


def test_measure_calls_warmup_plus_repeats_times_and_times_only_the_repeats() -> None:
    calls: list[int] = []
    t = measure(lambda: calls.append(1), repeats=7, warmup=3, threads=2)
    assert len(calls) == 10
    assert (t.repeats, t.warmup, t.threads) == (7, 3, 2)


def test_measure_summary_is_ordered_min_p50_p99() -> None:
    t = measure(lambda: sum(range(100)), repeats=30, warmup=0)
    assert 0 <= t.min_ms <= t.p50_ms <= t.p99_ms


def test_summarise_uses_numpy_linear_percentiles_in_milliseconds() -> None:
    samples_ns = np.arange(1, 101) * 1_000_000  # 1 .. 100 ms
    t = summarise(samples_ns, warmup=5, threads=1)
    assert t.p50_ms == pytest.approx(np.percentile(np.arange(1, 101), 50))
    assert t.p99_ms == pytest.approx(np.percentile(np.arange(1, 101), 99))
    assert (t.mean_ms, t.min_ms) == (pytest.approx(50.5), pytest.approx(1.0))


def test_summarise_refuses_zero_samples() -> None:
    with pytest.raises(ConfigError, match="cannot summarise zero timing samples"):
        summarise(np.array([], dtype=np.int64), warmup=0, threads=1)


@pytest.mark.parametrize(("repeats", "warmup"), [(0, 1), (5, -1)])
def test_measure_rejects_bad_counts(repeats: int, warmup: int) -> None:
    with pytest.raises(ConfigError, match="measure needs repeats >= 1 and warmup >= 0"):
        measure(lambda: None, repeats=repeats, warmup=warmup)


def test_to_json_rounds_floats_to_a_tenth_of_a_microsecond() -> None:
    t = Timing(0.123456789, 1.0, 0.5, 0.1, 0.1, 10, 2, 1)
    assert t.to_json()["p50_ms"] == 0.1235 and t.to_json()["repeats"] == 10


def test_machine_describes_cpu_cores_and_timed_libraries() -> None:
    m = machine()
    assert {"cpu", "cores_available", "platform", "onnxruntime", "faiss", "numpy"} <= m.keys()
    assert m["cores_available"] == available_cores() >= 1
