"""The two-tower student: a user tower and an item tower whose inner product is the score.

:class:`TwoTower` holds any pair of towers (:mod:`coarserank.student.towers` has the other
families); :class:`Tower` is the plain one (``student.family = "two_tower"``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from coarserank.layers import MLP, EmbeddedFields, FeatureEmbedding

__all__ = ["Tower", "TwoTower"]


class Tower(EmbeddedFields):
    """Fields of one side -> embeddings -> MLP -> L2-normalised vector ``[B, dim]``.

    Each tower is callable and exportable alone; it reads only the fields of its own schema.
    """

    def __init__(self, embedding: FeatureEmbedding, mlp: MLP) -> None:
        super().__init__()
        self.embedding = embedding
        self.mlp = mlp

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return F.normalize(self.mlp(self.embedding(inputs).flatten(1)), dim=-1, eps=1e-8)


class TwoTower(nn.Module):
    """score ``s = a * <u, v> + b`` with learnable ``a`` and ``b``.

    Example
    -------
    >>> student = build_student(schema, StudentConfig())   # doctest: +SKIP  (coarserank.student.build)
    >>> student(batch).shape                                # doctest: +SKIP
    torch.Size([B])
    """

    def __init__(self, user_tower: Tower, item_tower: Tower, scale: float = 5.0) -> None:
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.a = nn.Parameter(torch.tensor(float(scale)))
        self.b = nn.Parameter(torch.zeros(()))

    def score(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return self.a * (u * v).sum(dim=-1) + self.b

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.score(self.user_tower(inputs), self.item_tower(inputs))
