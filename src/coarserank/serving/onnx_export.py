"""Export the user tower, the item tower and the teacher to ONNX, raw feature values in.

Each graph is written from the model's weights with ``onnx.helper``: the preprocessing subgraph
of :mod:`coarserank.serving.onnx_preprocess` (vocabulary lookup, OOV, bucketing, normalisation)
followed by the network (Gather for embeddings, mean pooling, Gemm + Relu, L2 normalisation or
the DeepFM sum). Only the ``ai.onnx`` and ``ai.onnx.ml`` domains are used, the batch axis ``N``
is dynamic, and ``metadata_props`` carry what a server needs (see :data:`METADATA_KEYS` and
``docs/serving.md``). :func:`onnx_parity` measures ONNX Runtime against PyTorch on the same rows.

Example
-------
>>> export_user_tower(student, encoder, run / "user_tower.onnx", run_hash="3f2a...")  # doctest: +SKIP
>>> onnx_parity(student, encoder, run / "user_tower.onnx", frame, "user")            # doctest: +SKIP
3.1e-07
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np
import onnx
import onnxruntime as ort
import polars as pl
import torch
from onnx import TensorProto
from torch import nn

import coarserank
from coarserank.atomic import atomic_write_bytes
from coarserank.data.encode import Encoder
from coarserank.data.schema import PAD, SCHEMA_VERSION
from coarserank.errors import ArtifactError, ConfigError
from coarserank.layers import MLP, FeatureEmbedding
from coarserank.serving.onnx_inputs import (
    MISSING_INT64,
    MISSING_STRING,
    InputSpec,
    ModelKind,
    feeds_from_frame,
    input_specs,
)
from coarserank.serving.onnx_preprocess import ML_DOMAIN, ML_OPSET, GraphBuilder, encode_inputs
from coarserank.student import Tower, TwoTower
from coarserank.teacher import DeepFM

__all__ = ["METADATA_KEYS", "OUTPUT_NAMES", "export_user_tower", "export_item_tower", "export_teacher",
           "onnx_parity"]

OUTPUT_NAMES: dict[str, str] = {"user": "vector", "item": "vector", "teacher": "logit"}
METADATA_KEYS = ("model_kind", "schema_version", "run_hash", "vector_dim", "score_a", "score_b",
                 "input_names", "inputs", "output_name", "missing_int64", "missing_string", "score_formula")
_MIN_OPSET = 13  # ReduceSum/Unsqueeze/Squeeze take axes as an input from opset 13
_NORMALIZE_EPS = 1e-8  # Tower.forward: F.normalize(..., eps=1e-8)
_ELEM = {"int64": TensorProto.INT64, "string": TensorProto.STRING, "float32": TensorProto.FLOAT}


def _weight(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().numpy().astype(np.float32)


def _embed(g: GraphBuilder, emb: FeatureEmbedding, encoded: dict[str, str]) -> str:
    """``FeatureEmbedding`` -> ``[N, F * dim]`` (fields concatenated in schema order, like flatten(1))."""
    parts = []
    for f in emb.schema.fields:
        x = encoded[f.name]
        if f.kind == "numeric":
            parts.append(g.op("Mul", g.op("Unsqueeze", x, g.axes(1)), g.const(_weight(emb.scales[f.name]))))
            continue
        table = g.const(_weight(emb.tables[f.name].weight), f"{f.name}_table")
        rows = g.op("Gather", table, x, axis=0)
        if f.kind == "categorical":
            parts.append(rows)
            continue
        total = g.op("ReduceSum", rows, g.axes(1), keepdims=0)
        filled = g.op("Cast", g.op("Not", g.op("Equal", x, g.const(np.int64(PAD)))), to=TensorProto.FLOAT)
        count = g.op("Max", g.op("ReduceSum", filled, g.axes(1), keepdims=1), g.const(np.float32(1.0)))
        parts.append(g.op("Div", total, count, hint=f"{f.name}_pooled"))
    return g.op("Concat", *parts, axis=1, hint="embedded")


def _mlp(g: GraphBuilder, mlp: MLP, x: str) -> str:
    for layer in mlp.net:
        if isinstance(layer, nn.Linear):
            bias = layer.bias if layer.bias is not None else torch.zeros(layer.out_features)
            x = g.op("Gemm", x, g.const(_weight(layer.weight)), g.const(_weight(bias)), transB=1)
        elif isinstance(layer, nn.ReLU):
            x = g.op("Relu", x)
        elif not isinstance(layer, nn.Dropout):  # dropout is the identity at inference
            raise ArtifactError(f"cannot export MLP layer {type(layer).__name__}; "
                                "expected Linear, ReLU or Dropout")
    return x


def _tower_graph(g: GraphBuilder, tower: Tower, encoded: dict[str, str]) -> str:
    h = _mlp(g, tower.mlp, _embed(g, tower.embedding, encoded))
    norm = g.op("Sqrt", g.op("ReduceSum", g.op("Mul", h, h), g.axes(-1), keepdims=1))
    return g.op("Div", h, g.op("Max", norm, g.const(np.float32(_NORMALIZE_EPS))), hint="vector")


def _teacher_graph(g: GraphBuilder, teacher: DeepFM, encoded: dict[str, str]) -> str:
    fields, k = len(teacher.embedding.schema), teacher.embedding.dim
    first = g.op("ReduceSum", _embed(g, teacher.first_order, encoded), g.axes(1), keepdims=0)
    flat = _embed(g, teacher.embedding, encoded)
    v = g.op("Reshape", flat, g.const(np.asarray([-1, fields, k], dtype=np.int64)))
    summed = g.op("ReduceSum", v, g.axes(1), keepdims=0)
    squares = g.op("ReduceSum", g.op("Mul", v, v), g.axes(1), keepdims=0)
    pairwise = g.op("ReduceSum", g.op("Sub", g.op("Mul", summed, summed), squares), g.axes(1), keepdims=0)
    fm = g.op("Mul", pairwise, g.const(np.float32(0.5)))
    deep = g.op("Squeeze", _mlp(g, teacher.dnn, flat), g.axes(-1))
    return g.op("Add", g.op("Add", g.op("Add", g.const(_weight(teacher.bias)), first), fm), deep)


def _value_info(spec: InputSpec) -> onnx.ValueInfoProto:
    return onnx.helper.make_tensor_value_info(spec.name, _ELEM[spec.dtype], list(spec.shape))


def _finish(g: GraphBuilder, result: str, kind: ModelKind, specs: list[InputSpec], out_shape: list[str | int],
            metadata: dict[str, str], opset: int) -> onnx.ModelProto:
    output = OUTPUT_NAMES[kind]
    g.nodes.append(onnx.helper.make_node("Identity", [result], [output], name="output"))
    graph = onnx.helper.make_graph(g.nodes, f"coarserank_{kind}", [_value_info(s) for s in specs],
                                   [onnx.helper.make_tensor_value_info(output, TensorProto.FLOAT, out_shape)],
                                   initializer=g.initializers)
    opsets = [onnx.helper.make_opsetid("", opset), onnx.helper.make_opsetid(ML_DOMAIN, ML_OPSET)]
    model = onnx.helper.make_model(graph, opset_imports=opsets, producer_name="coarserank",
                                   producer_version=coarserank.__version__,
                                   ir_version=onnx.helper.find_min_ir_version_for(opsets))
    model.doc_string = f"coarserank {kind} model: raw feature values in, {output} out (docs/serving.md)"
    onnx.helper.set_model_props(model, {
        "model_kind": kind, "schema_version": str(SCHEMA_VERSION), "output_name": output,
        "input_names": ",".join(s.name for s in specs),
        "inputs": json.dumps([{"name": s.name, "dtype": s.dtype, "shape": list(s.shape)} for s in specs]),
        "missing_int64": str(MISSING_INT64), "missing_string": MISSING_STRING, **metadata,
    })
    return model


def _write(model: onnx.ModelProto, path: Path | str) -> Path:
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"the exported ONNX graph for {path} fails onnx.checker: {exc}") from exc
    return atomic_write_bytes(path, model.SerializeToString())


def _check_opset(opset: int) -> None:
    if opset < _MIN_OPSET:
        raise ConfigError(f"serving.opset must be at least {_MIN_OPSET}, got {opset}")


def _export_tower(student: TwoTower, kind: Literal["user", "item"], encoder: Encoder, path: Path | str,
                  run_hash: str, opset: int) -> Path:
    _check_opset(opset)
    tower = student.user_tower if kind == "user" else student.item_tower
    fields = tower.schema.names
    specs = input_specs(encoder, kind, fields)
    g = GraphBuilder()
    vector = _tower_graph(g, tower, encode_inputs(g, encoder, fields))
    dim = int(tower.mlp.out_dim)
    metadata = {"run_hash": run_hash, "vector_dim": str(dim),
                "score_a": repr(float(student.a.detach())), "score_b": repr(float(student.b.detach())),
                "score_formula": "a * dot(user_vector, item_vector) + b"}
    return _write(_finish(g, vector, kind, specs, ["N", dim], metadata, opset), path)


def export_user_tower(student: TwoTower, encoder: Encoder, path: Path | str, *, run_hash: str,
                      opset: int = 17) -> Path:
    """Write ``student``'s user tower as ONNX: raw user and context features in, ``vector [N, dim]`` out."""
    return _export_tower(student, "user", encoder, path, run_hash, opset)


