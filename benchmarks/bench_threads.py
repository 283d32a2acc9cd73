"""The thread policy on a quiet machine and beside one busy neighbour (issue 13, section 1).

Usage:
    python benchmarks/bench_threads.py --data-dir ../shared/data/ml-100k
    python benchmarks/bench_threads.py --data-dir ../shared/data/ml-100k --repeats 3
    # a quick check that the script works (not a measurement):
    python benchmarks/bench_threads.py --data-dir ../shared/data/ml-100k --repeats 1 \
        --set teacher.epochs=1 --set student.epochs=1 --set gbdt.rounds=5 --set report.enabled=false

Runs `distill run --dataset movielens-100k` in a fresh process and a fresh run directory for each
thread setting (the default `run.threads = 0`, then 1 and 2), first on a quiet machine, then with one
busy neighbour (`python -c "while True: pass"`, started before and stopped after each run). Prints a
markdown table for benchmarks/RESULTS.md: wall seconds (mean of the repeats), the stages that train
(teacher, student, student_hard, gbdt: seconds from manifest.json), the threads the default chose,
the test GAUC of teacher and student (the same across settings up to floating-point summation order),
and each setting's time over the best setting of its condition. The bar: the default within 1.3x of
the best in both conditions.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

SETTINGS = {"default": 0, "1": 1, "2": 2}
STAGES = ("teacher", "student", "student_hard", "gbdt")
BAR = 1.3


def _one_run(data_dir: str, threads: int, sets: list[str], out: Path) -> dict:
    cmd = [sys.executable, "-m", "coarserank.cli", "run", "--dataset", "movielens-100k", "--data-dir", data_dir,
           "--out", str(out), "--set", f"run.threads={threads}", "--set", 'run.device="cpu"',
           *[a for s in sets for a in ("--set", s)]]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"run failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    manifest = json.loads((out / "manifest.json").read_text())
    metrics = json.loads((out / "metrics.json").read_text())
    chosen = re.search(r"(\d+) thread\(s\)", done.stderr)
    return {"seconds": seconds, "threads": int(chosen.group(1)) if chosen else None,
            "stages": {s: manifest["stages"].get(s, {}).get("seconds", float("nan")) for s in STAGES},
            "gauc": {m: metrics["test"][m]["gauc"] for m in ("teacher", "student")}}


def _with_neighbour(busy: bool):  # a context manager without importing contextlib's decorator machinery
    class Neighbour:
        def __enter__(self) -> None:
            self.proc = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
            time.sleep(0.5 if busy else 0.0)  # let it occupy a CPU before the run samples idle CPUs

        def __exit__(self, *exc: object) -> None:
            if self.proc is not None:
                self.proc.terminate()
                self.proc.wait(timeout=10)

    return Neighbour()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-dir", required=True, help="the MovieLens-100K directory (u.data, u.user, u.item)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--conditions", nargs="+", default=["quiet", "busy"], choices=["quiet", "busy"])
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra config override (repeatable)")
    ap.add_argument("--json", type=Path, help="also write every run's figures here")
    args = ap.parse_args()
    results: dict[str, dict[str, list[dict]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        for condition in args.conditions:
            for repeat in range(args.repeats):  # settings interleaved within a repeat: drift hits all alike
                for name in args.settings:
                    out = Path(tmp) / f"{condition}-{name}-{repeat}"
                    with _with_neighbour(condition == "busy"):
                        figures = _one_run(args.data_dir, SETTINGS[name], args.sets, out)
                    print(f"{condition} threads={name} #{repeat + 1}: {figures['seconds']:.1f}s", file=sys.stderr)
                    results.setdefault(condition, {}).setdefault(name, []).append(figures)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    print(table(results))


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def table(results: dict[str, dict[str, list[dict]]]) -> str:
    """The markdown table and the bar's verdict per condition."""
    lines = [f"Machine: {machine()}", "",
             "| condition | run.threads | threads used | wall s | teacher s | student s | student_hard s | gbdt s "
             "| teacher test GAUC | student test GAUC | / best |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    verdicts = []
    for condition, by_setting in results.items():
        means = {name: _mean([r["seconds"] for r in runs]) for name, runs in by_setting.items()}
        best = min(means.values())
        for name, runs in by_setting.items():
            stages = [_mean([r["stages"][s] for r in runs]) for s in STAGES]
            used = sorted({r["threads"] for r in runs if r["threads"] is not None})
            lines.append(f"| {condition} | {name} | {'/'.join(map(str, used)) or '?'} | {means[name]:.1f} | "
                         + " | ".join(f"{x:.1f}" for x in stages)
                         + f" | {_mean([r['gauc']['teacher'] for r in runs]):.4f}"
                         f" | {_mean([r['gauc']['student'] for r in runs]):.4f} | {means[name] / best:.2f}x |")
        if "default" in means:
            ratio = means["default"] / best
            verdicts.append(f"{condition}: default {ratio:.2f}x the best setting "
                            f"({'within' if ratio <= BAR else 'OUTSIDE'} the {BAR}x bar)")
    runs = max(len(r) for by in results.values() for r in by.values())
    return "\n".join([*lines, "", f"Mean of {runs} run(s) per cell. " + "; ".join(verdicts)])


if __name__ == "__main__":
    main()
