"""Tower families that keep more of the input alive until the final inner product.

Every tower maps the fields of one side to a vector ``[B, D]`` and reads only its own schema, so
the user tower never sees an item field (tests hold it). They plug into
:class:`~coarserank.student.two_tower.TwoTower`, whose score stays ``a * <u, v> + b``: one inner
product per candidate at serving time whatever the family.

- :class:`SENetTower`: a squeeze-excitation gate (:class:`~coarserank.layers.FieldExcitation`)
  weighs each field embedding per request before the MLP (Huang et al., FiBiNET, RecSys 2019; the
  SENet two-tower of the "Pre-ranking" literature).
- :class:`ShortcutTower`: chosen raw field embeddings (or the top fields by SE weight, per request)
  skip the MLP and join the final vector through a linear map, so ``D`` does not grow.
- :class:`ParallelTower`: several channels per side (MLP, DCN-v2 cross, FM-style pooled embedding);
  the user side scales channel ``c`` by a learnable weight ``w_c`` (and optionally by attention
  weights from the user's channel vectors), so ``<u, v> = sum_c w_c <u_c, v_c>``
  (Parallel towers, e.g. Song et al., "Towards a better tradeoff ...", 2022).
- :class:`DATTower`: an augmentation vector per id joins the bottom of the tower (Yu et al., "A Dual
  Augmented Two-tower Model", DLP-KDD 2021); the mimic loss that trains it lives in
  :mod:`coarserank.distill.families` (models here do their forward pass only).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from coarserank.layers import MLP, CrossNetwork, EmbeddedFields, FeatureEmbedding, FieldExcitation, sum_fields

__all__ = ["SENetTower", "ShortcutTower", "ParallelTower", "DATTower", "CHANNELS"]

CHANNELS = ("mlp", "cross", "fm")


def unit(x: torch.Tensor) -> torch.Tensor:
    """L2-normalised rows (a zero row stays zero)."""
    return F.normalize(x, dim=-1, eps=1e-8)


class SENetTower(EmbeddedFields):
    """Embeddings ``e [B, F, d]`` -> ``e * SE(e)`` -> MLP -> L2-normalised vector ``[B, dim]``."""

    def __init__(self, embedding: FeatureEmbedding, gate: FieldExcitation, mlp: MLP) -> None:
        super().__init__()
        self.embedding = embedding
        self.gate = gate
        self.mlp = mlp

    def gates(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The SE weights ``[B, F]`` (fields in schema order): the importance signal the run reports."""
        return self.gate(self.embedding(inputs))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(inputs)
        return unit(self.mlp((e * self.gate(e).unsqueeze(-1)).flatten(1)))


