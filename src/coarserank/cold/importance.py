"""Feature importance three ways, and how well the rankings agree.

``se``
    The mean SE gate weight of each field over validation rows, from a COLD model
    (:mod:`coarserank.student.cold`) trained on every field with hard labels and the teacher's soft
    labels. The model is trained with an L1 penalty ``gate_l1 * mean(gates)`` added to its loss:
    without it the MLP can ignore a field by itself and the gates of useful and useless fields end up
    close together; with it the gate of a field the model does not need sinks toward 0.
``gbdt``
    Each field's share of the total split gain of a LightGBM model on the same fields
    (categoricals as LightGBM categoricals, multi-valued fields as flags of their most frequent
    values, summed back to the field). Categorical splits are regularised harder than in the run's
    reference model (``min_data_per_group`` 200, ``cat_smooth`` 50, ``cat_l2`` 10), because split
    gain otherwise rewards many-valued categoricals for fitting noise.
``permutation``
    The drop in validation GAUC when one field's values are shuffled across rows (a multi-valued
    field's slots move together), averaged over ``repeats`` shuffles, for the model being swept.

A ranking lists fields by decreasing importance (ties in schema order); :func:`rank_agreement` gives
Kendall's tau-b between every pair of methods over the fields both scored.

Example
-------
>>> imp = Importance("se", {"a": 0.7, "b": 0.1, "c": 0.4})
>>> imp.ranking()
['a', 'c', 'b']
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import lightgbm as lgb
import numpy as np
import torch
from torch import nn

from coarserank.student.cold import ColdModel
from coarserank.config import DistillConfig, GbdtConfig
from coarserank.data.schema import Schema
from coarserank.distill.gbdt import gbdt_matrix
from coarserank.distill.losses import distill_loss
from coarserank.distill.tensors import TensorTable
from coarserank.distill.train import predict
from coarserank.errors import ConfigError, DataError
from coarserank.ranking_eval import gauc, kendall_tau

__all__ = [
    "Importance",
    "LossFn",
    "soft_label_loss",
    "gate_penalty",
    "se_importance",
    "gbdt_importance",
    "permutation_importance",
    "rank_agreement",
    "GBDT_CATEGORICAL_REGULARISATION",
]

LossFn = Callable[[torch.nn.Module, TensorTable], torch.Tensor]

GBDT_CATEGORICAL_REGULARISATION: dict[str, float] = {"min_data_per_group": 200, "cat_smooth": 50.0, "cat_l2": 10.0}
"""LightGBM settings that keep split gain from rewarding many-valued categoricals that fit noise."""


@dataclass(frozen=True)
class Importance:
    """Importance scores of one method, keyed by field name (in schema order).

    Parameters
    ----------
    method : str
        ``se``, ``gbdt`` or ``permutation``.
    scores : dict[str, float]
        Field name -> importance; larger is more important.
    note : str
        What exactly was measured, for the report.
    """

    method: str
    scores: dict[str, float]
    note: str = field(default="", compare=False)

    def ranking(self) -> list[str]:
        """Field names by decreasing score; equal scores keep schema order."""
        names, values = list(self.scores), list(self.scores.values())
        return [names[i] for i in sorted(range(len(names)), key=lambda i: -values[i])]

    def to_json(self) -> dict[str, Any]:
        """``{"method", "note", "scores", "ranking"}`` with scores rounded to 6 decimals."""
        return {"method": self.method, "note": self.note,
                "scores": {k: round(float(v), 6) for k, v in self.scores.items()}, "ranking": self.ranking()}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Importance:
        """Inverse of :meth:`to_json`."""
        return cls(str(body["method"]), {str(k): float(v) for k, v in body["scores"].items()}, str(body.get("note", "")))


def soft_label_loss(cfg: DistillConfig) -> LossFn:
    """The distillation loss of ``cfg`` (hard labels plus the teacher's soft labels), for ``fit``."""

    def loss(module: torch.nn.Module, batch: TensorTable) -> torch.Tensor:
        return distill_loss(module(batch.inputs), batch.label, batch.teacher, batch.group, alpha=cfg.alpha,
                            temperature=cfg.temperature, soft=cfg.soft)

    return loss


def gate_penalty(model: ColdModel, base: LossFn, l1: float) -> LossFn:
    """``base`` plus ``l1 * mean(gate weights)`` over the batch (the gates are recomputed from the
    batch's inputs, so the model itself stays a forward pass).

    Raises
    ------
    ConfigError
        If ``l1`` is negative.
    """
    if l1 < 0:
        raise ConfigError(f"cold.gate_l1 must be >= 0, got {l1}")
    if l1 == 0:
        return base

    def loss(module: torch.nn.Module, batch: TensorTable) -> torch.Tensor:
        return base(module, batch) + l1 * model.gate(model.embedding(batch.inputs)).mean()

    return loss


@torch.no_grad()
def se_importance(model: ColdModel, table: TensorTable, device: torch.device | str = "cpu",
                  batch_size: int = 32768) -> Importance:
    """Mean SE gate weight of each field of ``model`` over the rows of ``table``.

    Raises
    ------
    DataError
        If ``table`` has no rows.
    """
    if len(table) == 0:
        raise DataError("SE importance needs validation rows; the table is empty")
    model.eval()
    total = torch.zeros(len(model.schema), dtype=torch.float64)
    for start in range(0, len(table), batch_size):
        idx = torch.arange(start, min(start + batch_size, len(table)))
        _, gates = model.forward_with_gates(table.take(idx).to(device).inputs)
        total += gates.double().sum(dim=0).cpu()
    mean = (total / len(table)).numpy()
    return Importance("se", dict(zip(model.schema.names, mean.tolist())),
                      "mean SE gate weight over validation rows (COLD model on all fields, gate L1 penalty)")


def gbdt_importance(schema: Schema, train: dict[str, np.ndarray], y_train: np.ndarray,
                    valid: dict[str, np.ndarray], y_valid: np.ndarray, cfg: GbdtConfig, *, seed: int = 0,
                    threads: int = 0) -> Importance:
    """Share of LightGBM split gain per field (early stopping on ``valid``; gain of the best iteration).

    Parameters
    ----------
    schema : Schema
        The fields to score; every one must be in ``train`` and ``valid``.
    train, valid : dict[str, np.ndarray]
        Encoded inputs.
    y_train, y_valid : np.ndarray
        0/1 labels.
    cfg : GbdtConfig
        Leaves, learning rate, rounds, early stopping, multi-hot width.
    seed, threads : int
        LightGBM seed and thread count (0 = LightGBM's default).
    """
    xt, names, cats = gbdt_matrix(schema, train, cfg.multi_hot_top)
    xv, _, _ = gbdt_matrix(schema, valid, cfg.multi_hot_top, names=names)
    params: dict[str, Any] = {"objective": "binary", "metric": "auc", "num_leaves": cfg.num_leaves,
                              "learning_rate": cfg.learning_rate, "seed": seed, "verbosity": -1,
                              "num_threads": threads, "deterministic": True, "force_row_wise": True,
                              **GBDT_CATEGORICAL_REGULARISATION}
    dtrain = lgb.Dataset(xt, np.asarray(y_train, dtype=np.float32), feature_name=names, categorical_feature=cats,
                         free_raw_data=False)
    dvalid = lgb.Dataset(xv, np.asarray(y_valid, dtype=np.float32), reference=dtrain)
    booster = lgb.train(params, dtrain, cfg.rounds, valid_sets=[dvalid],
                        callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)])
    gain = booster.feature_importance("gain", iteration=booster.best_iteration or None)
    by_field = dict.fromkeys(schema.names, 0.0)
    for column, value in zip(booster.feature_name(), gain):
        name = column if column in by_field else column.rsplit("=", 1)[0]
        by_field[name] += float(value)
    total = sum(by_field.values())
    shares = {k: (v / total if total > 0 else 0.0) for k, v in by_field.items()}
    return Importance("gbdt", shares, "share of LightGBM split gain (best iteration), multi-hot flags summed per field")


