"""Benchmark the KV file store: batch-get latency and the ranking error of float16 storage.

Item and query vectors come from a Gaussian mixture (clustered, like a trained item tower's output;
never uniform random, see DESIGN.md). Prints a markdown snippet for ``benchmarks/RESULTS.md``.

Usage::

    python benchmarks/bench_kv.py                      # 1M items x 64-d, 5,000-id batches
    python benchmarks/bench_kv.py --n 100000 --repeats 200 --queries 100   # a quick run
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from coarserank.serving.kv_file import FileKVStore, write_kv_file
from coarserank.serving.timing import cpu_model


def mixture(rng: np.random.Generator, n: int, centers: np.ndarray, spread: float) -> np.ndarray:
    """``n`` points of an isotropic Gaussian mixture around ``centers`` (float32)."""
    which = rng.integers(0, centers.shape[0], size=n)
    out = centers[which] + rng.normal(scale=spread, size=(n, centers.shape[1])).astype(np.float32)
    return out.astype(np.float32)


def time_gets(
    store: FileKVStore, ids: np.ndarray, batch: int, repeats: int, warmup: int, rng: np.random.Generator
) -> np.ndarray:
    """Latency in microseconds of ``store.get`` on fresh random batches of existing ids."""
    times = np.empty(repeats)
    for r in range(warmup + repeats):
        query = ids[rng.integers(0, ids.size, size=batch)]
        start = time.perf_counter_ns()
        result = store.get(query)
        elapsed = time.perf_counter_ns() - start
        if result.missing.size:
            raise RuntimeError("benchmark ids went missing")
        if r >= warmup:
            times[r - warmup] = elapsed / 1e3
    return times


def float16_ranking_error(
    queries: np.ndarray, v32: np.ndarray, v16: np.ndarray, k: int, chunk: int = 50
) -> dict[str, float]:
    """Top-k overlap and score differences between float32 and float16 item vectors."""
    overlaps, max_diff, sum_diff, count, max_abs_score = [], 0.0, 0.0, 0, 0.0
    for start in range(0, queries.shape[0], chunk):
        q = queries[start : start + chunk]
        s32 = q @ v32.T
        s16 = q @ v16.T
        diff = np.abs(s32 - s16)
        max_diff = max(max_diff, float(diff.max()))
        sum_diff += float(diff.sum(dtype=np.float64))
        count += diff.size
        max_abs_score = max(max_abs_score, float(np.abs(s32).max()))
        top32 = np.argpartition(-s32, k, axis=1)[:, :k]
        top16 = np.argpartition(-s16, k, axis=1)[:, :k]
        for a, b in zip(top32, top16, strict=True):
            overlaps.append(np.intersect1d(a, b).size / k)
    o = np.array(overlaps)
    return {
        "recall_mean": float(o.mean()),
        "recall_min": float(o.min()),
        "max_diff": max_diff,
        "mean_diff": sum_diff / count,
        "max_abs_score": max_abs_score,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="items in the store")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--clusters", type=int, default=256, help="mixture components")
    parser.add_argument(
        "--spread",
        type=float,
        default=0.35,
        help="radius of each component relative to the centers' norm (~1)",
    )
    parser.add_argument("--batch", type=int, default=5_000, help="ids per get")
    parser.add_argument("--repeats", type=int, default=2_000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--queries", type=int, default=1_000, help="query vectors for the float16 error")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--dir", type=Path, default=None, help="where to write the stores (default: a temp dir)"
    )
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    centers = rng.normal(scale=1 / np.sqrt(args.dim), size=(args.clusters, args.dim)).astype(np.float32)
    noise = args.spread / np.sqrt(args.dim)  # centers have norm ~1, each component a radius of ~spread
    vectors = mixture(rng, args.n, centers, noise)
    ids = np.unique(rng.integers(0, 2**40, size=int(args.n * 1.05)))[: args.n]
    if ids.size < args.n:
        raise RuntimeError("not enough unique ids drawn; raise the oversampling factor")
    ids = rng.permutation(ids)

    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        rows: list[str] = []
        paths = {}
        for dtype in ("float32", "float16"):
            start = time.perf_counter()
            paths[dtype] = write_kv_file(Path(tmp) / f"items_{dtype}.kv", ids, vectors, "bench", dtype=dtype)
            rows.append(
                f"| write {dtype} | {time.perf_counter() - start:.2f} s | "
                f"{paths[dtype].stat().st_size / 2**20:.0f} MiB |"
            )
        for label, kwargs in [
            ("open, verify + hash index", {}),
            ("open, verify=False, hash index", {"verify": False}),
            ("open, verify=False, index=bisect", {"verify": False, "index": "bisect"}),
        ]:
            FileKVStore(paths["float32"], **kwargs)  # warm the page cache
            start = time.perf_counter()
            FileKVStore(paths["float32"], **kwargs)
            rows.append(f"| {label} (float32) | {(time.perf_counter() - start) * 1e3:.1f} ms | |")

        latency_rows = []
        for label, dtype, index in [
            ("float32, hash index", "float32", "hash"),
            ("float32, bisect", "float32", "bisect"),
            ("float16, hash index", "float16", "hash"),
        ]:
            store = FileKVStore(paths[dtype], index=index)  # type: ignore[arg-type]
            t = time_gets(store, ids, args.batch, args.repeats, args.warmup, rng)
            latency_rows.append(
                f"| {label} | {np.percentile(t, 50):.0f} | {np.percentile(t, 99):.0f} | {t.mean():.0f} |"
            )

        store32, store16 = FileKVStore(paths["float32"]), FileKVStore(paths["float16"])
        v32 = store32.get_strict(store32.ids())
        v16 = store16.get_strict(store16.ids())
        queries = mixture(rng, args.queries, centers, noise)
        start = time.perf_counter()
        err = float16_ranking_error(queries, v32, v16, args.k)
        err_seconds = time.perf_counter() - start

    command = "python benchmarks/bench_kv.py " + " ".join(sys.argv[1:] if argv is None else argv)
    print(f"### KV file store ({args.n:,} items x {args.dim}-d, Gaussian mixture of {args.clusters})\n")
    print(
        f"Machine: {platform.platform()}, {cpu_model()}, {os.cpu_count()} CPUs, Python "
        f"{platform.python_version()}, numpy {np.__version__}.  "
    )
    print(f"Command: `{command.strip()}` (seed {args.seed}).\n")
    print("| step | time | size |\n|---|---:|---:|")
    print("\n".join(rows))
    print(
        f"\nBatch get of {args.batch:,} random existing ids, {args.repeats:,} repeats after "
        f"{args.warmup} warm-up, microseconds:\n"
    )
    print("| store | p50 µs | p99 µs | mean µs |\n|---|---:|---:|---:|")
    print("\n".join(latency_rows))
    print(
        f"\nfloat16 vs float32 storage, {args.queries:,} mixture queries, exact inner-product top-{args.k} "
        f"over all items ({err_seconds:.0f} s):\n"
    )
    print(
        f"| recall@{args.k} mean | recall@{args.k} min | max abs score diff | mean abs score diff "
        f"| max abs score |\n|---:|---:|---:|---:|---:|"
    )
    print(
        f"| {err['recall_mean']:.4f} | {err['recall_min']:.2f} | {err['max_diff']:.2e} | "
        f"{err['mean_diff']:.2e} | {err['max_abs_score']:.2f} |"
    )


if __name__ == "__main__":
    main()
