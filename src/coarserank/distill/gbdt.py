"""The LightGBM reference model: an independent check the teacher has to beat.

It sees the teacher's features: categorical codes as LightGBM categoricals, multi-valued fields as
0/1 flags of their most frequent values, numeric fields as they are.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

import lightgbm as lgb
import numpy as np

from coarserank.config import GbdtConfig
from coarserank.data.schema import FIRST_ID, Schema

__all__ = ["GbdtReference", "gbdt_matrix"]


def gbdt_matrix(schema: Schema, inputs: dict[str, np.ndarray], top: int) -> tuple[np.ndarray, list[str], list[int]]:
    """(matrix, column names, categorical column indices) for LightGBM."""
    columns: list[np.ndarray] = []
    names: list[str] = []
    categorical: list[int] = []
    for f in schema.fields:
        x = inputs[f.name]
        if f.kind == "multi":
            for code in range(FIRST_ID, min(f.size, FIRST_ID + top)):
                columns.append((x == code).any(axis=1).astype(np.float32))
                names.append(f"{f.name}={code}")
            continue
        if f.kind == "categorical":
            categorical.append(len(columns))
        columns.append(x.astype(np.float32))
        names.append(f.name)
    return np.column_stack(columns), names, categorical


PROGRESS_ROUNDS = 50


def _reporter(progress: Callable[[str], None]) -> Callable[[Any], None]:
    """A LightGBM callback that reports the validation AUC every :data:`PROGRESS_ROUNDS` rounds."""
    start = time.perf_counter()

    def report(env: Any) -> None:
        done = env.iteration + 1
        if done % PROGRESS_ROUNDS == 0 and env.evaluation_result_list:
            auc = env.evaluation_result_list[0][2]
            progress(f"gbdt: round {done} of at most {env.end_iteration}, valid auc {auc:.4f} "
                     f"({time.perf_counter() - start:.0f}s)")

    report.order = 30  # type: ignore[attr-defined]  # after early stopping's bookkeeping
    return report


@dataclass
class GbdtReference:
    """LightGBM binary classifier with early stopping on the validation split."""

    schema: Schema
    cfg: GbdtConfig
    seed: int = 0
    threads: int = 0

    def fit(self, train: dict[str, np.ndarray], y_train: np.ndarray, valid: dict[str, np.ndarray],
            y_valid: np.ndarray, progress: Callable[[str], None] | None = None) -> GbdtReference:
        """Train with early stopping on the validation AUC; ``progress`` hears every
        ``PROGRESS_ROUNDS`` rounds and the round kept."""
        xt, names, cats = gbdt_matrix(self.schema, train, self.cfg.multi_hot_top)
        xv, _, _ = gbdt_matrix(self.schema, valid, self.cfg.multi_hot_top)
        params = {"objective": "binary", "metric": "auc", "num_leaves": self.cfg.num_leaves,
                  "learning_rate": self.cfg.learning_rate, "seed": self.seed, "verbosity": -1,
                  "num_threads": self.threads, "deterministic": True, "force_row_wise": True,
                  "cat_smooth": 10, "min_data_per_group": 50}
        dtrain = lgb.Dataset(xt, y_train, feature_name=names, categorical_feature=cats, free_raw_data=False)
        dvalid = lgb.Dataset(xv, y_valid, reference=dtrain)
        callbacks = [lgb.early_stopping(self.cfg.early_stopping, verbose=False)]
        if progress is not None:
            callbacks.append(_reporter(progress))
        self.booster_ = lgb.train(params, dtrain, self.cfg.rounds, valid_sets=[dvalid], callbacks=callbacks)
        if progress is not None:
            progress(f"gbdt: keeping round {self.booster_.best_iteration} of {self.booster_.current_iteration()} "
                     f"(valid auc {self.booster_.best_score['valid_0']['auc']:.4f}; early stopping after "
                     f"{self.cfg.early_stopping} rounds without improvement, at most {self.cfg.rounds})")
        return self

    def predict_logit(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        x, _, _ = gbdt_matrix(self.schema, inputs, self.cfg.multi_hot_top)
        return self.booster_.predict(x, raw_score=True, num_iteration=self.booster_.best_iteration)
