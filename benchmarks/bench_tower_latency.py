"""The tower families' serving latency against the plain two-tower, timed side by side.

Usage (after ``bench_families.py`` wrote a seed's tower exports under ``--out``):
    python benchmarks/bench_tower_latency.py --out benchmarks/out/fam-latency --dataset synthetic --seed 0 \
        --set "teacher.blend=[]"

Every tower family found in ``--out/<dataset>-seed<seed>/<family>/`` (``user_tower.onnx`` and
``items.kv``, as ``bench_families.py`` exported them) gets the ranker ``distill rank`` builds
(ONNX user tower on the request's user dict, KV lookup of the candidates, one matrix-vector product,
top-100) and all of them are timed in the same rounds of
:func:`coarserank.serving.timing.measure_side_by_side` on the same 20 requests of 1,000 candidates,
so the ratios to the two-tower do not depend on when each was timed. ``--repeats-of-all`` repeats
the whole measurement; each line gives p50 / p99 and p50 / two-tower p50.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_families import CANDIDATES, FAMILIES, _config  # noqa: E402

from coarserank.data.dataset import encode_splits  # noqa: E402
from coarserank.data.prepare import prepare  # noqa: E402
from coarserank.data.sources import load_source  # noqa: E402
from coarserank.pipeline.export_stage import bench_requests  # noqa: E402
from coarserank.serving.catalogue import build_catalogue  # noqa: E402
from coarserank.serving.kv_file import FileKVStore  # noqa: E402
from coarserank.serving.onnx_export import read_metadata  # noqa: E402
from coarserank.serving.ranker import CoarseRanker, UserFeeds, onnx_session  # noqa: E402
from coarserank.serving.timing import machine, measure_side_by_side  # noqa: E402


def _call(ranker: CoarseRanker, requests: list[Any]) -> Callable[[], None]:
    turn = iter(range(1 << 62))

    def call() -> None:
        r = requests[next(turn) % len(requests)]
        ranker.rank(r.user, r.candidates[CANDIDATES], 100)

    return call


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="the --out of a bench_families.py run")
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", default="../shared/data/ml-100k")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="the overrides of that run")
    ap.add_argument("--repeats", type=int, default=400, help="timed calls per family")
    ap.add_argument("--repeats-of-all", type=int, default=3)
    args = ap.parse_args()
    cfg = _config(args.dataset, SimpleNamespace(sets=args.sets, data_dir=args.data_dir), args.seed)
    data = encode_splits(prepare(load_source(cfg.data, cfg.synthetic, args.seed), cfg.data), cfg.data)
    ctx = SimpleNamespace(cfg=cfg, frame=data.frame, test=data.test.frame, encoder=data.encoder)
    requests = bench_requests(ctx, build_catalogue(data.frame, cfg.data), [CANDIDATES], 20, args.seed)
    root = Path(args.out) / f"{args.dataset}-seed{args.seed}"
    calls = {}
    for family in FAMILIES:
        where = root / family
        if not (where / "user_tower.onnx").exists():
            continue
        meta = read_metadata(where / "user_tower.onnx")
        ranker = CoarseRanker(onnx_session(where / "user_tower.onnx"), UserFeeds(data.encoder),
                              FileKVStore(where / "items.kv"), float(meta["score_a"]), float(meta["score_b"]))
        calls[family] = _call(ranker, requests)
    if "two_tower" not in calls:
        raise SystemExit(f"no two_tower export under {root}")
    print(machine())
    for _ in range(args.repeats_of_all):
        timed = measure_side_by_side(calls, repeats=args.repeats, warmup=args.repeats // 10, rounds=20)
        base = timed["two_tower"].p50_ms
        print(" | ".join(f"{k} {t.p50_ms:.3f} / {t.p99_ms:.3f} ms ({t.p50_ms / base:.2f}x)" for k, t in timed.items()))


if __name__ == "__main__":
    main()
