"""Measured serving latency of a sweep point: its own model, exported as it would ship, run by ONNX Runtime.

Each point's trained model goes through the one exporter the run uses
(:func:`coarserank.serving.onnx_export.export_model`): raw feature values in, the preprocessing
graph (vocabulary lookup, bucketing, normalisation, crosses) and the network in one file, so the
sweep times exactly the graph that ships. The file is checked against PyTorch on the timed rows and
timed with :func:`coarserank.serving.timing.measure` (warm-up, then repeats timed one by one) twice:
with ONNX Runtime pinned to 1 intra-op thread and with its default thread count. Feeds are built
from the raw rows before timing (a server receives them ready).

What one timed call is, for one request of ``n`` candidates:

``cold``
    One ``InferenceSession.run`` of the COLD scorer for one request of ``n`` candidates, fed as
    ``distill rank`` feeds it: the first row's user and context values once (the request axis,
    broadcast in the graph), every row's item columns and history crosses; every selected field,
    crosses included, is evaluated per candidate.
``two_tower``
    One ``run`` of the user tower on 1 raw row, then the candidates' item vectors gathered from a
    precomputed matrix (what a KV store returns; computed beforehand by the exported item tower on
    the candidates' raw item columns) and scored ``a * (V @ u) + b`` with numpy. The item tower is
    not on the request path. numpy's own threads are not pinned; for 1,000 x 64 values they do not
    come into play.

Example
-------
>>> result = cold_latency(model, encoder, rows, out_dir, repeats=200, warmup=20)   # doctest: +SKIP
>>> result.timings["threads_1"].p99_ms                                              # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnxruntime as ort
import polars as pl
import torch

from coarserank.student.cold import ColdModel
from coarserank.data.encode import Encoder
from coarserank.errors import ArtifactError
from coarserank.serving.onnx_export import export_item_tower, export_model, export_user_tower, onnx_parity
from coarserank.serving.onnx_inputs import feeds_from_frame, input_specs, one_request, request_inputs
from coarserank.serving.timing import Timing, available_cores, measure
from coarserank.student.two_tower import TwoTower

__all__ = ["LatencyResult", "ort_session", "cold_latency", "two_tower_latency", "THREAD_SETTINGS"]

THREAD_SETTINGS: dict[str, int] = {"threads_1": 1, "threads_default": 0}
"""Timing runs: ONNX Runtime intra-op threads (0 = ONNX Runtime's default, one per core)."""

_PARITY_TOLERANCE = 1e-3
_SWEEP_HASH = "sweep-point"


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
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ort_session(path: Path | str, threads: int) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (0 = default), sequential execution."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


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


@torch.no_grad()
def cold_latency(model: ColdModel, encoder: Encoder, rows: pl.DataFrame, out_dir: Path | str, *,
                 opset: int = 17, repeats: int = 200, warmup: int = 20) -> LatencyResult:
    """Export the COLD model to ``out_dir/scorer.onnx`` and time one ORT call on all ``rows``.

    Parameters
    ----------
    model : ColdModel
        The trained point model (its schema names the fields it reads).
    encoder : Encoder
        The run's fitted encoder.
    rows : pl.DataFrame
        Raw candidate rows of one request (feature columns, history crosses); every row is scored.
    out_dir : Path or str
        Directory for the ONNX file.
    opset, repeats, warmup : int
        ONNX opset; timed and untimed calls per thread setting.
    """
    model = model.eval().cpu()
    fields = model.schema.names
    path = export_model(model, encoder, Path(out_dir) / "scorer.onnx", "cold", fields=fields, opset=opset,
                        metadata={"run_hash": _SWEEP_HASH})
    diff = _check_parity(onnx_parity(model, encoder, path, rows, "cold"), "COLD scorer")
    request = request_inputs({s.name: s.shape[0] for s in input_specs(encoder, "cold", fields)})
    feeds = one_request(feeds_from_frame(encoder, rows, "cold", fields), request)

    def make_call(threads: int) -> Callable[[], object]:
        session = ort_session(path, threads)
        return lambda: session.run(None, feeds)

    n = rows.height
    return LatencyResult(n, _time_all(make_call, repeats, warmup), {path.name: _sha256(path)}, diff,
                         f"one ONNX Runtime call of scorer.onnx for one request of {n} candidates (the first row's "
                         "user and context values once, every row's item columns and history crosses)")


def _torch_score(model: TwoTower, encoder: Encoder, rows: pl.DataFrame) -> np.ndarray:
    """PyTorch's score of every row's item for the first row's user."""
    def encoded(frame: pl.DataFrame, tower: Any) -> dict[str, torch.Tensor]:
        return {k: torch.from_numpy(v) for k, v in encoder.transform(frame, tower.schema.names).items()}

    u = model.user_tower(encoded(rows.head(1), model.user_tower))[0]
    v = model.item_tower(encoded(rows, model.item_tower))
    return (float(model.a) * (v @ u) + float(model.b)).numpy()


@torch.no_grad()
def two_tower_latency(model: TwoTower, encoder: Encoder, rows: pl.DataFrame, out_dir: Path | str, *,
                      opset: int = 17, repeats: int = 200, warmup: int = 20) -> LatencyResult:
    """Export both towers to ``out_dir`` and time user tower (1 row) + gather + inner products.

    Parameters
    ----------
    model : TwoTower
        The trained point model.
    encoder : Encoder
        The run's fitted encoder.
    rows : pl.DataFrame
        Raw candidate rows of one request: the first row's user and context columns form the
        request, every row's item columns a candidate.
    out_dir : Path or str
        Directory for ``user_tower.onnx`` and ``item_tower.onnx``.
    opset, repeats, warmup : int
        ONNX opset; timed and untimed calls per thread setting.
    """
    model = model.eval().cpu()
    out = Path(out_dir)
    paths = {"user_tower": export_user_tower(model, encoder, out / "user_tower.onnx", run_hash=_SWEEP_HASH,
                                             opset=opset),
             "item_tower": export_item_tower(model, encoder, out / "item_tower.onnx", run_hash=_SWEEP_HASH,
                                             opset=opset)}
    user_feeds = feeds_from_frame(encoder, rows.head(1), "user")
    item_feeds = feeds_from_frame(encoder, rows, "item")
    vectors = np.ascontiguousarray(ort_session(paths["item_tower"], 1).run(None, item_feeds)[0])  # offline
    a, b = float(model.a), float(model.b)
    n = rows.height
    ids = np.arange(n)

    def score(session: ort.InferenceSession) -> np.ndarray:
        u = session.run(None, user_feeds)[0][0]
        return a * (vectors[ids] @ u) + b

    got = score(ort_session(paths["user_tower"], 1))
    diff = _check_parity(float(np.max(np.abs(got - _torch_score(model, encoder, rows)))), "two-tower scoring path")

    def make_call(threads: int) -> Callable[[], object]:
        session = ort_session(paths["user_tower"], threads)
        return lambda: score(session)

    return LatencyResult(n, _time_all(make_call, repeats, warmup), {p.name: _sha256(p) for p in paths.values()},
                         diff, f"one ONNX Runtime call of user_tower.onnx on 1 raw row, then {n} precomputed item "
                               "vectors gathered and scored a*(V@u)+b in numpy")
