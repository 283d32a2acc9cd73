"""Quality and speed of `distill run` over several seeds (issue: end-to-end pipeline).

Usage:
    python benchmarks/bench_pipeline.py --dataset movielens-100k --data-dir ../shared/data/ml-100k --seeds 0 1 2 3 4
    python benchmarks/bench_pipeline.py --dataset synthetic --seeds 0 1 2
    python benchmarks/bench_pipeline.py --dataset synthetic --rows 2000000 --seeds 0 --set report.enabled=false

Prints a markdown block for benchmarks/RESULTS.md: per-seed test metrics for every model, the
paired distilled-minus-hard GAUC difference (mean and 95% t-interval over seeds), training
throughput (rows/s) and the teacher's time to its best validation GAUC.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, mean_ci  # noqa: E402

from coarserank.config import load_config  # noqa: E402
from coarserank.pipeline.run import run  # noqa: E402

MODELS = ("teacher", "student", "student_hard", "gbdt", "oracle")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--data-dir", default="")
    ap.add_argument("--rows", type=int, default=0)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--out", default="benchmarks/out")
    ap.add_argument("--set", dest="sets", action="append", default=[])
    ap.add_argument("--no-extras", action="store_true", help="stop after metrics (no exports, no report)")
    args = ap.parse_args()
    sets = list(args.sets)
    if args.data_dir:
        sets.append(f'data.path="{args.data_dir}"')
    if args.rows:
        sets.append(f"synthetic.rows={args.rows}")
    preset = None if args.dataset == "synthetic" else args.dataset
    rows = []
    for seed in args.seeds:
        cfg = load_config(preset=preset, overrides=[*sets, f"run.seed={seed}"])
        tag = f"{args.dataset}{'-' + str(args.rows) if args.rows else ''}-seed{seed}"
        start = time.perf_counter()
        result = run(cfg, Path(args.out) / tag, overwrite=False, progress=lambda m: print(m, file=sys.stderr),
                     extra_stages=not args.no_extras)
        manifest = json.loads((result.run_dir / "manifest.json").read_text())
        rows.append({"seed": seed, "metrics": result.metrics, "stages": manifest["stages"],
                     "wall": time.perf_counter() - start})
    print(f"\n### `{' '.join(sys.argv)}`\n\nMachine: {machine()}\n")
    present = [m for m in MODELS if m in rows[0]["metrics"]["test"]]
    print("| seed | " + " | ".join(f"{m} AUC / GAUC" for m in present) + " |")
    print("|---" * (1 + sum(m in rows[0]["metrics"]["test"] for m in MODELS)) + "|")
    for r in rows:
        t = r["metrics"]["test"]
        print(f"| {r['seed']} | " + " | ".join(f"{t[m]['auc']:.4f} / {t[m]['gauc']:.4f}" for m in MODELS if m in t) + " |")
    diffs = [r["metrics"]["test"]["student"]["gauc"] - r["metrics"]["test"]["student_hard"]["gauc"] for r in rows]
    m, lo, hi = mean_ci(diffs)
    print(f"\nPaired test GAUC difference, distilled − hard-only (same seed), over {len(rows)} seeds: "
          f"mean {m:+.4f}, 95% t-interval [{lo:+.4f}, {hi:+.4f}]; per seed: {', '.join(f'{d:+.4f}' for d in diffs)}")
    teacher_auc = [r["metrics"]["test"]["teacher"]["auc"] for r in rows]
    gbdt_auc = [r["metrics"]["test"]["gbdt"]["auc"] for r in rows]
    print(f"Teacher test AUC mean {sum(teacher_auc)/len(rows):.4f} (min {min(teacher_auc):.4f}); "
          f"gbdt mean {sum(gbdt_auc)/len(rows):.4f} (max {max(gbdt_auc):.4f})")
    for model in ("teacher", "student", "student_hard"):
        rps = [r["stages"][model]["rows_per_second"] for r in rows]
        best = [r["stages"][model]["seconds_to_best"] for r in rows]
        print(f"{model}: training throughput {sum(rps)/len(rps):,.0f} rows/s (min {min(rps):,.0f}); "
              f"time to best valid GAUC {sum(best)/len(best):.1f} s (epoch {rows[0]['stages'][model]['best_epoch']})")
    walls = ", ".join(f"{r['wall']:.0f}s" for r in rows)
    print(f"Whole `distill run` wall time per seed: {walls}")


if __name__ == "__main__":
    main()
