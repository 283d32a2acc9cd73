"""One exporter for every network: raw feature values in, ``torch.onnx.export`` of the network inside.

:func:`export_model` writes any ``nn.Module`` whose forward takes ``{field: tensor}`` (the encoded
inputs of :meth:`coarserank.data.encode.Encoder.transform`: int64 ``[N]`` categorical, int64
``[N, max_len]`` multi-valued and sequence, float32 ``[N]`` numeric) and returns ``[N]``, ``[N, D]``
or ``[N, K, D]``. Two graphs are composed:

1. the raw-value preprocessing graph of :mod:`coarserank.serving.onnx_preprocess` (vocabulary
   lookup, OOV, bucketing, normalisation, crosses), whose outputs are the encoded fields;
2. the network, exported by ``torch.onnx.export`` on encoded inputs, its names prefixed with
   ``network/`` and its inputs wired to the preprocessing outputs (``onnx.compose.merge_models``);
   two exact rewrites (:mod:`coarserank.serving.onnx_peephole`) remove small nodes first.

So no family needs hand-written graph code: the towers, the teacher and the COLD scorer are thin
calls of :func:`export_model`, and the sweep times the same function's output.

Exporter choice: the TorchScript-based exporter (``dynamo=False``). Measured with torch 2.13 on the
teacher and the user tower of a tiny run, it gives the same operators after ONNX Runtime's
optimisation and the same latency as the dynamo exporter (within noise), but exports in 0.1-0.4 s
against 5-19 s, which matters for a sweep that exports every point and for the test suite, keeps
IR version 8 / opset 17 (the dynamo exporter emits opset 18 and IR 10 at least, which older
runtimes reject) and needs no extra dependency (``onnxscript``). Dict inputs go through a
positional wrapper; the batch axis is dynamic through ``dynamic_axes``. The graph is traced: a
network whose forward branches on data values exports the branch of the trace sample; the parity
check (:func:`onnx_parity`, run by every export stage) catches such a network.

Only the ``ai.onnx`` and ``ai.onnx.ml`` domains are used; ``metadata_props`` carry what a server
needs (:mod:`coarserank.serving.onnx_contract`, ``docs/serving.md``).

Example
-------
>>> export_user_tower(student, encoder, run / "user_tower.onnx", run_hash="3f2a...")  # doctest: +SKIP
>>> onnx_parity(student, encoder, run / "user_tower.onnx", frame, "user")            # doctest: +SKIP
3.1e-07
"""

from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Literal, Sequence

import numpy as np
import onnx
import onnx.compose
import onnxruntime as ort
import polars as pl
import torch
from onnx import TensorProto
from torch import nn

import coarserank
from coarserank.atomic import atomic_write_bytes
from coarserank.data.encode import Encoder
from coarserank.errors import ArtifactError, ConfigError
from coarserank.serving.onnx_contract import model_metadata
from coarserank.serving.onnx_inputs import ROW_SCORERS, ModelKind, feeds_from_frame, input_specs, request_fields
from coarserank.serving.onnx_peephole import simplify
from coarserank.serving.onnx_preprocess import ML_DOMAIN, ML_OPSET, GraphBuilder, encode_inputs

__all__ = ["OUTPUT_NAMES", "export_model", "export_user_tower", "export_item_tower", "export_teacher",
           "module_fields", "onnx_parity", "read_metadata"]

OUTPUT_NAMES: dict[str, str] = {"user": "vector", "item": "vector", "teacher": "logit", "cold": "logit"}
_MIN_OPSET = 13  # ReduceSum/Unsqueeze/Squeeze take axes as an input from opset 13
_PREFIX = "network/"
_ENCODED = "encoded/"
_TRACE_ROWS = 3
_ELEM = {"int64": TensorProto.INT64, "string": TensorProto.STRING, "float32": TensorProto.FLOAT}


