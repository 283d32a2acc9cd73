"""Shared nn blocks: schema-driven feature embedding, MLP, FM interaction."""

from coarserank.layers.blocks import MLP, fm_interaction
from coarserank.layers.embedding import FeatureEmbedding

__all__ = ["FeatureEmbedding", "MLP", "fm_interaction"]