class ShortcutTower(EmbeddedFields):
    """``unit(MLP(x) + W s)``: ``s`` holds the shortcut fields' embeddings, ``W`` maps them to ``dim``.

    With ``fields`` (positions in the schema) the shortcut is those raw embeddings and ``x`` the
    plain flattened embeddings. Without them (``gate`` given), ``x`` is the SE-gated embeddings and
    the shortcut keeps each row's ``top`` fields by gate weight (the others zeroed), so ``W`` still
    knows which field each block is.
    """

    def __init__(self, embedding: FeatureEmbedding, mlp: MLP, shortcut: nn.Linear, *,
                 fields: tuple[int, ...] = (), gate: FieldExcitation | None = None, top: int = 0) -> None:
        super().__init__()
        self.embedding = embedding
        self.mlp = mlp
        self.shortcut = shortcut
        self.fields = list(fields)
        self.gate = gate
        self.top = top

    def gates(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The SE weights ``[B, F]`` (top-k shortcut only)."""
        if self.gate is None:
            raise AttributeError("this shortcut tower has fixed shortcut fields and no SE gate")
        return self.gate(self.embedding(inputs))

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        e = self.embedding(inputs)
        if self.gate is None:
            return unit(self.mlp(e.flatten(1)) + self.shortcut(e[:, self.fields].flatten(1)))
        s = self.gate(e)
        g = e * s.unsqueeze(-1)
        kth = torch.topk(s, self.top, dim=1).values[:, -1:]
        kept = g * (s >= kth).to(g.dtype).unsqueeze(-1)
        return unit(self.mlp(g.flatten(1)) + self.shortcut(kept.flatten(1)))


class _Cross(nn.Module):
    """DCN-v2 cross network over the flattened embeddings, then a linear map to ``dim``."""

    def __init__(self, width: int, layers: int, dim: int) -> None:
        super().__init__()
        self.cross = CrossNetwork(width, layers)
        self.out = nn.Linear(width, dim)

    @property
    def width(self) -> int:
        """The channel's vector size."""
        return self.out.out_features

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return unit(self.out(self.cross(e.flatten(1))))


class _Deep(nn.Module):
    def __init__(self, mlp: MLP) -> None:
        super().__init__()
        self.mlp = mlp

    @property
    def width(self) -> int:
        """The channel's vector size."""
        return self.mlp.out_dim

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return unit(self.mlp(e.flatten(1)))


class _Pooled(nn.Module):
    """FM-style channel: the sum of the field embeddings, not normalised, so the inner product of
    two sides' channels is FM's sum of every user-field x item-field interaction ``<e_f, e_g>``."""

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return sum_fields(e)


def channel(name: str, n_fields: int, embed_dim: int, hidden: tuple[int, ...], dropout: float, dim: int,
            cross_layers: int) -> nn.Module:
    """One parallel-tower channel on ``[B, F, d]`` embeddings."""
    if name == "mlp":
        return _Deep(MLP(n_fields * embed_dim, hidden, dropout, out_dim=dim))
    if name == "cross":
        return _Cross(n_fields * embed_dim, cross_layers, dim)
    if name == "fm":
        return _Pooled()
    raise ValueError(f"unknown channel {name!r}; expected one of {', '.join(CHANNELS)}")


class ParallelTower(EmbeddedFields):
    """One shared embedding, several channels; the output concatenates the scaled channel vectors.

    ``weighted`` (the user side) scales channel ``c`` by the learnable ``weights[c]`` and, with
    ``attention``, by ``C * softmax(A [u_1, ..., u_C])_c`` computed from this row's channel vectors;
    the item side concatenates them unscaled. So ``<u, v> = sum_c scale_c <u_c, v_c>``.
    """

    def __init__(self, embedding: FeatureEmbedding, channels: dict[str, nn.Module], *, weighted: bool = False,
                 attention: nn.Linear | None = None) -> None:
        super().__init__()
        self.embedding = embedding
        self.channels = nn.ModuleDict(channels)
        self.weights = nn.Parameter(torch.ones(len(channels))) if weighted else None
        self.attention = attention
        widths = [embedding.dim if name == "fm" else module.width for name, module in channels.items()]
        spread = torch.repeat_interleave(torch.eye(len(widths)), torch.tensor(widths), dim=1)
        self.register_buffer("spread", spread, persistent=False)  # [C, D]: channel c's columns are 1

    def channel_vectors(self, inputs: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        """Each channel's vector ``[B, D_c]``, in channel order, before scaling."""
        e = self.embedding(inputs)
        return [module(e) for module in self.channels.values()]

    def channel_scale(self, vectors: list[torch.Tensor]) -> torch.Tensor | None:
        """Per-row channel weights ``[B, C]`` (``None`` on the unscaled side)."""
        if self.weights is None:
            return None
        if self.attention is None:
            return self.weights.unsqueeze(0).expand(vectors[0].shape[0], -1)
        return self.weights * len(vectors) * torch.softmax(self.attention(torch.cat(vectors, dim=-1)), dim=-1)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        vectors = self.channel_vectors(inputs)
        joined = torch.cat(vectors, dim=-1)
        if self.weights is None:
            return joined
        if self.attention is None:  # [D] weights: a constant of the exported graph
            return joined * (self.weights @ self.spread)
        return joined * (self.channel_scale(vectors) @ self.spread)


class DATTower(EmbeddedFields):
    """``unit(MLP([flatten(e), a_id]))``: the row's augmentation vector ``a_id`` joins the bottom."""

    def __init__(self, embedding: FeatureEmbedding, augment: nn.Embedding, id_field: str, mlp: MLP) -> None:
        super().__init__()
        self.embedding = embedding
        self.augment = augment
        self.id_field = id_field
        self.mlp = mlp

    def augmentation(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """The augmentation vectors ``[B, dim]`` of the rows' ids."""
        return self.augment(inputs[self.id_field])

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return unit(self.mlp(torch.cat([self.embedding(inputs).flatten(1), self.augmentation(inputs)], dim=-1)))
