"""The teacher: DeepFM over every field (user, item, context and cross)."""

from __future__ import annotations

import torch
from torch import nn

from coarserank.config import TeacherConfig
from coarserank.data.schema import Schema
from coarserank.layers import MLP, FeatureEmbedding, SequenceAttention, fm_interaction

__all__ = ["DeepFM", "build_deepfm"]


class DeepFM(nn.Module):
    """logit = bias + first-order + FM second-order + DNN over all fields; forward only.

    Behaviour sequences enter as one field each, pooled by target attention against the candidate
    item (:class:`~coarserank.layers.SequenceAttention`; mean pooling when it holds no units).

    Example
    -------
    >>> teacher = build_deepfm(schema, TeacherConfig())    # doctest: +SKIP
    >>> teacher(batch).shape                                # doctest: +SKIP
    torch.Size([B])
    """

    def __init__(self, first_order: FeatureEmbedding, embedding: FeatureEmbedding, attention: SequenceAttention,
                 dnn: MLP) -> None:
        super().__init__()
        self.first_order = first_order
        self.embedding = embedding
        self.attention = attention
        self.dnn = dnn
        self.bias = nn.Parameter(torch.zeros(()))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        v = self.attention(self.embedding(inputs), inputs, self.embedding)
        first = self.first_order(inputs).sum(dim=(1, 2))
        deep = self.dnn(v.flatten(1)).squeeze(-1)
        return self.bias + first + fm_interaction(v) + deep


def sequence_attention(schema: Schema, cfg: TeacherConfig) -> SequenceAttention:
    """Target attention over the schema's sequences, or none (mean pooling) when ``cfg.attention`` is off."""
    return SequenceAttention(schema if cfg.attention else schema.select(sides=()), cfg.embed_dim,
                             cfg.attention_hidden)


def build_deepfm(schema: Schema, cfg: TeacherConfig) -> DeepFM:
    """A DeepFM over ``schema`` sized by ``cfg``."""
    embedding = FeatureEmbedding(schema, cfg.embed_dim)
    dnn = MLP(len(schema) * cfg.embed_dim, cfg.hidden, cfg.dropout, out_dim=1)
    return DeepFM(FeatureEmbedding(schema, 1), embedding, sequence_attention(schema, cfg), dnn)