def _permuted(table: TensorTable, name: str, perm: torch.Tensor) -> TensorTable:
    inputs = dict(table.inputs)
    inputs[name] = inputs[name][perm]
    return TensorTable(inputs, table.label, table.group, table.teacher)


def permutation_importance(model: nn.Module, table: TensorTable, fields: Sequence[str], *, repeats: int = 2,
                           seed: int = 0, device: torch.device | str = "cpu",
                           progress: Callable[[str], None] | None = None) -> Importance:
    """Validation GAUC of ``model`` minus its GAUC with one field shuffled across rows, per field.

    Parameters
    ----------
    model : nn.Module
        Any model taking ``{field: tensor}`` and returning logits ``[B]``.
    table : TensorTable
        Validation rows (labels and groups define GAUC).
    fields : Sequence[str]
        Fields to shuffle, one at a time; each must be an input of ``table``.
    repeats : int
        Shuffles per field; the drop is averaged.
    seed : int
        Seed of the shuffles.
    device : torch.device or str
        Where the model runs.
    progress : callable, optional
        Receives one line per field.

    Raises
    ------
    ConfigError
        If ``repeats < 1`` or a field is not an input of ``table``.
    """
    if repeats < 1:
        raise ConfigError(f"cold.permutation_repeats must be >= 1, got {repeats}")
    missing = [f for f in fields if f not in table.inputs]
    if missing:
        raise ConfigError(f"permutation importance: fields {missing} are not inputs of the table; "
                          f"inputs: {sorted(table.inputs)}")
    dev = torch.device(device)
    labels, groups = table.label.numpy(), table.group.numpy()
    base = gauc(labels, predict(model, table, dev), groups).value
    generator = torch.Generator().manual_seed(seed)
    scores: dict[str, float] = {}
    for name in fields:
        drops = []
        for _ in range(repeats):
            perm = torch.randperm(len(table), generator=generator)
            drops.append(base - gauc(labels, predict(model, _permuted(table, name, perm), dev), groups).value)
        scores[name] = float(np.mean(drops))
        if progress is not None:
            progress(f"permutation importance: {name} {scores[name]:+.4f} GAUC")
    return Importance("permutation", scores, f"validation GAUC drop when the field is shuffled ({repeats} shuffles)")


def rank_agreement(importances: Sequence[Importance]) -> dict[str, float | None]:
    """Kendall's tau-b between the scores of every pair of methods, over the fields both scored.

    Returns
    -------
    dict[str, float | None]
        ``"a~b"`` -> tau-b; ``None`` where fewer than two common fields or a constant score leave
        it undefined.
    """
    out: dict[str, float | None] = {}
    for i, a in enumerate(importances):
        for b in importances[i + 1:]:
            common = [f for f in a.scores if f in b.scores]
            key = f"{a.method}~{b.method}"
            try:
                tau = kendall_tau(np.array([a.scores[f] for f in common]), np.array([b.scores[f] for f in common]),
                                  np.zeros(len(common), dtype=np.int64))
                out[key] = float(tau.value)
            except DataError:
                out[key] = None
    return out
