"""The teacher: DeepFM over every field (user, item, context and cross)."""

from __future__ import annotations

import torch
from torch import nn

from coarserank.config import TeacherConfig
from coarserank.data.schema import STUDENT_ITEM_SIDES, STUDENT_USER_SIDES, Schema
from coarserank.layers import MLP, FeatureEmbedding, SequenceAttention, fm_interaction, sum_fields

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

    @property
    def scores_pairs(self) -> bool:
        """Whether :meth:`pair_logits` applies: no sequence is read by target attention (that pools
        the user's history differently for every candidate)."""
        return not self.attention.pairs

    def pair_logits(self, rows: dict[str, torch.Tensor], items: dict[str, torch.Tensor],
                    pairs: dict[str, torch.Tensor], row: torch.Tensor, item: torch.Tensor, *,
                    per_row: int | None = None) -> torch.Tensor:
        """``forward`` on the pairs (``rows`` row ``row[p]``, ``items`` row ``item[p]``), each side's
        fields embedded once: user and context fields per row, item fields per item, only the cross
        fields per pair (``pairs``). Every term of DeepFM is a sum over fields up to the first ReLU, so
        each side's share of the first-order term, the FM sums and the first DNN layer is computed
        where its fields live and added to the pairs': entire-space distillation scores M pairs per
        exposure with many fewer products. ``per_row``: the pairs are row-major, ``per_row`` to a row
        (``row[p] == p // per_row``), so the row side is broadcast instead of gathered. Equal to
        ``forward`` up to float summation order."""
        if not self.scores_pairs:
            raise ValueError("pair_logits needs a DeepFM without target attention over sequences")
        schema, d = self.embedding.schema, self.embedding.dim
        row_side = schema.select(STUDENT_USER_SIDES).fields
        item_side = schema.select(STUDENT_ITEM_SIDES).fields
        pair_side = tuple(f for f in schema.fields if f not in row_side and f not in item_side)
        layer = self.dnn.net[0]
        columns = torch.arange(len(schema) * d, device=layer.weight.device).view(len(schema), d)  # per field
        # per pair: first-order term, FM sum and sum of squares, first DNN layer before its ReLU
        acc: list[torch.Tensor] = []
        for side, inputs, at, spread in ((pair_side, pairs, None, False), (item_side, items, item, False),
                                         (row_side, rows, row, per_row is not None)):
            if not side:
                continue
            v = self.embedding.embed(inputs, side)
            cols = columns[[schema.names.index(f.name) for f in side]].flatten()
            parts = [self.first_order.embed(inputs, side).sum(dim=(1, 2)), sum_fields(v), sum_fields(v.pow(2)),
                     v.flatten(1) @ layer.weight[:, cols].T]
            if not acc:  # fresh tensors: the other sides are added to them in place
                acc = [x if at is None else torch.index_select(x, 0, at) for x in parts]
                acc[3].add_(layer.bias)
            elif spread:
                for total, x in zip(acc, parts):
                    total.view(len(x), per_row, *x.shape[1:]).add_(x.unsqueeze(1))
            else:
                for total, x in zip(acc, parts):
                    total.add_(torch.index_select(x, 0, at))
        first, fm_sum, fm_square, hidden = acc
        for module in self.dnn.net[1:]:  # the DNN after its first layer; ReLU in place on the pairs' widths
            hidden = torch.relu_(hidden) if isinstance(module, nn.ReLU) else module(hidden)
        deep = hidden.squeeze(-1)
        return self.bias + first + 0.5 * (fm_sum.pow(2) - fm_square).sum(dim=1) + deep


def sequence_attention(schema: Schema, cfg: TeacherConfig) -> SequenceAttention:
    """Target attention over the schema's sequences, or none (mean pooling) when ``cfg.attention`` is off."""
    return SequenceAttention(schema if cfg.attention else schema.select(sides=()), cfg.embed_dim,
                             cfg.attention_hidden)


def build_deepfm(schema: Schema, cfg: TeacherConfig) -> DeepFM:
    """A DeepFM over ``schema`` sized by ``cfg``."""
    embedding = FeatureEmbedding(schema, cfg.embed_dim)
    dnn = MLP(len(schema) * cfg.embed_dim, cfg.hidden, cfg.dropout, out_dim=1)
    return DeepFM(FeatureEmbedding(schema, 1), embedding, sequence_attention(schema, cfg), dnn)
