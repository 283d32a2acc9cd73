"""Training with the recall objective (sampled softmax over in-batch items) in the one training loop.

:class:`PairView` lets :func:`coarserank.distill.train.fit` drive a two-tower (or multi-interest) model
under a loss that needs *vectors*, not scores: in training mode its forward returns ``[B, 2, dim]``
(each row's user vector, attended to the row's item for several interests, and the item vector) and,
given extra items, their item vectors in the same forward pass; in evaluation mode the model's own
score, so validation GAUC and the usual callbacks work as for every other model.

:func:`recall_loss_fn` builds the loss of :mod:`coarserank.distill.recall_losses` for one training
table:

- item identity: the row's catalogue index (``_item``, from the
  :class:`~coarserank.data.pairs.PairEncoder` columns) when present, else the item id field's codes;
- ``log Q``: from the training exposures per item (``counts``) or the streaming estimate;
- uniform extra negatives: drawn from the catalogue (the pair encoder's) or from the items seen in
  training (their item-side inputs from the item's first training row);
- the same user's other positives are masked when a user id field exists;
- ``softmax_alpha > 0``: the teacher's logits for up to ``softmax_teacher_rows`` positive rows of the
  batch against every candidate, the pairs encoded exactly by the pair encoder (crosses included).

:func:`check_recall_inputs` rejects what cannot train, before any training starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from coarserank.config import StudentConfig, TowerObjective
from coarserank.data.pairs import ROW_ITEM, PairEncoder
from coarserank.data.schema import STUDENT_ITEM_SIDES, Schema
from coarserank.distill.api import sampling_generator
from coarserank.distill.families import with_family_terms
from coarserank.distill.recall_losses import (
    Candidates,
    StreamingFrequency,
    candidate_log_q,
    frequencies_from_counts,
    sampled_softmax_loss,
)
from coarserank.distill.stream_table import StreamingTable
from coarserank.distill.tensors import TensorTable
from coarserank.distill.train import Callback, EpochInfo, FitResult, FitSettings, fit
from coarserank.errors import ConfigError, DataError, SchemaError

__all__ = ["PairView", "RecallFields", "check_recall_inputs", "recall_loss_fn", "fit_recall",
           "teacher_candidate_logits"]

LossFn = Callable[[nn.Module, TensorTable], torch.Tensor]


class PairView(nn.Module):
    """Training: ``[B, 2, dim]`` (user vector, item vector) per row, plus the item vectors of
    ``items`` when given; evaluation: the model's score."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: dict[str, torch.Tensor],
                items: dict[str, torch.Tensor] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if not self.training:
            return self.model(inputs)
        if hasattr(self.model, "pair_vectors"):
            pair = self.model.pair_vectors(inputs)
        else:
            pair = torch.stack([self.model.user_tower(inputs), self.model.item_tower(inputs)], dim=1)
        return pair if items is None else (pair, self.model.item_tower(items))


@dataclass(frozen=True)
class RecallFields:
    """Which encoded fields identify the item (its id field) and the user (optional, for masking)."""

    item: str
    user: str = ""


def check_recall_inputs(schema: Schema, train: TensorTable, cfg: TowerObjective, fields: RecallFields,
                        section: str) -> None:
    """Raise a one-line error if the sampled-softmax objective of ``section`` cannot train on ``train``."""
    item_fields = schema.select(STUDENT_ITEM_SIDES)
    if not len(item_fields):
        raise SchemaError(f"{section}: a recall model needs an item id or item features; no item-side "
                          "feature is declared in data.features")
    if ROW_ITEM not in train.inputs and (fields.item not in item_fields.names
                                         or item_fields[fields.item].kind != "categorical"):
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


@dataclass(frozen=True)
class _Catalogue:
    """Candidate items: item-side inputs per item, train exposures per item, and how rows name items."""

    inputs: dict[str, torch.Tensor]
    counts: np.ndarray
    identity: str  # the batch input holding each row's item identity (an index into the two above)


def _catalogue(train: TensorTable, schema: Schema, fields: RecallFields, pairs: PairEncoder | None) -> _Catalogue:
    item_names = schema.select(STUDENT_ITEM_SIDES).names
    if pairs is not None and ROW_ITEM in train.inputs:
        inputs = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
                  pairs.item_inputs(np.arange(pairs.n_items)).items() if k in item_names}
        return _Catalogue(inputs, pairs.item_train_rows_.astype(np.float64), ROW_ITEM)
    codes = train.inputs[fields.item].cpu().numpy()
    size = schema[fields.item].size
    first = np.full(size, -1, dtype=np.int64)
    seen, at = np.unique(codes, return_index=True)
    first[seen] = at
    rows = torch.from_numpy(np.where(first >= 0, first, at[0]))  # codes never seen are never drawn (count 0)
    inputs = {f: train.inputs[f].cpu()[rows] for f in item_names}
    return _Catalogue(inputs, np.bincount(codes, minlength=size).astype(np.float64), fields.item)


