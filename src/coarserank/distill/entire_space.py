"""Entire-space distillation: the student learns the teacher's scores on items the user was not shown.

A coarse ranker is served on the whole candidate set recall returns, yet the log only holds what
was shown. For each training exposure the :class:`~coarserank.distill.sampling.CandidateSampler`
draws ``m`` unexposed catalogue items; :class:`~coarserank.data.pairs.PairEncoder` builds the
teacher's inputs for them (the exposure's user and context, the item's fields, the crosses of the
pair at the row's time); the teacher scores them without gradients, once per batch, so its logits
are never stored for the catalogue and memory stays that of one batch. The student scores the same
pairs in the same forward pass as the exposures and fits them with the soft loss only:

- a student with towers (every tower family) through :class:`PairScorer`: the user vector of the
  exposure, the item tower on the unique sampled items;
- a student without towers (the COLD model, which reads user x item cross fields) through
  :class:`RowPairScorer`: the pairs' full inputs, encoded once per batch for the teacher, are
  scored as rows.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from coarserank.config import DistillConfig
from coarserank.data.pairs import ROW_ITEM, PairEncoder
from coarserank.distill.losses import distill_loss, list_kl_loss, ranking_loss, sampled_pointwise_loss
from coarserank.distill.sampling import CandidateSampler
from coarserank.distill.tensors import TensorTable
from coarserank.student import has_towers
from coarserank.teacher.blend import TeacherBlend, mix
from coarserank.teacher.deepfm import DeepFM

__all__ = ["PairScorer", "RowPairScorer", "pair_scorer", "entire_space_loss", "TeacherPairs"]


class PairScorer(nn.Module):
    """A two-tower student scoring a batch's exposures and extra (row, item) pairs in one forward pass.

    ``forward(inputs)`` is the student's score; ``forward(inputs, items, row, item)`` also returns
    ``a * <u[row], v(items)[item]> + b`` for pairs of a batch row and one of the ``items`` (encoded
    item-side fields of the unique sampled items), reusing the batch's user vectors.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, inputs: dict[str, torch.Tensor], items: dict[str, torch.Tensor] | None = None,
                row: torch.Tensor | None = None,
                item: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        u = self.student.user_tower(inputs)
        s = self.student.score(u, self.student.item_tower(inputs))
        if items is None or row is None or item is None:
            return s
        v = self.student.item_tower(items)  # index_select: its backward is deterministic, v[idx]'s is not
        return s, self.student.score(torch.index_select(u, 0, row), torch.index_select(v, 0, item))


