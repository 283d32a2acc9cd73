"""Measured serving latency of a sweep point: its own model, exported to ONNX, run by ONNX Runtime.

Each point's trained model is exported on *encoded* inputs (one ONNX input per field, named after
the field, batch axis dynamic; the raw-column preprocessing graphs of ``serving`` are not part of
it) with the legacy TorchScript exporter (``dynamo=False``), checked against PyTorch on the timed
rows, and timed with :func:`coarserank.serving.timing.measure` (warm-up, then repeats timed one by
one) twice: with ONNX Runtime pinned to 1 intra-op thread and with its default thread count.

What one timed call is, for one request of ``n`` candidates:

``cold``
    One ``InferenceSession.run`` of the COLD model on a batch of ``n`` rows: every selected field,
    crosses included, is evaluated per candidate.
``two_tower``
    One ``run`` of the user tower on a batch of 1 row, then the candidates' item vectors gathered
    from a precomputed matrix (what a KV store returns; computed beforehand by the exported item
    tower) and scored ``a * (V @ u) + b`` with numpy. The item tower is not on the request path.
    numpy's own threads are not pinned; for 1,000 x 64 values they do not come into play.

Example
-------
>>> result = cold_latency(model, rows, out_dir, repeats=200, warmup=20)   # doctest: +SKIP
>>> result.timings["threads_1"].p99_ms                                     # doctest: +SKIP
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from coarserank.atomic import atomic_path
from coarserank.cold.se_model import ColdModel
from coarserank.data.schema import Schema
from coarserank.errors import ArtifactError, ConfigError
from coarserank.serving.timing import Timing, available_cores, measure
from coarserank.student.two_tower import Tower, TwoTower

__all__ = ["LatencyResult", "export_encoded", "ort_session", "cold_latency", "two_tower_latency", "THREAD_SETTINGS"]

THREAD_SETTINGS: dict[str, int] = {"threads_1": 1, "threads_default": 0}
"""Timing runs: ONNX Runtime intra-op threads (0 = ONNX Runtime's default, one per core)."""

_PARITY_TOLERANCE = 1e-3


class _Positional(nn.Module):
    """Adapter for export: one positional tensor per field, in schema order."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, inputs)))


@dataclass(frozen=True)
class LatencyResult:
    """Latency of one sweep point's scoring path for one request.

    Attributes
    ----------
    candidates : int
        Candidates scored per timed call.
    timings : dict[str, Timing]
        ``threads_1`` and ``threads_default`` (ONNX Runtime intra-op threads).
    onnx : dict[str, str]
        File name -> sha256 of every ONNX file on the path (the files that were timed).
    max_abs_diff : float
        Largest |ONNX Runtime score - PyTorch score| over the timed candidates.
    path : str
        What one timed call does.
    """

    candidates: int
    timings: dict[str, Timing]
    onnx: dict[str, str]
    max_abs_diff: float
    path: str

    def to_json(self) -> dict[str, Any]:
        """Plain dict for ``sweep.json``."""
        return {"candidates": self.candidates, "path": self.path, "max_abs_diff": float(self.max_abs_diff),
                "onnx_sha256": self.onnx, "cores_available": available_cores(),
                "timings": {k: v.to_json() for k, v in self.timings.items()}}


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def export_encoded(model: nn.Module, schema: Schema, path: Path | str, sample: dict[str, np.ndarray],
                   opset: int = 17) -> Path:
    """Export ``model`` with one ONNX input per field of ``schema`` (named after it) and output ``score``.

    Parameters
    ----------
    model : nn.Module
        Takes ``{field: tensor}`` for the fields of ``schema``; returns ``[B]`` or ``[B, dim]``.
    schema : Schema
        The fields, in input order.
    path : Path or str
        Where the ``.onnx`` file goes (written atomically).
    sample : dict[str, np.ndarray]
        Encoded rows (at least the fields of ``schema``) used to trace the model.
    opset : int
        ONNX opset.
    """
    names = schema.names
    missing = [n for n in names if n not in sample]
    if missing:
        raise ConfigError(f"ONNX export: the sample rows lack fields {missing}")
    args = tuple(torch.as_tensor(np.ascontiguousarray(sample[n][:2])) for n in names)
    axes: dict[str, dict[int, str]] = {n: {0: "batch"} for n in names}
    axes["score"] = {0: "batch"}
    wrapper = _Positional(model, names).eval()
    target = Path(path)
    with atomic_path(target, ".onnx") as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(tmp), input_names=names, output_names=["score"], dynamic_axes=axes,
                          opset_version=opset, dynamo=False, do_constant_folding=True)
    return target


def ort_session(path: Path | str, threads: int) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (0 = default), sequential execution."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def _feeds(schema: Schema, rows: dict[str, np.ndarray], n: int | None = None) -> dict[str, np.ndarray]:
    return {name: np.ascontiguousarray(rows[name][:n] if n is not None else rows[name]) for name in schema.names}


def _check_parity(diff: float, what: str) -> float:
    if not np.isfinite(diff) or diff > _PARITY_TOLERANCE:
        raise ArtifactError(f"{what}: ONNX Runtime and PyTorch scores differ by {diff:.3g} "
                            f"(> {_PARITY_TOLERANCE}); the exported model is not the trained one")
    return diff


def _time_all(make_call: Callable[[int], Callable[[], object]], repeats: int, warmup: int) -> dict[str, Timing]:
    out = {}
    for label, threads in THREAD_SETTINGS.items():
        used = threads if threads > 0 else available_cores()
        out[label] = measure(make_call(threads), repeats=repeats, warmup=warmup, threads=used)
    return out


def _rows(rows: dict[str, np.ndarray]) -> int:
    return len(next(iter(rows.values())))


@torch.no_grad()
def cold_latency(model: ColdModel, rows: dict[str, np.ndarray], out_dir: Path | str, *, opset: int = 17,
                 repeats: int = 200, warmup: int = 20) -> LatencyResult:
    """Export the COLD model to ``out_dir/scorer.onnx`` and time one ORT call on all ``rows``.

    Parameters
    ----------
    model : ColdModel
        The trained point model (its schema names the fields it reads).
    rows : dict[str, np.ndarray]
        Encoded candidate rows of one request; every row is scored per call.
    out_dir : Path or str
        Directory for the ONNX file.
    opset, repeats, warmup : int
        ONNX opset; timed and untimed calls per thread setting.
    """
    model = model.eval().cpu()
    schema = model.schema
    path = export_encoded(model, schema, Path(out_dir) / "scorer.onnx", rows, opset)
    feeds = _feeds(schema, rows)
    reference = model({k: torch.as_tensor(v) for k, v in feeds.items()}).numpy()
    got = ort_session(path, 1).run(None, feeds)[0]
    diff = _check_parity(float(np.max(np.abs(got - reference))), "COLD scorer")

    def make_call(threads: int) -> Callable[[], object]:
        session = ort_session(path, threads)
        return lambda: session.run(None, feeds)

    return LatencyResult(_rows(rows), _time_all(make_call, repeats, warmup), {path.name: _sha256(path)}, diff,
                         f"one ONNX Runtime call of scorer.onnx on {_rows(rows)} rows (every field per candidate)")


@torch.no_grad()
def two_tower_latency(model: TwoTower, rows: dict[str, np.ndarray], out_dir: Path | str, *, opset: int = 17,
                      repeats: int = 200, warmup: int = 20) -> LatencyResult:
    """Export both towers to ``out_dir`` and time user tower (1 row) + gather + inner products.

    Parameters
    ----------
    model : TwoTower
        The trained point model.
    rows : dict[str, np.ndarray]
        Encoded candidate rows of one request: the first row's user and context fields form the
        request, every row's item fields a candidate.
    out_dir : Path or str
        Directory for ``user_tower.onnx`` and ``item_tower.onnx``.
    opset, repeats, warmup : int
        ONNX opset; timed and untimed calls per thread setting.
    """
    model = model.eval().cpu()
    towers: dict[str, Tower] = {"user_tower": model.user_tower, "item_tower": model.item_tower}
    paths = {name: export_encoded(t, t.schema, Path(out_dir) / f"{name}.onnx", rows, opset)
             for name, t in towers.items()}
    user_feeds = _feeds(model.user_tower.schema, rows, 1)
    item_feeds = _feeds(model.item_tower.schema, rows)
    vectors = np.ascontiguousarray(ort_session(paths["item_tower"], 1).run(None, item_feeds)[0])  # offline
    a, b = float(model.a), float(model.b)
    n = _rows(rows)
    ids = np.arange(n)

    def score(session: ort.InferenceSession) -> np.ndarray:
        u = session.run(None, user_feeds)[0][0]
        return a * (vectors[ids] @ u) + b

    broadcast = {k: torch.as_tensor(v).expand(n, *v.shape[1:]) for k, v in user_feeds.items()}
    inputs = {**{k: torch.as_tensor(v) for k, v in item_feeds.items()}, **broadcast}
    diff = _check_parity(float(np.max(np.abs(score(ort_session(paths["user_tower"], 1)) - model(inputs).numpy()))),
                         "two-tower scoring path")

    def make_call(threads: int) -> Callable[[], object]:
        session = ort_session(paths["user_tower"], threads)
        return lambda: score(session)

    return LatencyResult(n, _time_all(make_call, repeats, warmup), {p.name: _sha256(p) for p in paths.values()},
                         diff, f"one ONNX Runtime call of user_tower.onnx on 1 row, then {n} precomputed item "
                               "vectors gathered and scored a*(V@u)+b in numpy")