class _Positional(nn.Module):
    """Adapter for the exporter: one positional tensor per field, in ``names`` order."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model = model
        self.names = names

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.model(dict(zip(self.names, inputs)))


def module_fields(module: nn.Module) -> list[str]:
    """The schema fields a module reads: its ``schema`` (towers, COLD) or its embedding's (teacher).

    Raises
    ------
    ArtifactError
        If the module exposes neither; pass ``fields`` to :func:`export_model` explicitly then.
    """
    for owner in (module, getattr(module, "embedding", None)):
        schema = getattr(owner, "schema", None)
        if schema is not None and hasattr(schema, "names"):
            return list(schema.names)
    raise ArtifactError(f"cannot tell which fields a {type(module).__name__} reads (no .schema or "
                        ".embedding.schema); pass fields= explicitly")


def _trace_sample(encoder: Encoder, fields: Sequence[str]) -> dict[str, torch.Tensor]:
    """A few encoded rows of random codes and values: the exporter traces the network on them."""
    rng = np.random.default_rng(0)
    out: dict[str, torch.Tensor] = {}
    for name in fields:
        f = encoder.schema_[name]
        if f.kind == "numeric":
            out[name] = torch.from_numpy(rng.standard_normal(_TRACE_ROWS).astype(np.float32))
            continue
        shape = (_TRACE_ROWS,) if f.kind == "categorical" else (_TRACE_ROWS, f.max_len)
        out[name] = torch.from_numpy(rng.integers(0, max(int(f.size), 1), shape).astype(np.int64))
    return out


def _network(module: nn.Module, encoder: Encoder, fields: list[str], output: str,
             opset: int) -> tuple[onnx.ModelProto, tuple[int, ...]]:
    """The network alone, on encoded inputs named after the fields, and its output shape past ``N``."""
    net = copy.deepcopy(module).cpu().eval()
    if callable(getattr(net, "for_serving", None)):  # an equal function in a form that serves faster
        net = net.for_serving().eval()
    sample = _trace_sample(encoder, fields)
    with torch.no_grad():
        probe = net(sample)
    if not isinstance(probe, torch.Tensor) or probe.dim() not in (1, 2, 3) or probe.shape[0] != _TRACE_ROWS:
        got = tuple(probe.shape) if isinstance(probe, torch.Tensor) else type(probe).__name__
        raise ArtifactError(f"cannot export a {type(module).__name__}: its forward must return [N], [N, D] "
                            f"or [N, K, D] for N rows, got {got} for {_TRACE_ROWS} rows")
    axes = {name: {0: "N"} for name in [*fields, output]}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
        torch.onnx.export(_Positional(net, fields), tuple(sample[n] for n in fields), buffer,  # type: ignore[arg-type]
                          input_names=fields, output_names=[output], dynamic_axes=axes, opset_version=opset,
                          dynamo=False, do_constant_folding=True)
    return simplify(onnx.load_from_string(buffer.getvalue())), tuple(int(d) for d in probe.shape[1:])


def _preprocessing(encoder: Encoder, kind: ModelKind, fields: list[str], ir_version: int,
                   opset: int) -> onnx.ModelProto:
    """Raw inputs -> one graph output ``encoded/<field>`` per field (what ``encoder.transform`` gives)."""
    specs = input_specs(encoder, kind, fields)
    g = GraphBuilder()
    encoded = encode_inputs(g, encoder, fields)
    rows = next((s.name for s in specs if s.shape[0] == "N"), None) if kind in ROW_SCORERS else None
    if rows is not None:  # fields of the request alone: its one row repeated for every candidate
        n = g.op("Slice", g.op("Shape", rows), g.const(np.array([0], dtype=np.int64)),
                 g.const(np.array([1], dtype=np.int64)), hint="candidates")
        for name in request_fields(encoder, fields):
            f = encoder.schema_[name]
            shape = n if f.kind in ("numeric", "categorical") else g.op(
                "Concat", n, g.const(np.array([1], dtype=np.int64)), axis=0)
            encoded[name] = g.op("Expand", encoded[name], shape, hint=f"{name}_rows")
    outputs = []
    for name in fields:
        g.nodes.append(onnx.helper.make_node("Identity", [encoded[name]], [_ENCODED + name],
                                             name=g.fresh(f"encoded_{name}")))
        f = encoder.schema_[name]
        dtype = TensorProto.FLOAT if f.kind == "numeric" else TensorProto.INT64
        shape: list[str | int] = ["N"] if f.kind in ("numeric", "categorical") else ["N", f.max_len]
        outputs.append(onnx.helper.make_tensor_value_info(_ENCODED + name, dtype, shape))
    inputs = [onnx.helper.make_tensor_value_info(s.name, _ELEM[s.dtype], list(s.shape)) for s in specs]
    graph = onnx.helper.make_graph(g.nodes, "preprocessing", inputs, outputs, initializer=g.initializers)
    opsets = [onnx.helper.make_opsetid("", opset), onnx.helper.make_opsetid(ML_DOMAIN, ML_OPSET)]
    return onnx.helper.make_model(graph, opset_imports=opsets, ir_version=ir_version)


def _compose(pre: onnx.ModelProto, net: onnx.ModelProto, output: str, out_shape: tuple[int, ...]) -> onnx.ModelProto:
    net = onnx.compose.add_prefix(net, _PREFIX, rename_outputs=False)
    wired = [(_ENCODED + i.name[len(_PREFIX):], i.name) for i in net.graph.input]
    model = onnx.compose.merge_models(pre, net, io_map=wired, outputs=[output])
    out = model.graph.output[0].type.tensor_type
    out.shape.Clear()
    for dim in ("N", *out_shape):
        entry = out.shape.dim.add()
        if isinstance(dim, str):
            entry.dim_param = dim
        else:
            entry.dim_value = dim
    return model


def export_model(module: nn.Module, encoder: Encoder, path: Path | str, kind: ModelKind, *,
                 fields: Sequence[str] | None = None, metadata: dict[str, str] | None = None,
                 opset: int = 17, history_base_rate: float | None = None) -> Path:
    """Write ``module`` as ONNX with raw feature values in; returns ``path`` (written atomically).

    Parameters
    ----------
    module : nn.Module
        Forward takes ``{field: encoded tensor}`` for ``fields`` and returns ``[N]``, ``[N, D]`` or
        ``[N, K, D]``; exported in eval mode, on a CPU copy (the module itself is not changed).
    encoder : Encoder
        The fitted encoder of the run: the graph repeats its vocabularies and statistics.
    path : Path or str
        The ``.onnx`` file.
    kind : str
        ``user``, ``item`` (output ``vector``), ``teacher`` or ``cold`` (output ``logit``); picks the
        output name and the metadata's ``model_kind``.
    fields : sequence of str, optional
        Schema fields the module reads (default :func:`module_fields`).
    metadata : dict, optional
        Extra ``metadata_props`` (``run_hash``, ``run_id``, score constants).
    opset : int
        ``ai.onnx`` opset (13 or later).
    history_base_rate : float, optional
        The training base rate the history crosses are smoothed toward (recorded in the metadata
        of a graph that takes history crosses, so a client can compute them).

    Raises
    ------
    ConfigError
        An opset below 13.
    ArtifactError
        A module that does not return one tensor of rows, or a graph that fails ``onnx.checker``.
    """
    if opset < _MIN_OPSET:
        raise ConfigError(f"serving.opset must be at least {_MIN_OPSET}, got {opset}")
    if kind not in OUTPUT_NAMES:
        raise ConfigError(f"unknown model kind {kind!r}; expected one of {', '.join(OUTPUT_NAMES)}")
    names = list(fields) if fields is not None else module_fields(module)
    output = OUTPUT_NAMES[kind]
    net, out_shape = _network(module, encoder, names, output, opset)
    pre = _preprocessing(encoder, kind, names, net.ir_version, opset)
    model = _compose(pre, net, output, out_shape)
    model.graph.name = f"coarserank_{kind}"
    model.producer_name, model.producer_version = "coarserank", coarserank.__version__
    model.doc_string = f"coarserank {kind} model: raw feature values in, {output} out (docs/serving.md)"
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, model_metadata(encoder, kind, names, output, out_shape, metadata or {},
                                                      base_rate=history_base_rate))
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"the exported ONNX graph for {path} fails onnx.checker: {exc}") from exc
    return atomic_write_bytes(path, model.SerializeToString())


def _score_metadata(student: nn.Module) -> dict[str, str]:
    meta = {"score_formula": "a * dot(user_vector, item_vector) + b"}
    for key, attr in (("score_a", "a"), ("score_b", "b")):
        value = getattr(student, attr, None)
        if value is not None:
            meta[key] = repr(float(torch.as_tensor(value).detach()))
    return meta


def _export_tower(student: nn.Module, kind: Literal["user", "item"], encoder: Encoder, path: Path | str,
                  run_hash: str, opset: int, extra: dict[str, str] | None) -> Path:
    tower = getattr(student, f"{kind}_tower", None)
    if not isinstance(tower, nn.Module):
        raise ArtifactError(f"a {type(student).__name__} has no {kind}_tower to export")
    metadata = {"run_hash": run_hash, **_score_metadata(student), **(extra or {})}
    return export_model(tower, encoder, path, kind, metadata=metadata, opset=opset)


def export_user_tower(student: nn.Module, encoder: Encoder, path: Path | str, *, run_hash: str,
                      opset: int = 17, metadata: dict[str, str] | None = None) -> Path:
    """Write ``student.user_tower`` as ONNX: raw user and context features in, ``vector`` out."""
    return _export_tower(student, "user", encoder, path, run_hash, opset, metadata)


def export_item_tower(student: nn.Module, encoder: Encoder, path: Path | str, *, run_hash: str,
                      opset: int = 17, metadata: dict[str, str] | None = None) -> Path:
    """Write ``student.item_tower`` as ONNX: raw item features in, ``vector`` out."""
    return _export_tower(student, "item", encoder, path, run_hash, opset, metadata)


def export_teacher(teacher: nn.Module, encoder: Encoder, path: Path | str, *, run_hash: str,
                   opset: int = 17, metadata: dict[str, str] | None = None,
                   history_base_rate: float | None = None) -> Path:
    """Write the teacher as ONNX: every raw feature plus the history crosses in, ``logit [N]`` out.

    Product and match crosses are computed inside the graph from the raw features.
    """
    meta = {"run_hash": run_hash, "score_formula": "logit (sigmoid gives the click probability)",
            **(metadata or {})}
    return export_model(teacher, encoder, path, "teacher", metadata=meta, opset=opset,
                        history_base_rate=history_base_rate)


def read_metadata(path: Path | str) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file (without loading the weights into a session)."""
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001  (protobuf raises its own DecodeError)
        raise ArtifactError(f"{path} is not a readable ONNX model: {exc}") from exc
    return {p.key: p.value for p in model.metadata_props}


_LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
           "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
           "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def _module_for(model_torch: nn.Module, kind: ModelKind) -> nn.Module:
    if kind in ("user", "item") and hasattr(model_torch, f"{kind}_tower"):
        return getattr(model_torch, f"{kind}_tower")
    return model_torch


def onnx_parity(model_torch: nn.Module, encoder: Encoder, onnx_path: Path | str, frame: pl.DataFrame,
                model_kind: ModelKind, *, optimization: Literal["all", "basic", "disable"] = "all") -> float:
    """Largest absolute difference between ONNX Runtime on the raw rows of ``frame`` and PyTorch on
    ``encoder.transform(frame)``; ``model_torch`` is the exported module, or the student whose
    ``user_tower`` / ``item_tower`` was exported. The fields come from the file's metadata."""
    meta = read_metadata(onnx_path)
    if meta.get("model_kind") != model_kind:
        raise ArtifactError(f"{onnx_path} holds a {meta.get('model_kind')!r} model, not {model_kind!r}")
    module = _module_for(model_torch, model_kind)
    fields = meta["fields"].split(",") if meta.get("fields") else module_fields(module)
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[optimization]
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feeds = feeds_from_frame(encoder, frame, model_kind, fields)
    expected = sorted(i.name for i in session.get_inputs())
    if sorted(feeds) != expected:
        raise ArtifactError(f"{onnx_path} takes inputs {expected}, the {model_kind} model needs {sorted(feeds)}")
    got = session.run(None, feeds)[0]
    device = next(module.parameters()).device
    inputs = {k: torch.from_numpy(v).to(device) for k, v in encoder.transform(frame, fields).items()}
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            want = module(inputs).float().cpu().numpy()
    finally:
        module.train(was_training)
    if got.shape != want.shape:
        raise ArtifactError(f"{onnx_path} returns shape {got.shape}, PyTorch {want.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0

