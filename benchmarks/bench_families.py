"""Student families side by side: quality, agreement with the teacher, size and serving latency.

Usage (full size, on a quiet machine):
    python benchmarks/bench_families.py --datasets synthetic movielens-100k --seeds 0 1 2 3 4 \
        --data-dir ../shared/data/ml-100k --out benchmarks/out/families
Tiny smoke run (seconds per family):
    python benchmarks/bench_families.py --datasets synthetic --seeds 0 1 --repeats 5 --users 20 \
        --set synthetic.rows=3000 --set teacher.epochs=1 --set student.epochs=1 --set cold.epochs=1

For every data set and seed it prepares the data, trains the hard-label two-tower and one heavy
teacher and blends them as ``distill run`` does (``teacher.blend``, weight chosen on validation; the
two-tower is also that family's control), then for every family of
``student.family`` (``two_tower``, ``senet``, ``shortcut``, ``parallel``, ``dat``, ``cold``) it
distils a student (the configured ``[distill]`` loss) and trains the hard-label control of the same
family, and measures:

- test GAUC of both (``ranking_eval.gauc``);
- Recall@10-in-100 against the teacher on candidate sets of each selected test user's exposures plus
  1,000 catalogue items drawn by popularity (:mod:`coarserank.distill.candidates`);
- parameters, and the served vector size per side (``cold``: none, it scores rows);
- export parity: max |ONNX Runtime - PyTorch| of every exported graph on up to 2,000 raw test rows,
  through :func:`coarserank.serving.onnx_export.export_model` (what every run ships);
- latency for 1,000 candidates (p50/p99, 1 intra-op thread) through the function ``distill bench``
  calls (:func:`coarserank.serving.ranker.bench_latency`) on the same requests, with the teacher
  timed beside it: towers = ONNX user tower + KV lookup (items.kv written from the exported item
  tower) + one matrix-vector product; cold = one ONNX call on the candidates' raw rows.

Summaries: means per family, paired 95% t-intervals over seeds of each family minus the plain two-tower
(test GAUC, Recall@10-in-100), the share of the two-tower-to-teacher gap each family closes (the
COLD student also: the share of the hard-only two-tower's gap to the teacher), and p50 ratios
(family / two-tower; teacher / cold). ``--tables-from`` prints the tables of results files written
by runs in parallel (e.g. seeds split over two processes). The COLD student reads ``--cold-features`` (default:
every field) with the sizes and schedule of ``[cold]``, as ``distill sweep --write-config`` writes it.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine, mean_ci, read_results, run_all  # noqa: E402

from coarserank.cold.cost import count_params  # noqa: E402
from coarserank.config import ColdStudentOptions, RunConfig, StudentConfig, load_config  # noqa: E402
from coarserank.data.dataset import PreparedData, encode_splits  # noqa: E402
from coarserank.data.prepare import base_rate, prepare  # noqa: E402
from coarserank.data.sources import load_source  # noqa: E402
from coarserank.distill.api import blend_teacher, distill, score_split, train_teacher  # noqa: E402
from coarserank.distill.candidates import agreement, candidate_sets, score_candidates  # noqa: E402
from coarserank.errors import DataError  # noqa: E402
from coarserank.pipeline.export_stage import bench_requests  # noqa: E402
from coarserank.ranking_eval.metrics import gauc  # noqa: E402
from coarserank.serving.catalogue import build_catalogue, catalogue_ids, encode_items  # noqa: E402
from coarserank.serving.cold_ranker import ColdRanker, HistoryLookup  # noqa: E402
from coarserank.serving.kv_file import FileKVStore, write_kv_file  # noqa: E402
from coarserank.serving.onnx_export import (  # noqa: E402
    export_item_tower,
    export_model,
    export_teacher,
    export_user_tower,
    onnx_parity,
    read_metadata,
)
from coarserank.serving.ranker import (  # noqa: E402
    CoarseRanker,
    TeacherScorer,
    UserFeeds,
    bench_latency,
    onnx_session,
)
from coarserank.student import has_towers, served_dim  # noqa: E402

FAMILIES = ("two_tower", "senet", "shortcut", "parallel", "dat", "cold")
CANDIDATES = 1000
PARITY_ROWS = 2000


def _config(dataset: str, args: argparse.Namespace, seed: int) -> RunConfig:
    sets = [*args.sets, f"run.seed={seed}"]
    if dataset == "synthetic":
        return load_config(overrides=sets)
    if dataset == "movielens-100k":
        return load_config(preset="movielens-100k", overrides=[f'data.path="{args.data_dir}"', *sets])
    raise SystemExit(f"unknown data set {dataset!r}")


def _student(cfg: RunConfig, family: str, cold_features: list[str], schema_names: list[str]) -> StudentConfig:
    if family != "cold":
        return replace(cfg.student, family=family)
    c = cfg.cold
    features = tuple(cold_features or schema_names)
    return replace(cfg.student, family="cold", cold=ColdStudentOptions(features=features), embed_dim=c.embed_dim,
                   hidden=c.hidden, dropout=0.0, lr=c.lr, weight_decay=0.0, batch_size=c.batch_size,
                   epochs=c.epochs, patience=c.patience)


class Serving:
    """What the latency and parity figures need for one seed: raw rows, the catalogue, requests,
    the exported teacher."""

    def __init__(self, cfg: RunConfig, data: PreparedData, teacher: torch.nn.Module | Path, out: Path,
                 args: argparse.Namespace) -> None:
        self.cfg, self.data, self.out = cfg, data, out
        test = data.test.frame
        self.rows = (test if test.height <= PARITY_ROWS
                     else test.sample(PARITY_ROWS, seed=cfg.run.seed).sort("_row"))
        self.catalogue = build_catalogue(data.frame, cfg.data)
        self.rate = base_rate(data.frame)
        ctx = SimpleNamespace(cfg=cfg, frame=data.frame, test=test, encoder=data.encoder)  # what bench_requests reads
        self.requests = bench_requests(ctx, self.catalogue, [CANDIDATES], args.bench_users, cfg.run.seed)
        if isinstance(teacher, Path):  # a teacher.onnx written by an earlier run of the benchmark: timing only
            self.teacher, self.teacher_parity = TeacherScorer(onnx_session(teacher)), float("nan")
            return
        path = export_teacher(teacher, data.encoder, out / "teacher.onnx", run_hash="bench",
                              history_base_rate=self.rate)
        self.teacher = TeacherScorer(onnx_session(path))
        self.teacher_parity = onnx_parity(teacher, data.encoder, path, self.rows, "teacher")

    def cold_ranker(self, path: Path) -> ColdRanker:
        """The COLD ranker ``distill rank`` builds for the exported student at ``path``."""
        fields = read_metadata(path)["fields"].split(",")
        names = [h.name for h in self.cfg.data.history_crosses if h.name in fields]
        labelled = self.data.frame.filter(pl.col("_label").is_not_null())
        lookups = {n: HistoryLookup.build(self.cfg.data, n, labelled, self.catalogue, self.rate) for n in names}
        return ColdRanker(onnx_session(path), self.data.encoder, self.catalogue, fields, lookups)

    def time(self, ranker: Any, args: argparse.Namespace) -> dict[str, Any]:
        """``distill bench``'s latency for 1,000 candidates of ``ranker`` and the teacher, side by side."""
        timed = bench_latency(ranker, self.teacher, self.requests, [CANDIDATES], repeats=args.repeats,
                              warmup=max(1, args.repeats // 10))["candidates"][str(CANDIDATES)]
        return {"p50_ms": timed["student"]["p50_ms"], "p99_ms": timed["student"]["p99_ms"],
                "teacher_p50_ms": timed["teacher"]["p50_ms"], "teacher_p99_ms": timed["teacher"]["p99_ms"]}

    def measure(self, name: str, model: torch.nn.Module, args: argparse.Namespace) -> dict[str, Any]:
        """Export ``model``, check parity on raw rows, and time it the way ``distill bench`` does."""
        enc, where = self.data.encoder, self.out / name
        where.mkdir(parents=True, exist_ok=True)
        model = model.cpu().eval()
        if has_towers(model):
            user = export_user_tower(model, enc, where / "user_tower.onnx", run_hash=name)
            item = export_item_tower(model, enc, where / "item_tower.onnx", run_hash=name)
            parity = max(onnx_parity(model, enc, user, self.rows, "user"),
                         onnx_parity(model, enc, item, self.rows, "item"))
            ids = catalogue_ids(self.catalogue, self.cfg.data)
            write_kv_file(where / "items.kv", ids, encode_items(onnx_session(item), enc, self.catalogue), name)
            store = FileKVStore(where / "items.kv")
            ranker: Any = CoarseRanker(onnx_session(user), UserFeeds(enc), store, float(model.a), float(model.b))
        else:
            path = export_model(model, enc, where / "student.onnx", "cold", fields=model.schema.names,
                                metadata={"run_hash": name}, history_base_rate=self.rate)
            parity = onnx_parity(model, enc, path, self.rows, "cold")
            ranker, store = self.cold_ranker(path), None
        timed = self.time(ranker, args)
        if store is not None:
            store.close()
        return {"parity": max(parity, self.teacher_parity), **timed}


def run_seed(dataset: str, seed: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    cfg = _config(dataset, args, seed)
    data = encode_splits(prepare(load_source(cfg.data, cfg.synthetic, seed), cfg.data), cfg.data)
    sets = candidate_sets(data.test, data.pairs, users=args.users, sampled=1000, seed=seed)
    hard_cfg = replace(cfg.distill, alpha=0.0)
    start = time.perf_counter()
    control = distill(None, data.train, data.valid, data.schema, _student(cfg, "two_tower", [], []), hard_cfg,
                      pairs=data.pairs, seed=seed)
    control_seconds = time.perf_counter() - start
    start = time.perf_counter()
    heavy = train_teacher(data.train, data.valid, data.schema, cfg.teacher, seed=seed).model
    blended = blend_teacher(heavy, control.model, data.valid, cfg.teacher.blend)
    teacher, teacher_seconds = blended.model, time.perf_counter() - start
    teacher_scores = score_candidates(teacher, data.test, data.pairs, sets)
    train_logits = score_split(teacher, data.train)
    serving = Serving(cfg, data, teacher, Path(args.out) / f"{dataset}-seed{seed}", args)
    test = data.test

    def test_gauc(model: torch.nn.Module) -> float:
        return gauc(test.label, score_split(model, test), test.group).value

    rows = [{"dataset": dataset, "seed": seed, "family": "teacher", "gauc": test_gauc(teacher),
             "heavy_gauc": test_gauc(heavy), "blend_weight": blended.weight,
             "params": count_params(teacher), "train_seconds": round(teacher_seconds, 2)}]
    for family in args.families:
        student_cfg = _student(cfg, family, args.cold_features, data.schema.names)
        out: dict[str, Any] = {"dataset": dataset, "seed": seed, "family": family}
        for name, alpha in (("distilled", cfg.distill.alpha), ("hard", 0.0)):
            if name == "hard" and family == "two_tower":  # the control the teacher was blended with
                out["hard_seconds"] = round(control_seconds, 2)
                out["hard_gauc"] = test_gauc(control.model)
                continue
            start = time.perf_counter()
            trained = distill(teacher if alpha > 0 else None, data.train, data.valid, data.schema, student_cfg,
                              replace(cfg.distill, alpha=alpha), train_logits=train_logits, pairs=data.pairs,
                              seed=seed)
            out[f"{name}_seconds"] = round(time.perf_counter() - start, 2)
            out[f"{name}_gauc"] = test_gauc(trained.model)
            if name == "distilled":
                scores = score_candidates(trained.model, test, data.pairs, sets)
                try:
                    out["recall"] = agreement(teacher_scores, scores, sets)["recall@10_in_100"]
                except DataError:  # a catalogue of fewer than 100 items (tiny settings): no set qualifies
                    out["recall"] = float("nan")
                out["params"] = count_params(trained.model)
                out["served_dim"] = served_dim(trained.model)
                out.update(serving.measure(f"{family}", trained.model, args))
        rows.append(out)
        print(json.dumps(out), file=sys.stderr, flush=True)
    return rows


def _closed(student: np.ndarray, control: np.ndarray, teacher: np.ndarray, control_name: str = "the control") -> str:
    """The share of the control→teacher test GAUC gap that ``student`` closes (means over seeds)."""
    gap = float(np.mean(teacher - control))
    return f"{np.mean(student - control) / gap:.0%}" if gap > 0 else f"n/a (the teacher is not above {control_name})"


def _table(rows: list[dict[str, Any]], dataset: str, families: list[str]) -> list[str]:
    mine = [r for r in rows if r["dataset"] == dataset]
    seeds = sorted({r["seed"] for r in mine})
    by = {(r["family"], r["seed"]): r for r in mine}

    def col(family: str, key: str) -> np.ndarray:
        return np.array([by[(family, s)].get(key, np.nan) for s in seeds], dtype=float)

    teacher = col("teacher", "gauc")
    lines = [f"\n#### {dataset} ({len(seeds)} seeds: {seeds}); teacher test GAUC {np.mean(teacher):.4f}, "
             f"p50 {np.nanmean(col(families[0], 'teacher_p50_ms')):.2f} ms / {CANDIDATES} candidates; blend weight "
             f"per seed {', '.join(f'{w:g}' for w in col('teacher', 'blend_weight'))}\n",
             "| family | test GAUC distilled | hard-only | Recall@10-in-100 vs teacher | parameters | served vector "
             "| p50 / p99 ms (1,000 cand.) | export parity |", "|---|---|---|---|---|---|---|---|"]
    for f in families:
        dim = int(np.nanmean(col(f, "served_dim")))
        lines.append(f"| {f} | {np.mean(col(f, 'distilled_gauc')):.4f} | {np.mean(col(f, 'hard_gauc')):.4f} | "
                     f"{np.mean(col(f, 'recall')):.3f} | {np.mean(col(f, 'params')):,.0f} | "
                     f"{dim if dim else 'rows'} | {np.mean(col(f, 'p50_ms')):.3f} / {np.mean(col(f, 'p99_ms')):.3f} | "
                     f"{np.max(col(f, 'parity')):.1e} |")
    if "two_tower" not in families:
        return lines
    base = col("two_tower", "distilled_gauc")
    for f in families:
        if f == "two_tower":
            continue
        g, glo, ghi = mean_ci(col(f, "distilled_gauc") - base)
        r, rlo, rhi = mean_ci(col(f, "recall") - col("two_tower", "recall"))
        closed = _closed(col(f, "distilled_gauc"), base, teacher, "the two-tower")
        ratio = np.mean(col(f, "p50_ms")) / np.mean(col("two_tower", "p50_ms"))
        speed = (f"; teacher p50 / cold p50 = {np.mean(col(f, 'teacher_p50_ms')) / np.mean(col(f, 'p50_ms')):.1f}x; "
                 f"{_closed(col(f, 'distilled_gauc'), col('two_tower', 'hard_gauc'), teacher)} of the hard-only "
                 "two-tower→teacher gap closed" if f == "cold" else "")
        lines.append(f"- {f} − two_tower: test GAUC {g:+.4f} [{glo:+.4f}, {ghi:+.4f}], Recall@10-in-100 {r:+.4f} "
                     f"[{rlo:+.4f}, {rhi:+.4f}]; share of the two-tower→teacher gap closed: {closed}; p50 "
                     f"{ratio:.2f}x the two-tower's{speed}")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", nargs="+", default=["synthetic", "movielens-100k"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    ap.add_argument("--data-dir", default="../shared/data/ml-100k")
    ap.add_argument("--out", default="benchmarks/out/families")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for every run")
    ap.add_argument("--cold-features", nargs="*", default=[], help="the COLD student's fields (default: all)")
    ap.add_argument("--users", type=int, default=300, help="candidate sets (test users) for Recall@10-in-100")
    ap.add_argument("--bench-users", type=int, default=20, help="requests cycled through when timing")
    ap.add_argument("--repeats", type=int, default=200, help="timed calls per latency figure")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--tables-from", nargs="+", type=Path, default=[],
                    help="only print the tables of these results.jsonl files (e.g. seeds run in parallel)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.tables_from:
        rows = read_results(args.tables_from)
        args.datasets = [d for d in args.datasets if any(r["dataset"] == d for r in rows)]
    else:
        rows = run_all(args.datasets, args.seeds, lambda dataset, seed: run_seed(dataset, seed, args), args.out)
    print(f"\n### `{' '.join(sys.argv)}`\n\nMachine: {machine()}")
    for dataset in args.datasets:
        print("\n".join(_table(rows, dataset, args.families)))


if __name__ == "__main__":
    main()
