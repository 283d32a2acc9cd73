"""The public functions that judge and ship trained models: :func:`evaluate`, :func:`consistency`
and :func:`export` (``import coarserank as cr``; the training calls sit beside them).

Each computes exactly what ``distill run`` records for a run: :func:`evaluate` an entry of
``metrics.json``, :func:`consistency` the report's teacher-student consistency block, and
:func:`export` the serving files with their parity checks.

Examples
--------
>>> run = cr.Run.open("runs/movielens")                                           # doctest: +SKIP
>>> cr.evaluate(run.model("student"), run.split("test")).gauc                     # doctest: +SKIP
>>> cr.export(run.model("student"), run.model("teacher"), run, "out/")            # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np
import torch

from coarserank.artifacts import MODEL_FILES, Run
from coarserank.config import ReportConfig, RunConfig, ServingConfig, load_config
from coarserank.data.dataset import EncodedSplit, PreparedData
from coarserank.data.dataset_builder import Dataset
from coarserank.distill.api import check_sampling
from coarserank.data.splits import CandidateSets
from coarserank.distill.tensors import make_table
from coarserank.distill.train import predict
from coarserank.errors import ConfigError, DataError
from coarserank.pipeline.export_stage import ExportResult, export_models
from coarserank.pipeline.run_data import RunData
from coarserank.ranking_eval import consistency_table, label_metrics
from coarserank.student import TwoTower

__all__ = ["Evaluation", "evaluate", "consistency", "export", "model_hash", "prepare_data"]


class _Scorer(Protocol):
    def predict_logit(self, inputs: dict[str, np.ndarray]) -> np.ndarray: ...


@dataclass(frozen=True)
class Evaluation:
    """A model's label metrics on one split, as ``metrics.json`` records them."""

    auc: float
    gauc: float
    logloss: float
    rows: int
    gauc_groups_used: int
    gauc_groups_skipped: int

    def to_json(self) -> dict[str, Any]:
        return {"auc": self.auc, "gauc": self.gauc, "logloss": self.logloss, "rows": self.rows,
                "gauc_groups_used": self.gauc_groups_used, "gauc_groups_skipped": self.gauc_groups_skipped}


def _logits(model: torch.nn.Module | _Scorer, inputs: Mapping[str, np.ndarray], rows: int,
            device: torch.device | str) -> np.ndarray:
    if isinstance(model, torch.nn.Module):
        zeros = np.zeros(rows, dtype=np.int64)
        return predict(model, make_table(dict(inputs), zeros, zeros), torch.device(device))
    if hasattr(model, "predict_logit"):
        return np.asarray(model.predict_logit(dict(inputs)))
    raise ConfigError(f"cannot score with a {type(model).__name__}: give a torch module (teacher, student) "
                      "or a fitted GBDT reference")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    """Probabilities as the metrics stage computes them (in the logits' own precision)."""
    return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))


def _sigmoid64(z: np.ndarray) -> np.ndarray:
    """Probabilities as the report computes them (float64)."""
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def evaluate(model: torch.nn.Module | _Scorer, split: EncodedSplit, *, device: torch.device | str = "cpu"
             ) -> Evaluation:
    """AUC, GAUC and log loss of ``model`` on ``split`` (``metrics.json``'s definitions: GAUC per
    group of ``split.group``, groups with one class skipped and counted).

    Raises
    ------
    DataError
        If the split has no group with both classes (GAUC is undefined).
    """
    z = _logits(model, split.inputs, len(split), device)
    return Evaluation(**label_metrics(split.label, _sigmoid(z), split.group))


def consistency(student: torch.nn.Module | _Scorer, teacher: torch.nn.Module | _Scorer | None,
                candidate_sets: CandidateSets, *, ks: Sequence[int] = ReportConfig.ks,
                ns: Sequence[int] = ReportConfig.ns, device: torch.device | str = "cpu") -> dict[str, float]:
    """How the student ranks each candidate set compared with the teacher: Kendall's tau, Spearman,
    Recall@k-in-n, overlap@k and NDCG@k of the teacher's top k, averaged over the sets (the
    report's ``consistency`` block; ``report.ks`` and ``report.ns`` by default).

    ``teacher=None`` uses ``candidate_sets.teacher``, the teacher logits stored with the sets.
    Both are compared as probabilities (sigmoid of the logits), as in the report.

    Raises
    ------
    DataError
        If there is no teacher to compare with, or a cut-off no set is large enough for.
    """
    n = len(candidate_sets)
    if teacher is not None:
        t = _logits(teacher, candidate_sets.inputs, n, device)
    elif candidate_sets.teacher is not None:
        t = candidate_sets.teacher
    else:
        raise DataError("consistency needs the teacher: pass the model or candidate sets with teacher logits")
    s = _logits(student, candidate_sets.inputs, n, device)
    codes = np.unique(candidate_sets.groups, return_inverse=True)[1].reshape(-1)
    table = consistency_table(_sigmoid64(t), _sigmoid64(s), codes, tuple(ks), tuple(ns))
    return {name: m.value for name, m in table.items()}


