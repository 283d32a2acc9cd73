"""The distillation trade-off: students trained on one teacher over a grid of loss settings.

Each point of the grid is a :class:`~coarserank.config.DistillConfig` (alpha, temperature,
sampled items, loss kinds); every point trains the same student architecture with the same seed
on the same teacher, and is measured by validation GAUC and validation agreement with the teacher
(Recall@10-in-100 and Kendall's tau on validation candidate sets). Those are the figures a choice
is made on; test GAUC is recorded beside them for the record, never for choosing.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from torch import nn

from coarserank.config import DistillConfig, StudentConfig
from coarserank.data.dataset import PreparedData
from coarserank.distill.api import distill, score_split
from coarserank.distill.candidates import agreement, candidate_sets, score_candidates
from coarserank.errors import ConfigError
from coarserank.ranking_eval.metrics import gauc

__all__ = ["GRID_KEYS", "GridPoint", "grid_points", "distill_grid", "best_point"]

GRID_KEYS = ("alpha", "temperature", "soft", "sampled", "sampler", "sampled_loss", "sampled_weight",
             "rank_weight", "rank_top")


@dataclass(frozen=True)
class GridPoint:
    """One grid point: the settings that differ from the base and what they measured."""

    settings: dict[str, Any]
    valid_gauc: float
    valid_recall_10_in_100: float
    valid_kendall_tau: float
    test_gauc: float
    best_epoch: int
    train_seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def grid_points(base: DistillConfig, grid: Mapping[str, Sequence[Any]]) -> list[DistillConfig]:
    """Every combination of the ``grid`` values (``{key: values}``) applied to ``base``, in order."""
    unknown = sorted(set(grid) - set(GRID_KEYS))
    if unknown:
        raise ConfigError(f"distill grid: unknown key(s) {', '.join(unknown)}; keys: {', '.join(GRID_KEYS)}")
    empty = [k for k, v in grid.items() if not len(v)]
    if empty:
        raise ConfigError(f"distill grid: {', '.join(empty)} lists no value")
    keys = list(grid)
    return [replace(base, **dict(zip(keys, values))) for values in itertools.product(*(grid[k] for k in keys))]


def distill_grid(teacher: nn.Module, data: PreparedData, student: StudentConfig, points: Sequence[DistillConfig], *,
                 base: DistillConfig, seed: int = 0, users: int = 300, sampled: int = 1000, device: str = "cpu",
                 train_logits: np.ndarray | None = None,
                 progress: Callable[[str], None] | None = None) -> list[GridPoint]:
    """Train one student per point and measure it (see the module doc); ``train_logits`` saves scoring
    the train rows again when the caller has the teacher's."""
    sets = candidate_sets(data.valid, data.pairs, users=users, sampled=sampled, seed=seed)
    reference = score_candidates(teacher, data.valid, data.pairs, sets, device)
    logits = train_logits if train_logits is not None else score_split(teacher, data.train, device)
    out = []
    for i, point in enumerate(points, start=1):
        changed = {k: getattr(point, k) for k in GRID_KEYS if getattr(point, k) != getattr(base, k)}
        start = time.perf_counter()
        trained = distill(teacher if point.alpha > 0 else None, data.train, data.valid, data.schema, student, point,
                          train_logits=logits, pairs=data.pairs, seed=seed, device=device)
        seconds = time.perf_counter() - start
        scores = score_candidates(trained.model, data.valid, data.pairs, sets, device)
        agree = agreement(reference, scores, sets)
        valid, test = (gauc(s.label, score_split(trained.model, s, device), s.group).value
                       for s in (data.valid, data.test))
        out.append(GridPoint(changed, valid, agree["recall@10_in_100"], agree["kendall_tau"], test,
                             trained.history.best_epoch, round(seconds, 2)))
        if progress is not None:
            progress(f"distill grid: point {i}/{len(points)} {changed or 'base'}: valid gauc {valid:.4f}, "
                     f"recall@10-in-100 {agree['recall@10_in_100']:.4f}")
    return out


def best_point(points: Sequence[GridPoint]) -> int:
    """Index of the point with the best validation GAUC (ties: the better validation agreement)."""
    if not points:
        raise ConfigError("distill grid: no point to choose from")
    keys = np.array([(p.valid_gauc, p.valid_recall_10_in_100) for p in points])
    return int(np.lexsort((-keys[:, 1], -keys[:, 0]))[0])
