"""The LightGBM reference model: an independent check the teacher has to beat.

It sees the teacher's features: categorical codes as LightGBM categoricals, multi-valued and sequence
fields as 0/1 flags of their most frequent values, numeric fields as they are.
"""

from __future__ import annotations

from dataclasses import dataclass

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
        if f.kind in ("multi", "sequence"):
            for code in range(FIRST_ID, min(f.size, FIRST_ID + top)):
                columns.append((x == code).any(axis=1).astype(np.float32))
                names.append(f"{f.name}={code}")
            continue
        if f.kind == "categorical":
            categorical.append(len(columns))
        columns.append(x.astype(np.float32))
        names.append(f.name)
    return np.column_stack(columns), names, categorical


@dataclass
class GbdtReference:
    """LightGBM binary classifier with early stopping on the validation split."""

    schema: Schema
    cfg: GbdtConfig
    seed: int = 0
    threads: int = 0

    def fit(self, train: dict[str, np.ndarray], y_train: np.ndarray, valid: dict[str, np.ndarray],
            y_valid: np.ndarray) -> GbdtReference:
        xt, names, cats = gbdt_matrix(self.schema, train, self.cfg.multi_hot_top)
        xv, _, _ = gbdt_matrix(self.schema, valid, self.cfg.multi_hot_top)
        params = {"objective": "binary", "metric": "auc", "num_leaves": self.cfg.num_leaves,
                  "learning_rate": self.cfg.learning_rate, "seed": self.seed, "verbosity": -1,
                  "num_threads": self.threads, "deterministic": True, "force_row_wise": True,
                  "cat_smooth": 10, "min_data_per_group": 50}
        dtrain = lgb.Dataset(xt, y_train, feature_name=names, categorical_feature=cats, free_raw_data=False)
        dvalid = lgb.Dataset(xv, y_valid, reference=dtrain)
        self.booster_ = lgb.train(params, dtrain, self.cfg.rounds, valid_sets=[dvalid],
                                  callbacks=[lgb.early_stopping(self.cfg.early_stopping, verbose=False)])
        return self

    def predict_logit(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        x, _, _ = gbdt_matrix(self.schema, inputs, self.cfg.multi_hot_top)
        return self.booster_.predict(x, raw_score=True, num_iteration=self.booster_.best_iteration)
