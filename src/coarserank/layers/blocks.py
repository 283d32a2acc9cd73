"""Small tensor-only blocks: MLP and the FM second-order interaction."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLP", "fm_interaction"]


class MLP(nn.Module):
    """Linear -> ReLU -> Dropout per hidden width, then an optional linear output layer."""

    def __init__(self, in_dim: int, hidden: tuple[int, ...], dropout: float = 0.0, out_dim: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        if out_dim is not None:
            layers.append(nn.Linear(width, out_dim))
            width = out_dim
        self.net = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def fm_interaction(v: torch.Tensor) -> torch.Tensor:
    """FM second-order term over fields: 0.5 * sum_k((sum_f v)^2 - sum_f v^2), ``[B, F, k] -> [B]``."""
    square_of_sum = v.sum(dim=1).pow(2)
    sum_of_square = v.pow(2).sum(dim=1)
    return 0.5 * (square_of_sum - sum_of_square).sum(dim=1)
