"""Benchmark Faiss recall@100 and queries per second per index kind, on item-tower or clustered vectors.

``--vectors tower`` (default): item vectors come from a *trained* item tower: the run's own catalogue
(``items.parquet``) plus new
synthetic items drawn by the built-in generator with the run's seed (the same topic -> category and
topic -> tag structure the tower was trained on; unseen ids, so the tower encodes them from their
content, as it would a cold-start item), all encoded through the run's ``item_tower.onnx``. Never
uniform random vectors (DESIGN.md). Queries are the run's user-tower vectors (``index_queries.npy``):
half tune ``efSearch`` / ``nprobe`` to the recall target, half measure. ``top100_union`` (distinct items
in the exact top-100 of all measuring queries) tells how personalised the queries are: a tower whose
user vectors nearly coincide gives every user the same top-100, which any index finds easily.

``--vectors clustered``: items and queries drawn from one Gaussian mixture on the unit sphere
(``--clusters`` components with Zipf weights, each of radius ``--spread`` relative to the unit
centres), normalised like tower outputs: a harder, personalised workload. Use a component count far
from the IVF list count (``sqrt(n)``): when they match, k-means recovers the components exactly and
IVF looks unrealistically good (1,024 equal components at 1M items: recall@100 0.97 at nprobe=1).

QPS is batch throughput: one ``search(k=100)`` over all measuring queries with ``--threads`` OpenMP
threads (median of 3); ``single_p50_ms`` is the latency of one-query searches on one thread. Recall@k is the
share of the exact inner-product top-k returned by the index (``faiss_index.recall_at_k``).

Usage::

    distill run --rows 100000 --out /tmp/srv/run100k --set teacher.epochs=3 --set student.epochs=3 \\
        --set gbdt.rounds=50 --set report.enabled=false
    python benchmarks/bench_faiss.py --run /tmp/srv/run100k --sizes 100000,1000000 --threads 2 \\
        --json /tmp/srv/faiss_tower.json
    python benchmarks/bench_faiss.py --vectors clustered --sizes 100000,1000000 --threads 2 \\
        --json /tmp/srv/faiss_clustered.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import faiss
import numpy as np
import polars as pl

from coarserank.config import RunConfig, load_config
from coarserank.data.synthetic import generate
from coarserank.serving.catalogue import catalogue_ids, encode_items, read_catalogue
from coarserank.serving.faiss_index import KINDS, ItemIndex, evaluate, exact_search
from coarserank.serving.ranker import RunFiles, onnx_session
from coarserank.serving.timing import machine, measure

NEW_ID_OFFSET = 10_000_000


def synthetic_catalogue(run_dir: Path, n: int) -> tuple[RunConfig, pl.DataFrame]:
    """The run's catalogue followed by new synthetic items (ids from NEW_ID_OFFSET) up to ``n`` rows."""
    files = RunFiles(run_dir)
    cfg = load_config(files.verified("config.toml"))
    own = read_catalogue(files.verified("items.parquet"), cfg.data)
    extra = max(0, n - own.height)
    if extra == 0:
        return cfg, own.head(n)
    syn = generate(replace(cfg.synthetic, rows=200, users=100, items=extra), cfg.run.seed).items
    syn = syn.with_columns((pl.col("item_id") + NEW_ID_OFFSET).alias("item_id")).select(own.columns)
    return cfg, pl.concat([own, syn.cast(dict(own.schema))])


