"""The COLD-style coarse model: field embeddings -> squeeze-and-excitation gate -> small MLP -> logit.

It is both what the COLD sweep (:mod:`coarserank.cold`) trains per point and the ``cold`` student
family (``student.family = "cold"``): distilled like the towers, served by scoring candidate rows.

COLD (Wang et al., 2020, "COLD: Towards the Next Generation of Pre-Ranking System") puts a
squeeze-and-excitation (SE) block between the embeddings and the MLP. With ``e_1 .. e_F`` the
field embeddings (``F`` fields, ``d`` dimensions each), the gate is::

    s = sigmoid(W [e_1, ..., e_F] + b)      W: [F, F*d], b: [F]     one weight per field and row
    v_f = s_f * e_f                          the MLP sees the gated embeddings

and a field's importance is its gate weight averaged over validation rows
(:func:`coarserank.cold.importance.se_importance`; a run reports it for a COLD student). Unlike a
two-tower model, the COLD model may read every side, crosses included, and is evaluated once per
candidate. Modules here do their
forward pass only; :func:`coarserank.distill.train.fit` trains them.

Example
-------
>>> model = build_cold_model(schema, embed_dim=8, hidden=(32,))   # doctest: +SKIP
>>> logits, gates = model.forward_with_gates(batch)                # doctest: +SKIP
>>> logits.shape, gates.shape                                      # doctest: +SKIP
(torch.Size([B]), torch.Size([B, F]))
"""

from __future__ import annotations

import torch
from torch import nn

from coarserank.data.schema import Schema
from coarserank.errors import ConfigError
from coarserank.layers import MLP, EmbeddedFields, FeatureEmbedding, SEGate
from coarserank.student.cold_scorer import ColdScorer

__all__ = ["ColdModel", "build_cold_model"]


class ColdModel(EmbeddedFields):
    """logit = MLP(flatten(gate * embeddings)); reads exactly the fields of its embedding's schema.

    Parameters
    ----------
    embedding : FeatureEmbedding
        Embeds the selected fields to ``[B, F, d]``.
    gate : SEGate
        Field weights ``[B, F]``.
    mlp : MLP
        Maps ``F * d`` gated values to one logit.
    """

    def __init__(self, embedding: FeatureEmbedding, gate: SEGate, mlp: MLP) -> None:
        super().__init__()
        self.embedding = embedding
        self.gate = gate
        self.mlp = mlp

    def forward_with_gates(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B]`` and the SE gate weights ``[B, F]`` (fields in schema order)."""
        e = self.embedding(inputs)
        s = self.gate(e)
        return self.mlp((e * s.unsqueeze(-1)).flatten(1)).squeeze(-1), s

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``[B]``."""
        return self.forward_with_gates(inputs)[0]

    def for_serving(self) -> nn.Module:
        """The same logits in the form the exporter writes (:class:`~coarserank.student.cold_scorer.ColdScorer`)."""
        return ColdScorer(self)


def build_cold_model(schema: Schema, embed_dim: int, hidden: tuple[int, ...], dropout: float = 0.0) -> ColdModel:
    """A COLD model over every field of ``schema``.

    Parameters
    ----------
    schema : Schema
        The selected fields (any sides, crosses included).
    embed_dim : int
        Embedding size per field.
    hidden : tuple[int, ...]
        MLP widths after the gate.
    dropout : float
        Dropout after each hidden layer.

    Raises
    ------
    ConfigError
        If ``schema`` has no fields or ``embed_dim < 1``.
    """
    if len(schema) == 0:
        raise ConfigError("a COLD model needs at least one field; the selected schema is empty")
    if embed_dim < 1:
        raise ConfigError(f"cold.embed_dim must be >= 1, got {embed_dim}")
    embedding = FeatureEmbedding(schema, embed_dim)
    mlp = MLP(len(schema) * embed_dim, hidden, dropout, out_dim=1)
    return ColdModel(embedding, SEGate(len(schema), embed_dim), mlp)