class RowPairScorer(nn.Module):
    """A row-scoring student (no towers) scoring a batch's exposures and extra pairs in one forward pass.

    ``forward(inputs)`` is the student's score; ``forward(inputs, pairs)`` also returns the scores of
    ``pairs``, the encoded inputs of every (row, item) pair (:meth:`PairEncoder.encode`), from one
    call of the student on the exposures and the pairs stacked.
    """

    def __init__(self, student: nn.Module) -> None:
        super().__init__()
        self.student = student

    def forward(self, inputs: dict[str, torch.Tensor],
                pairs: dict[str, torch.Tensor] | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if pairs is None:
            return self.student(inputs)
        n = len(next(iter(inputs.values())))
        stacked = {k: torch.cat([inputs[k], pairs[k].to(inputs[k].dtype)]) for k in pairs if k in inputs}
        s = self.student(stacked)
        return s[:n], s[n:]


def pair_scorer(student: nn.Module) -> nn.Module:
    """:class:`PairScorer` for a student with towers, else :class:`RowPairScorer`."""
    return PairScorer(student) if has_towers(student) else RowPairScorer(student)


def entire_space_loss(teacher: nn.Module, pairs: PairEncoder, sampler: CandidateSampler, cfg: DistillConfig,
                      generator: torch.Generator, stats: dict[str, float] | None = None, *,
                      rows: bool = False) -> Callable[[nn.Module, TensorTable], torch.Tensor]:
    """The distillation loss over a batch's exposures plus ``sampler.m`` sampled items per exposure.

    ``(1 - alpha) * hard + alpha * T^2 * (soft + sampled_weight * sampled) + alpha * rank_weight * rank``
    (see :mod:`coarserank.distill.losses`); ``teacher`` is used in eval mode without gradients.
    ``stats`` (optional) accumulates ``sampled_rows`` and ``teacher_seconds`` for throughput reports.
    The module passed to the loss is a :class:`PairScorer`, or with ``rows`` a :class:`RowPairScorer`.
    """
    teacher.eval()
    item_fields = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in pairs.items_.items()
                   if k in pairs.encoder.schema_.select(("item",)).names}
    teacher_scorer = TeacherPairs(teacher, item_fields)
    t = cfg.temperature

    def loss(module: nn.Module, batch: TensorTable) -> torch.Tensor:
        device = batch.label.device
        drawn = sampler.draw(batch.group, batch.inputs[ROW_ITEM], generator)
        start = time.perf_counter()
        encoded = _pair_inputs(pairs, batch, drawn.row.numpy(), drawn.item.numpy(), device)
        if stats is not None:  # the teacher's share: its inputs are the pairs' encoded fields
            stats["teacher_seconds"] = stats.get("teacher_seconds", 0.0) + time.perf_counter() - start
        row = drawn.row.to(device)
        unique, local = torch.unique(drawn.item, return_inverse=True)  # the distinct sampled items, for both models
        items, local = {k: v[unique].to(device) for k, v in item_fields.items()}, local.to(device)
        if rows:
            s, s_pairs = module(batch.inputs, encoded)
        else:
            s, s_pairs = module(batch.inputs, items, row, local)
        z_pairs = teacher_scorer(encoded, batch.inputs, row, drawn.item.to(device), stats, per_row=drawn.m,
                                 distinct=(items, local))
        valid = drawn.valid.to(device)
        if stats is not None:
            stats["sampled_rows"] = stats.get("sampled_rows", 0.0) + float(valid.sum())
        total = distill_loss(s, batch.label, batch.teacher, batch.group, alpha=cfg.alpha, temperature=t,
                             soft=cfg.soft)
        if cfg.sampled_loss == "pointwise":
            sampled = sampled_pointwise_loss(s_pairs, z_pairs, valid, t)
        else:
            lists_s, lists_z, lists_valid = _lists(s, s_pairs, batch.teacher, z_pairs, valid, drawn.m)
            sampled = list_kl_loss(lists_s, lists_z, lists_valid, t)
        total = total + cfg.alpha * t**2 * cfg.sampled_weight * sampled
        if cfg.rank_weight > 0:
            lists_s, lists_z, lists_valid = _lists(s, s_pairs, batch.teacher, z_pairs, valid, drawn.m)
            total = total + cfg.alpha * cfg.rank_weight * ranking_loss(lists_s, lists_z, lists_valid, cfg.rank_top)
        return total

    return loss


