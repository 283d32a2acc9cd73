"""What entire-space distillation costs per epoch against the hard-label student (issue 10, "Cost").

Usage:
    python benchmarks/bench_distill_cost.py --datasets movielens-100k synthetic \
        --data-dir ../shared/data/ml-100k --epochs 3 --repeats 5 --conditions quiet busy

For each data set one teacher is trained (its time is not part of the figure), then, in one
process and one condition at a time, the default student is trained for exactly ``--epochs``
epochs twice: hard labels only (``alpha = 0``: today's student) and with the default distillation
(soft labels on the exposures plus ``distill.sampled`` teacher-scored items per exposure). The
figure is the ratio of seconds per epoch (validation scoring included, as in a run), with the
exposures and the sampled rows per second reported separately. ``distilled_blend`` distils from the
teacher blended with the hard-label student (``teacher.blend`` when validation picks a weight above
0: every teacher call scores both members), the costlier case. ``busy`` starts one
``while True: pass`` process beside the measurement, as a shared server would have. The three
students are trained in turn ``--repeats`` times: the ratio reported is the median of the repeats'
own ratios (each from students trained back to back), with their range, because seconds per epoch
on a shared 2-core machine drift by 15% between minutes. The bar: at most 3x per epoch on 2 cores.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

from coarserank.config import RunConfig, load_config  # noqa: E402
from coarserank.data.dataset import encode_splits  # noqa: E402
from coarserank.data.prepare import prepare  # noqa: E402
from coarserank.data.sources import load_source  # noqa: E402
from coarserank.distill.api import distill, score_split, train_teacher  # noqa: E402
from coarserank.teacher.blend import TeacherBlend  # noqa: E402
from coarserank.threads import apply_threads, explain_threads  # noqa: E402

BAR = 3.0


def _config(dataset: str, args: argparse.Namespace) -> RunConfig:
    sets = [*args.sets, f"student.epochs={args.epochs}", f"student.patience={args.epochs + 1}"]
    if dataset == "movielens-100k":
        return load_config(preset="movielens-100k", overrides=[f'data.path="{args.data_dir}"', *sets])
    return load_config(overrides=sets)


def _measure(dataset: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    cfg = _config(dataset, args)
    data = encode_splits(prepare(load_source(cfg.data, cfg.synthetic, 0), cfg.data), cfg.data)
    teacher = train_teacher(data.train, data.valid, data.schema, cfg.teacher).model
    logits = score_split(teacher, data.train)
    rows = []
    for condition in args.conditions:
        neighbour = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if condition == "busy" else None
        try:
            time.sleep(1.0 if neighbour else 0.0)
            threads, _ = explain_threads(args.threads)  # chosen as a run starting now would choose
            apply_threads(threads)
            for repeat in range(args.repeats):  # the three students in turn, so drift touches each alike
                control = None
                for name, dcfg in (("hard", replace(cfg.distill, alpha=0.0)), ("distilled", cfg.distill),
                                   ("distilled_blend", cfg.distill)):
                    # distilled_blend: the teacher blended with the control (any weight > 0 scores both members)
                    source = TeacherBlend(teacher, control, 0.5) if name == "distilled_blend" else teacher
                    trained = distill(source if dcfg.alpha > 0 else None, data.train, data.valid, data.schema,
                                      cfg.student, dcfg, train_logits=logits, pairs=data.pairs)
                    control = trained.model.eval() if name == "hard" else control
                    h = trained.history
                    rows.append({"dataset": dataset, "condition": condition, "model": name, "repeat": repeat,
                                 "epochs": len(h.history), "seconds_per_epoch": h.train_seconds / len(h.history),
                                 "rows_per_second": h.rows_per_second,
                                 "sampled_rows_per_second": trained.sampled_rows_per_second,
                                 "train_rows": len(data.train.label), "sampled": dcfg.sampled if dcfg.alpha else 0,
                                 "threads": threads})
                    print(rows[-1], file=sys.stderr, flush=True)
        finally:
            if neighbour is not None:
                neighbour.kill()
                neighbour.wait()
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """One line per data set, condition and distilled variant: medians over the repeats; the ratio is
    the median of each repeat's own ratio (its students trained back to back), with its range."""
    out = ["| data | condition | threads | repeats | hard s/epoch | distilled s/epoch | ratio (median, range) | "
           "exposures/s (hard / distilled) | sampled rows/s | bar (<= 3x) |", "|---|---|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["dataset"], r["condition"]) for r in rows}, key=lambda k: (k[0], k[1] != "quiet"))
    for dataset, condition in keys:
        mine = [r for r in rows if r["dataset"] == dataset and r["condition"] == condition]
        by = {(r["model"], r["repeat"]): r for r in mine}
        repeats = sorted({r["repeat"] for r in mine})

        def median(model: str, key: str) -> float:
            return float(np.median([by[model, i][key] for i in repeats]))

        for model in ("distilled", "distilled_blend"):
            ratios = [by[model, i]["seconds_per_epoch"] / by["hard", i]["seconds_per_epoch"] for i in repeats]
            ratio = float(np.median(ratios))
            label = condition if model == "distilled" else f"{condition}, blended teacher"
            out.append(f"| {dataset} | {label} | {by[model, repeats[0]]['threads']} | {len(repeats)} | "
                       f"{median('hard', 'seconds_per_epoch'):.2f} | {median(model, 'seconds_per_epoch'):.2f} | "
                       f"{ratio:.2f}x ({min(ratios):.2f}–{max(ratios):.2f}) | {median('hard', 'rows_per_second'):,.0f} / "
                       f"{median(model, 'rows_per_second'):,.0f} | {median(model, 'sampled_rows_per_second'):,.0f} "
                       f"(M = {by[model, repeats[0]]['sampled']}) | {'met' if ratio <= BAR else 'missed'} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["movielens-100k", "synthetic"])
    ap.add_argument("--data-dir", default="../shared/data/ml-100k")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="hard / distilled / blended trained in turn this many times")
    ap.add_argument("--conditions", nargs="+", default=["quiet", "busy"], choices=["quiet", "busy"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: the run's default policy)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override (repeatable)")
    args = ap.parse_args()
    rows = [r for dataset in args.datasets for r in _measure(dataset, args)]
    print(f"\n### `{' '.join(['python', 'benchmarks/bench_distill_cost.py', *sys.argv[1:]])}`\n")
    print(f"Machine: {machine()}; run.threads = {args.threads} (chosen per condition as `distill run` chooses)\n")
    print(table(rows))


if __name__ == "__main__":
    main()
