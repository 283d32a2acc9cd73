"""Training with the recall objective (sampled softmax over in-batch items) in the one training loop.

:class:`PairView` lets :func:`coarserank.distill.train.fit` drive a two-tower model under a loss that
needs *vectors*, not scores: in training mode its forward returns ``[B, 2, dim]`` (each row's user
vector, attended to the row's item for several interests, and the item vector); in evaluation mode
the model's own score, so validation GAUC and early stopping work as for every other model.

:func:`recall_loss_fn` builds the loss of :mod:`coarserank.distill.recall_losses` for one training
table: item identity from the item id field's codes, ``log Q`` from the training item counts (or
the streaming estimate), uniform extra negatives drawn from the items seen in training (their
item-side inputs from the item's first training row), the same user's other positives masked when
a user id field exists, and, with ``softmax_alpha > 0``, the teacher's logits over the same
candidates (:func:`pair_inputs`: user and context fields of the positive row, item fields of the
candidate; the teacher's cross fields cannot be rebuilt from codes and are left missing there).

:func:`check_recall_inputs` rejects what cannot train, before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from coarserank.config import StudentConfig
from coarserank.data.schema import PAD, STUDENT_ITEM_SIDES, Schema
from coarserank.distill.recall_losses import (
    Candidates,
    StreamingFrequency,
    candidate_log_q,
    frequencies_from_counts,
    sampled_softmax_loss,
)
from coarserank.distill.tensors import TensorTable
from coarserank.errors import ConfigError, DataError, SchemaError

__all__ = ["PairView", "RecallFields", "check_recall_inputs", "recall_loss_fn", "pair_inputs", "item_catalogue"]

LossFn = Callable[[torch.Tensor, TensorTable], torch.Tensor]


class PairView(nn.Module):
    """Training: ``[B, 2, dim]`` (user vector, item vector) per row; evaluation: the model's score."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        if not self.training:
            return self.model(inputs)
        if hasattr(self.model, "pair_vectors"):
            return self.model.pair_vectors(inputs)
        return torch.stack([self.model.user_tower(inputs), self.model.item_tower(inputs)], dim=1)


@dataclass(frozen=True)
class RecallFields:
    """Which encoded fields identify the item (required) and the user (optional, for masking)."""

    item: str
    user: str = ""


def check_recall_inputs(schema: Schema, train: TensorTable, cfg: StudentConfig, fields: RecallFields,
                        section: str) -> None:
    """Raise a one-line error if the sampled-softmax objective of ``section`` cannot train on ``train``."""
    item_fields = schema.select(STUDENT_ITEM_SIDES)
    if not len(item_fields):
        raise SchemaError(f"{section}: a recall model needs an item id or item features; no item-side "
                          "feature is declared in data.features")
    if fields.item not in item_fields.names or item_fields[fields.item].kind != "categorical":
        raise SchemaError(f"{section}.objective = \"sampled_softmax\" tells in-batch items apart by the item id: "
                          f"declare {fields.item!r} (data.item_col) as an item-side categorical feature "
                          f"(item-side features now: {', '.join(item_fields.names)})")
    positives = float(train.label.sum())
    if positives == 0:
        raise DataError(f"{section}.objective = \"sampled_softmax\" learns from positive exposures (label 1), "
                        "but the training split has none")
    per_batch = positives / len(train) * min(cfg.batch_size, len(train))
    if per_batch < 1.0:
        need = int(np.ceil(len(train) / positives))
        raise ConfigError(f"{section}.batch_size = {cfg.batch_size} holds {per_batch:.2f} positive rows per batch on "
                          f"average, so most batches have no positive for the sampled softmax; use at least {need}")


def item_catalogue(train: TensorTable, schema: Schema, item: str) -> tuple[dict[str, torch.Tensor], np.ndarray]:
    """Item-side inputs of every item code seen in ``train`` (from its first row) and the training
    row count per item code (``bincount`` over the item id field's vocabulary)."""
    codes = train.inputs[item].cpu().numpy()
    _, first = np.unique(codes, return_index=True)
    rows = torch.from_numpy(np.sort(first))
    inputs = {f: train.inputs[f].cpu()[rows] for f in schema.select(STUDENT_ITEM_SIDES).names}
    return inputs, np.bincount(codes, minlength=schema[item].size)


