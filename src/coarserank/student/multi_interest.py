"""Multi-interest users: a user tower that returns ``K`` vectors ``[B, K, dim]`` (MIND, ComiRec).

One user vector tends to collapse onto the head of the catalogue when a user's history mixes
several interests; ``K`` vectors keep them apart. The interests are read from the user's behaviour
sequence (a ``sequence`` field: ``[B, L]`` item codes, PAD = 0, most recent first):

``attention`` (ComiRec-SA, Cen et al., KDD 2020)
    ``K`` attention heads over the sequence, ``A = softmax_L(W2 tanh(W1 (h_l + p_l)))`` with a
    learned position vector ``p_l`` per slot, interest ``z_k = sum_l A_kl h_l``.
``routing`` (MIND / ComiRec-DR capsules, Li et al., CIKM 2019)
    behaviour capsules ``h_l`` are mapped per interest (``W_k h_l``) and routed to ``K`` interest
    capsules by dynamic routing (routing logits start at zero, ``iterations`` rounds, squash);
    padding slots route nothing.

Each interest is joined with the user's profile (the other user and context fields, embedded and
flattened), passed through one shared MLP and L2-normalised. Users without history get ``K``
equal vectors from their profile alone.

Training (:meth:`MultiInterestTwoTower.pair_vectors`) uses label-aware attention: against the row's
target item ``v`` the interests are weighted by ``softmax_k(sharpness * <u_k, v>)`` (``sharpness =
0``: the hard maximum). Serving scores an item by the maximum over interests, for coarse ranking
(:meth:`MultiInterestTwoTower.forward`) and for recall (one Faiss query per interest, merged by
score).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from coarserank.config import RecallConfig
from coarserank.data.schema import PAD, STUDENT_ITEM_SIDES, STUDENT_USER_SIDES, Field, Schema
from coarserank.errors import ConfigError, SchemaError
from coarserank.layers import MLP, FeatureEmbedding
from coarserank.student.two_tower import Tower

__all__ = ["SelfAttentiveInterests", "RoutingInterests", "MultiInterestTower", "MultiInterestTwoTower",
           "build_multi_interest", "sequence_field", "label_aware"]

_NEG = -1e9  # padding logits: finite, so an all-padding row gives zero weights instead of NaN


class SelfAttentiveInterests(nn.Module):
    """``K`` attention heads over the sequence: ``[B, L, d]`` -> ``[B, K, d]``."""

    def __init__(self, dim: int, interests: int, max_len: int, hidden: int | None = None) -> None:
        super().__init__()
        self.position = nn.Parameter(torch.randn(max_len, dim) * 0.01)
        self.w1 = nn.Linear(dim, hidden or 4 * dim, bias=False)
        self.w2 = nn.Linear(hidden or 4 * dim, interests, bias=False)
        self.interests = interests

    def forward(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        keep = (codes != PAD).unsqueeze(-1)  # [B, L, 1]
        logits = self.w2(torch.tanh(self.w1(h + self.position[: h.shape[1]])))  # [B, L, K]
        weights = torch.softmax(logits.masked_fill(~keep, _NEG), dim=1) * keep.to(h.dtype)
        return torch.einsum("blk,bld->bkd", weights, h)


def _squash(s: torch.Tensor) -> torch.Tensor:
    n2 = (s * s).sum(dim=-1, keepdim=True)
    return s * (n2 / (1.0 + n2)) / torch.sqrt(n2 + 1e-9)


class RoutingInterests(nn.Module):
    """Behaviour-to-interest dynamic routing: ``[B, L, d]`` -> ``[B, K, d]`` interest capsules.

    Intermediate routing rounds use detached predictions (as ComiRec-DR), so gradients flow
    through the last round only.
    """

    def __init__(self, dim: int, interests: int, iterations: int = 3) -> None:
        super().__init__()
        if iterations < 1:
            raise ConfigError(f"routing iterations must be >= 1, got {iterations}")
        self.weight = nn.Parameter(torch.randn(interests, dim, dim) * dim ** -0.5)
        self.iterations = iterations
        self.interests = interests

    def forward(self, h: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        keep = (codes != PAD).to(h.dtype).unsqueeze(1)  # [B, 1, L]
        pred = torch.einsum("kde,ble->bkld", self.weight, h)  # [B, K, L, d]
        fixed = pred.detach()
        logits = torch.zeros_like(pred[..., 0])  # [B, K, L]
        out = pred[:, :, 0]
        for i in range(self.iterations):
            coupling = torch.softmax(logits, dim=1) * keep
            last = i == self.iterations - 1
            out = _squash(torch.einsum("bkl,bkld->bkd", coupling, pred if last else fixed))
            if not last:
                logits = logits + torch.einsum("bkld,bkd->bkl", fixed, out)
        return out


class MultiInterestTower(nn.Module):
    """Profile fields + one behaviour sequence -> ``K`` L2-normalised vectors ``[B, K, dim]``.

    Parts are built outside (``build_multi_interest``): the profile embedding (``None`` when the
    user side has only the sequence), the sequence's embedding table (shared with the item tower
    when the sequence reads the item tower's ``of`` field), the interest extractor and the MLP.
    """

    def __init__(self, schema: Schema, profile: FeatureEmbedding | None, table: nn.Embedding,
                 extractor: nn.Module, mlp: MLP) -> None:
        super().__init__()
        self._schema = schema
        self.sequence = next(f.name for f in schema.fields if f.kind == "sequence")
        self.profile = profile
        self.table = table
        self.extractor = extractor
        self.mlp = mlp

    @property
    def schema(self) -> Schema:
        """Every field the tower reads (profile fields and the sequence), in schema order."""
        return self._schema

    @property
    def interests(self) -> int:
        """``K``, the vectors per user."""
        return int(self.extractor.interests)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        codes = inputs[self.sequence]
        z = self.extractor(self.table(codes), codes)  # [B, K, e]
        if self.profile is not None:
            p = self.profile(inputs).flatten(1)
            z = torch.cat([z, p.unsqueeze(1).expand(-1, z.shape[1], -1)], dim=-1)
        return F.normalize(self.mlp(z), dim=-1, eps=1e-8)


def label_aware(interests: torch.Tensor, target: torch.Tensor, sharpness: float) -> torch.Tensor:
    """The user vector against ``target`` ``[B, dim]``: interests ``[B, K, dim]`` weighted by
    ``softmax_k(sharpness * <u_k, target>)``; ``sharpness = 0`` takes the best interest (hard max)."""
    dots = torch.einsum("bkd,bd->bk", interests, target)
    if sharpness == 0.0:
        weights = F.one_hot(dots.argmax(dim=1), interests.shape[1]).to(interests.dtype)
    else:
        weights = torch.softmax(sharpness * dots, dim=1)
    return torch.einsum("bk,bkd->bd", weights, interests)


class MultiInterestTwoTower(nn.Module):
    """``K`` user vectors and one item vector; score ``s = a * max_k <u_k, v> + b``.

    Example
    -------
    >>> model = build_multi_interest(schema, RecallConfig(interests=4))   # doctest: +SKIP
    >>> model.user_tower(batch).shape                                      # doctest: +SKIP
    torch.Size([B, 4, 64])
    """

    def __init__(self, user_tower: MultiInterestTower, item_tower: Tower, scale: float = 5.0,
                 sharpness: float = 20.0) -> None:
        super().__init__()
        self.user_tower = user_tower
        self.item_tower = item_tower
        self.a = nn.Parameter(torch.tensor(float(scale)))
        self.b = nn.Parameter(torch.zeros(()))
        self.sharpness = float(sharpness)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        u, v = self.user_tower(inputs), self.item_tower(inputs)
        return self.a * torch.einsum("bkd,bd->bk", u, v).amax(dim=1) + self.b

    def pair_vectors(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """``[B, 2, dim]``: each row's label-aware user vector (against its own item) and item vector."""
        u, v = self.user_tower(inputs), self.item_tower(inputs)
        return torch.stack([label_aware(u, v, self.sharpness), v], dim=1)


