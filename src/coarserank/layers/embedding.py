"""Schema-driven feature embedding shared by the teacher and both towers."""

from __future__ import annotations

import torch
from torch import nn

from coarserank.data.schema import PAD, Schema

__all__ = ["FeatureEmbedding"]


class FeatureEmbedding(nn.Module):
    """Embed every field of ``schema`` to a ``dim``-vector: ``[B, F, dim]``.

    categorical: table lookup; multi: mean over the non-padding slots (all padding -> zeros);
    numeric: value times a learned vector.

    Example
    -------
    >>> emb = FeatureEmbedding(schema, dim=16)     # doctest: +SKIP
    >>> emb(batch).shape                            # doctest: +SKIP
    torch.Size([B, len(schema), 16])
    """

    def __init__(self, schema: Schema, dim: int, init_std: float = 0.01) -> None:
        super().__init__()
        self.schema = schema
        self.dim = dim
        self.tables = nn.ModuleDict()
        self.scales = nn.ParameterDict()
        for f in schema.fields:
            if f.kind == "numeric":
                self.scales[f.name] = nn.Parameter(torch.randn(dim) * init_std)
            else:
                table = nn.Embedding(f.size, dim, padding_idx=PAD)
                nn.init.normal_(table.weight, std=init_std)
                with torch.no_grad():
                    table.weight[PAD].zero_()
                self.tables[f.name] = table

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        vectors = []
        for f in self.schema.fields:
            x = inputs[f.name]
            if f.kind == "numeric":
                vectors.append(x.unsqueeze(-1) * self.scales[f.name])
            elif f.kind == "categorical":
                vectors.append(self.tables[f.name](x))
            else:
                e = self.tables[f.name](x)
                count = (x != PAD).sum(dim=1, keepdim=True).clamp(min=1).to(e.dtype)
                vectors.append(e.sum(dim=1) / count)
        return torch.stack(vectors, dim=1)