def pair_inputs(inputs: dict[str, torch.Tensor], schema: Schema, rows: torch.Tensor,
                candidates: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Teacher inputs for every (positive row, candidate) pair, ``P * C`` rows, row-major: user and
    context fields of ``rows``, item fields of the candidates, cross fields missing (PAD / 0)."""
    n_cand = next(iter(candidates.values())).shape[0]
    out: dict[str, torch.Tensor] = {}
    for f in schema.fields:
        if f.side in STUDENT_ITEM_SIDES:
            x = candidates[f.name]
            out[f.name] = x.repeat((rows.numel(),) + (1,) * (x.dim() - 1))
        elif f.side == "cross":
            x = inputs[f.name][rows]
            out[f.name] = torch.full_like(x, PAD).repeat_interleave(n_cand, dim=0)
        else:
            out[f.name] = inputs[f.name][rows].repeat_interleave(n_cand, dim=0)
    return out


def recall_loss_fn(model: nn.Module, train: TensorTable, schema: Schema, cfg: StudentConfig,
                   fields: RecallFields, *, teacher: nn.Module | None = None,
                   teacher_temperature: float = 1.0, seed: int = 0) -> LossFn:
    """The sampled-softmax loss of ``cfg`` for ``model`` (wrapped in :class:`PairView`) on ``train``."""
    catalogue, counts = item_catalogue(train, schema, fields.item)
    freq = torch.from_numpy(frequencies_from_counts(counts))
    n_items = int(next(iter(catalogue.values())).shape[0])
    streaming = StreamingFrequency(schema[fields.item].size) if cfg.logq == "streaming" else None
    generator = torch.Generator().manual_seed(seed)
    teacher_schema = getattr(getattr(teacher, "embedding", None), "schema", None)
    if cfg.softmax_alpha > 0 and (teacher is None or teacher_schema is None):
        raise ConfigError("softmax_alpha > 0 distils the teacher's softmax over the candidates, but no teacher "
                          "with an embedding schema was given")

    def loss(out: torch.Tensor, batch: TensorTable) -> torch.Tensor:
        user, item = out[:, 0], out[:, 1]
        ids = batch.inputs[fields.item]
        log_q = None
        if cfg.logq == "counts":
            log_q = candidate_log_q(freq.to(ids.device)[ids] * len(batch), cfg.extra_negatives, n_items)
        elif streaming is not None:
            streaming.update(ids)
            log_q = candidate_log_q(streaming.probability(ids).to(ids.device), cfg.extra_negatives, n_items)
        extra, cand_inputs = None, {f: batch.inputs[f] for f in catalogue}
        if cfg.extra_negatives > 0:
            pick = torch.randint(0, n_items, (cfg.extra_negatives,), generator=generator)
            drawn = {f: x[pick].to(ids.device) for f, x in catalogue.items()}
            extra_ids = drawn[fields.item]
            extra_q = None
            if log_q is not None:
                expected = (freq.to(ids.device)[extra_ids] * len(batch) if streaming is None
                            else streaming.probability(extra_ids).to(ids.device))
                extra_q = candidate_log_q(expected, cfg.extra_negatives, n_items)
            extra = Candidates(model.item_tower(drawn).float(), extra_ids, extra_q)
            cand_inputs = {f: torch.cat([cand_inputs[f], drawn[f]]) for f in catalogue}
        positive = batch.label > 0.5
        users = batch.inputs[fields.user] if fields.user else None
        z = None
        if cfg.softmax_alpha > 0 and teacher is not None and teacher_schema is not None and bool(positive.any()):
            rows = torch.nonzero(positive, as_tuple=True)[0]
            with torch.no_grad():
                pairs = pair_inputs(batch.inputs, teacher_schema, rows, cand_inputs)
                z = teacher(pairs).float().reshape(rows.numel(), -1)
        return sampled_softmax_loss(user, item, ids, positive, temperature=cfg.softmax_temperature, log_q=log_q,
                                    extra=extra, users=users, teacher=z, alpha=cfg.softmax_alpha,
                                    teacher_temperature=teacher_temperature)

    return loss