def item_vectors(run_dir: Path, n: int, threads: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(ids, vectors, seconds to encode) for an ``n``-item catalogue through ``item_tower.onnx``."""
    files = RunFiles(run_dir)
    cfg, catalogue = synthetic_catalogue(run_dir, n)
    session = onnx_session(files.verified("item_tower.onnx"), threads=threads)
    start = time.perf_counter()
    vectors = encode_items(session, files.encoder(), catalogue)
    return catalogue_ids(catalogue, cfg.data), vectors, time.perf_counter() - start


def clustered(n: int, queries: int, dim: int, clusters: int, spread: float,
              seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, item vectors, query vectors) from one Gaussian mixture with Zipf component weights
    (the r-th largest component has weight ~ 1/r), all rows L2-normalised."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(clusters, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weight = 1.0 / np.arange(1, clusters + 1)
    cum = np.cumsum(weight / weight.sum())

    def draw(m: int) -> np.ndarray:
        which = np.minimum(np.searchsorted(cum, rng.random(m)), clusters - 1)
        x = centres[which] + rng.normal(scale=spread / np.sqrt(dim), size=(m, dim))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    return np.arange(n, dtype=np.int64), draw(n), draw(queries)


def bench_kind(kind: str, ids: np.ndarray, x: np.ndarray, queries: np.ndarray, target: float) -> dict:
    start = time.perf_counter()
    index = ItemIndex.build(ids, x, kind, progress=lambda m: print(f"    {m}", file=sys.stderr))
    built = time.perf_counter() - start
    facts = evaluate(index, ids, x, queries, target=target)
    one = queries[queries.shape[0] // 2:][:200]
    turn = iter(range(1 << 62))
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one request per core: no OpenMP hand-off for a single query
    single = measure(lambda: index.search(one[next(turn) % one.shape[0]][None, :], 100), repeats=200,
                     warmup=10, threads=1)
    faiss.omp_set_num_threads(threads)
    return {"kind": kind, "build_s": round(built, 1), "build": index.build_params,
            "single_p50_ms": round(single.p50_ms, 3),
            **{k: v for k, v in facts.items() if k != "recall_definition"}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vectors", choices=["tower", "clustered"], default="tower")
    ap.add_argument("--run", type=Path, help="finished run directory with exports (--vectors tower)")
    ap.add_argument("--sizes", default="100000,1000000", help="catalogue sizes")
    ap.add_argument("--kinds", default=",".join(KINDS))
    ap.add_argument("--threads", type=int, default=2, help="Faiss OpenMP threads (build and search)")
    ap.add_argument("--target", type=float, default=0.95, help="recall@100 the tuning aims for")
    ap.add_argument("--clusters", type=int, default=10_000, help="mixture components (--vectors clustered)")
    ap.add_argument("--spread", type=float, default=1.0, help="component radius (--vectors clustered)")
    ap.add_argument("--queries", type=int, default=2000, help="query vectors (--vectors clustered)")
    ap.add_argument("--json", type=Path, help="write results here")
    args = ap.parse_args()
    faiss.omp_set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.vectors == "tower":
        if args.run is None:
            ap.error("--vectors tower needs --run DIR")
        queries = np.load(RunFiles(args.run).verified("index_queries.npy"), allow_pickle=False)
        all_ids, all_x, enc_s = item_vectors(args.run, max(sizes), args.threads)
        source = {"vectors": "tower", "run": str(args.run), "encode_seconds": round(enc_s, 1)}
    else:
        all_ids, all_x, queries = clustered(max(sizes), args.queries, 64, args.clusters, args.spread)
        source = {"vectors": "clustered", "clusters": args.clusters, "spread": args.spread, "dim": 64}
    print(f"{all_ids.size:,} item vectors; {queries.shape[0]} queries", file=sys.stderr)
    results = {"machine": machine(), "threads": args.threads, "queries": int(queries.shape[0]),
               "target": args.target, **source, "sizes": {}}
    lines = ["| items | kind | build (s) | search param | recall@10 | recall@100 | QPS | exact QPS "
             "| speed-up | 1-query p50 (ms) |", "|---|---|---|---|---|---|---|---|---|---|"]
    for n in sizes:
        ids, x = all_ids[:n], all_x[:n]
        union = np.unique(exact_search(ids, x, queries[queries.shape[0] // 2:], 100)[1]).size
        results["sizes"][str(n)] = {"top100_union": int(union), "kinds": []}
        print(f"  {n:,} items: top-100 union over the measuring queries {union:,}", file=sys.stderr)
        for kind in args.kinds.split(","):
            print(f"  {n:,} items: {kind}", file=sys.stderr)
            r = bench_kind(kind, ids, x, queries, args.target)
            results["sizes"][str(n)]["kinds"].append(r)
            param = next((f"{k}={r[k]}" for k in ("efSearch", "nprobe") if k in r), "-")
            lines.append(f"| {n:,} | {kind} | {r['build_s']} | {param} | {r['recall@10']:.3f} "
                         f"| {r['recall@100']:.3f} | {r['qps']:,.0f} | {r['exact_qps']:,.0f} "
                         f"| {r['speedup']:.1f}x | {r['single_p50_ms']:.3f} |")
            print(lines[-1], file=sys.stderr)
            if args.json:
                args.json.write_text(json.dumps(results, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
