"""ONNX Runtime: a sum over the middle axis as ReduceSum against one MatMul with a stacked identity.

Usage:
    python benchmarks/bench_onnx_sum.py --rows 1000 --fields 6 --dim 16

Why :func:`coarserank.layers.blocks.sum_fields` exports as a MatMul: both graphs are timed in one
process, alternating, on one thread; the outputs are checked equal to float precision first.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import machine  # noqa: E402

from coarserank.layers.blocks import sum_fields  # noqa: E402


class _Reduce(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.sum(dim=1)


class _Fields(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum_fields(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1000)
    ap.add_argument("--fields", type=int, default=6)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2000)
    args = ap.parse_args()
    x = torch.randn(args.rows, args.fields, args.dim)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    sessions = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, module in (("ReduceSum", _Reduce()), ("MatMul (sum_fields)", _Fields())):
            path = Path(tmp) / f"{name.split()[0]}.onnx"
            torch.onnx.export(module, (x,), str(path), input_names=["x"], output_names=["y"],
                              dynamic_axes={"x": {0: "n"}}, dynamo=False)
            sessions[name] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"x": x.numpy()}
    for name, s in sessions.items():
        np.testing.assert_allclose(s.run(None, feeds)[0], x.sum(dim=1).numpy(), rtol=0, atol=1e-5, err_msg=name)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for i in range(args.repeats + 100):
        for name, s in sessions.items():
            start = time.perf_counter()
            s.run(None, feeds)
            if i >= 100:
                times[name].append(time.perf_counter() - start)
    print(f"Machine: {machine()}; {args.rows} x {args.fields} x {args.dim} float32, 1 thread\n")
    print("| graph | p50 us | p99 us |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {np.percentile(t, 50) * 1e6:.1f} | {np.percentile(t, 99) * 1e6:.1f} |")


if __name__ == "__main__":
    main()
