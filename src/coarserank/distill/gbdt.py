"""The LightGBM reference model: an independent check the teacher has to beat.

It sees the teacher's features, encoded by the run's encoder (fitted on train rows):

- categorical fields (ids included, bucketed numbers, product crosses): their codes as LightGBM's
  native categorical features (``categorical_feature``: LightGBM sorts each split's categories by
  their gradient statistics; ``cat_smooth`` 10, ``min_data_per_group`` 50), never as numbers;
- multi-valued fields (multi-valued product crosses and behaviour sequences included): one 0/1
  column per value for their ``gbdt.multi_hot_top`` most frequent values in the train rows
  (out-of-vocabulary included);
- numeric fields (match crosses and history crosses included): the normalised numbers.

The columns are named ``<field>`` or ``<field>=<code>``, and the booster's own feature names say
which columns to build for prediction, so a saved ``gbdt.txt`` predicts without the train rows.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np

from coarserank.config import GbdtConfig
from coarserank.data.schema import PAD, Schema

__all__ = ["GbdtReference", "gbdt_columns", "gbdt_matrix"]

_LISTS = ("multi", "sequence")  # fields of several codes per row: multi-hot columns


def _frequent_codes(x: np.ndarray, top: int) -> np.ndarray:
    """The ``top`` most frequent non-padding codes of a ``[rows, max_len]`` code matrix (ties: the
    smaller code first), in that order."""
    counts = np.bincount(x.ravel())
    counts[PAD] = 0
    order = np.lexsort((np.arange(counts.size), -counts))
    return order[counts[order] > 0][:top]


def gbdt_columns(schema: Schema, inputs: dict[str, np.ndarray], names: list[str]) -> np.ndarray:
    """The float32 matrix of the columns ``names`` (as :func:`gbdt_matrix` named them)."""
    kinds = {f.name: f.kind for f in schema.fields}
    columns = []
    for name in names:
        field, _, code = name.partition("=")
        x = inputs[field]
        if code and kinds[field] in _LISTS:
            columns.append((x == int(code)).any(axis=1).astype(np.float32))
        else:
            columns.append(x.astype(np.float32))
    return np.column_stack(columns)


def gbdt_matrix(schema: Schema, inputs: dict[str, np.ndarray], top: int,
                names: list[str] | None = None) -> tuple[np.ndarray, list[str], list[int]]:
    """(matrix, column names, categorical column indices) for LightGBM. Without ``names`` the
    multi-valued columns are chosen from ``inputs`` (the train rows); pass the train call's names to
    build the same columns for other rows."""
    if names is None:
        names = []
        for f in schema.fields:
            if f.kind in _LISTS:
                names += [f"{f.name}={code}" for code in _frequent_codes(inputs[f.name], top)]
            else:
                names.append(f.name)
    categorical_fields = {f.name for f in schema.fields if f.kind == "categorical"}
    categorical = [i for i, n in enumerate(names) if n in categorical_fields]
    return gbdt_columns(schema, inputs, names), names, categorical


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
    """LightGBM binary classifier with early stopping on the validation split.

    After :meth:`fit`: ``booster_`` (the round kept is ``booster_.best_iteration``) and
    ``valid_auc_``, the validation AUC after every round trained (a loaded booster has none)."""

    schema: Schema
    cfg: GbdtConfig
    seed: int = 0
    threads: int = 0

    def fit(self, train: dict[str, np.ndarray], y_train: np.ndarray, valid: dict[str, np.ndarray],
            y_valid: np.ndarray, progress: Callable[[str], None] | None = None) -> GbdtReference:
        """Train with early stopping on the validation AUC; ``progress`` hears every
        ``PROGRESS_ROUNDS`` rounds and the round kept."""
        xt, names, cats = gbdt_matrix(self.schema, train, self.cfg.multi_hot_top)
        xv, _, _ = gbdt_matrix(self.schema, valid, self.cfg.multi_hot_top, names=names)
        params = {"objective": "binary", "metric": "auc", "num_leaves": self.cfg.num_leaves,
                  "learning_rate": self.cfg.learning_rate, "seed": self.seed, "verbosity": -1,
                  "num_threads": self.threads, "deterministic": True, "force_row_wise": True,
                  "cat_smooth": 10, "min_data_per_group": 50}
        dtrain = lgb.Dataset(xt, y_train, feature_name=names, categorical_feature=cats, free_raw_data=False)
        dvalid = lgb.Dataset(xv, y_valid, reference=dtrain)
        evals: dict[str, Any] = {}
        callbacks = [lgb.early_stopping(self.cfg.early_stopping, verbose=False), lgb.record_evaluation(evals)]
        if progress is not None:
            callbacks.append(_reporter(progress))
        self.booster_ = lgb.train(params, dtrain, self.cfg.rounds, valid_sets=[dvalid], callbacks=callbacks)
        self.valid_auc_: list[float] = [float(x) for x in evals["valid_0"]["auc"]]
        if progress is not None:
            progress(f"gbdt: keeping round {self.booster_.best_iteration} of {self.booster_.current_iteration()} "
                     f"(valid auc {self.booster_.best_score['valid_0']['auc']:.4f}; early stopping after "
                     f"{self.cfg.early_stopping} rounds without improvement, at most {self.cfg.rounds})")
        return self

    def predict_logit(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """Raw scores (logits) of the best iteration; the columns come from the booster's names."""
        x = gbdt_columns(self.schema, inputs, self.booster_.feature_name())
        return self.booster_.predict(x, raw_score=True, num_iteration=self.booster_.best_iteration)