def model_hash(model: torch.nn.Module) -> str:
    """sha256 over a module's state (names, dtypes, shapes and bytes of every tensor): identifies
    the weights a KV store's vectors were computed with when no checkpoint file exists."""
    digest = hashlib.sha256()
    for name, value in model.state_dict().items():
        array = value.detach().cpu().contiguous().numpy()
        digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()


def prepare_data(cfg: RunConfig) -> PreparedData:
    """Read ``cfg``'s data source, prepare it (labels, time split, history crosses) and encode every
    split with an encoder fitted on train: the data stage of ``distill run``, in memory.

    Raises
    ------
    ConfigError, DataError, SchemaError
        A source that cannot be read or does not fit the declared features (one line, naming it).
    """
    data = Dataset.from_config(cfg).prepared
    check_sampling(cfg.distill, data.pairs)
    return data


def _run_data(student: torch.nn.Module, dataset: Run | RunData | PreparedData, serving: ServingConfig | None,
              seed: int) -> RunData:
    if isinstance(dataset, Run):
        return RunData.from_run(dataset, {"student": student})
    if isinstance(dataset, PreparedData):
        base = load_config()
        cfg = replace(base, data=dataset.cfg, serving=serving or base.serving, run=replace(base.run, seed=seed))
        test = dataset.test
        return RunData(cfg, dataset.encoder, dataset.frame, test.frame,
                       {"student": _logits(student, test.fields(dataset.schema), len(test), "cpu")}, Path("."))
    if "student" in dataset.test_logits:
        return dataset
    logits = _logits(student, dataset.encoder.transform(dataset.test), dataset.test.height, "cpu")
    return replace(dataset, test_logits={**dataset.test_logits, "student": logits})


def export(student: TwoTower, teacher: torch.nn.Module, dataset: Run | RunData | PreparedData, out_dir: Path | str, *,
           serving: ServingConfig | None = None, seed: int = 0, progress: Callable[[str], None] | None = None,
           check: bool = True) -> ExportResult:
    """Write what a run exports, for these models, into ``out_dir``: ``user_tower.onnx``,
    ``item_tower.onnx``, ``teacher.onnx`` (raw feature values in), ``items.parquet``, ``items.kv``,
    ``items.faiss`` (+ sidecar), ``index_queries.npy`` and ``serving.json``, with the parity checks
    (ONNX Runtime vs PyTorch, the score path, Faiss vs KV) in :attr:`ExportResult.checks`.

    ``dataset`` gives the data the export reads (the catalogue, the test rows of the parity checks):
    a finished :class:`~coarserank.artifacts.Run` (its ``serving`` settings), a :class:`RunData`, or
    the :class:`PreparedData` the models were trained on (``serving`` settings and ``seed`` given
    here, defaults otherwise). The KV store is keyed by :func:`model_hash` of the student (a run's
    checkpoint sha256 when the models are the run's own). With ``check`` (default) a check over
    ``serving.parity_tolerance`` raises :class:`~coarserank.errors.ArtifactError` after the files
    are written. ``result.ranker()`` ranks with what was written.
    """
    data = _run_data(student, dataset, serving, seed)
    hashes = {name: model_hash(m) for name, m in (("student", student), ("teacher", teacher))}
    run_id = ""
    if isinstance(dataset, Run):  # the run's own checkpoints keep the run's hashes and its run id
        own = [name for name in hashes if model_hash(dataset.model(name)) == hashes[name]]
        hashes.update({name: str(dataset.manifest.file_hash(MODEL_FILES[name])) for name in own})
        run_id = dataset.manifest.run_id if len(own) == len(hashes) else ""
    result = export_models(out_dir, data, student, teacher, student_hash=hashes["student"],
                           teacher_hash=hashes["teacher"], run_id=run_id, progress=progress or (lambda _m: None))
    if check:
        result.enforce()
    return result
