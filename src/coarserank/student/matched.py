"""Towers whose vectors end with their side's shared match-value embeddings (``match_channel``).

``with_match_channel(model, pairs, dim)`` replaces a two-tower model's ``user_tower`` and
``item_tower`` by :class:`MatchedTower` wrappers over one :class:`~coarserank.layers.MatchEmbedding`:
the user vector gains the embedding of the user's value of each match pair, the item vector the
embedding of the item's value, so ``<u, v>`` gains ``sum over pairs <e(a_u), e(b_i)>`` — largest when
the values are equal — and serving is still one inner product. A multi-interest user tower's ``K``
vectors all end with the same part.

The towers' own vectors are unit-norm, the match parts are not. One last coordinate gives every item
vector the same norm ``M`` (Bachrach et al., RecSys 2014), as inner-product indexes assume:
``sqrt(M^2 - |v|^2)`` on the item side, 0 on the user side, ``M^2 = 1.01 (1 + sum over pairs of the
largest squared norm in the pair's table)`` — a bound for any item, unseen ones included — so inner
products are unchanged. The vectors are longer by ``len(pairs) * dim + 1``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from coarserank.data.matches import MatchPair
from coarserank.data.schema import Schema
from coarserank.errors import SchemaError
from coarserank.layers import MatchEmbedding

__all__ = ["MatchedTower", "with_match_channel"]

_MARGIN = 1.01  # M^2 a little above the largest |v|^2: the root near 0 would magnify float error (parity)


class MatchedTower(nn.Module):
    """``tower``'s vector(s) ``[B, d]`` or ``[B, K, d]`` followed by ``match.side(side, ...)``."""

    def __init__(self, tower: nn.Module, match: MatchEmbedding, side: str) -> None:
        super().__init__()
        missing = sorted(set(match.fields[side]) - set(tower.schema.names))
        if missing:
            raise SchemaError(f"the {side} tower does not read the match-cross fields {missing}")
        self.tower = tower
        self.match = match
        self.side = side

    @property
    def schema(self) -> Schema:
        """The wrapped tower's fields (the match fields are among them)."""
        return self.tower.schema

    @property
    def interests(self) -> int:
        """``K``, the vectors per user (1 for a tower with one vector)."""
        return int(getattr(self.tower, "interests", 1))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        t = self.tower(inputs)
        m = self.match.side(self.side, inputs).to(t.dtype)
        if t.dim() == 3:
            m = m.unsqueeze(1).expand(-1, t.shape[1], -1)
        x = torch.cat([t, m], dim=-1)
        if self.side == "user":
            last = torch.zeros_like(x[..., :1])
        else:  # no gradient: the user side's 0 multiplies it in every score
            bound = (1.0 + self.match.largest_squared_norms().sum()) * _MARGIN
            last = (bound - (x * x).sum(dim=-1, keepdim=True)).clamp(min=0).sqrt().detach()
        return torch.cat([x, last], dim=-1)


def with_match_channel(model: nn.Module, pairs: Sequence[MatchPair], dim: int) -> nn.Module:
    """``model`` with both towers wrapped (above); unchanged when ``pairs`` is empty."""
    if not pairs:
        return model
    match = MatchEmbedding(pairs, dim)
    model.user_tower = MatchedTower(model.user_tower, match, "user")
    model.item_tower = MatchedTower(model.item_tower, match, "item")
    return model
