"""The teacher blended with the hard-label two-tower: ``(1 - w) * heavy(x) + w * tower(x)``.

A heavy ranker over crosses and sequences sees what two towers cannot, yet its MLP learns the
user x item inner product that a two-tower model is built around only poorly (Rendle et al.,
RecSys 2020), so on data where that product carries most of the signal a converged two-tower can
match or beat it. A teacher that blends in the run's hard-label two-tower then dominates the
student's own hypothesis class and adds the crosses on top. ``w`` is chosen on validation
(:func:`coarserank.distill.api.blend_teacher`); ``w = 0`` is the heavy model alone.
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch
from torch import nn

from coarserank.data.schema import Schema

__all__ = ["TeacherBlend", "mix"]

Logits = TypeVar("Logits", torch.Tensor, np.ndarray)


def mix(heavy: Logits, tower: Logits, weight: float | torch.Tensor) -> Logits:
    """``(1 - weight) * heavy + weight * tower``: the blend's logit from its members' logits."""
    return (1.0 - weight) * heavy + weight * tower


class TeacherBlend(nn.Module):
    """``(1 - weight) * heavy(inputs) + weight * tower(inputs)`` on the teacher's encoded inputs.

    ``embedding`` is the heavy model's, so the exporter feeds every field the teacher reads (the
    tower's fields are among them).
    """

    def __init__(self, heavy: nn.Module, tower: nn.Module, weight: float) -> None:
        super().__init__()
        self.heavy = heavy
        self.tower = tower
        self.register_buffer("weight", torch.tensor(float(weight)))

    @property
    def embedding(self) -> nn.Module:
        return self.heavy.embedding

    @property
    def schema(self) -> Schema:
        return self.heavy.embedding.schema

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return mix(self.heavy(inputs), self.tower(inputs), self.weight)
