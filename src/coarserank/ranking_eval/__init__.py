"""Offline ranking evaluation on plain numpy arrays (never torch).

Label metrics (AUC, GAUC, log loss, calibration, NDCG@k) live in :mod:`.metrics`,
teacher-student ranking consistency in :mod:`.consistency`, and bootstrap confidence
intervals over groups in :mod:`.bootstrap`. GAUC is defined once, in :mod:`.metrics`.
"""

from coarserank.ranking_eval.bootstrap import bootstrap_ci, paired_bootstrap_ci
from coarserank.ranking_eval.consistency import (
    consistency_table,
    kendall_tau,
    ndcg_consistency,
    overlap_at_k,
    recall_k_in_n,
    spearman,
)
from coarserank.ranking_eval.calibration import CalibrationResult, calibration
from coarserank.ranking_eval.metrics import (
    GaucResult,
    GroupMetric,
    auc,
    gauc,
    label_metrics,
    logloss,
    ndcg_at_k,
)

__all__ = [
    "CalibrationResult",
    "GaucResult",
    "GroupMetric",
    "auc",
    "bootstrap_ci",
    "calibration",
    "consistency_table",
    "gauc",
    "kendall_tau",
    "label_metrics",
    "logloss",
    "ndcg_at_k",
    "ndcg_consistency",
    "overlap_at_k",
    "paired_bootstrap_ci",
    "recall_k_in_n",
    "spearman",
]
