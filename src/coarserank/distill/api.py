"""Distillation as library calls on typed data: train a teacher, distil a student, score a split.

Each call takes :class:`~coarserank.data.dataset.EncodedSplit` objects and frozen config sections
and returns the trained module with its history; it writes nothing and reads no global state
(randomness comes from ``seed`` alone). ``distill run`` is these calls plus persistence.

Example
-------
>>> data = encode_splits(prepare(raw, cfg.data), cfg.data)                          # doctest: +SKIP
>>> teacher = train_teacher(data.train, data.valid, data.schema, cfg.teacher).model  # doctest: +SKIP
>>> student = distill(teacher, data.train, data.valid, data.schema, cfg.student, cfg.distill,
...                   pairs=data.pairs).model                                        # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch import nn

from coarserank.config import DistillConfig, GbdtConfig, StudentConfig, TeacherConfig
from coarserank.data.dataset import EncodedSplit
from coarserank.data.pairs import ROW_ITEM, PairEncoder
from coarserank.data.schema import Schema
from coarserank.distill.distributed import current
from coarserank.distill.entire_space import RowPairScorer, entire_space_loss, pair_scorer
from coarserank.distill.families import with_family_terms
from coarserank.distill.losses import distill_loss, hard_loss
from coarserank.distill.sampling import CandidateSampler
from coarserank.distill.stream_table import StreamingTable
from coarserank.distill.tensors import TensorTable, make_table
from coarserank.distill.train import Callback, EpochInfo, FitResult, FitSettings, fit, predict_shared
from coarserank.errors import ConfigError
from coarserank.ranking_eval.metrics import gauc
from coarserank.student import build_student
from coarserank.teacher import build_teacher
from coarserank.teacher.blend import TeacherBlend, mix

if TYPE_CHECKING:
    from coarserank.distill.gbdt import GbdtReference

__all__ = ["Blended", "Trained", "blend_teacher", "check_sampling", "split_table", "train_teacher", "train_gbdt",
           "distill", "score_split", "sampling_generator"]


@dataclass
class Trained:
    """A trained module, its training history and (entire-space runs) the sampled-row counts."""

    model: nn.Module
    history: FitResult
    sampled_rows: float = 0.0
    teacher_seconds: float = 0.0
    facts: dict[str, float] = field(default_factory=dict)

    @property
    def sampled_rows_per_second(self) -> float:
        return self.sampled_rows / max(self.history.train_seconds, 1e-9)


def split_table(split: EncodedSplit, teacher: np.ndarray | None = None) -> TensorTable:
    """The tensors of a split (every input column, labels, dense group codes, optional teacher logits)."""
    return make_table(split.inputs, split.label, split.group, teacher)


def _built(build: Callable[[], nn.Module], seed: int) -> nn.Module:
    """A freshly initialised module whose weights depend on ``seed`` only (global RNG left untouched)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def check_sampling(cfg: DistillConfig, pairs: PairEncoder) -> None:
    """Entire-space settings that this data cannot satisfy (call before any training)."""
    if cfg.alpha > 0 and cfg.sampled >= pairs.n_items:
        raise ConfigError(f"distill.sampled = {cfg.sampled} needs a catalogue of more items; this data has "
                          f"{pairs.n_items} (use fewer sampled items per exposure)")


def _table(split: EncodedSplit | TensorTable | StreamingTable) -> TensorTable | StreamingTable:
    return split_table(split) if isinstance(split, EncodedSplit) else split


def train_teacher(train: EncodedSplit | TensorTable | StreamingTable, valid: EncodedSplit | TensorTable,
                  schema: Schema, cfg: TeacherConfig, *, seed: int = 0,
                  device: torch.device | str = "cpu", bf16: bool = False,
                  progress: Callable[[EpochInfo], None] | None = None,
                  callbacks: Sequence[Callback] = ()) -> Trained:
    """The teacher of ``cfg.family`` trained on hard labels, early-stopped on validation GAUC."""
    teacher = _built(lambda: build_teacher(schema, cfg), seed)
    settings = FitSettings.from_config(cfg, seed, bf16=bf16)
    result = fit(teacher, lambda m, b: hard_loss(m(b.inputs), b.label), _table(train), _table(valid),
                 settings, torch.device(device), progress, callbacks)
    return Trained(teacher, result)


@dataclass
class Blended:
    """The teacher to distil from: ``heavy`` alone (``weight = 0``) or a :class:`TeacherBlend` with the
    hard-label two-tower, and the validation GAUC of every weight tried."""

    model: nn.Module
    weight: float
    valid_gauc: dict[float, float]


def blend_teacher(heavy: nn.Module, tower: nn.Module | None, valid: EncodedSplit | TensorTable,
                  weights: Sequence[float], device: torch.device | str = "cpu") -> Blended:
    """``(1 - w) * heavy + w * tower`` for the ``w`` among ``weights`` (0 is always tried) with the best
    validation GAUC; ties go to the smaller ``w``. ``tower`` ``None`` or no positive weight: ``heavy``.

    The tower is the run's hard-label student: a teacher that blends it in is at least as good on
    validation as either, and still carries the crosses (:mod:`coarserank.teacher.blend`).
    """
    table = valid if isinstance(valid, TensorTable) else split_table(valid)
    label, group = table.label.numpy(), table.group.numpy()
    tried = sorted({0.0, *(float(w) for w in weights)}) if tower is not None else [0.0]
    z_heavy = score_split(heavy, table, device)
    z_tower = score_split(tower, table, device) if len(tried) > 1 else z_heavy
    scores = {w: gauc(label, mix(z_heavy, z_tower, w), group).value for w in tried}
    best = max(tried, key=lambda w: (scores[w], -w))
    if best == 0.0 or tower is None:
        return Blended(heavy, 0.0, scores)
    return Blended(TeacherBlend(heavy, tower, best).eval(), best, scores)


