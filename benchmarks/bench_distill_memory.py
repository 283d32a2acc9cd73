"""Peak memory of entire-space distillation against the hard-label student, at 1M and 10M exposures (issue 10).

Usage:
    python benchmarks/bench_distill_memory.py --rows 1000000 10000000

Each size runs in a process of its own (peak RSS is per process). The synthetic log of that many
exposures is generated, prepared and encoded; a teacher of the default architecture is built with
its initial weights (memory does not depend on what it learnt, and training it at 10M rows would
take an hour on 2 cores) and scores the train rows once, as the run's ``logits`` stage does; then
the default student trains for one epoch with hard labels only, and one epoch with the default
distillation (soft labels on the exposures plus ``distill.sampled`` catalogue items per exposure,
which the teacher scores batch by batch). Reported: RSS when the data is ready, and the peak RSS
of each epoch (the kernel's high-water mark, reset before each through ``/proc/self/clear_refs``).
The claim checked: the sampled rows' logits are never held for the whole train set or catalogue,
so distilling costs the sampler's one key per exposure and one batch of pairs over the hard-label
epoch, not memory that grows with ``sampled`` x exposures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402


def _status(field: str) -> float:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"/proc/self/status has no {field}: this benchmark needs Linux")


def _reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS


def measure(rows: int, sets: list[str]) -> dict[str, Any]:
    """One size, in this process."""
    import torch

    from coarserank.config import load_config
    from coarserank.data.dataset import encode_splits
    from coarserank.data.prepare import prepare
    from coarserank.data.sources import load_source
    from coarserank.distill.api import distill, score_split
    from coarserank.teacher import build_teacher

    torch.set_num_threads(1)
    cfg = load_config(overrides=[f"synthetic.rows={rows}", "student.epochs=1", "student.patience=2", *sets])
    start = time.perf_counter()
    data = encode_splits(prepare(load_source(cfg.data, cfg.synthetic, 0), cfg.data), cfg.data)
    teacher = build_teacher(data.schema, cfg.teacher).eval()
    logits = score_split(teacher, data.train)
    out: dict[str, Any] = {"rows": rows, "train_rows": len(data.train.label), "sampled": cfg.distill.sampled,
                           "items": data.frame[cfg.data.item_col].n_unique(),
                           "data_seconds": round(time.perf_counter() - start, 1), "rss_data_mib": _status("VmRSS"),
                           "peak_until_data_mib": _status("VmHWM")}
    for name, dcfg in (("hard", replace(cfg.distill, alpha=0.0)), ("distilled", cfg.distill)):
        _reset_peak()
        before = _status("VmRSS")
        start = time.perf_counter()
        trained = distill(teacher if dcfg.alpha > 0 else None, data.train, data.valid, data.schema, cfg.student,
                          dcfg, train_logits=logits, pairs=data.pairs)
        out[f"{name}_seconds"] = round(time.perf_counter() - start, 1)
        out[f"{name}_rss_before_mib"] = before
        out[f"{name}_peak_mib"] = _status("VmHWM")
        del trained
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override (repeatable)")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # the child process: measure this size
    args = ap.parse_args()
    if args.one is not None:
        print(json.dumps(measure(args.one, args.sets)), flush=True)
        return
    results = []
    for rows in args.rows:
        cmd = [sys.executable, __file__, "--one", str(rows), *[a for s in args.sets for a in ("--set", s)]]
        done = subprocess.run(cmd, check=True, capture_output=True, text=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(results[-1], file=sys.stderr, flush=True)
    print(f"\n### `{' '.join(['python', 'benchmarks/bench_distill_memory.py', *sys.argv[1:]])}`\n")
    print(f"Machine: {machine()}; 1 torch thread\n")
    print("| exposures | train rows | items | RSS with the data ready | peak, hard-label epoch | peak, distilled epoch "
          "(M sampled per exposure) | distilled − hard peak | s (hard / distilled epoch) |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        extra = r["distilled_peak_mib"] - r["hard_peak_mib"]
        print(f"| {r['rows']:,} | {r['train_rows']:,} | {r['items']:,} | {r['rss_data_mib']:,.0f} MiB | {r['hard_peak_mib']:,.0f} MiB "
              f"| {r['distilled_peak_mib']:,.0f} MiB (M = {r['sampled']}) | {extra:+,.0f} MiB | "
              f"{r['hard_seconds']:.0f} / {r['distilled_seconds']:.0f} |")


if __name__ == "__main__":
    main()
