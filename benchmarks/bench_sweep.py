"""Benchmark ``distill sweep``: wall time of a k-point COLD sweep on MovieLens-100K and its frontier.

Usage::

    python benchmarks/bench_sweep.py --data-dir ../shared/data/ml-100k --run /tmp/bench/ml \\
        --k 3,6,9,all --budget-ms 2 --json /tmp/bench/sweep.json

The run directory is created with ``distill run --dataset movielens-100k`` defaults when it does not
hold a finished run yet (its time is reported separately, it is not part of the sweep). Any earlier
``sweep/`` in it is removed first, so every point is computed. The sweep builds the report's
candidate sets, computes the three importance rankings and trains, measures and times each point,
exactly as the command does. The machine's load average is printed beside the times, because the
figures mean little on a busy machine.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from coarserank.artifacts import Run
from coarserank.cli.sweep_cmd import format_sweep
from coarserank.cold.sweep import parse_ks, run_sweep
from coarserank.config import load_config
from coarserank.pipeline.run import run
from coarserank.pipeline.run_data import RunData
from coarserank.pipeline.sweep_stage import SWEEP_READS, report_candidates, sweep_data
from coarserank.serving.timing import machine


def main(argv: list[str] | None = None) -> None:
    """Run (or reuse) the ML-100K run, sweep it from scratch and print the time and the frontier."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/ml-100k")
    parser.add_argument("--run", type=Path, default=Path("/tmp/bench/ml"))
    parser.add_argument("--family", choices=["cold", "two_tower"], default="cold")
    parser.add_argument("--k", default="3,6,9,all")
    parser.add_argument("--budget-ms", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None, help="Write the figures here as JSON.")
    args = parser.parse_args(argv)

    cfg = load_config(preset="movielens-100k", overrides=[f'data.path="{args.data_dir}"', 'run.device="cpu"'])
    start = time.perf_counter()
    if not (args.run / "metrics.json").is_file():
        run(cfg, args.run, progress=print)
    run_seconds = time.perf_counter() - start
    shutil.rmtree(args.run / "sweep", ignore_errors=True)

    start = time.perf_counter()
    finished = Run.open(args.run, require=SWEEP_READS)
    models = finished.models(("teacher", "student"))
    data = sweep_data(finished)
    test = RunData(finished.config, finished.encoder, finished.frame(), finished.split_frame("test"),
                   {"teacher": data.teacher["test"]}, finished.path)
    candidates = report_candidates(test, data.splits["test"], models["teacher"])
    prepared = time.perf_counter() - start
    result = run_sweep(data, models, args.family, parse_ks(args.k), args.budget_ms, print, candidates=candidates)
    total = time.perf_counter() - start
    load = os.getloadavg()

    print(format_sweep(result.body))
    print(f"run (not part of the sweep): {run_seconds:.0f} s; sweep: {total:.0f} s wall "
          f"(loading + candidate sets {prepared:.0f} s, importance {result.body['importance']['seconds']:.0f} s, "
          f"points {sum(p['seconds'] for p in result.body['points']):.0f} s); load average {load[0]:.1f} "
          f"on {os.cpu_count()} cores")
    if args.json is not None:
        figures = {"command": f"python benchmarks/bench_sweep.py --k {args.k} --family {args.family}"
                              + (f" --budget-ms {args.budget_ms:g}" if args.budget_ms else ""),
                   "machine": machine(), "load_average": load, "sweep_seconds": round(total, 1),
                   "points": [{k: p[k] for k in ("k", "features", "auc", "gauc", "recall_10_in_100", "p50_ms",
                                                  "p99_ms", "params", "macs_per_candidate", "pareto", "seconds")}
                              for p in result.body["points"]],
                   "chosen": result.body["chosen"], "budget_ms": result.body["budget_ms"]}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
