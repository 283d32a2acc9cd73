"""ONNX graph building blocks: a small node builder and the raw-feature preprocessing subgraph.

:func:`encode_inputs` turns the raw inputs of :mod:`coarserank.serving.onnx_inputs` into the same
tensors :meth:`coarserank.data.encode.Encoder.transform` produces, using only standard operators
that ONNX Runtime's default CPU build runs (``ai.onnx`` and ``ai.onnx.ml`` LabelEncoder):

- categorical / multi: ``LabelEncoder`` over the sorted vocabulary, default OOV; ``""`` in a
  multi-valued slot is padding.
- sequence: ``LabelEncoder`` over the vocabulary of the feature ``of``; ``""`` (string) or
  ``INT64_MIN`` (int64) in a slot is padding.
- bucketed: ``ReduceSum(Cast(x >= boundaries))``, NaN -> OOV.
- numeric, history and match crosses: ``(x - mean) / std`` in double precision, NaN -> 0 (a match,
  1 or 0, picks one of its two normalised values).
- product cross: pair code ``code_a * size_b + code_b`` -> ``LabelEncoder`` over the encoder's
  ``cross_values_`` (unseen -> OOV); padding in either operand stays padding (only multi-valued
  and sequence operands have any: a single value's code is never padding).
- match cross: equality of the raw values (strings compared through ``Unique``'s inverse
  indices, since string ``Equal`` needs opset 19), false when either side is missing.

In a row scorer's graph (teacher, COLD) the user and context inputs may hold one row for the whole
request (:data:`~coarserank.serving.onnx_inputs.REQUEST_AXIS`): the operators above broadcast it
against the candidates' rows, and a string match against an item value expands it first.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from coarserank.config import CrossConfig, FeatureConfig
from coarserank.data.encode import Encoder
from coarserank.data.schema import FIRST_ID, OOV, PAD
from coarserank.errors import ArtifactError
from coarserank.serving.onnx_inputs import MISSING_INT64, MISSING_STRING

__all__ = ["ML_DOMAIN", "ML_OPSET", "GraphBuilder", "encode_inputs"]

ML_DOMAIN = "ai.onnx.ml"
ML_OPSET = 2


class GraphBuilder:
    """Accumulates nodes and initializers; :meth:`op` returns the name of the node's output.

    Example
    -------
    >>> g = GraphBuilder()
    >>> y = g.op("Relu", g.op("Add", "x", g.const(np.float32(1.0))))
    """

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0
        self._cache: dict[tuple[Any, ...], str] = {}

    def fresh(self, hint: str) -> str:
        """A new unique tensor name starting with ``hint``."""
        self._count += 1
        return f"t{self._count}/{hint}"

    def const(self, value: Any, hint: str = "const") -> str:
        """An initializer holding ``value`` (a numpy array or scalar, dtype kept)."""
        array = np.asarray(value)
        key = (array.dtype.str, array.shape, array.tobytes()) if array.size <= 16 else None
        if key is not None and key in self._cache:
            return self._cache[key]
        name = self.fresh(hint)
        self.initializers.append(numpy_helper.from_array(array, name))
        if key is not None:
            self._cache[key] = name
        return name

    def axes(self, *axes: int) -> str:
        """An int64 axes tensor (ReduceSum, Unsqueeze and Squeeze take axes as an input since opset 13)."""
        return self.const(np.asarray(axes, dtype=np.int64), "axes")

    def op(self, op_type: str, *inputs: str, hint: str | None = None, domain: str = "", **attrs: Any) -> str:
        """Append one node with a single output and return that output's name."""
        return self.op_n(op_type, *inputs, outputs=1, hint=hint, domain=domain, **attrs)[0]

    def op_n(self, op_type: str, *inputs: str, outputs: int, hint: str | None = None, domain: str = "",
             **attrs: Any) -> list[str]:
        """Append one node with ``outputs`` outputs and return their names."""
        names = [self.fresh(hint or op_type.lower()) for _ in range(outputs)]
        node = onnx.helper.make_node(op_type, list(inputs), names, name=self.fresh(f"node_{op_type}"),
                                     domain=domain, **attrs)
        self.nodes.append(node)
        return names


