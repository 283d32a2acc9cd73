"""The teacher, second family: DCN-v2 (cross network beside a DNN) over every field."""

from __future__ import annotations

import torch
from torch import nn

from coarserank.config import TeacherConfig
from coarserank.data.schema import Schema
from coarserank.layers import MLP, CrossNetwork, FeatureEmbedding, SequenceAttention
from coarserank.teacher.deepfm import sequence_attention

__all__ = ["DCNv2", "build_dcn"]


class DCNv2(nn.Module):
    """logit = linear([cross(x0), DNN(x0)]) with ``x0`` the concatenated field vectors (parallel
    DCN-v2); sequences pooled by target attention as in :class:`~coarserank.teacher.DeepFM`."""

    def __init__(self, embedding: FeatureEmbedding, attention: SequenceAttention, cross: CrossNetwork,
                 dnn: MLP, head: nn.Linear) -> None:
        super().__init__()
        self.embedding = embedding
        self.attention = attention
        self.cross = cross
        self.dnn = dnn
        self.head = head

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        x0 = self.attention(self.embedding(inputs), inputs, self.embedding).flatten(1)
        return self.head(torch.cat([self.cross(x0), self.dnn(x0)], dim=1)).squeeze(-1)


def build_dcn(schema: Schema, cfg: TeacherConfig) -> DCNv2:
    """A parallel DCN-v2 over ``schema`` sized by ``cfg`` (``cross_layers`` full-rank layers)."""
    width = len(schema) * cfg.embed_dim
    dnn = MLP(width, cfg.hidden, cfg.dropout)
    return DCNv2(FeatureEmbedding(schema, cfg.embed_dim), sequence_attention(schema, cfg),
                 CrossNetwork(width, cfg.cross_layers), dnn, nn.Linear(width + dnn.out_dim, 1))
