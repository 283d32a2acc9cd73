"""Retrieval over the whole catalogue: the recall model against the coarse student's vectors and
popularity, K = 4 against K = 1 interests, and approximate search on 1M trained item-tower vectors.

For each data set and seed it runs ``distill run`` with ``recall.enabled = true`` (multi-interest,
``--interests`` vectors per user; a behaviour-sequence feature ``hist_item`` over ``item_id`` is added
when the data set declares none), reads ``metrics.json["test"]["retrieval"]``, then resumes the same
run directory with ``recall.interests = 1``: only the recall model retrains (the run's configuration
hash excludes the recall section), so K = 4 and K = 1 share the teacher, the student and the data.

Reported per data set (paired over seeds: every model of a seed sees the same data and split):

- Recall@100, NDCG@100, coverage@100 and the mean popularity percentile of the returned items for
  ``recall`` (K = --interests), ``recall_k1``, ``student`` and ``popularity``, mean over seeds with
  a 95% Student-t interval;
- paired differences of Recall@100: recall - popularity, recall - student, and K = 4 - K = 1 (also
  for coverage@100), each with its 95% t-interval over seeds (an interval above zero = a win).

Approximate search (``--ann-items``, synthetic, the first seed's K = --interests run): the run's
catalogue plus new synthetic items from the generator (unseen ids, content features only, as
cold-start items) up to ``--ann-items``, all through the trained recall item tower; queries are the
recall user tower's interest vectors of up to 2,000 users (each interest one query). Per index kind,
:func:`coarserank.serving.faiss_index.evaluate` tunes ``nprobe`` / ``efSearch`` on half the queries
to the smallest value reaching 0.95 of the exact top-100 and measures the other half: recall@100
against exact search and queries per second against exact search. MovieLens-100K has 1,682 items
whose content is a genre set and a release-year bucket, so a million items would be copies of a
few hundred distinct vectors, where "the exact top-100" is a tie; the ANN part uses synthetic only.

Usage (the full benchmark: 2 data sets x 5 seeds x 2 runs, then the 1M-item index; the lead runs it)::

    python benchmarks/bench_retrieval.py --data-dir /work/shared/data/ml-100k --json benchmarks/out/retrieval.json

The approximate-search part alone, on a finished run (its first seed's directory)::

    python benchmarks/bench_retrieval.py --ann-run benchmarks/out/retrieval/synthetic-seed0

A quick check at small scale::

    python benchmarks/bench_retrieval.py --small --data-dir /work/shared/data/ml-100k
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import faiss  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_faiss import synthetic_catalogue  # noqa: E402
from common import machine, mean_ci  # noqa: E402

from coarserank.config import RunConfig, config_to_dict, load_config  # noqa: E402
from coarserank.data.schema import STUDENT_ITEM_SIDES  # noqa: E402
from coarserank.pipeline.export_stage import user_sample  # noqa: E402
from coarserank.pipeline.recall_stage import load_recall  # noqa: E402
from coarserank.pipeline.retrieval_data import RetrievalData, retrieval_data, tower_vectors  # noqa: E402
from coarserank.pipeline.run import load_context, run  # noqa: E402
from coarserank.serving.catalogue import catalogue_ids  # noqa: E402
from coarserank.serving.faiss_index import ItemIndex, evaluate  # noqa: E402

MODELS = ("recall", "recall_k1", "student", "popularity")
SMALL = ["synthetic.rows=30000", "teacher.epochs=2", "student.epochs=2", "recall.epochs=3", "gbdt.rounds=30",
         "teacher.hidden=[64]", "student.hidden=[64]", "recall.hidden=[64]"]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return repr(value)


def sequence_override(preset: str | None, sets: list[str]) -> list[str]:
    """``data.features=[...]`` adding ``hist_item`` (last 20 positive item ids) when no sequence is declared."""
    cfg = load_config(preset=preset, overrides=[s for s in sets if not s.startswith("recall.")])  # checks need the sequence
    features = config_to_dict(cfg)["data"]["features"]
    if any(f["kind"] == "sequence" for f in features):
        return []
    features.append({"name": "hist_item", "side": "user", "kind": "sequence", "of": cfg.data.item_col,
                     "max_len": 20})
    tables = ", ".join("{" + ", ".join(f"{k} = {_toml(v)}" for k, v in f.items()) + "}" for f in features)
    return [f"data.features=[{tables}]"]


@dataclass(frozen=True)
class SplitVectors:
    """One split's retrieval data with the recall model's user and item vectors."""

    data: RetrievalData
    users: np.ndarray
    items: np.ndarray


def recall_only_run(seed: int, out: Path, sets: Sequence[str] = ()) -> tuple[RunConfig, dict[str, SplitVectors]]:
    """``distill run`` on the synthetic set with the multi-interest recall model (K = 4, over an added
    ``hist_item`` sequence) and teacher and students cut to one epoch (the recall model does not read
    them), then the recall model's vectors on the valid and test splits (all evaluated users)."""
    base = [f"run.seed={seed}", "report.enabled=false", "recall.enabled=true", 'recall.family="multi_interest"',
            "run.threads=1", "recall.interests=4", "teacher.epochs=1", "student.epochs=1", "teacher.blend=[]",
            *sets]
    cfg = load_config(overrides=[*base, *sequence_override(None, base)])
    run(cfg, out, extra_stages=False)
    ctx, _ = load_context(out)
    model = load_recall(ctx)
    splits = {}
    for split in ("valid", "test"):
        data = retrieval_data(ctx.frames, ctx.frame, ctx.encoder, cfg.data, max_users=0, seed=seed, split=split)
        splits[split] = SplitVectors(data, *tower_vectors(model, data, ctx.device))
    return cfg, splits


