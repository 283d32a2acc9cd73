"""The one training loop: mini-batch Adam, validation GAUC each epoch, early stopping, best weights.

Teacher, student and hard-label control all train here; they differ only in the model and the
loss function passed in. Models never hold optimisers or loops (DESIGN.md house rules).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import nn

from coarserank.distill.distributed import current, gather_strided
from coarserank.distill.stream_table import StreamingTable
from coarserank.distill.tensors import TensorTable
from coarserank.ranking_eval.metrics import gauc

__all__ = ["FitSettings", "EpochInfo", "FitResult", "fit", "predict", "predict_shared", "resolve_device"]

LossFn = Callable[[torch.Tensor, TensorTable], torch.Tensor]


@dataclass(frozen=True)
class FitSettings:
    """Optimiser and schedule of one training run."""

    lr: float
    batch_size: int
    epochs: int
    patience: int
    weight_decay: float = 0.0
    seed: int = 0
    grouped_batches: bool = False
    bf16: bool = False


@dataclass(frozen=True)
class EpochInfo:
    """What the progress callback sees after each epoch."""

    epoch: int
    train_loss: float
    valid_gauc: float
    seconds: float
    is_best: bool


@dataclass
class FitResult:
    """Best epoch and validation GAUC, the per-epoch history and training throughput."""

    best_epoch: int
    best_valid_gauc: float
    train_seconds: float
    rows_per_second: float
    seconds_to_best: float
    history: list[EpochInfo] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    from coarserank.errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no CUDA device; use --device cpu or auto")
    return torch.device(name)


@torch.no_grad()
def predict(model: nn.Module, table: TensorTable, device: torch.device, batch_size: int = 32768,
            rows: torch.Tensor | None = None) -> np.ndarray:
    """Model outputs (logits) for every row of ``table`` (or the given ``rows``), in row order."""
    model.eval()
    rows = torch.arange(len(table)) if rows is None else rows
    out = [model(table.take(idx).to(device).inputs).float().cpu() for idx in torch.split(rows, batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.float32)


def predict_shared(model: nn.Module, table: TensorTable, device: torch.device) -> np.ndarray:
    """:func:`predict` with the rows split across distributed ranks and gathered: each row once."""
    info = current()
    if info.world == 1:
        return predict(model, table, device)
    local = predict(model, table, device, rows=torch.arange(info.rank, len(table), info.world))
    return gather_strided(local, len(table)).astype(np.float32)


def fit(model: nn.Module, loss_fn: LossFn, train: TensorTable | StreamingTable, valid: TensorTable,
        settings: FitSettings, device: torch.device,
        progress: Callable[[EpochInfo], None] | None = None) -> FitResult:
    """Train ``model`` in place; on return it holds the weights of its best validation-GAUC epoch.

    ``train`` is an in-memory table or a :class:`StreamingTable` read partition by partition.
    ``settings.bf16`` runs forward passes and losses under bfloat16 autocast (weights, optimiser
    state and validation stay float32)."""
    ranks = current()
    torch.manual_seed(settings.seed + ranks.rank)  # dropout masks differ per rank; weights come from rank 0
    generator = torch.Generator().manual_seed(settings.seed)  # the same global batches on every rank
    model.to(device)
    stepped = model
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        stepped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    source = train.to(device) if isinstance(train, TensorTable) else train
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    valid_labels = valid.label.numpy()
    valid_groups = valid.group.numpy()
    best_state = copy.deepcopy(model.state_dict())
    best_gauc, best_epoch, bad_epochs = -1.0, 0, 0
    history: list[EpochInfo] = []
    train_seconds = 0.0
    seconds_to_best = 0.0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        start = time.perf_counter()
        total, batches = 0.0, 0
        for batch in source.batches(settings.batch_size, generator, ranks.rank, ranks.world,
                                    settings.grouped_batches):
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16):
                loss = loss_fn(stepped(batch.inputs).float(), batch)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            total += float(loss.detach())
            batches += 1
        epoch_seconds = time.perf_counter() - start
        train_seconds += epoch_seconds
        valid_gauc = gauc(valid_labels, predict_shared(model, valid, device), valid_groups).value
        is_best = valid_gauc > best_gauc
        if is_best:
            best_gauc, best_epoch, bad_epochs = valid_gauc, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            seconds_to_best = train_seconds
        else:
            bad_epochs += 1
        info = EpochInfo(epoch, total / max(batches, 1), valid_gauc, epoch_seconds, is_best)
        history.append(info)
        if progress is not None:
            progress(info)
        if bad_epochs >= settings.patience:
            break
    model.load_state_dict(best_state)
    rows = len(train) * len(history)  # all ranks together
    return FitResult(best_epoch, best_gauc, train_seconds, rows / max(train_seconds, 1e-9), seconds_to_best, history)