def export_item_tower(student: TwoTower, encoder: Encoder, path: Path | str, *, run_hash: str,
                      opset: int = 17) -> Path:
    """Write ``student``'s item tower as ONNX: raw item features in, ``vector [N, dim]`` out."""
    return _export_tower(student, "item", encoder, path, run_hash, opset)


def export_teacher(teacher: DeepFM, encoder: Encoder, path: Path | str, *, run_hash: str,
                   opset: int = 17) -> Path:
    """Write the teacher as ONNX: every raw feature plus the history crosses in, ``logit [N]`` out.

    Product and match crosses are computed inside the graph from the raw features.
    """
    _check_opset(opset)
    fields = teacher.embedding.schema.names
    specs = input_specs(encoder, "teacher", fields)
    g = GraphBuilder()
    logit = _teacher_graph(g, teacher, encode_inputs(g, encoder, fields))
    metadata = {"run_hash": run_hash, "score_formula": "logit (sigmoid gives the click probability)"}
    return _write(_finish(g, logit, "teacher", specs, ["N"], metadata, opset), path)


_LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
           "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
           "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def onnx_parity(model_torch: TwoTower | Tower | DeepFM, encoder: Encoder, onnx_path: Path | str,
                frame: pl.DataFrame, model_kind: ModelKind, *,
                optimization: Literal["all", "basic", "disable"] = "all") -> float:
    """Largest absolute difference between ONNX Runtime on the raw rows of ``frame`` and PyTorch on
    ``encoder.transform(frame)``; ``model_torch`` is the TwoTower (or the Tower) or the DeepFM."""
    module: Tower | DeepFM
    if isinstance(model_torch, TwoTower):
        module = model_torch.user_tower if model_kind == "user" else model_torch.item_tower
    else:
        module = model_torch
    if isinstance(module, DeepFM) != (model_kind == "teacher"):
        raise ArtifactError(f"onnx_parity: a {type(module).__name__} cannot be checked as "
                            f"the {model_kind!r} model")
    fields = module.embedding.schema.names
    options = ort.SessionOptions()
    options.graph_optimization_level = _LEVELS[optimization]
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feeds = feeds_from_frame(encoder, frame, model_kind, fields)
    expected = sorted(i.name for i in session.get_inputs())
    if sorted(feeds) != expected:
        raise ArtifactError(f"{onnx_path} takes inputs {expected}, "
                            f"the {model_kind} model needs {sorted(feeds)}")
    got = session.run(None, feeds)[0]
    device = next(module.parameters()).device
    inputs = {k: torch.from_numpy(v).to(device) for k, v in encoder.transform(frame, fields).items()}
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            want = module(inputs).cpu().numpy()
    finally:
        module.train(was_training)
    if got.shape != want.shape:
        raise ArtifactError(f"{onnx_path} returns shape {got.shape}, PyTorch {want.shape}")
    return float(np.max(np.abs(got.astype(np.float64) - want))) if got.size else 0.0
