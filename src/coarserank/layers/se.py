"""Squeeze-and-excitation gates over field embeddings: one weight per field and row.

Two forms share the idea that weak fields are damped per request:

- :class:`SEGate` (COLD, Wang et al. 2020): ``s = sigmoid(W [e_1, ..., e_F] + b)`` from the
  concatenated field embeddings, one linear layer;
- :class:`FieldExcitation` (SENet as in FiBiNET, Huang et al. 2019, and the SENet two-tower model):
  squeeze each field embedding to its mean, excite through a bottleneck MLP,
  ``s = sigmoid(W_2 relu(W_1 z))`` with ``z_f = mean(e_f)``.

Both map ``[B, F, d]`` embeddings to ``[B, F]`` weights in (0, 1); the caller multiplies.
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["SEGate", "FieldExcitation"]


class SEGate(nn.Module):
    """COLD's SE block: one sigmoid weight per field from the concatenated field embeddings.

    Parameters
    ----------
    n_fields : int
        Number of fields ``F``.
    dim : int
        Embedding size ``d`` of each field.
    """

    def __init__(self, n_fields: int, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(n_fields * dim, n_fields)
        nn.init.zeros_(self.linear.bias)
        nn.init.normal_(self.linear.weight, std=0.01)

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        """Gate weights ``[B, F]`` in (0, 1) for embeddings ``[B, F, d]``."""
        return torch.sigmoid(self.linear(embedded.flatten(1)))


class FieldExcitation(nn.Module):
    """SENet gate: mean-pool each field (squeeze), bottleneck MLP and sigmoid (excitation).

    Parameters
    ----------
    n_fields : int
        Number of fields ``F``.
    reduction : int
        The bottleneck has ``ceil(F / reduction)`` units.
    """

    def __init__(self, n_fields: int, reduction: int = 2) -> None:
        super().__init__()
        width = max(1, math.ceil(n_fields / reduction))
        self.squeeze = nn.Linear(n_fields, width)
        self.excite = nn.Linear(width, n_fields)

    def forward(self, embedded: torch.Tensor) -> torch.Tensor:
        """Gate weights ``[B, F]`` in (0, 1) for embeddings ``[B, F, d]``."""
        return torch.sigmoid(self.excite(torch.relu(self.squeeze(embedded.mean(dim=-1)))))
