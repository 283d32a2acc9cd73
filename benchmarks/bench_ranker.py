"""Benchmark coarse-ranking latency: the student path against teacher.onnx, same requests, same process.

Student path (what ``CoarseRanker.rank`` does per request): user dict -> ONNX Runtime user tower ->
KV lookup of the candidate ids -> one matrix-vector product -> top-100 by partial sort. Teacher path:
``teacher.onnx`` on the candidates' raw rows (user, context, item columns and history crosses, built
before the timer starts, as a feature service would hand them over) -> top-100. Leaving the
teacher's row assembly out of its timing favours the teacher, so the ratio is conservative.

Two stores: the run's own ``items.kv`` and a 1M-item KV file (the run's catalogue plus synthetic
items encoded by its item tower, as in ``bench_faiss.py``); candidates are drawn from the store's
catalogue. Each figure: ``--repeats`` timed calls after 20 warm-up calls, cycling through ``--users``
requests (``coarserank.serving.timing.measure``).

Usage::

    python benchmarks/bench_ranker.py --run /tmp/srv/run100k --json benchmarks/ranker.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


from coarserank.artifacts import Run
from coarserank.pipeline.export_stage import bench_requests
from coarserank.pipeline.run_data import RunData
from coarserank.serving.catalogue import catalogue_ids, encode_items, read_catalogue
from coarserank.serving.kv_file import FileKVStore, write_kv_file
from coarserank.serving.ranker import CoarseRanker, RunFiles, TeacherScorer, bench_latency, onnx_session

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_faiss import synthetic_catalogue  # noqa: E402  (sibling script)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--sizes", default="1000,5000,10000")
    ap.add_argument("--big", type=int, default=1_000_000, help="items in the large store (0 = skip)")
    ap.add_argument("--users", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=300)
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    files = RunFiles(args.run)
    finished = Run.open(args.run, require=("data", "export"))
    data = RunData.from_run(finished, {})
    ranker = CoarseRanker.from_run(args.run, threads=args.threads)
    teacher = TeacherScorer(onnx_session(files.verified("teacher.onnx"), threads=args.threads))
    stores = {"run": None} | ({f"{args.big}": args.big} if args.big else {})
    out: dict = {"run": str(args.run), "threads": args.threads, "stores": {}}
    lines = ["| store items | candidates | student p50 | student p99 | teacher p50 | teacher p99 "
             "| ratio p50 | ratio p99 |", "|---|---|---|---|---|---|---|---|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name, n in stores.items():
            if n is None:
                catalogue = read_catalogue(files.verified("items.parquet"), data.cfg.data)
                store_ranker = ranker
            else:
                print(f"building a {n:,}-item KV store", file=sys.stderr)
                _, catalogue = synthetic_catalogue(args.run, n)
                item_session = onnx_session(files.verified("item_tower.onnx"), threads=2)
                vectors = encode_items(item_session, data.encoder, catalogue)
                path = write_kv_file(Path(tmp) / "big.kv", catalogue_ids(catalogue, data.cfg.data), vectors,
                                     ranker.store.model_hash, ranker.store.dtype)
                store_ranker = CoarseRanker(ranker.user_session, ranker.feeds, FileKVStore(path),
                                            float(ranker.a), float(ranker.b))
            print(f"store {name}: {catalogue.height:,} items; assembling requests", file=sys.stderr)
            requests = bench_requests(data, catalogue, sizes, args.users, data.cfg.run.seed)
            result = bench_latency(store_ranker, teacher, requests, sizes, repeats=args.repeats,
                                   threads=args.threads)
            out["machine"] = result.pop("machine")
            out["stores"][str(catalogue.height)] = result
            for size, r in result["candidates"].items():
                s, t = r["student"], r["teacher"]
                lines.append(f"| {catalogue.height:,} | {int(size):,} | {s['p50_ms']:.3f} ms "
                             f"| {s['p99_ms']:.3f} ms | {t['p50_ms']:.2f} ms | {t['p99_ms']:.2f} ms "
                             f"| {r['ratio_p50']:.0f}x | {r['ratio_p99']:.0f}x |")
                print(lines[-1], file=sys.stderr)
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
