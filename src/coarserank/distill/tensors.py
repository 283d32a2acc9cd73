"""Columnar tensors for training: one split as a dict of tensors, batched by index."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

__all__ = ["TensorTable", "make_table", "concat_tables", "batch_indices"]


@dataclass
class TensorTable:
    """Encoded inputs plus label, group code and (for students) the teacher's logit, row-aligned."""

    inputs: dict[str, torch.Tensor]
    label: torch.Tensor
    group: torch.Tensor
    teacher: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def take(self, idx: torch.Tensor) -> TensorTable:
        return TensorTable({k: v[idx] for k, v in self.inputs.items()}, self.label[idx], self.group[idx],
                           None if self.teacher is None else self.teacher[idx])

    def to(self, device: torch.device | str) -> TensorTable:
        return TensorTable({k: v.to(device) for k, v in self.inputs.items()}, self.label.to(device),
                           self.group.to(device), None if self.teacher is None else self.teacher.to(device))

    def with_teacher(self, logits: np.ndarray) -> TensorTable:
        return TensorTable(self.inputs, self.label, self.group, torch.from_numpy(np.array(logits, dtype=np.float32)))

    def batches(self, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1,
                grouped: bool = False) -> Iterator[TensorTable]:
        """One epoch of shuffled mini-batches. Every rank draws the same global batches of
        ``batch_size`` rows and takes rows ``rank, rank + world, ...`` of each."""
        for idx in batch_indices(len(self), batch_size, generator, self.group if grouped else None):
            if world > 1:
                if len(idx) < world:
                    continue
                idx = idx[rank::world]
            yield self.take(idx.to(self.label.device))


def make_table(inputs: dict[str, np.ndarray], label: np.ndarray, group: np.ndarray,
               teacher: np.ndarray | None = None, dense_groups: bool = True) -> TensorTable:
    """Tensors from numpy arrays; ``group`` may hold any ids (turned into dense codes unless
    ``dense_groups=False``, which keeps int64 ids as given, e.g. hashes shared across tables)."""
    codes = np.unique(group, return_inverse=True)[1] if dense_groups else np.array(group, dtype=np.int64)
    return TensorTable(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()},
        torch.as_tensor(np.array(label, dtype=np.float32)),
        torch.as_tensor(codes.reshape(-1), dtype=torch.int64),
        None if teacher is None else torch.from_numpy(np.array(teacher, dtype=np.float32)),
    )


def concat_tables(tables: list[TensorTable]) -> TensorTable:
    """Rows of several tables as one (group ids kept as they are)."""
    if len(tables) == 1:
        return tables[0]
    teachers = [t.teacher for t in tables]
    return TensorTable(
        {k: torch.cat([t.inputs[k] for t in tables]) for k in tables[0].inputs},
        torch.cat([t.label for t in tables]),
        torch.cat([t.group for t in tables]),
        None if any(z is None for z in teachers) else torch.cat(teachers),  # type: ignore[arg-type]
    )


def batch_indices(n: int, batch_size: int, generator: torch.Generator,
                  group: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Shuffled mini-batch indices. With ``group``, rows of a group stay together (groups in random
    order), so listwise losses see whole groups except at batch edges."""
    if group is None:
        order = torch.randperm(n, generator=generator)
    else:
        codes = torch.unique(group.cpu(), return_inverse=True)[1]
        n_groups = int(codes.max().item()) + 1 if n else 0
        group_rank = torch.randperm(n_groups, generator=generator)[codes]
        jitter = torch.rand(n, generator=generator)
        order = torch.argsort(group_rank.double() + jitter.double())
    return list(torch.split(order, batch_size))
