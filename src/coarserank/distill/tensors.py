"""Columnar tensors for training: one split as a dict of tensors, batched by index."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["TensorTable", "make_table", "batch_indices"]


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


def make_table(inputs: dict[str, np.ndarray], label: np.ndarray, group: np.ndarray,
               teacher: np.ndarray | None = None) -> TensorTable:
    """Tensors from numpy arrays; ``group`` may hold any ids (it is turned into dense codes)."""
    _, codes = np.unique(group, return_inverse=True)
    return TensorTable(
        {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in inputs.items()},
        torch.as_tensor(np.array(label, dtype=np.float32)),
        torch.as_tensor(codes.reshape(-1), dtype=torch.int64),
        None if teacher is None else torch.as_tensor(teacher, dtype=torch.float32),
    )


def batch_indices(n: int, batch_size: int, generator: torch.Generator,
                  group: torch.Tensor | None = None) -> list[torch.Tensor]:
    """Shuffled mini-batch indices. With ``group``, rows of a group stay together (groups in random
    order), so listwise losses see whole groups except at batch edges."""
    if group is None:
        order = torch.randperm(n, generator=generator)
    else:
        n_groups = int(group.max().item()) + 1 if n else 0
        group_rank = torch.randperm(n_groups, generator=generator)[group.cpu()]
        jitter = torch.rand(n, generator=generator)
        order = torch.argsort(group_rank.double() + jitter.double())
    return list(torch.split(order, batch_size))
