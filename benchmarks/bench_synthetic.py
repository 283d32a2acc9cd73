"""Benchmark the synthetic generator: wall time and peak RSS for one ``generate`` call.

Usage::

    python benchmarks/bench_synthetic.py --rows 10000000 --seed 0

Peak RSS is the process high-water mark (``resource.getrusage``, Linux/macOS); the figure
after imports is printed too, so the generator's own share is ``peak - baseline``.
"""

from __future__ import annotations

import argparse
import platform
import resource
import sys
import time

import numpy as np
import polars as pl

from coarserank.config import SyntheticConfig
from coarserank.data.synthetic import generate


def _peak_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB on Linux


def main(argv: list[str] | None = None) -> None:
    """Generate ``--rows`` exposures once and print time, peak RSS and a few sanity figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    baseline = _peak_rss_mib()
    start = time.perf_counter()
    raw = generate(SyntheticConfig(rows=args.rows), seed=args.seed)
    wall = time.perf_counter() - start
    peak = _peak_rss_mib()

    e = raw.exposures
    assert raw.users is not None and raw.items is not None
    print(f"python {platform.python_version()}, numpy {np.__version__}, polars {pl.__version__}, "
          f"{platform.machine()}")
    print(f"rows={e.height:,} users={raw.users.height:,} items={raw.items.height:,} "
          f"requests={e['request_id'].n_unique():,}")
    print(f"CTR={e['label'].mean():.4f} mean p_true={e['p_true'].mean():.4f}")
    print(f"frame size={e.estimated_size() / 2**20:.0f} MiB")
    print(f"wall={wall:.2f} s  peak RSS={peak:.0f} MiB (baseline after imports {baseline:.0f} MiB, "
          f"increase {peak - baseline:.0f} MiB)")


if __name__ == "__main__":
    main()