def _label_encoder(g: GraphBuilder, x: str, keys: list[Any], values: list[int], default: int,
                   strings: bool) -> str:
    attr = "keys_strings" if strings else "keys_int64s"
    keys = [str(k) for k in keys] if strings else [int(k) for k in keys]
    return g.op("LabelEncoder", x, domain=ML_DOMAIN, hint="code", default_int64=default,
                values_int64s=[int(v) for v in values], **{attr: keys})


def _bucket(g: GraphBuilder, f: FeatureConfig, x: str) -> str:
    """Count of boundaries <= x, int64 [N] (NaN counts none; callers map NaN to missing)."""
    bounds = g.const(np.asarray(f.boundaries, dtype=np.float32)[None, :], f"{f.name}_boundaries")
    above = g.op("GreaterOrEqual", g.op("Unsqueeze", x, g.axes(1)), bounds)
    return g.op("ReduceSum", g.op("Cast", above, to=TensorProto.INT64), g.axes(1), keepdims=0, hint="bucket")


def _codes(g: GraphBuilder, encoder: Encoder, f: FeatureConfig, x: str) -> str:
    """Vocabulary codes of a categorical ([N]), multi-valued or sequence ([N, max_len]) raw input."""
    vocab = encoder.vocabs_[f.of if f.kind == "sequence" else f.name]
    keys, ids = list(vocab.values), list(range(FIRST_ID, vocab.size))
    if f.kind == "multi":
        return _label_encoder(g, x, keys + [MISSING_STRING], ids + [PAD], OOV, strings=True)
    if f.kind == "sequence":
        strings = vocab.dtype != "int64"
        pad = MISSING_STRING if strings else MISSING_INT64
        known = [(k, i) for k, i in zip(keys, ids) if k != pad]  # blank pieces are dropped, never looked up
        return _label_encoder(g, x, [k for k, _ in known] + [pad], [i for _, i in known] + [PAD], OOV,
                              strings=strings)
    if f.boundaries:
        if keys != list(range(len(f.boundaries) + 1)):
            raise ArtifactError(f"feature {f.name!r}: a bucketed vocabulary must be 0..{len(f.boundaries)}")
        code = g.op("Add", _bucket(g, f, x), g.const(np.int64(FIRST_ID)))
        return g.op("Where", g.op("IsNaN", x), g.const(np.int64(OOV)), code, hint=f"{f.name}_code")
    missing: Any = MISSING_INT64 if vocab.dtype == "int64" else MISSING_STRING
    if missing not in keys:  # explicit, and keeps the key list non-empty when nothing was frequent enough
        keys, ids = keys + [missing], ids + [OOV]
    return _label_encoder(g, x, keys, ids, OOV, strings=vocab.dtype != "int64")


def _normalise(g: GraphBuilder, x: str, mean: float, std: float, hint: str) -> str:
    """``(x - mean) / std`` computed in double like the encoder, then float32; NaN -> 0."""
    z = g.op("Div", g.op("Sub", g.op("Cast", x, to=TensorProto.DOUBLE), g.const(np.float64(mean))),
             g.const(np.float64(std)))
    z = g.op("Cast", z, to=TensorProto.FLOAT)
    return g.op("Where", g.op("IsNaN", z), g.const(np.float32(0.0)), z, hint=hint)


def _match_operand(g: GraphBuilder, encoder: Encoder, f: FeatureConfig, x: str) -> tuple[str, str, str]:
    """(comparable value, its dtype, missing mask) of one side of a match cross."""
    if f.kind != "categorical":
        raise ArtifactError(f"match crosses compare categorical features; {f.name!r} is {f.kind}")
    if f.boundaries:
        return _bucket(g, f, x), "int64", g.op("IsNaN", x)
    if encoder.vocabs_[f.name].dtype == "int64":
        return x, "int64", g.op("Equal", x, g.const(np.int64(MISSING_INT64)))
    is_blank = _label_encoder(g, x, [MISSING_STRING], [1], 0, strings=True)
    return x, "string", g.op("Cast", is_blank, to=TensorProto.BOOL)