def _lists(s: torch.Tensor, s_pairs: torch.Tensor, z: torch.Tensor | None, z_pairs: torch.Tensor,
           valid: torch.Tensor, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[B, 1 + m]`` lists: each exposure followed by its sampled items (scores, teacher logits, validity)."""
    if z is None:
        raise ValueError("entire-space lists need the teacher's logits of the exposures (batch.teacher)")
    b = len(s)
    lists_s = torch.cat([s.unsqueeze(1), s_pairs.view(b, m)], dim=1)
    lists_z = torch.cat([z.unsqueeze(1).to(z_pairs.dtype), z_pairs.view(b, m)], dim=1)
    lists_valid = torch.cat([torch.ones(b, 1, dtype=torch.bool, device=s.device), valid.view(b, m)], dim=1)
    return lists_s, lists_z, lists_valid


def _pair_inputs(pairs: PairEncoder, batch: TensorTable, row: np.ndarray, item: np.ndarray,
                 device: torch.device) -> dict[str, torch.Tensor]:
    """Every schema field of the (row, item) pairs, encoded as the teacher (and a row scorer) read them."""
    rows = {k: v.cpu().numpy()[row] for k, v in batch.inputs.items()}
    encoded = pairs.encode(rows, item)
    return {k: torch.from_numpy(np.ascontiguousarray(v)).to(device) for k, v in encoded.items()}


_CHUNK = 65_536  # catalogue items per item-tower call when TeacherPairs encodes the catalogue


class TeacherPairs:
    """The teacher's logits of sampled (row, item) pairs. A teacher blended with a two-tower
    (:class:`~coarserank.teacher.blend.TeacherBlend`) scores its frozen tower member from one user
    vector per batch row and the catalogue's item vectors, computed once here, instead of running
    both towers on every pair; the heavy member reads the encoded pairs."""

    def __init__(self, teacher: nn.Module, item_fields: dict[str, torch.Tensor]) -> None:
        self.teacher = teacher
        self.item_fields = item_fields
        self.item_vectors: torch.Tensor | None = None
        if isinstance(teacher, TeacherBlend) and has_towers(teacher.tower):
            device, n = teacher.weight.device, len(next(iter(item_fields.values())))
            with torch.no_grad():  # in chunks: a large catalogue's hidden activations stay bounded
                self.item_vectors = torch.cat([
                    teacher.tower.item_tower({k: v[lo:lo + _CHUNK].to(device) for k, v in item_fields.items()})
                    for lo in range(0, n, _CHUNK)])

    @torch.no_grad()
    def __call__(self, encoded: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor], row: torch.Tensor,
                 item: torch.Tensor, stats: dict[str, float] | None = None, *, per_row: int | None = None,
                 distinct: tuple[dict[str, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """``encoded``: the pairs' encoded fields; ``inputs``: the batch's; ``row``: each pair's batch row;
        ``item``: each pair's catalogue index; ``per_row``: set when the pairs are row-major,
        ``per_row`` to a row (as :class:`~coarserank.distill.sampling.CandidateSampler` draws them);
        ``distinct``: the distinct items' encoded item fields and each pair's index into them, when the
        caller has them already (else derived from ``item``)."""
        start = time.perf_counter()
        t = self.teacher
        if self.item_vectors is not None:
            tower = t.tower
            u = torch.index_select(tower.user_tower(inputs), 0, row)
            v = torch.index_select(self.item_vectors.to(u.device), 0, item)
            z = mix(self._heavy(t.heavy, encoded, inputs, row, item, per_row, distinct), tower.score(u, v), t.weight).float()
        else:
            z = self._heavy(t, encoded, inputs, row, item, per_row, distinct).float()
        if stats is not None:
            stats["teacher_seconds"] = stats.get("teacher_seconds", 0.0) + time.perf_counter() - start
        return z

    def _heavy(self, heavy: nn.Module, encoded: dict[str, torch.Tensor], inputs: dict[str, torch.Tensor],
               row: torch.Tensor, item: torch.Tensor, per_row: int | None,
               distinct: tuple[dict[str, torch.Tensor], torch.Tensor] | None) -> torch.Tensor:
        """A DeepFM reads each side's fields once (:meth:`~coarserank.teacher.deepfm.DeepFM.pair_logits`);
        any other heavy model reads the pairs' full inputs."""
        if not (isinstance(heavy, DeepFM) and heavy.scores_pairs):
            return heavy(encoded)
        if distinct is None:
            unique, local = torch.unique(item.cpu(), return_inverse=True)
            distinct = {k: v[unique].to(row.device) for k, v in self.item_fields.items()}, local.to(row.device)
        items, local = distinct
        return heavy.pair_logits(inputs, items, encoded, row, local, per_row=per_row)