def train_gbdt(train: EncodedSplit, valid: EncodedSplit, schema: Schema, cfg: GbdtConfig, *, seed: int = 0,
               threads: int = 0, progress: Callable[[str], None] | None = None) -> GbdtReference:
    """The LightGBM reference on the teacher's features, early-stopped on validation AUC (what
    ``distill run``'s ``gbdt`` stage fits). Its history: ``booster_.best_iteration`` and
    ``valid_auc_``, the validation AUC after every round. ``threads = 0``: LightGBM's default."""
    from coarserank.distill.gbdt import GbdtReference

    return GbdtReference(schema, cfg, seed, threads).fit(train.inputs, train.label, valid.inputs, valid.label,
                                                         progress)


def score_split(model: nn.Module, split: EncodedSplit | TensorTable, device: torch.device | str = "cpu") -> np.ndarray:
    """A model's logits for every row of a split, in row order (each row once across ranks)."""
    table = split if isinstance(split, TensorTable) else split_table(split)
    return predict_shared(model, table, torch.device(device))


def sampling_generator(seed: int) -> torch.Generator:
    """The generator of the entire-space draws: each distributed rank draws its own items for its
    share of the global batch (a shared stream would give every rank the same draws)."""
    return torch.Generator().manual_seed(seed + 0x5EED + 1_000_003 * current().rank)


def distill(teacher: nn.Module | np.ndarray | None, train: EncodedSplit | TensorTable | StreamingTable,
            valid: EncodedSplit | TensorTable, schema: Schema, student_cfg: StudentConfig, distill_cfg: DistillConfig, *,
            train_logits: np.ndarray | None = None, pairs: PairEncoder | None = None, seed: int = 0,
            device: torch.device | str = "cpu", bf16: bool = False,
            progress: Callable[[EpochInfo], None] | None = None, callbacks: Sequence[Callback] = ()) -> Trained:
    """A student of ``student_cfg.family`` trained with ``(1 - alpha) * hard + alpha * T^2 * soft`` (+ entire-space
    terms, + the family's own terms such as DAT's mimic loss: :mod:`coarserank.distill.families`).

    ``teacher`` is the teacher module, or its train logits (no sampled items then), or ``None`` for
    the hard-label control (``distill_cfg.alpha`` must be 0). ``train_logits`` saves scoring the
    train rows again when the caller has them; a ready :class:`TensorTable` or streaming source as
    ``train`` must already hold them. ``distill_cfg.sampled > 0`` needs the teacher module and
    ``pairs`` (see :mod:`coarserank.distill.entire_space`).
    """
    device = torch.device(device)
    soft = distill_cfg.alpha > 0
    entire = soft and distill_cfg.sampled > 0
    if soft and teacher is None:
        raise ConfigError("distill: alpha > 0 needs the teacher (a module or its train logits)")
    if entire and (not isinstance(teacher, nn.Module) or pairs is None):
        raise ConfigError("distill.sampled > 0 needs the teacher module and a PairEncoder to score sampled items")
    if entire and pairs is not None:
        check_sampling(distill_cfg, pairs)
    if isinstance(train, EncodedSplit):
        logits = teacher if isinstance(teacher, np.ndarray) else train_logits
        if soft and logits is None:
            assert isinstance(teacher, nn.Module)
            logits = score_split(teacher, train, device)
        table: TensorTable | StreamingTable = split_table(train, logits if soft else None)
    else:
        table = train
    if entire and not isinstance(table, TensorTable):
        raise ConfigError("distill.sampled > 0 needs the training rows in memory (not data.streaming)")
    student = _built(lambda: build_student(schema, student_cfg), seed)
    listwise = soft and distill_cfg.soft == "listwise"
    settings = FitSettings.from_config(student_cfg, seed, grouped_batches=listwise, bf16=bf16)
    stats: dict[str, float] = {}
    if entire:
        assert isinstance(teacher, nn.Module) and pairs is not None
        teacher.to(device)
        sampler = CandidateSampler(distill_cfg.sampler, distill_cfg.sampled, pairs.item_train_rows_,
                                   table.group.numpy(), table.inputs[ROW_ITEM].numpy())
        generator = sampling_generator(seed)
        module: nn.Module = pair_scorer(student)
        loss = entire_space_loss(teacher, pairs, sampler, distill_cfg, generator, stats,
                                 rows=isinstance(module, RowPairScorer))
    else:
        module = student

        def loss(m: nn.Module, batch: TensorTable) -> torch.Tensor:
            return distill_loss(m(batch.inputs), batch.label, batch.teacher, batch.group, alpha=distill_cfg.alpha,
                                temperature=distill_cfg.temperature, soft=distill_cfg.soft)

    loss = with_family_terms(loss, student, student_cfg)
    result = fit(module, loss, table, _table(valid), settings, device, progress, callbacks)
    return Trained(student, result, stats.get("sampled_rows", 0.0), stats.get("teacher_seconds", 0.0))
