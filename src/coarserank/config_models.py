"""The model sections of :class:`~coarserank.config.RunConfig`: the teacher, the student (its family
and the family sub-tables) and the recall model, which shares the student's towers and objective keys.

Re-exported by :mod:`coarserank.config`; import them from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from coarserank.errors import ConfigError

__all__ = [
    "TOWER_FAMILIES",
    "ColdStudentOptions",
    "DatOptions",
    "ModelTrainingConfig",
    "ParallelOptions",
    "RecallConfig",
    "SenetOptions",
    "ShortcutOptions",
    "StudentConfig",
    "TeacherConfig",
    "TowerObjective",
]


@dataclass(frozen=True)
class ModelTrainingConfig:
    """Embedding width, hidden layers and optimiser settings shared by the teacher and the students."""

    embed_dim: int = 16
    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.0
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 2048
    epochs: int = 20
    patience: int = 3


@dataclass(frozen=True)
class TeacherConfig(ModelTrainingConfig):
    """The teacher over every field, crosses included: ``family`` DeepFM (FM + DNN) or DCN-v2 (cross
    network + DNN). With ``attention``, each behaviour sequence is pooled by DIN-style target
    attention against the candidate item (``attention_hidden``: the activation unit's widths).

    ``blend``: weights ``w`` of the run's hard-label two-tower in the teacher that is distilled,
    ``(1 - w) * heavy + w * two_tower``; the one with the best validation GAUC is used (0, the heavy
    model alone, is always tried; ``[]`` never blends). See :mod:`coarserank.teacher.blend`."""

    family: Literal["deepfm", "dcn"] = "deepfm"
    attention: bool = True
    attention_hidden: tuple[int, ...] = (64, 32)
    cross_layers: int = 3
    blend: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75)


# -- student families ([student.<family>] sub-tables; rules in config_rules: _student_family) ------

StudentFamily = Literal["two_tower", "senet", "shortcut", "parallel", "dat", "cold"]
TOWER_FAMILIES: tuple[str, ...] = ("two_tower", "senet", "shortcut", "parallel", "dat")


@dataclass(frozen=True)
class SenetOptions:
    """SENet towers: a squeeze-excitation gate over each tower's field embeddings; the bottleneck of
    the excitation MLP is ``ceil(fields / reduction)`` wide."""

    reduction: int = 2


@dataclass(frozen=True)
class ShortcutOptions:
    """Shortcut towers: ``user_fields`` / ``item_fields`` name raw field embeddings that skip the MLP
    and join the final vector through a linear map; a side with no names takes its ``top`` fields by
    SE gate weight (per request) instead."""

    user_fields: tuple[str, ...] = ()
    item_fields: tuple[str, ...] = ()
    top: int = 2


@dataclass(frozen=True)
class ParallelOptions:
    """Parallel towers: one vector per channel and side (``mlp``, DCN-v2 ``cross``, FM-style ``fm``),
    combined with learnable per-channel weights; ``fusion = "attention"`` adds softmax channel
    weights computed per request from the user's channel vectors."""

    channels: tuple[str, ...] = ("mlp", "cross", "fm")
    cross_layers: int = 2
    fusion: Literal["none", "attention"] = "none"

    def widths(self, dim: int, embed_dim: int) -> dict[str, int]:
        """Each channel's vector size, so the served vector is ``dim`` wide like every family's (its
        cost per candidate is the plain two-tower's): ``fm`` is ``embed_dim`` (a pooled embedding), the
        other channels split the rest equally (the first takes any remainder).

        Raises :class:`~coarserank.errors.ConfigError` when ``dim`` leaves a channel no dimension, or
        ``fm`` alone is not ``dim`` wide."""
        fm = embed_dim if "fm" in self.channels else 0
        others = [c for c in self.channels if c != "fm"]
        if not others:
            if fm != dim:
                raise ConfigError(f"student.parallel: channels = [\"fm\"] serves the pooled embedding, "
                                  f"embed_dim = {embed_dim} wide; set dim = {embed_dim} or add an 'mlp' or 'cross' "
                                  "channel")
            return {"fm": fm}
        share, extra = divmod(dim - fm, len(others))
        if share < 1:
            raise ConfigError(f"student.parallel: dim = {dim} leaves {dim - fm} dimensions for the "
                              f"{' and '.join(others)} channel{'s' if len(others) > 1 else ''} after fm's "
                              f"embed_dim = {fm}; raise dim above {fm + len(others) - 1}")
        sizes = {c: share + (extra if i == 0 else 0) for i, c in enumerate(others)}
        return {c: fm if c == "fm" else sizes[c] for c in self.channels}


@dataclass(frozen=True)
class DatOptions:
    """Dual augmented towers: an augmentation vector per user id and per item id feeds each tower;
    ``mimic_weight`` weighs the mimic loss that pulls them toward the other tower's output on positive
    rows. ``user_field`` / ``item_field`` name the categorical id features the vectors are keyed by."""

    user_field: str = "user_id"
    item_field: str = "item_id"
    mimic_weight: float = 0.5


@dataclass(frozen=True)
class ColdStudentOptions:
    """The COLD student: a small DNN with an SE gate over the named ``features`` (any side, crosses
    included), served by scoring candidate rows."""

    features: tuple[str, ...] = ()


@dataclass(frozen=True)
class TowerObjective(ModelTrainingConfig):
    """Keys shared by the student and the recall model: the tower vector size ``dim`` and the objective.

    ``objective``: ``pointwise`` (the distillation loss on exposures) or ``sampled_softmax`` (the
    recall objective of :mod:`coarserank.distill.recall_losses`: each positive exposure against the
    batch's items plus ``extra_negatives`` uniform catalogue items, cosine / ``softmax_temperature``,
    ``logq`` correction from training ``counts``, a ``streaming`` estimate or ``none``, and the
    teacher's softmax over the same candidates weighted by ``softmax_alpha``, computed for up to
    ``softmax_teacher_rows`` positive rows per batch: each costs one teacher row per candidate)."""

    dim: int = 64
    objective: Literal["pointwise", "sampled_softmax"] = "pointwise"
    softmax_temperature: float = 0.05
    extra_negatives: int = 0
    logq: Literal["counts", "streaming", "none"] = "counts"
    softmax_alpha: float = 0.0
    softmax_teacher_rows: int = 64


@dataclass(frozen=True)
class StudentConfig(TowerObjective):
    """The student: ``family`` picks the architecture (options in ``[student.<family>]``); the tower
    families have a user tower (user + context fields) and an item tower (item fields) scored by one
    inner product; ``dim`` is each tower's served vector size (parallel: all channels together). The ``cold`` family
    has no towers, so it trains only with ``objective = "pointwise"``."""

    epochs: int = 30  # the distilled student fits lists over sampled items and learns through plateaus
    patience: int = 6
    family: StudentFamily = "two_tower"
    senet: SenetOptions = field(default_factory=SenetOptions)
    shortcut: ShortcutOptions = field(default_factory=ShortcutOptions)
    parallel: ParallelOptions = field(default_factory=ParallelOptions)
    dat: DatOptions = field(default_factory=DatOptions)
    cold: ColdStudentOptions = field(default_factory=ColdStudentOptions)


@dataclass(frozen=True)
class RecallConfig(TowerObjective):
    """The recall model trained beside the coarse ranker when ``enabled``: a ``two_tower`` or a
    ``multi_interest`` user tower (``auto``: multi-interest when the data has a sequence feature)
    (``interests`` vectors from the behaviour ``sequence`` feature, "" = the first one, by
    self-attention or capsule ``routing``; trained with label-aware attention of the given
    ``sharpness``), and retrieval metrics at ``ks`` over up to ``max_users`` test users (0 = all).
    ``match_channel``: both towers end with a shared embedding of each user x item match cross's
    value (:mod:`coarserank.student.matched`), so equal values score high for every value."""

    enabled: bool = False
    objective: Literal["pointwise", "sampled_softmax"] = "sampled_softmax"
    family: Literal["auto", "two_tower", "multi_interest"] = "auto"
    interests: int = 4
    extractor: Literal["attention", "routing"] = "attention"
    sequence: str = ""
    sharpness: float = 20.0
    routing_iterations: int = 3
    ks: tuple[int, ...] = (50, 100, 500)
    max_users: int = 0
    match_channel: bool = True


