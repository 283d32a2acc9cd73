"""The one training loop: mini-batch Adam, validation GAUC each epoch, callbacks, best weights.

Teacher, students and the hard-label control all train here; they differ only in the module and
the loss function passed in (``loss_fn(module, batch)`` calls the module, so a loss may score more
than the batch's rows, e.g. sampled items, in the same forward pass). Models never hold optimisers
or loops (DESIGN.md house rules). Callbacks see every epoch and may stop training; early stopping
on ``patience`` is one of them. Randomness comes from ``settings.seed`` only, through an explicit
generator for batch order and a forked global state for dropout, so a call never disturbs the
caller's random state and two calls with the same seed train the same model.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol, Sequence

import numpy as np
import torch
from torch import nn

from coarserank.atomic import atomic_write_with
from coarserank.config import ModelTrainingConfig
from coarserank.distill.distributed import current, gather_strided
from coarserank.distill.stream_table import StreamingTable
from coarserank.distill.tensors import TensorTable
from coarserank.ranking_eval.metrics import gauc

__all__ = ["FitSettings", "EpochInfo", "FitResult", "Callback", "EarlyStopping", "ProgressCallback", "Checkpoint",
           "fit", "predict", "predict_shared", "resolve_device"]

LossFn = Callable[[nn.Module, TensorTable], torch.Tensor]


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

    @classmethod
    def from_config(cls, section: ModelTrainingConfig, seed: int, *, grouped_batches: bool = False,
                    bf16: bool = False) -> FitSettings:
        """The settings of a teacher or student config section."""
        return cls(section.lr, section.batch_size, section.epochs, section.patience, section.weight_decay, seed,
                   grouped_batches, bf16)


@dataclass(frozen=True)
class EpochInfo:
    """What the progress callback sees after each epoch."""

    epoch: int
    train_loss: float
    valid_gauc: float
    seconds: float
    is_best: bool
    best_epoch: int = 0


@dataclass
class FitResult:
    """Best epoch and validation GAUC, the per-epoch history and training throughput."""

    best_epoch: int
    best_valid_gauc: float
    train_seconds: float
    rows_per_second: float
    seconds_to_best: float
    history: list[EpochInfo] = field(default_factory=list)
    stopped_early: bool = False


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
        progress: Callable[[EpochInfo], None] | None = None,
        callbacks: Sequence[Callback] = ()) -> FitResult:
    """Train ``model`` in place; on return it holds the weights of its best validation-GAUC epoch.

    ``train`` is an in-memory table or a :class:`StreamingTable` read partition by partition.
    ``loss_fn(module, batch)`` returns the batch loss (``module`` is ``model``, wrapped for
    distributed training). ``progress`` is called after every epoch; ``callbacks`` too, and any
    returning True stops training (early stopping on ``settings.patience`` always applies).
    ``settings.bf16`` runs forward passes and losses under bfloat16 autocast (weights, optimiser
    state and validation stay float32)."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed + current().rank)  # dropout masks differ per rank
        return _fit(model, loss_fn, train, valid, settings, device,
                    [*([ProgressCallback(progress)] if progress else []), EarlyStopping(settings.patience),
                     *callbacks])


def _fit(model: nn.Module, loss_fn: LossFn, train: TensorTable | StreamingTable, valid: TensorTable,
         settings: FitSettings, device: torch.device, callbacks: list[Callback]) -> FitResult:
    ranks = current()
    generator = torch.Generator().manual_seed(settings.seed)  # the same global batches on every rank
    model.to(device)
    stepped = model
    if ranks.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        stepped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    source = train.to(device) if isinstance(train, TensorTable) else train
    optimiser = torch.optim.Adam(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    valid_labels, valid_groups = valid.label.numpy(), valid.group.numpy()
    best_state = copy.deepcopy(model.state_dict())
    best_gauc, best_epoch = -1.0, 0
    history: list[EpochInfo] = []
    train_seconds = seconds_to_best = 0.0
    for epoch in range(1, settings.epochs + 1):
        model.train()
        start = time.perf_counter()
        total, batches = 0.0, 0
        for batch in source.batches(settings.batch_size, generator, ranks.rank, ranks.world,
                                    settings.grouped_batches):
            batch = batch.to(device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16):
                loss = loss_fn(stepped, batch).float()
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
            best_gauc, best_epoch, seconds_to_best = valid_gauc, epoch, train_seconds
            best_state = copy.deepcopy(model.state_dict())
        info = EpochInfo(epoch, total / max(batches, 1), valid_gauc, epoch_seconds, is_best, best_epoch)
        history.append(info)
        stop = [bool(callback.on_epoch_end(info, model)) for callback in callbacks]
        if any(stop):
            break
    model.load_state_dict(best_state)
    rows = len(train) * len(history)  # all ranks together
    return FitResult(best_epoch, best_gauc, train_seconds, rows / max(train_seconds, 1e-9), seconds_to_best, history,
                     stopped_early=len(history) < settings.epochs)


class Callback(Protocol):
    """Called after every epoch with its summary and the model (holding that epoch's weights);
    returning True stops training."""

    def on_epoch_end(self, info: EpochInfo, model: nn.Module) -> bool | None: ...


@dataclass
class EarlyStopping:
    """Stops after ``patience`` epochs without a better validation GAUC."""

    patience: int

    def on_epoch_end(self, info: EpochInfo, model: nn.Module) -> bool:
        return info.epoch - info.best_epoch >= self.patience


@dataclass
class ProgressCallback:
    """Hands every epoch's summary to a function (a printer, a logger, a progress bar)."""

    show: Callable[[EpochInfo], None]

    def on_epoch_end(self, info: EpochInfo, model: nn.Module) -> None:
        self.show(info)


@dataclass
class Checkpoint:
    """Writes the model's state dict to ``path`` (atomically) after every epoch that improves."""

    path: Path

    def on_epoch_end(self, info: EpochInfo, model: nn.Module) -> None:
        if info.is_best:
            atomic_write_with(self.path, lambda tmp: torch.save(model.state_dict(), tmp))