def sequence_field(schema: Schema, name: str = "") -> Field:
    """The user-side sequence field ``name`` ("" = the first one); ``SchemaError`` if there is none."""
    sequences = [f for f in schema.fields if f.kind == "sequence" and f.side in STUDENT_USER_SIDES]
    if not sequences:
        raise SchemaError("recall.family = \"multi_interest\" reads the user's behaviour sequence, but no "
                          "data.features entry has kind = \"sequence\"; add one (e.g. of = \"item_id\") or "
                          "use recall.family = \"two_tower\"")
    if not name:
        return sequences[0]
    for f in sequences:
        if f.name == name:
            return f
    raise SchemaError(f"recall.sequence = {name!r} is not a sequence feature; sequence features: "
                      f"{', '.join(f.name for f in sequences)}")


def build_multi_interest(schema: Schema, cfg: RecallConfig) -> MultiInterestTwoTower:
    """The multi-interest model of ``cfg`` over ``schema``'s user/context and item fields."""
    if cfg.interests < 1:
        raise ConfigError(f"recall.interests (K) must be >= 1, got {cfg.interests}")
    seq = sequence_field(schema, cfg.sequence)
    item_schema = schema.select(STUDENT_ITEM_SIDES)
    if not len(item_schema):
        raise SchemaError("the recall model needs item-side features (an item id or item features); none declared")
    item_embedding = FeatureEmbedding(item_schema, cfg.embed_dim)
    item_tower = Tower(item_embedding, MLP(len(item_schema) * cfg.embed_dim, cfg.hidden, cfg.dropout,
                                           out_dim=cfg.dim))
    if seq.of in item_embedding.tables and item_embedding.tables[seq.of].num_embeddings == seq.size:
        table = item_embedding.tables[seq.of]  # the history and the target item share one embedding
    else:
        table = nn.Embedding(seq.size, cfg.embed_dim, padding_idx=PAD)
        nn.init.normal_(table.weight, std=0.01)
        with torch.no_grad():
            table.weight[PAD].zero_()
    user_fields = schema.select(STUDENT_USER_SIDES)
    profile_schema = Schema(tuple(f for f in user_fields.fields if f.kind != "sequence"))
    user_schema = Schema(tuple(f for f in user_fields.fields if f.kind != "sequence" or f.name == seq.name))
    profile = FeatureEmbedding(profile_schema, cfg.embed_dim) if len(profile_schema) else None
    if cfg.extractor == "routing":
        extractor: nn.Module = RoutingInterests(cfg.embed_dim, cfg.interests, cfg.routing_iterations)
    else:
        extractor = SelfAttentiveInterests(cfg.embed_dim, cfg.interests, seq.max_len)
    mlp = MLP((len(profile_schema) + 1) * cfg.embed_dim, cfg.hidden, cfg.dropout, out_dim=cfg.dim)
    user_tower = MultiInterestTower(user_schema, profile, table, extractor, mlp)
    return MultiInterestTwoTower(user_tower, item_tower, sharpness=cfg.sharpness)
