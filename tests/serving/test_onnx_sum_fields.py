"""Sums over fields export as one MatMul and score what PyTorch scores (checked by ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from coarserank.layers import sum_fields


class _Sum(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum_fields(x)


def test_a_sum_over_fields_exports_as_a_matmul_that_onnx_runtime_scores_like_torch(tmp_path: Path) -> None:
    x = torch.randn(7, 5, 3)
    path = tmp_path / "sum.onnx"
    torch.onnx.export(_Sum(), (x,), str(path), input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "n"}},
                      dynamo=False)
    ops = {node.op_type for node in onnx.load(str(path)).graph.node}
    assert "MatMul" in ops and "ReduceSum" not in ops
    other = torch.randn(40, 5, 3)  # another batch size through the dynamic axis
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": other.numpy()})[0], other.sum(dim=1).numpy(), rtol=0, atol=1e-6)


def test_outside_an_export_a_sum_over_fields_is_the_plain_sum() -> None:
    x = torch.randn(4, 6, 2, requires_grad=True)
    torch.testing.assert_close(sum_fields(x), x.sum(dim=1), rtol=0, atol=0)
