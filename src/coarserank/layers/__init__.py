"""Shared nn blocks: schema-driven feature embedding, MLP, FM interaction, target attention, cross network."""

from coarserank.layers.attention import SequenceAttention, TargetAttention
from coarserank.layers.blocks import MLP, fm_interaction
from coarserank.layers.cross import CrossNetwork
from coarserank.layers.embedding import FeatureEmbedding, masked_mean

__all__ = ["CrossNetwork", "FeatureEmbedding", "MLP", "SequenceAttention", "TargetAttention", "fm_interaction",
           "masked_mean"]
