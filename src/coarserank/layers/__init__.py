"""Shared nn blocks: schema-driven feature embedding, MLP, FM interaction, target attention, cross network,
squeeze-and-excitation gates, shared match-value embeddings."""

from coarserank.layers.attention import SequenceAttention, TargetAttention
from coarserank.layers.blocks import MLP, fm_interaction, sum_fields
from coarserank.layers.cross import CrossNetwork
from coarserank.layers.embedding import EmbeddedFields, FeatureEmbedding, masked_mean
from coarserank.layers.match import MatchEmbedding
from coarserank.layers.se import FieldExcitation, SEGate

__all__ = ["CrossNetwork", "EmbeddedFields", "FeatureEmbedding", "FieldExcitation", "MatchEmbedding", "MLP", "SEGate", "SequenceAttention",
           "TargetAttention", "fm_interaction", "masked_mean", "sum_fields"]
