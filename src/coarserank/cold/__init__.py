"""COLD-style feature selection: importance (SE gates, LightGBM gain, permutation), top-k sweeps of a
coarse-model family, measured ONNX Runtime latency and cost, the GAUC/latency Pareto frontier and
the choice under a latency budget. ``distill sweep`` is the command; ``docs/sweep.md`` the format."""

from coarserank.cold.cost import count_params, feature_costs, onnx_macs, point_cost
from coarserank.cold.importance import (
    Importance,
    gbdt_importance,
    permutation_importance,
    rank_agreement,
    se_importance,
)
from coarserank.cold.latency import LatencyResult, cold_latency, two_tower_latency
from coarserank.cold.pareto import choose_under_budget, pareto_flags
from coarserank.cold.sweep import CandidateSets, SweepResult, parse_ks, run_sweep, write_chosen_config
from coarserank.student.cold import ColdModel, build_cold_model

__all__ = [
    "CandidateSets",
    "ColdModel",
    "Importance",
    "LatencyResult",
    "SweepResult",
    "build_cold_model",
    "choose_under_budget",
    "cold_latency",
    "count_params",
    "feature_costs",
    "gbdt_importance",
    "onnx_macs",
    "pareto_flags",
    "parse_ks",
    "permutation_importance",
    "point_cost",
    "rank_agreement",
    "run_sweep",
    "se_importance",
    "two_tower_latency",
    "write_chosen_config",
]