def _match(g: GraphBuilder, encoder: Encoder, c: CrossConfig, fa: FeatureConfig, fb: FeatureConfig,
           xa: str, xb: str) -> str:
    a, dtype_a, missing_a = _match_operand(g, encoder, fa, xa)
    b, dtype_b, missing_b = _match_operand(g, encoder, fb, xb)
    if dtype_a != dtype_b:  # the encoder compares the decimal text of the integer side
        a = g.op("Cast", a, to=TensorProto.STRING) if dtype_a == "int64" else a
        b = g.op("Cast", b, to=TensorProto.STRING) if dtype_b == "int64" else b
    if dtype_a == dtype_b == "int64":
        equal = g.op("Equal", a, b)
    else:
        if fa.side != "item" and fb.side == "item":  # a request's one row against the candidates' rows
            a = g.op("Expand", a, g.op("Shape", b))
        elif fb.side != "item" and fa.side == "item":
            b = g.op("Expand", b, g.op("Shape", a))
        both = g.op("Concat", a, b, axis=0)
        inverse = g.op_n("Unique", both, outputs=4, hint="unique")[2]
        pairs = g.op("Reshape", inverse, g.const(np.asarray([2, -1], dtype=np.int64)))
        equal = g.op("Equal", g.op("Gather", pairs, g.const(np.int64(0)), axis=0),
                     g.op("Gather", pairs, g.const(np.int64(1)), axis=0))
    present = g.op("Not", g.op("Or", missing_a, missing_b))
    mean, std = encoder.stats_[c.name]  # 1.0 or 0.0 normalised in double, as the encoder does, then float32
    return g.op("Where", g.op("And", equal, present), g.const(np.float32((1.0 - mean) / std)),
                g.const(np.float32((0.0 - mean) / std)), hint=c.name)


def _product(g: GraphBuilder, encoder: Encoder, c: CrossConfig, fa: FeatureConfig, fb: FeatureConfig,
             ca: str, cb: str) -> str:
    if fa.kind == "categorical" and fb.kind in ("multi", "sequence"):
        ca = g.op("Unsqueeze", ca, g.axes(1))
    if fb.kind == "categorical" and fa.kind in ("multi", "sequence"):
        cb = g.op("Unsqueeze", cb, g.axes(1))
    pairs = g.op("Add", g.op("Mul", ca, g.const(np.int64(encoder.vocabs_[fb.name].size))), cb)
    known = [int(v) for v in encoder.cross_values_[c.name]]
    ids = list(range(FIRST_ID, FIRST_ID + len(known)))
    if not known:  # pair codes are never negative: a key that cannot match keeps the list non-empty
        known, ids = [-1], [OOV]
    code = _label_encoder(g, pairs, known, ids, OOV, strings=False)
    if fa.kind == fb.kind == "categorical":  # a single value's code is never padding
        return code
    padding = g.op("Or", g.op("Equal", ca, g.const(np.int64(PAD))), g.op("Equal", cb, g.const(np.int64(PAD))))
    return g.op("Where", padding, g.const(np.int64(PAD)), code, hint=c.name)


def encode_inputs(g: GraphBuilder, encoder: Encoder, fields: Sequence[str]) -> dict[str, str]:
    """Add the nodes that encode the raw graph inputs (named after their features) into ``fields``.

    Returns ``{field name: tensor name}``: int64 codes for categorical, multi and sequence fields, float32
    for numeric ones, exactly what ``encoder.transform(frame, fields)`` returns for the same rows.
    """
    features = {f.name: f for f in encoder.cfg.features}
    crosses = {c.name: c for c in encoder.cfg.crosses}
    history = {h.name for h in encoder.cfg.history_crosses}
    codes: dict[str, str] = {}

    def code(name: str) -> str:
        if name not in codes:
            codes[name] = _codes(g, encoder, features[name], name)
        return codes[name]

    out: dict[str, str] = {}
    for name in fields:
        if name in features:
            f = features[name]
            out[name] = (_normalise(g, name, *encoder.stats_[name], hint=name) if f.kind == "numeric"
                         else code(name))
        elif name in history:
            out[name] = _normalise(g, name, *encoder.stats_[name], hint=name)
        elif name in crosses:
            c = crosses[name]
            fa, fb = features[c.a], features[c.b]
            out[name] = (_match(g, encoder, c, fa, fb, c.a, c.b) if c.op == "match"
                         else _product(g, encoder, c, fa, fb, code(c.a), code(c.b)))
        else:
            raise ArtifactError(f"field {name!r} is not a feature or cross of this run's configuration")
    return out
