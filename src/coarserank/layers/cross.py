"""The DCN-v2 cross network (Wang et al., WWW 2021): explicit bounded-degree feature crosses."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["CrossNetwork"]


class CrossNetwork(nn.Module):
    """``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l`` with full-rank ``W_l``; ``[B, d] -> [B, d]``."""

    def __init__(self, dim: int, layers: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(dim, dim) for _ in range(layers))
        for layer in self.layers:
            nn.init.zeros_(layer.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in self.layers:
            x = x0 * layer(x) + x
        return x