def one_seed(dataset: str, seed: int, args: argparse.Namespace) -> tuple[dict[str, dict[str, float]], Path]:
    """Retrieval metrics of the four models for one seed (two runs into one directory)."""
    preset = None if dataset == "synthetic" else dataset
    sets = [*(SMALL if args.small else []), *args.sets, f"run.seed={seed}", "report.enabled=false",
            "recall.enabled=true", 'recall.family="multi_interest"', f"run.threads={args.threads}"]
    if dataset != "synthetic":
        sets.append(f'data.path="{args.data_dir}"')
    sets += sequence_override(preset, sets)
    run_dir = args.out / f"{dataset}-seed{seed}"
    quiet = (lambda m: None) if not args.verbose else (lambda m: print(f"    {m}", file=sys.stderr))
    out: dict[str, dict[str, float]] = {}
    for interests, name in ((1, "recall_k1"), (args.interests, "recall")):  # the last run stays on disk
        start = time.perf_counter()
        cfg = load_config(preset=preset, overrides=[*sets, f"recall.interests={interests}"])
        metrics = run(cfg, run_dir, progress=quiet).metrics["test"]["retrieval"]
        out[name] = metrics["recall"]
        out.setdefault("student", metrics["student"])
        out.setdefault("popularity", metrics["popularity"])
        print(f"  {dataset} seed {seed} K={interests}: recall@100 {metrics['recall']['recall@100']:.4f} "
              f"student {metrics['student']['recall@100']:.4f} popularity {metrics['popularity']['recall@100']:.4f} "
              f"({time.perf_counter() - start:.0f}s)", file=sys.stderr)
    return out, run_dir


def _ci(values: list[float]) -> str:
    m, lo, hi = mean_ci(values)
    return f"{m:.4f} [{lo:.4f}, {hi:.4f}]"


def table(dataset: str, per_seed: list[dict[str, dict[str, float]]], interests: int) -> list[str]:
    """Markdown rows: per model, then the paired differences."""
    lines = [f"\n### {dataset} ({len(per_seed)} seeds; mean [95% t-interval])\n",
             "| model | recall@100 | ndcg@100 | coverage@100 | popularity percentile@100 |", "|---|---|---|---|---|"]
    for model in MODELS:
        label = f"recall (K={interests})" if model == "recall" else ("recall (K=1)" if model == "recall_k1" else model)
        cols = [_ci([s[model][key] for s in per_seed]) for key in
                ("recall@100", "ndcg@100", "coverage@100", "popularity_percentile@100")]
        lines.append(f"| {label} | " + " | ".join(cols) + " |")
    lines += ["", "| paired difference | mean [95% t-interval] | above zero |", "|---|---|---|"]
    for a, b, key in (("recall", "popularity", "recall@100"), ("recall", "student", "recall@100"),
                      ("recall", "recall_k1", "recall@100"), ("recall", "recall_k1", "coverage@100")):
        diff = [s[a][key] - s[b][key] for s in per_seed]
        m, lo, hi = mean_ci(diff)
        lines.append(f"| {key}: {a} - {b} | {m:+.4f} [{lo:+.4f}, {hi:+.4f}] | {'yes' if lo > 0 else 'no'} |")
    return lines


