"""The COLD student's MLP width: validation and test GAUC, and served latency against the teacher.

Usage:
    python benchmarks/bench_cold_width.py --datasets synthetic --seeds 0 1 2 3 4 \
        --cold-features user_id item_id topic_match region_x_category device_x_category user_category_rate \
        --widths 128,64 64,32 --out benchmarks/out/cold-width
    # the same graphs timed again, nothing trained (a quiet machine, then a busy neighbour):
    python benchmarks/bench_cold_width.py ... --out benchmarks/out/cold-width --retime quiet

For every data set and seed it prepares the data, trains the hard-label two-tower and the teacher
as ``distill run`` does (DeepFM blended with that two-tower at the weight validation picks), then
distils one COLD student per ``--widths`` entry (``cold.hidden``; the other sizes and the schedule
from ``[cold]``, as ``distill sweep --write-config`` writes them) and measures validation GAUC (what a
choice between widths may look at), test GAUC, the share of the hard two-tower→teacher test gap
closed, export parity and ``distill bench``'s latency for 1,000 candidates (p50/p99 of the COLD
ranker and of ``teacher.onnx`` on the same requests, one intra-op thread). The summary gives paired
95% intervals of each width minus the first over seeds.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_families import Serving, _config, _student  # noqa: E402
from common import mean_ci, read_results, run_all  # noqa: E402

from coarserank.data.dataset import encode_splits  # noqa: E402
from coarserank.data.prepare import prepare  # noqa: E402
from coarserank.data.sources import load_source  # noqa: E402
from coarserank.distill.api import blend_teacher, distill, score_split, train_teacher  # noqa: E402
from coarserank.ranking_eval.metrics import gauc  # noqa: E402


def _width(text: str) -> tuple[int, ...]:
    return tuple(int(w) for w in text.split(","))


def run_seed(dataset: str, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    cfg = _config(dataset, args, seed)
    data = encode_splits(prepare(load_source(cfg.data, cfg.synthetic, seed), cfg.data), cfg.data)
    control = distill(None, data.train, data.valid, data.schema, _student(cfg, "two_tower", [], []),
                      replace(cfg.distill, alpha=0.0), pairs=data.pairs, seed=seed).model
    heavy = train_teacher(data.train, data.valid, data.schema, cfg.teacher, seed=seed).model
    blended = blend_teacher(heavy, control, data.valid, cfg.teacher.blend)
    teacher = blended.model
    train_logits = score_split(teacher, data.train)
    serving = Serving(cfg, data, teacher, Path(args.out) / f"{dataset}-seed{seed}", args)

    def both(model: Any) -> tuple[float, float]:
        return (gauc(data.valid.label, score_split(model, data.valid), data.valid.group).value,
                gauc(data.test.label, score_split(model, data.test), data.test.group).value)

    (tv, tt), (cv, ct) = both(teacher), both(control)
    rows = []
    for text in args.widths:
        student_cfg = replace(_student(cfg, "cold", args.cold_features, data.schema.names), hidden=_width(text))
        model = distill(teacher, data.train, data.valid, data.schema, student_cfg, cfg.distill,
                        train_logits=train_logits, pairs=data.pairs, seed=seed).model
        valid, test = both(model)
        row = {"dataset": dataset, "seed": seed, "width": text, "valid_gauc": valid, "test_gauc": test,
               "teacher_valid": tv, "teacher_test": tt, "blend_weight": blended.weight,
               "control_valid": cv, "control_test": ct,
               **serving.measure(f"cold-{text.replace(',', 'x')}", model, args)}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def retime_seed(dataset: str, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Time again the graphs an earlier run of this benchmark wrote (no training): the same data,
    requests and ``distill bench`` call, e.g. on a quiet machine or beside a busy neighbour."""
    cfg = _config(dataset, args, seed)
    data = encode_splits(prepare(load_source(cfg.data, cfg.synthetic, seed), cfg.data), cfg.data)
    where = Path(args.out) / f"{dataset}-seed{seed}"
    serving = Serving(cfg, data, where / "teacher.onnx", where, args)
    earlier = {(r["dataset"], r["seed"], r["width"]): r for r in read_results([Path(args.out) / "results.jsonl"])}
    rows = []
    for text in args.widths:
        ranker = serving.cold_ranker(where / f"cold-{text.replace(',', 'x')}" / "student.onnx")
        row = {**earlier[(dataset, seed, text)], **serving.time(ranker, args), "timing": args.retime}
        print(json.dumps(row), file=sys.stderr, flush=True)
        rows.append(row)
    return rows


