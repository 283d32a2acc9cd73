"""Specification of the latency helper: what is timed, how it is summarised, what is recorded.

Timing values themselves are never asserted (DESIGN.md); only the arithmetic and bookkeeping.
"""

from __future__ import annotations

import numpy as np
import pytest

from coarserank.errors import ConfigError
from coarserank.serving.timing import Timing, available_cores, machine, measure, measure_side_by_side, summarise


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


def test_side_by_side_alternates_the_paths_in_rounds_and_times_each_repeats_times() -> None:
    log: list[str] = []
    timed = measure_side_by_side({"a": lambda: log.append("a"), "b": lambda: log.append("b")},
                                 repeats=7, warmup=3, rounds=3, rewarm=1, threads=2)
    shares = [3, 2, 2]  # 7 timed calls over 3 rounds, each round's share preceded by 1 re-warming call
    want = ["a"] * 3 + ["b"] * 3 + [p for n in shares for p in ("a",) * (1 + n) + ("b",) * (1 + n)]
    assert log == want
    assert {k: (t.repeats, t.warmup, t.threads) for k, t in timed.items()} == {"a": (7, 3, 2), "b": (7, 3, 2)}


def test_side_by_side_times_the_calls_of_each_path_only() -> None:
    import time

    timed = measure_side_by_side({"slow": lambda: time.sleep(0.05), "fast": lambda: None}, repeats=4, warmup=0,
                                 rounds=2, rewarm=0)
    assert timed["slow"].min_ms >= 50.0 > timed["fast"].p50_ms  # a sleep lasts at least as long as asked


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"warmup": -1}, {"rounds": 0}, {"rewarm": -1}])
def test_side_by_side_rejects_bad_counts(kwargs: dict) -> None:
    with pytest.raises(ConfigError, match="measure_side_by_side needs"):
        measure_side_by_side({"a": lambda: None}, **kwargs)
