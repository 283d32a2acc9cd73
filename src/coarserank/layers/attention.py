"""Target attention over behaviour sequences (DIN, Zhou et al., KDD 2018)."""

from __future__ import annotations

import torch
from torch import nn

from coarserank.data.schema import PAD, Schema
from coarserank.layers.blocks import MLP
from coarserank.layers.embedding import FeatureEmbedding

__all__ = ["TargetAttention", "SequenceAttention"]


class TargetAttention(nn.Module):
    """DIN's activation unit: ``w_j = MLP([q, k_j, q - k_j, q * k_j])``, output ``sum_j w_j k_j``.

    The weights are not normalised (DIN keeps the intensity of the user's interest: many relevant
    history items weigh more than one); padding slots weigh zero.
    """

    def __init__(self, dim: int, hidden: tuple[int, ...] = (64, 32)) -> None:
        super().__init__()
        self.mlp = MLP(4 * dim, hidden, out_dim=1)

    def forward(self, query: torch.Tensor, keys: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        q = query.unsqueeze(1).expand_as(keys)
        w = self.mlp(torch.cat([q, keys, q - keys, q * keys], dim=-1)).squeeze(-1)
        w = w.masked_fill(codes == PAD, 0.0)
        return (w.unsqueeze(-1) * keys).sum(dim=1)


class SequenceAttention(nn.Module):
    """Replaces each sequence field's pooled vector by target attention against its ``of`` field.

    Works on the ``[B, F, d]`` output of a :class:`FeatureEmbedding` over a schema that holds both
    the sequence and its item-side ``of`` field (the teacher's), so the candidate item changes the
    history's weights. A schema without sequences passes through unchanged.
    """

    def __init__(self, schema: Schema, dim: int, hidden: tuple[int, ...] = (64, 32)) -> None:
        super().__init__()
        names = schema.names
        self.pairs = [(f.name, names.index(f.name), names.index(f.of))
                      for f in schema.fields if f.kind == "sequence" and f.of in names]
        self.units = nn.ModuleDict({name: TargetAttention(dim, hidden) for name, _, _ in self.pairs})

    def forward(self, v: torch.Tensor, inputs: dict[str, torch.Tensor], embedding: FeatureEmbedding) -> torch.Tensor:
        if not self.pairs:
            return v
        slots = list(v.unbind(dim=1))
        for name, at, of in self.pairs:
            codes = inputs[name]
            keys = embedding.table(embedding.schema[name])(codes)
            slots[at] = self.units[name](v[:, of], keys, codes)
        return torch.stack(slots, dim=1)
