"""The training loop on either source: in-memory tables and streamed partitions, fp32 and bf16."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from coarserank.distill.losses import hard_loss
from coarserank.distill.stream_table import StreamingTable
from coarserank.distill.tensors import TensorTable, make_table
from coarserank.distill.train import FitSettings, fit, predict


class _Linear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Linear(8, 1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.w(inputs["x"]).squeeze(-1)


def _data(rng, n):
    x = rng.normal(size=(n, 8)).astype(np.float32)
    y = (rng.random(n) < 1 / (1 + np.exp(-(x[:, 0] * 2 - x[:, 1])))).astype(np.float32)
    return x, y


def _train(rng, bf16=False, streamed=False):
    x, y = _data(rng, 6000)
    vx, vy = _data(rng, 2000)
    valid = make_table({"x": vx}, vy, np.arange(2000) % 50)
    if streamed:
        parts = np.array_split(np.arange(6000), 6)
        train = StreamingTable(lambda i: make_table({"x": x[parts[i]]}, y[parts[i]], parts[i] % 50,
                                                    dense_groups=False), tuple(len(p) for p in parts), 2)
    else:
        train = make_table({"x": x}, y, np.arange(6000) % 50)
    torch.manual_seed(0)
    model = _Linear()
    fit(model, lambda m, b: hard_loss(m(b.inputs), b.label), train, valid,
        FitSettings(0.05, 256, 4, 2, bf16=bf16), torch.device("cpu"))
    return roc_auc_score(vy, predict(model, valid, torch.device("cpu")))


def test_fit_learns_from_an_in_memory_table(rng):
    assert _train(rng) > 0.75


def test_fit_learns_from_streamed_partitions(rng):
    assert _train(rng, streamed=True) > 0.75


def test_bf16_autocast_reaches_the_fp32_quality(rng):
    fp32 = _train(np.random.default_rng(7))
    bf16 = _train(np.random.default_rng(7), bf16=True)
    assert bf16 == pytest.approx(fp32, abs=0.01)


def test_bf16_keeps_weights_in_float32(rng):
    x, y = _data(rng, 512)
    table = make_table({"x": x}, y, np.zeros(512))
    model = _Linear()
    fit(model, lambda m, b: hard_loss(m(b.inputs), b.label), table, table, FitSettings(0.05, 128, 1, 1, bf16=True),
        torch.device("cpu"))
    assert all(p.dtype == torch.float32 for p in model.parameters())


class _Recording(_Linear):
    def __init__(self) -> None:
        super().__init__()
        self.train_dtypes: set[torch.dtype] = set()

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        out = super().forward(inputs)
        if self.training:
            self.train_dtypes.add(out.dtype)
        return out


@pytest.mark.parametrize(("bf16", "dtype"), [(False, torch.float32), (True, torch.bfloat16)])
def test_precision_sets_the_dtype_of_the_training_forward_pass(rng, bf16, dtype):
    x, y = _data(rng, 512)
    table = make_table({"x": x}, y, np.zeros(512))
    model = _Recording()
    fit(model, lambda m, b: hard_loss(m(b.inputs), b.label), table, table, FitSettings(0.05, 128, 1, 1, bf16=bf16),
        torch.device("cpu"))
    assert model.train_dtypes == {dtype}
