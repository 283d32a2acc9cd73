"""The student families' options: one frozen dataclass per ``[student.<family>]`` sub-table
(rules in :mod:`coarserank.config_rules`, ``_student_family``); :mod:`coarserank.config` re-exports them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

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
