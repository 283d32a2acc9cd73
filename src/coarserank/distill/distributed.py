"""torch.distributed helpers for the training loop: who am I, gather predictions, agree on state.

Under ``torchrun`` (or ``distill run --nproc N``) every rank runs the same pipeline; the training
loop splits every global mini-batch across ranks (DistributedDataParallel averages the
gradients, so N ranks step like one process on the same global batch), validation rows are
predicted once each (rank ``r`` takes rows ``r, r+N, ...``) and gathered, and only rank 0 writes
the run directory.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["DistInfo", "current", "alone", "init_from_env", "gather_strided", "gather_objects", "broadcast_object",
           "barrier", "shutdown"]


@dataclass(frozen=True)
class DistInfo:
    """This process's rank and the number of processes (1 when not distributed)."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


_ALONE = False  # inside alone(): this process works as if it were the only one


def current() -> DistInfo:
    if not _ALONE and dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size())
    return DistInfo()


@contextmanager
def alone() -> Iterator[None]:
    """Within the block :func:`current` reports a single process, so training and scoring run no
    collectives: for stages that only the main rank runs (the others wait at a barrier) that still
    train a model, such as the recall model."""
    global _ALONE
    before, _ALONE = _ALONE, True
    try:
        yield
    finally:
        _ALONE = before


def init_from_env(env: Mapping[str, str], device: str, timeout_s: float = 600.0) -> DistInfo:
    """Join the process group torchrun describes in ``env`` (gloo on CPU, NCCL on CUDA)."""
    world = int(env.get("WORLD_SIZE", "1"))
    if world <= 1 or (dist.is_available() and dist.is_initialized()):
        return current()
    backend = "nccl" if device == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(env.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return current()


def gather_strided(local: np.ndarray, total: int) -> np.ndarray:
    """Reassemble an array of ``total`` rows of which rank ``r`` holds rows ``r, r+world, ...``."""
    info = current()
    if info.world == 1:
        return local
    sizes = [len(range(r, total, info.world)) for r in range(info.world)]
    width = max(sizes)
    padded = torch.zeros(width, dtype=torch.float64)
    padded[: len(local)] = torch.as_tensor(local, dtype=torch.float64)
    parts = [torch.zeros(width, dtype=torch.float64) for _ in range(info.world)]
    dist.all_gather(parts, padded)
    out = np.empty(total, dtype=np.float64)
    for r, (part, size) in enumerate(zip(parts, sizes)):
        out[r::info.world] = part[:size].numpy()
    return out


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if current().world == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if current().world > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    info = current()
    if info.world == 1:
        return [obj]
    out: list[Any] = [None] * info.world
    dist.all_gather_object(out, obj)
    return out
