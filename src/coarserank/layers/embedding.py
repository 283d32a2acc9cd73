"""Schema-driven feature embedding shared by the teacher and both towers."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from coarserank.data.schema import PAD, Field, Schema
from coarserank.layers.blocks import sum_fields

__all__ = ["FeatureEmbedding", "EmbeddedFields", "masked_mean"]


def masked_mean(e: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Mean of ``e`` ``[B, L, d]`` over the non-padding slots of ``codes`` ``[B, L]`` (all padding -> 0)."""
    count = (codes != PAD).sum(dim=1, keepdim=True).clamp(min=1).to(e.dtype)
    return sum_fields(e) / count


class FeatureEmbedding(nn.Module):
    """Embed every field of ``schema`` to a ``dim``-vector: ``[B, F, dim]``.

    categorical: table lookup; multi and sequence: mean over the non-padding slots (all padding ->
    zeros); numeric: value times a learned vector. A sequence shares the table of its item-side
    field ``of`` when that field is in the schema (the teacher), else it has its own (a user tower).

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
        names = set(schema.names)
        for f in schema.fields:
            if f.kind == "numeric":
                self.scales[f.name] = nn.Parameter(torch.randn(dim) * init_std)
            elif not (f.kind == "sequence" and f.of in names):
                table = nn.Embedding(f.size, dim, padding_idx=PAD)
                nn.init.normal_(table.weight, std=init_std)
                with torch.no_grad():
                    table.weight[PAD].zero_()
                self.tables[f.name] = table

    def table(self, f: Field) -> nn.Embedding:
        """The embedding table a categorical, multi or sequence field looks up."""
        return self.tables[f.name] if f.name in self.tables else self.tables[f.of]

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.embed(inputs, self.schema.fields)

    def embed(self, inputs: dict[str, torch.Tensor], fields: Sequence[Field]) -> torch.Tensor:
        """``[B, len(fields), dim]``: those fields of the schema only, in that order (``inputs`` may hold
        only them)."""
        vectors = []
        for f in fields:
            x = inputs[f.name]
            if f.kind == "numeric":
                vectors.append(x.unsqueeze(-1) * self.scales[f.name])
            elif f.kind == "categorical":
                vectors.append(self.table(f)(x))
            else:
                vectors.append(masked_mean(self.table(f)(x), x))
        return torch.stack(vectors, dim=1)


class EmbeddedFields(nn.Module):
    """Base of a model that reads exactly the fields of its :class:`FeatureEmbedding` (``self.embedding``,
    set by the subclass): each tower of a student, the COLD model. ``schema`` is what the exporter reads."""

    embedding: FeatureEmbedding

    @property
    def schema(self) -> Schema:
        """The fields this module reads, in input order."""
        return self.embedding.schema