@torch.no_grad()
def ann(run_dir: Path, n_items: int, kinds: list[str], queries: int) -> list[str]:
    """Approximate search on ``n_items`` recall item-tower vectors with recall user-tower queries."""
    ctx, _ = load_context(run_dir)
    model = load_recall(ctx)
    cfg, catalogue = synthetic_catalogue(run_dir, n_items)
    fields = ctx.schema.select(STUDENT_ITEM_SIDES).names
    start = time.perf_counter()
    parts = []
    for lo in range(0, catalogue.height, 100_000):
        enc = ctx.encoder.transform(catalogue.slice(lo, 100_000), fields=fields)
        parts.append(model.item_tower({k: torch.from_numpy(v) for k, v in enc.items()}).numpy())
    vectors, ids = np.concatenate(parts), catalogue_ids(catalogue, cfg.data)
    users = user_sample(ctx.frames["test"], queries, cfg.run.seed)
    enc = ctx.encoder.transform(users, fields=model.user_tower.schema.names)
    q = model.user_tower({k: torch.from_numpy(v) for k, v in enc.items()}).numpy()
    q = q.reshape(-1, q.shape[-1])  # every interest of every user is a query
    q = q[np.random.default_rng(0).permutation(q.shape[0])[:queries]]
    print(f"  ann: {ids.size:,} item vectors in {time.perf_counter() - start:.0f}s; {q.shape[0]} queries",
          file=sys.stderr)
    lines = [f"\n### Approximate search: {ids.size:,} recall item-tower vectors (synthetic), {q.shape[0]} "
             f"interest-vector queries, {faiss.omp_get_max_threads()} threads\n",
             "| kind | search param | recall@100 vs exact | QPS | exact QPS | speed-up | >= 0.95 at >= 10x |",
             "|---|---|---|---|---|---|---|"]
    for kind in kinds:
        index = ItemIndex.build(ids, vectors, kind, progress=lambda m: print(f"    {m}", file=sys.stderr))
        r = evaluate(index, ids, vectors, q, target=0.95)
        param = next((f"{k}={r[k]}" for k in ("efSearch", "nprobe") if k in r), "-")
        ok = r["recall@100"] >= 0.95 and r["speedup"] >= 10
        lines.append(f"| {kind} | {param} | {r['recall@100']:.4f} | {r['qps']:,.0f} | {r['exact_qps']:,.0f} | "
                     f"{r['speedup']:.1f}x | {'yes' if ok else 'no'} |")
        print(lines[-1], file=sys.stderr)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="synthetic,movielens-100k")
    ap.add_argument("--data-dir", default="/work/shared/data/ml-100k")
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. seeds - 1")
    ap.add_argument("--merge", type=Path, nargs="*", default=[],
                    help="--json files of earlier seeds (e.g. run in parallel) to put in the same tables")
    ap.add_argument("--interests", type=int, default=4)
    ap.add_argument("--ann-items", type=int, default=1_000_000, help="0 = skip the approximate-search part")
    ap.add_argument("--ann-kinds", default="ivf,hnsw")
    ap.add_argument("--ann-queries", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=2, help="torch and Faiss threads")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/retrieval"))
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra config overrides")
    ap.add_argument("--small", action="store_true", help="2 seeds, small data and models, 100k ANN items")
    ap.add_argument("--json", type=Path, help="also write the per-seed metrics here")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--ann-run", type=Path, help="only the approximate-search part, on this finished synthetic run "
                    "with a recall model (e.g. benchmarks/out/retrieval/synthetic-seed0)")
    args = ap.parse_args()
    if args.small:
        args.seeds, args.ann_items = min(args.seeds, 2), min(args.ann_items, 100_000)
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    lines = [f"Machine: {machine()}"]
    results: dict[str, Any] = {}
    first_synthetic: Path | None = args.ann_run
    for dataset in ([] if args.ann_run else args.datasets.split(",")):
        per_seed = [m for f in args.merge for m in json.loads(f.read_text()).get(dataset, [])]
        for seed in range(args.first_seed, args.seeds):
            metrics, run_dir = one_seed(dataset, seed, args)
            per_seed.append(metrics)
            first_synthetic = first_synthetic or (run_dir if dataset == "synthetic" else None)
        results[dataset] = per_seed
        lines += table(dataset, per_seed, args.interests)
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2))
    if args.ann_items and first_synthetic is not None:
        lines += ann(first_synthetic, args.ann_items, args.ann_kinds.split(","), args.ann_queries)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
