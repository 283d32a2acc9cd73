"""Streaming runs: peak memory of a whole ``distill run`` over a partitioned log, and the data
loader's throughput against the training step's.

Usage::

    python examples/make_partitioned_log.py --out /tmp/plog10m --rows 10000000 --partitions 100
    python benchmarks/bench_streaming.py memory --log /tmp/plog10m --epochs 1
    python benchmarks/bench_streaming.py loader --log /tmp/plog2m

``memory`` runs ``distill run --config examples/streaming.toml`` in a child process and reports
its peak RSS (``getrusage(RUSAGE_CHILDREN)``: the high-water mark of the largest child).
``loader`` times one epoch of the streaming train source alone (parquet read, join, encode,
shuffle, batch; background prefetch on) and the teacher's and student's training steps alone on
batches already in memory, in the same process, and prints the ratios.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from common import machine  # noqa: E402


def memory(log: str, epochs: int, extra: list[str]) -> None:
    out = Path(tempfile.mkdtemp(prefix="bench-stream-")) / "run"
    cmd = [sys.executable, "-m", "coarserank.cli", "run", "--config", str(ROOT / "examples" / "streaming.toml"),
           "--data-dir", log, "--out", str(out), "--device", "cpu",
           "--set", f"teacher.epochs={epochs}", "--set", f"student.epochs={epochs}", *extra]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    peak_gib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 2**20
    if proc.returncode:
        sys.exit(proc.stderr[-3000:])
    manifest = json.loads((out / "manifest.json").read_text())
    stages = manifest["stages"]
    print(machine())
    print("command:", " ".join(cmd))
    print(f"rows per split: {stages['data']['rows']}, partitions {stages['data']['partitions']}, "
          f"rows held in memory {stages['data']['in_memory_rows']:,}")
    for name in ("data", "teacher", "logits", "student", "student_hard", "gbdt", "metrics", "export", "report"):
        s = dict(stages.get(name, {}))
        s["seconds"] = s.get("read_seconds", 0.0) + s.get("seconds", float("nan"))
        rate = f", {s['rows_per_second']:,.0f} rows/s" if "rows_per_second" in s else ""
        print(f"  {name:<13} {s.get('seconds', float('nan')):8.1f} s{rate}")
    print(f"wall {seconds:.0f} s, peak RSS {peak_gib:.2f} GiB")
    print(proc.stdout.strip())


def loader(log: str, batches: int) -> None:
    import torch

    from coarserank.config import load_config
    from coarserank.distill.losses import hard_loss
    from coarserank.pipeline.run import RunContext
    from coarserank.pipeline.rundir import RunDir
    from coarserank.pipeline.stream_data import load_streaming_data
    from coarserank.student import build_student
    from coarserank.teacher import build_teacher

    cfg = load_config(ROOT / "examples" / "streaming.toml", overrides=[f'data.path="{log}"'])
    ctx = RunContext(cfg, RunDir(Path(tempfile.mkdtemp()), {"stages": {}, "files": {}}, writable=False),
                     torch.device("cpu"), lambda _m: None)
    load_streaming_data(ctx)
    assert ctx.stream is not None
    size = cfg.teacher.batch_size
    start = time.perf_counter()
    rows = sum(len(b) for b in ctx.stream.batches(size, torch.Generator().manual_seed(0)))
    load_rate = rows / (time.perf_counter() - start)
    held = []
    for b in ctx.stream.batches(size, torch.Generator().manual_seed(1)):
        held.append(b)
        if len(held) == batches:
            break
    print(machine())
    print(f"log {log}: loader alone (read + join + encode + shuffle + batch, one epoch): "
          f"{rows:,} rows, {load_rate:,.0f} rows/s")
    for name, model in (("teacher", build_teacher(ctx.schema, cfg.teacher)),
                        ("student", build_student(ctx.schema, cfg.student))):
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        model.train()
        for b in held[:3]:  # warm-up
            loss = hard_loss(model(b.inputs), b.label)
            opt.zero_grad()
            loss.backward()
            opt.step()
        start = time.perf_counter()
        for b in held:
            loss = hard_loss(model(b.inputs), b.label)
            opt.zero_grad()
            loss.backward()
            opt.step()
        step_rate = len(held) * size / (time.perf_counter() - start)
        print(f"{name} training step alone ({len(held)} batches of {size}): {step_rate:,.0f} rows/s; "
              f"loader / step = {load_rate / step_rate:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=["memory", "loader"])
    parser.add_argument("--log", required=True, help="directory written by examples/make_partitioned_log.py")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batches", type=int, default=200, help="loader: training steps timed per model")
    parser.add_argument("--set", dest="sets", action="append", default=[], help="memory: extra --set for the run")
    args = parser.parse_args()
    if args.what == "memory":
        memory(args.log, args.epochs, [x for s in args.sets for x in ("--set", s)])
    else:
        loader(args.log, args.batches)


if __name__ == "__main__":
    main()
