"""The distillation grid: its points, and the choice made on validation only."""

from __future__ import annotations

import pytest

from coarserank.config import DistillConfig
from coarserank.distill.grid import GridPoint, best_point, grid_points
from coarserank.errors import ConfigError


def _point(valid: float, recall: float, test: float) -> GridPoint:
    return GridPoint({}, valid, recall, 0.5, test, 1, 1.0)


def test_grid_points_are_every_combination_applied_to_the_base():
    points = grid_points(DistillConfig(sampled=4), {"alpha": [0.5, 0.8], "soft": ["pointwise", "listwise"]})
    assert [(p.alpha, p.soft) for p in points] == [(0.5, "pointwise"), (0.5, "listwise"),
                                                   (0.8, "pointwise"), (0.8, "listwise")]
    assert all(p.sampled == 4 for p in points)


def test_an_unknown_grid_key_is_named():
    with pytest.raises(ConfigError, match="unknown key.*epochs"):
        grid_points(DistillConfig(), {"epochs": [1, 2]})


def test_the_best_point_is_chosen_on_validation_gauc_never_test():
    points = [_point(0.70, 0.9, 0.80), _point(0.72, 0.8, 0.60)]
    assert best_point(points) == 1


def test_validation_agreement_breaks_a_validation_gauc_tie():
    points = [_point(0.70, 0.90, 0.7), _point(0.70, 0.95, 0.6), _point(0.69, 0.99, 0.9)]
    assert best_point(points) == 1
