"""Small sweep over the distillation settings that justifies the defaults (alpha, T, soft loss).

Usage:
    python benchmarks/bench_distill_grid.py --data-dir ../shared/data/ml-100k --seeds 0 1 2

For each seed it trains the teacher once (a normal `distill run`, reused if present), then trains
one student per grid point with the same seed and data, and reports the mean validation GAUC
(used to choose) and test GAUC (reported, not used to choose) over seeds.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
from common import machine  # noqa: E402

from coarserank.config import DistillConfig, load_config  # noqa: E402
from coarserank.distill.train import predict  # noqa: E402
from coarserank.pipeline.run import load_context, run, train_student  # noqa: E402
from coarserank.ranking_eval import gauc  # noqa: E402

GRID = ([DistillConfig(0.0, 1.0, "pointwise")]  # the hard-label control: T and soft do not matter
        + [DistillConfig(a, t, "pointwise") for a in (0.3, 0.5, 0.7, 0.9) for t in (1.0, 2.0, 4.0)]
        + [DistillConfig(a, t, "listwise") for a in (0.3, 0.5, 0.7) for t in (1.0, 2.0)])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="movielens-100k")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="benchmarks/out")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    args = ap.parse_args()
    sets = [*args.sets, *([f'data.path="{args.data_dir}"'] if args.data_dir else [])]
    preset = None if args.dataset == "synthetic" else args.dataset
    results: dict[tuple, list[tuple[float, float]]] = {}
    for seed in args.seeds:
        cfg = load_config(preset=preset, overrides=[*sets, f"run.seed={seed}"])
        run_dir = Path(args.out) / f"{args.dataset}-seed{seed}"
        run(cfg, run_dir, progress=lambda m: None, extra_stages=False)  # reuses a finished run
        ctx, _ = load_context(run_dir)
        ctx.progress = lambda m: None
        for point in GRID:
            model, fit_result = train_student(ctx, "grid", point)
            test = ctx.frames["test"]
            g = gauc(test["_label"].to_numpy(), predict(model, ctx.tables["test"], ctx.device),
                     test["_group"].to_numpy()).value
            results.setdefault((point.soft, point.alpha, point.temperature), []).append((fit_result.best_valid_gauc, g))
            print(f"seed {seed} {point}: valid {fit_result.best_valid_gauc:.4f} test {g:.4f}", file=sys.stderr)
    print(f"\n### `{' '.join(sys.argv)}`\n\nMachine: {machine()}\n")
    print("| soft | alpha | T | valid GAUC (mean) | test GAUC (mean) |\n|---|---|---|---|---|")
    best = max(results, key=lambda k: np.mean([v for v, _ in results[k]]))
    for key, vals in results.items():
        mark = " **(best valid)**" if key == best else ""
        print(f"| {key[0]} | {key[1]} | {key[2]} | {np.mean([v for v, _ in vals]):.4f}{mark} | "
              f"{np.mean([t for _, t in vals]):.4f} |")


if __name__ == "__main__":
    main()
