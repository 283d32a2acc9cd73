"""Does distillation pay? Teacher, distilled student, hard-label control and GBDT on paired seeds.

Usage:
    python benchmarks/bench_distill.py --datasets synthetic movielens-100k table --seeds 0 1 2 3 4 \
        --data-dir ../shared/data/ml-100k --out benchmarks/out/distill
    python benchmarks/bench_distill.py --datasets movielens-100k --seeds 0 1 2 --data-dir ... \
        --variant "m8:distill.sampled=8" --variant "pointwise:distill.sampled_loss=pointwise"

For every data set and seed it runs the library calls `distill run` is made of (prepare, encode,
the alpha = 0 control, train_teacher, blend_teacher (the heavy model blended with the control at the
``teacher.blend`` weight chosen on validation: the teacher that is distilled; the heavy model alone
is reported as ``heavy``), distill with the configured defaults, the LightGBM reference)
and measures on the test split: GAUC of every model; the paired distilled-minus-hard gain and its
95% t-interval over seeds; the share of the hard-to-teacher gap closed (mean gain / mean gap) and
the 95% interval of ``distilled - (hard + teacher) / 2`` (above zero: more than half the gap
closed); agreement with the teacher on production-like candidate sets (each test user's exposures
plus 1,000 catalogue items drawn by popularity; Recall@10-in-100 and Kendall's tau), and with the
oracle on synthetic data; training time of each model and rows/s for exposures and sampled rows.

``--variant name:section.key=value,...`` trains further students (distill.* and student.* keys) on
the same teacher and reports their VALIDATION GAUC and validation agreement too: the figures that
choose defaults (test figures are printed beside them, never used to choose).
``table`` is the synthetic generator written as files and read through ``data.source = "table"``
with examples/table.toml (fewer features than the built-in set).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, mean_ci, read_results, run_all  # noqa: E402

from coarserank.config import RunConfig, config_to_dict, load_config  # noqa: E402
from coarserank.data.dataset import PreparedData, encode_splits  # noqa: E402
from coarserank.data.pairs import ROW_ITEM  # noqa: E402
from coarserank.data.prepare import prepare  # noqa: E402
from coarserank.data.sources import load_source  # noqa: E402
from coarserank.data.synthetic import oracle_probability  # noqa: E402
from coarserank.distill.api import Trained, blend_teacher, distill, score_split, train_teacher  # noqa: E402
from coarserank.distill.candidates import CandidateSets, agreement, candidate_sets, score_candidates  # noqa: E402
from coarserank.distill.gbdt import GbdtReference  # noqa: E402
from coarserank.distill.train import FitResult  # noqa: E402
from coarserank.ranking_eval.metrics import gauc  # noqa: E402
from coarserank.teacher import build_teacher  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _config(dataset: str, args: argparse.Namespace, seed: int, extra: list[str] | None = None) -> RunConfig:
    sets = [*args.sets, f"run.seed={seed}", *(extra or [])]
    if dataset == "synthetic":
        return load_config(overrides=sets)
    if dataset == "movielens-100k":
        return load_config(preset="movielens-100k", overrides=[f'data.path="{args.data_dir}"', *sets])
    if dataset == "table":
        where = Path(args.out) / f"table-data-seed{seed}"
        if not (where / "exposures.parquet").exists():
            subprocess.run([sys.executable, str(ROOT / "examples" / "make_table_example.py"), "--out", str(where),
                            "--rows", str(args.table_rows), "--seed", str(seed)], check=True)
        return load_config(ROOT / "examples" / "table.toml", overrides=[f'data.path="{where}"', *sets])
    raise SystemExit(f"unknown data set {dataset!r}")


def _oracle(cfg: RunConfig, data: PreparedData, sets: CandidateSets) -> np.ndarray | None:
    if cfg.data.source != "synthetic":
        return None
    frame = data.test.frame
    item_ids = data.pairs.item_ids_.to_numpy()[np.where(sets.exposed, data.test.inputs[ROW_ITEM][sets.row], sets.item)]
    return oracle_probability(cfg.synthetic, cfg.run.seed, frame["user_id"].to_numpy()[sets.row], item_ids,
                              frame["device"].to_numpy()[sets.row], frame["hour"].to_numpy()[sets.row])


def _teacher(cfg: RunConfig, data: PreparedData, seed: int, cache: str) -> Trained:
    """The teacher for this config and seed, trained or (with ``--teacher-cache``) read back."""
    if not cache:
        return train_teacher(data.train, data.valid, data.schema, cfg.teacher, seed=seed)
    key = hashlib.sha256(json.dumps([config_to_dict(cfg.data), config_to_dict(cfg.synthetic),
                                     config_to_dict(cfg.teacher), seed], sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache) / f"teacher-{key}.pt"
    history_path = path.with_suffix(".json")
    if path.exists():
        model = build_teacher(data.schema, cfg.teacher)
        model.load_state_dict(torch.load(path, weights_only=True))
        facts = json.loads(history_path.read_text())
        return Trained(model.eval(), FitResult(facts["best_epoch"], facts["best_valid_gauc"], facts["train_seconds"],
                                               facts["rows_per_second"], facts["seconds_to_best"]))
    trained = train_teacher(data.train, data.valid, data.schema, cfg.teacher, seed=seed)
    Path(cache).mkdir(parents=True, exist_ok=True)
    torch.save(trained.model.state_dict(), path)
    h = trained.history
    history_path.write_text(json.dumps({"best_epoch": h.best_epoch, "best_valid_gauc": h.best_valid_gauc,
                                        "train_seconds": h.train_seconds, "rows_per_second": h.rows_per_second,
                                        "seconds_to_best": h.seconds_to_best}))
    return trained


def _variant(spec: str, dataset: str, args: argparse.Namespace, seed: int) -> tuple[str, RunConfig]:
    """``name:section.key=value,...`` -> (name, the run's config with those overrides, validated)."""
    name, _, body = spec.partition(":")
    return name, _config(dataset, args, seed, [item for item in body.split(",") if item])


def run_seed(dataset: str, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    cfg = _config(dataset, args, seed)
    start = time.perf_counter()
    data = encode_splits(prepare(load_source(cfg.data, cfg.synthetic, seed), cfg.data), cfg.data)
    prep_seconds = time.perf_counter() - start
    sets = {s: candidate_sets(data.splits[s], data.pairs, users=args.users, sampled=1000, seed=seed)
            for s in ("valid", "test")}
    hard_cfg = replace(cfg, distill=replace(cfg.distill, alpha=0.0))
    start = time.perf_counter()
    hard = distill(None, data.train, data.valid, data.schema, hard_cfg.student, hard_cfg.distill, seed=seed)
    hard_seconds = time.perf_counter() - start
    start = time.perf_counter()
    heavy = _teacher(cfg, data, seed, args.teacher_cache)
    teacher_seconds = time.perf_counter() - start
    # the teacher that is distilled, as `distill run` builds it: blended with the control (teacher.blend)
    blended = blend_teacher(heavy.model, hard.model, data.valid, cfg.teacher.blend)
    teacher = replace(heavy, model=blended.model)
    teacher_scores = {s: score_candidates(teacher.model, data.splits[s], data.pairs, sets[s]) for s in sets}
    oracle = _oracle(cfg, data, sets["test"])
    train_logits = score_split(teacher.model, data.train)
    rows = []

    def record(name: str, model: torch.nn.Module, seconds: float, extra: dict[str, Any]) -> None:
        out: dict[str, Any] = {"dataset": dataset, "seed": seed, "model": name, "train_seconds": round(seconds, 2),
                               **extra}
        for split in ("valid", "test"):
            part = data.splits[split]
            out[f"{split}_gauc"] = gauc(part.label, score_split(model, part), part.group).value
            scores = score_candidates(model, part, data.pairs, sets[split])
            for key, value in agreement(teacher_scores[split], scores, sets[split]).items():
                out[f"{split}_{key}"] = value
            if split == "test" and oracle is not None:
                out.update({f"oracle_{k}": v for k, v in agreement(oracle, scores, sets[split]).items()})
        rows.append(out)
        print(json.dumps(out), file=sys.stderr, flush=True)

    record("teacher", teacher.model, teacher.history.train_seconds or teacher_seconds,
           {"prep_seconds": round(prep_seconds, 2), "rows_per_second": teacher.history.rows_per_second,
            "best_epoch": teacher.history.best_epoch, "blend_weight": blended.weight})
    record("heavy", heavy.model, teacher.history.train_seconds or teacher_seconds, {})

    def record_student(name: str, trained: Trained, seconds: float) -> None:
        h = trained.history
        record(name, trained.model, seconds, {
            "epochs": len(h.history), "seconds_per_epoch": h.train_seconds / len(h.history),
            "rows_per_second": h.rows_per_second, "sampled_rows_per_second": trained.sampled_rows_per_second})

    students = [("distilled", cfg), *(_variant(spec, dataset, args, seed) for spec in args.variant)]
    for name, scfg in students:
        start = time.perf_counter()
        trained = distill(teacher.model if scfg.distill.alpha > 0 else None, data.train, data.valid, data.schema,
                          scfg.student, scfg.distill, train_logits=train_logits, pairs=data.pairs, seed=seed)
        record_student(name, trained, time.perf_counter() - start)
        if name == "distilled":
            record_student("hard", hard, hard_seconds)
    start = time.perf_counter()
    gbdt = GbdtReference(data.schema, cfg.gbdt, seed, cfg.run.threads).fit(
        data.train.fields(data.schema), data.train.label, data.valid.fields(data.schema), data.valid.label)
    gbdt_seconds = time.perf_counter() - start
    rows.append({"dataset": dataset, "seed": seed, "model": "gbdt", "train_seconds": round(gbdt_seconds, 2),
                 **{f"{s}_gauc": gauc(data.splits[s].label, gbdt.predict_logit(data.splits[s].fields(data.schema)),
                                      data.splits[s].group).value for s in ("valid", "test")}})
    return rows


def _fmt(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}f}"


def summarise(rows: list[dict[str, Any]], datasets: list[str]) -> str:
    lines = []
    for dataset in datasets:
        mine = [r for r in rows if r["dataset"] == dataset]
        seeds = sorted({r["seed"] for r in mine})
        by = {(r["model"], r["seed"]): r for r in mine}
        models = list(dict.fromkeys(r["model"] for r in mine))

        def col(model: str, key: str) -> np.ndarray:
            return np.array([by.get((model, s), {}).get(key, np.nan) for s in seeds], dtype=float)

        lines += [f"\n#### {dataset} ({len(seeds)} seeds: {seeds})\n",
                  "| model | valid GAUC | test GAUC | test Recall@10-in-100 vs teacher | test Kendall tau vs teacher "
                  "| vs oracle: Recall@10-in-100 / tau | train s | s/epoch | rows/s (exposures / sampled) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for m in models:
            rec, tau = col(m, "test_recall@10_in_100"), col(m, "test_kendall_tau")
            orc = col(m, "oracle_recall@10_in_100")
            oracle = (f"{_fmt(np.nanmean(orc), 3)} / {_fmt(np.nanmean(col(m, 'oracle_kendall_tau')), 3)}"
                      if not np.isnan(orc).all() else "–")
            speed = (f"{np.nanmean(col(m, 'rows_per_second')):,.0f} / {np.nanmean(col(m, 'sampled_rows_per_second')):,.0f}"
                     if m not in ("gbdt",) else "–")
            lines.append(f"| {m} | {_fmt(np.nanmean(col(m, 'valid_gauc')))} | {_fmt(np.nanmean(col(m, 'test_gauc')))} | "
                         f"{_fmt(np.nanmean(rec), 3) if m != 'gbdt' else '–'} | {_fmt(np.nanmean(tau), 3) if m != 'gbdt' else '–'} | "
                         f"{oracle} | {np.nanmean(col(m, 'train_seconds')):.1f} | "
                         f"{np.nanmean(col(m, 'seconds_per_epoch')):.2f} | {speed} |")
        weights = col("teacher", "blend_weight")
        if not np.isnan(weights).all():
            lines.append(f"\n- teacher = heavy model blended with the hard-label two-tower at the validation-chosen "
                         f"weight (teacher.blend): per seed {', '.join(f'{w:g}' for w in weights)}; "
                         "`heavy` is the heavy model alone")
        t, d, h = col("teacher", "test_gauc"), col("distilled", "test_gauc"), col("hard", "test_gauc")
        gain, low, high = mean_ci(d - h)
        half, half_low, half_high = mean_ci(d - (h + t) / 2)
        lines.append(f"\n- paired gain distilled − hard (test GAUC): **{gain:+.4f}**, 95% interval "
                     f"[{low:+.4f}, {high:+.4f}]; per seed {', '.join(f'{x:+.4f}' for x in d - h)}")
        lines.append(f"- share of the hard→teacher gap closed: **{gain / np.mean(t - h):.0%}** (mean gap "
                     f"{np.mean(t - h):.4f}); distilled − (hard + teacher)/2: {half:+.4f} [{half_low:+.4f}, {half_high:+.4f}]")
        for m in models:
            if m in ("teacher", "heavy", "hard", "gbdt"):
                continue
            for split in ("valid", "test"):
                g, lo, hi = mean_ci(col(m, f"{split}_gauc") - col("hard", f"{split}_gauc"))
                r, rlo, rhi = mean_ci(col(m, f"{split}_recall@10_in_100") - col("hard", f"{split}_recall@10_in_100"))
                lines.append(f"- {m} − hard, {split}: GAUC {g:+.4f} [{lo:+.4f}, {hi:+.4f}], Recall@10-in-100 "
                             f"{r:+.4f} [{rlo:+.4f}, {rhi:+.4f}]")
        tg, tlo, thi = mean_ci(t - col("gbdt", "test_gauc"))
        lines.append(f"- teacher − gbdt (test GAUC): {tg:+.4f} [{tlo:+.4f}, {thi:+.4f}]")
        if not np.isnan(col("heavy", "test_gauc")).all():
            hg, hlo, hhi = mean_ci(col("heavy", "test_gauc") - col("gbdt", "test_gauc"))
            lines.append(f"- heavy − gbdt (test GAUC): {hg:+.4f} [{hlo:+.4f}, {hhi:+.4f}]")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["synthetic", "movielens-100k", "table"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--data-dir", default="../shared/data/ml-100k")
    ap.add_argument("--out", default="benchmarks/out/distill")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for every run")
    ap.add_argument("--variant", action="append", default=[], help="name:section.key=value,... extra students")
    ap.add_argument("--users", type=int, default=300, help="candidate sets per split")
    ap.add_argument("--table-rows", type=int, default=50_000)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--teacher-cache", default="", help="directory to keep teachers in (reused across runs)")
    ap.add_argument("--tables-from", nargs="+", type=Path, default=[],
                    help="only print the tables of these results.jsonl files (the last row per data set, seed "
                         "and model wins)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tables_from:
        rows = read_results(args.tables_from)
        args.datasets = [d for d in args.datasets if any(r["dataset"] == d for r in rows)]
    else:
        rows = run_all(args.datasets, args.seeds, lambda dataset, seed: run_seed(dataset, seed, args), args.out)
    print(f"\n### `{' '.join(sys.argv)}`\n\nMachine: {machine()}")
    print(summarise(rows, args.datasets))


if __name__ == "__main__":
    main()
