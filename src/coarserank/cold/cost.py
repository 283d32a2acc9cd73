"""What a sweep point costs: parameters, multiply-adds per candidate, and each feature's own cost.

Multiply-adds are counted on the exported ONNX graph of the point itself (:func:`onnx_macs`): every
``Gemm`` or ``MatMul`` against a weight initializer ``[K, M]`` costs ``K * M`` per row. Embedding
gathers, pooling, activations and the SE gate's elementwise product are not counted (they are
memory traffic, which the per-feature cost reports instead).

Per request of ``n`` candidates:

``cold``
    ``macs_per_candidate`` = the scorer's multiply-adds per row; every field is looked up for every
    candidate (``rows_per_request = n``).
``two_tower``
    The user tower runs once, the item vectors are precomputed, and each candidate costs one inner
    product of ``dim`` multiply-adds: ``macs_per_candidate = user_tower_macs / n + dim``. User and
    context fields are looked up once per request; item fields are looked up offline, when an item's
    vector is built (``online = false``, ``rows_per_request = 0``).

Each feature's cost (:func:`feature_costs`): ``vocab`` (rows of its table), ``table_bytes`` (its
embedding table or scale vector in float32), ``lookups_per_row`` (1 categorical, ``max_len``
multi-valued, 0 numeric), ``floats_per_request`` (embedding values read per request) and
``first_layer_macs`` (``embed_dim`` times the width of the layers that read the field: the first MLP
layer, plus the SE gate's ``F`` outputs for COLD). Two features of equal importance can differ by
orders of magnitude here: a 1,600-row id table read once per candidate against a numeric scale.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from coarserank.student.cold import ColdModel
from coarserank.errors import ArtifactError
from coarserank.layers import FeatureEmbedding
from coarserank.student.two_tower import TwoTower

__all__ = ["count_params", "onnx_macs", "feature_costs", "point_cost"]

_FLOAT_BYTES = 4


def count_params(model: nn.Module) -> int:
    """Number of parameters (every tensor in ``model.parameters()``)."""
    return int(sum(p.numel() for p in model.parameters()))


def onnx_macs(path: Path | str) -> int:
    """Multiply-adds per batch row of the matrix products against weights in an ONNX graph.

    Raises
    ------
    ArtifactError
        If the file cannot be read as ONNX.
    """
    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001  (protobuf raises its own DecodeError)
        raise ArtifactError(f"{path} is not a readable ONNX model: {exc}") from exc
    shapes = {init.name: tuple(init.dims) for init in proto.graph.initializer}
    for node in proto.graph.node:  # weights folded into Constant nodes
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    shapes[node.output[0]] = tuple(numpy_helper.to_array(attr.t).shape)
    total = 0
    for node in proto.graph.node:
        if node.op_type not in ("Gemm", "MatMul"):
            continue
        weights = [shapes[name] for name in node.input[:2] if name in shapes and len(shapes[name]) == 2]
        if weights:
            total += int(np.prod(weights[0]))
    return total


def _first_linear_out(module: nn.Module) -> int:
    for m in module.modules():
        if isinstance(m, nn.Linear):
            return int(m.out_features)
    return 0


def feature_costs(embedding: FeatureEmbedding, readers: int, rows_per_request: int, *,
                  online: bool = True) -> list[dict[str, Any]]:
    """One cost record per field of ``embedding``.

    Parameters
    ----------
    embedding : FeatureEmbedding
        The trained embedding block (tables are measured, not derived from the schema).
    readers : int
        Outputs of the layers that read each field's embedding (first MLP width, plus ``F`` for an SE gate).
    rows_per_request : int
        How often each field is looked up per request.
    online : bool
        Whether the lookups happen on the request path.
    """
    out = []
    for f in embedding.schema.fields:
        if f.kind == "numeric":
            tensor, vocab, lookups = embedding.scales[f.name], 0, 0
        else:
            tensor, vocab, lookups = embedding.tables[f.name].weight, int(f.size), int(f.max_len)
        out.append({"field": f.name, "side": f.side, "kind": f.kind, "vocab": vocab, "embed_dim": embedding.dim,
                    "table_bytes": int(tensor.numel()) * _FLOAT_BYTES, "lookups_per_row": lookups,
                    "rows_per_request": rows_per_request, "online": online,
                    "floats_per_request": lookups * embedding.dim * rows_per_request,
                    "first_layer_macs": embedding.dim * readers})
    return out


def point_cost(model: nn.Module, onnx_dir: Path | str, candidates: int) -> dict[str, Any]:
    """Parameters, multiply-adds and per-feature costs of a trained point model and its ONNX files.

    Parameters
    ----------
    model : ColdModel or TwoTower
        The point's model.
    onnx_dir : Path or str
        Where :mod:`coarserank.cold.latency` exported it (``scorer.onnx`` or both towers).
    candidates : int
        Candidates per request.

    Raises
    ------
    ArtifactError
        If the model is neither a COLD model nor a two-tower model.
    """
    base = Path(onnx_dir)
    if isinstance(model, ColdModel):
        macs = onnx_macs(base / "scorer.onnx")
        readers = _first_linear_out(model.mlp) + len(model.schema)
        return {"params": count_params(model), "params_online": count_params(model), "macs_per_candidate": macs,
                "macs_per_request": macs * candidates,
                "embedding_bytes": sum(c["table_bytes"] for c in feature_costs(model.embedding, readers, candidates)),
                "features": feature_costs(model.embedding, readers, candidates)}
    if isinstance(model, TwoTower):
        user = onnx_macs(base / "user_tower.onnx")
        dim = int(model.user_tower.mlp.out_dim)
        costs = (feature_costs(model.user_tower.embedding, _first_linear_out(model.user_tower.mlp), 1)
                 + feature_costs(model.item_tower.embedding, _first_linear_out(model.item_tower.mlp), 0,
                                 online=False))
        return {"params": count_params(model), "params_online": count_params(model.user_tower),
                "macs_per_candidate": user / candidates + dim, "macs_per_request": user + dim * candidates,
                "user_tower_macs": user, "item_tower_macs_offline": onnx_macs(base / "item_tower.onnx"),
                "embedding_bytes": sum(c["table_bytes"] for c in costs), "features": costs}
    raise ArtifactError(f"cannot cost a {type(model).__name__}; expected a ColdModel or a TwoTower")
