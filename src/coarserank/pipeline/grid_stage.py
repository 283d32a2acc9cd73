"""The ``distill_grid`` stage of ``distill run``: the distillation trade-off over ``[distill.grid]``.

Every combination of the grid's values trains one student on the run's teacher (same architecture,
same seed; :func:`coarserank.distill.grid.distill_grid`) and is measured by validation GAUC and
validation agreement with the teacher on candidate sets of the report's size. The point chosen is
the best on validation GAUC (ties: validation Recall@10-in-100); test GAUC is written beside each
point for the record only. ``distill_grid.json`` holds the points; the report plots them.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from coarserank.atomic import atomic_write_text
from coarserank.distill.grid import GRID_KEYS, best_point, distill_grid, grid_points
from coarserank.pipeline.report_stage import GRID_FILE as FILE

if TYPE_CHECKING:
    import torch

    from coarserank.pipeline.run import RunContext

__all__ = ["FILE", "run_stage", "grid_summary"]


def grid_summary(base: dict[str, Any], grid: dict[str, Any], points: list[dict[str, Any]], chosen: int) -> dict[str, Any]:
    """The ``distill_grid.json`` body (also the report's ``distill_grid`` block)."""
    return {"base": base, "grid": grid, "chosen": chosen,
            "chosen_on": "validation GAUC; ties: validation Recall@10-in-100 against the teacher",
            "test_gauc": "recorded for the record only; never used to choose", "points": points}


def run_stage(ctx: RunContext, models: dict[str, torch.nn.Module]) -> None:
    """Train and measure the grid's students; a run without ``[distill.grid]`` values skips the stage."""
    cfg = ctx.cfg
    grid = cfg.distill.grid.settings()
    if not grid:
        return
    assert ctx.data is not None  # config_rules refuses a grid on a streaming run
    ctx.run.begin("distill_grid")
    points = grid_points(cfg.distill, grid)
    ctx.progress(f"distill grid: {len(points)} students over {', '.join(grid)}")
    measured = distill_grid(models["teacher"], ctx.data, cfg.student, points, base=cfg.distill, seed=cfg.run.seed,
                            users=cfg.report.max_users, sampled=cfg.report.sampled, device=str(ctx.device),
                            train_logits=ctx.logits["train"]["teacher"], progress=ctx.progress)
    chosen = best_point(measured)
    body = grid_summary({k: getattr(cfg.distill, k) for k in GRID_KEYS}, {k: list(v) for k, v in grid.items()},
                        [p.to_json() for p in measured], chosen)
    path = atomic_write_text(ctx.run.file(FILE), json.dumps(body, indent=2))
    ctx.run.record("distill_grid", path)
    ctx.run.finish("distill_grid", points=len(measured), chosen=measured[chosen].settings)