def _summary(rows: list[dict[str, Any]], widths: list[str]) -> list[str]:
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset]
        seeds = sorted({r["seed"] for r in mine})
        by = {(r["width"], r["seed"]): r for r in mine}

        def col(width: str, key: str) -> np.ndarray:
            return np.array([by[(width, s)][key] for s in seeds], dtype=float)

        base = widths[0]
        t, c = col(base, "teacher_test"), col(base, "control_test")
        lines += [f"\n#### {dataset} ({len(seeds)} seeds {seeds}); teacher test GAUC {t.mean():.4f}, "
                  f"hard two-tower {c.mean():.4f}\n",
                  "| COLD MLP | valid GAUC | test GAUC | gap closed | p50 / p99 ms (1,000 cand.) | teacher p50 ms "
                  "| teacher / COLD p50 | parity |", "|---|---|---|---|---|---|---|---|"]
        for w in widths:
            closed = (col(w, "test_gauc") - c).mean() / (t - c).mean()
            ratio = col(w, "teacher_p50_ms") / col(w, "p50_ms")
            lines.append(f"| [{w}] | {col(w, 'valid_gauc').mean():.4f} | {col(w, 'test_gauc').mean():.4f} | "
                         f"{closed:.0%} | {col(w, 'p50_ms').mean():.3f} / {col(w, 'p99_ms').mean():.3f} | "
                         f"{col(w, 'teacher_p50_ms').mean():.2f} | {ratio.mean():.1f}x (min {ratio.min():.1f}x) | "
                         f"{col(w, 'parity').max():.1e} |")
        for w in widths[1:]:
            v, vlo, vhi = mean_ci(col(w, "valid_gauc") - col(base, "valid_gauc"))
            g, glo, ghi = mean_ci(col(w, "test_gauc") - col(base, "test_gauc"))
            lines.append(f"- [{w}] − [{base}]: valid GAUC {v:+.4f} [{vlo:+.4f}, {vhi:+.4f}], "
                         f"test GAUC {g:+.4f} [{glo:+.4f}, {ghi:+.4f}]")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["synthetic"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--widths", nargs="+", default=["128,64", "64,32"], help="cold.hidden per student, comma-separated")
    ap.add_argument("--cold-features", nargs="*", default=[], help="the COLD student's fields (default: all)")
    ap.add_argument("--data-dir", default="../shared/data/ml-100k")
    ap.add_argument("--out", default="benchmarks/out/cold-width")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for every run")
    ap.add_argument("--bench-users", type=int, default=20, help="requests cycled through when timing")
    ap.add_argument("--repeats", type=int, default=200, help="timed calls per latency figure")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--retime", default="", metavar="LABEL",
                    help="time again the graphs of an earlier run in --out (no training); rows go to "
                         "--out/retime-LABEL/results.jsonl")
    ap.add_argument("--tables-from", nargs="+", type=Path, default=[],
                    help="print the summary of these results.jsonl files instead of running")
    args = ap.parse_args()
    if args.tables_from:
        rows = read_results(args.tables_from)
    elif args.retime:
        rows = run_all(args.datasets, args.seeds, lambda d, s: retime_seed(d, s, args),
                       Path(args.out) / f"retime-{args.retime}")
    else:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        rows = run_all(args.datasets, args.seeds, lambda d, s: run_seed(d, s, args), args.out)
    print("\n".join(_summary(rows, args.widths)))


if __name__ == "__main__":
    main()