def recall_loss_fn(train: TensorTable, schema: Schema, cfg: TowerObjective, fields: RecallFields, *,
                   pairs: PairEncoder | None = None, teacher: nn.Module | None = None,
                   teacher_temperature: float = 1.0, seed: int = 0) -> LossFn:
    """The sampled-softmax loss of ``cfg`` for a :class:`PairView` module trained on ``train``."""
    cat = _catalogue(train, schema, fields, pairs)
    freq = torch.from_numpy(frequencies_from_counts(cat.counts))
    drawable = torch.from_numpy(np.flatnonzero(cat.counts > 0) if pairs is None else np.arange(cat.counts.size))
    n_items = int(drawable.numel())
    streaming = StreamingFrequency(cat.counts.size) if cfg.logq == "streaming" else None
    generator = sampling_generator(seed)  # per distributed rank: each rank draws its own negatives
    if cfg.softmax_alpha > 0 and (teacher is None or pairs is None):
        raise ConfigError("softmax_alpha > 0 distils the teacher's softmax over the candidates: it needs the teacher "
                          "and the training rows in memory (not data.streaming)")

    def expected(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
        if streaming is not None:
            return streaming.probability(ids).to(ids.device)
        return freq.to(ids.device)[ids] * batch_size

    def loss(module: nn.Module, batch: TensorTable) -> torch.Tensor:
        ids = batch.inputs[cat.identity]
        if streaming is not None:
            streaming.update(ids)
        extra_ids = None
        if cfg.extra_negatives > 0:
            extra_ids = drawable[torch.randint(0, n_items, (cfg.extra_negatives,), generator=generator)].to(ids.device)
            pair, extra_v = module(batch.inputs, {f: x.to(ids.device)[extra_ids] for f, x in cat.inputs.items()})
        else:
            pair = module(batch.inputs)
        pair = pair.float()
        log_q, extra = None, None
        if cfg.logq != "none":
            log_q = candidate_log_q(expected(ids, len(batch)), cfg.extra_negatives, n_items)
        if extra_ids is not None:
            extra_q = (candidate_log_q(expected(extra_ids, len(batch)), cfg.extra_negatives, n_items)
                       if log_q is not None else None)
            extra = Candidates(extra_v.float(), extra_ids, extra_q)
        positive = batch.label > 0.5
        users = batch.inputs[fields.user] if fields.user else None
        z, z_rows = None, None
        if cfg.softmax_alpha > 0 and bool(positive.any()):
            assert teacher is not None and pairs is not None
            z, z_rows = teacher_candidate_logits(teacher, pairs, batch, positive, ids, extra_ids, cfg, generator)
        return sampled_softmax_loss(pair[:, 0], pair[:, 1], ids, positive, temperature=cfg.softmax_temperature,
                                    log_q=log_q, extra=extra, users=users, teacher=z, teacher_rows=z_rows,
                                    alpha=cfg.softmax_alpha, teacher_temperature=teacher_temperature)

    return loss


@torch.no_grad()
def teacher_candidate_logits(teacher: nn.Module, pairs: PairEncoder, batch: TensorTable, positive: torch.Tensor,
                    ids: torch.Tensor, extra_ids: torch.Tensor | None, cfg: TowerObjective,
                    generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's logits ``[R, C]`` for up to ``softmax_teacher_rows`` positive rows against every
    candidate (the batch's items, then the extra ones), and those rows' positions among the positives."""
    rows = torch.nonzero(positive, as_tuple=True)[0]
    pick = torch.randperm(rows.numel(), generator=generator)[:cfg.softmax_teacher_rows].sort().values
    chosen = rows.cpu()[pick].numpy()
    cand = ids if extra_ids is None else torch.cat([ids, extra_ids])
    cand_np = cand.cpu().numpy()
    n_cand = cand_np.size
    row_of_pair = np.repeat(chosen, n_cand)
    inputs = {k: v.cpu().numpy()[row_of_pair] for k, v in batch.inputs.items()}
    encoded = pairs.encode(inputs, np.tile(cand_np, chosen.size))
    teacher.eval()
    device = ids.device
    z = teacher({k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in encoded.items()}).float()
    return z.reshape(chosen.size, n_cand), pick.to(device)


def fit_recall(model: nn.Module, train: TensorTable | StreamingTable, valid: TensorTable, schema: Schema,
               cfg: TowerObjective, fields: RecallFields, *, sample: TensorTable | None = None,
               pairs: PairEncoder | None = None, teacher: nn.Module | None = None, teacher_temperature: float = 1.0,
               seed: int = 0, device: torch.device | str = "cpu", bf16: bool = False,
               progress: Callable[[EpochInfo], None] | None = None,
               callbacks: Sequence[Callback] = (), settings: FitSettings | None = None,
               section: str = "student") -> FitResult:
    """Train ``model`` in place with the sampled-softmax objective of ``cfg`` (the config ``section``
    named in errors); ``sample`` (default ``train``) is the in-memory table the item frequencies and
    catalogue come from (a streaming run's sample); ``settings`` default to ``cfg``'s."""
    source = sample if sample is not None else train
    if not isinstance(source, TensorTable):
        raise ConfigError("the sampled-softmax objective needs an in-memory sample of the training rows")
    check_recall_inputs(schema, source, cfg, fields, section)
    loss = recall_loss_fn(source, schema, cfg, fields, pairs=pairs, teacher=teacher,
                          teacher_temperature=teacher_temperature, seed=seed)
    if isinstance(cfg, StudentConfig):  # the family's own terms (DAT's mimic loss) join the objective
        loss = with_family_terms(loss, model, cfg)
    settings = settings or FitSettings.from_config(cfg, seed, bf16=bf16)
    return fit(PairView(model), loss, train, valid, settings, torch.device(device), progress, callbacks)
