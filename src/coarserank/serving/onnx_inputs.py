"""The raw inputs of the exported ONNX graphs: their names, dtypes and shapes, and feeds built from data.

The graphs written by :mod:`coarserank.serving.onnx_export` take raw feature values, one input per
feature (named after the feature), and do the vocabulary lookup, bucketing, normalisation and
multi-valued pooling themselves, so a ranker in another language never re-implements our
vocabularies. The conventions (also in ``docs/serving.md``):

- categorical without boundaries: ``int64 [N]`` or ``string [N]`` (the vocabulary's dtype);
  missing is :data:`MISSING_INT64` or :data:`MISSING_STRING`; unseen values go to the OOV bucket.
- categorical with boundaries: ``float32 [N]`` raw number, bucketed in the graph; NaN is missing.
- multi-valued: ``string [N, max_len]``: the caller splits on the feature's separator, strips
  whitespace, drops blank pieces, keeps the first ``max_len`` and pads with ``""``.
- sequence (a user's behaviour history of the item-side feature ``of``): like multi-valued, in the
  dtype of ``of``'s vocabulary: ``string [N, max_len]`` padded with ``""``, or ``int64 [N, max_len]``
  padded with :data:`MISSING_INT64` (a piece that is not an integer: :data:`UNPARSED_INT64`, -> OOV).
- numeric, and the teacher's history crosses: ``float32 [N]`` raw value; NaN is missing (-> 0
  after normalisation).

:func:`feeds_from_frame` and :func:`feeds_from_records` produce exactly these feeds from a polars
frame (the pipeline's prepared frame) or from JSON-like records.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Literal, Sequence

import numpy as np
import polars as pl

from coarserank.config import FeatureConfig
from coarserank.data.encode import Encoder, raw_categorical
from coarserank.data.prepare import feature_column
from coarserank.data.schema import STUDENT_ITEM_SIDES, STUDENT_USER_SIDES
from coarserank.errors import SchemaError, ServingError

__all__ = [
    "ModelKind",
    "REQUEST_AXIS",
    "ROW_SCORERS",
    "request_fields",
    "request_inputs",
    "one_request",
    "InputSpec",
    "MISSING_INT64",
    "MISSING_STRING",
    "UNPARSED_INT64",
    "model_fields",
    "input_specs",
    "feeds_from_frame",
    "feeds_from_records",
]

ModelKind = Literal["user", "item", "teacher", "cold"]
ROW_SCORERS: tuple[ModelKind, ...] = ("teacher", "cold")
"""Kinds that score one row per candidate; their user and context inputs take the request axis."""
REQUEST_AXIS = "R"
"""The batch axis of a row scorer's user and context inputs: 1 (one request's values, broadcast in the
graph to every candidate) or N (one row per candidate)."""
InputKind = Literal["categorical", "bucketed", "multi", "sequence", "numeric", "history"]
MISSING_INT64 = int(np.iinfo(np.int64).min)
UNPARSED_INT64 = MISSING_INT64 + 1
"""A piece of an int64 sequence that is not an integer: never in a vocabulary, so OOV like the encoder."""
MISSING_STRING = ""
_NUMPY = {"int64": np.int64, "string": object, "float32": np.float32}


@dataclass(frozen=True)
class InputSpec:
    """One graph input: ``name`` (the feature), ``dtype`` (int64, string or float32), ``shape``
    (``"N"`` is the dynamic batch axis), a ``description`` for people and the input ``kind``."""

    name: str
    dtype: Literal["int64", "string", "float32"]
    shape: tuple[str | int, ...]
    description: str
    kind: InputKind = "categorical"


def model_fields(encoder: Encoder, model: ModelKind) -> list[str]:
    """Schema fields a model reads by default: user and context (user tower), item (item tower), all
    (teacher, COLD scorer; a COLD model over selected fields passes them explicitly)."""
    schema = encoder.schema_
    if model == "user":
        return schema.select(STUDENT_USER_SIDES).names
    if model == "item":
        return schema.select(STUDENT_ITEM_SIDES).names
    if model in ("teacher", "cold"):
        return schema.names
    raise ServingError(f"unknown model kind {model!r}; expected 'user', 'item', 'teacher' or 'cold'")


def _spec(encoder: Encoder, f: FeatureConfig) -> InputSpec:
    col = feature_column(f.name, f.column)
    if f.kind == "numeric":
        mean, std = encoder.stats_[f.name]
        return InputSpec(f.name, "float32", ("N",), f"numeric column {col!r}, normalised in the graph as "
                         f"(x - {mean:.6g}) / {std:.6g}; NaN = missing -> 0", "numeric")
    if f.kind == "sequence":
        of = encoder.vocabs_[f.of]
        dtype: Literal["int64", "string"] = "int64" if of.dtype == "int64" else "string"
        pad = "INT64_MIN" if dtype == "int64" else '""'
        return InputSpec(f.name, dtype, ("N", f.max_len),
                         f"behaviour sequence {col!r} of {f.of!r} values, most recent first: split on {f.sep!r}, "
                         f"strip whitespace, drop blanks, keep the first {f.max_len}, pad with {pad} "
                         f"({len(of.values)} known {f.of!r} values; unseen -> OOV)", "sequence")
    vocab = encoder.vocabs_[f.name]
    known = f"{len(vocab.values)} known values"
    if f.kind == "multi":
        return InputSpec(f.name, "string", ("N", f.max_len),
                         f"multi-valued column {col!r}: split on {f.sep!r}, strip whitespace, drop blanks, "
                         f"keep the first {f.max_len}, pad with \"\" ({known}; unseen -> OOV)", "multi")
    if f.boundaries:
        return InputSpec(f.name, "float32", ("N",),
                         f"number in column {col!r}, bucketed in the graph (bucket = count of boundaries "
                         f"<= x, boundaries {list(f.boundaries)}); NaN = missing -> OOV", "bucketed")
    missing = MISSING_INT64 if vocab.dtype == "int64" else repr(MISSING_STRING)
    return InputSpec(f.name, "int64" if vocab.dtype == "int64" else "string", ("N",),
                     f"raw value of column {col!r} ({known}); unseen values and missing ({missing}) -> OOV")


def _history_spec(encoder: Encoder, name: str) -> InputSpec:
    h = next(h for h in encoder.cfg.history_crosses if h.name == name)
    mean, std = encoder.stats_[name]
    return InputSpec(name, "float32", ("N",),
                     f"history cross: the positive rate of {h.key!r} on the row's {h.over!r}, smoothed with "
                     f"prior {h.prior:g}, from strictly earlier rows (computed by the feature service); "
                     f"normalised as (x - {mean:.6g}) / {std:.6g}; NaN = missing -> 0", "history")


def input_specs(encoder: Encoder, model: ModelKind, fields: Sequence[str] | None = None) -> list[InputSpec]:
    """The raw inputs of ``model``'s graph, in graph order.

    ``fields`` (default :func:`model_fields`) are the schema fields the model reads; a feature used
    by several fields (itself, crosses) is one input. Features come in configuration order, then
    history crosses.
    """
    wanted = list(fields) if fields is not None else model_fields(encoder, model)
    unknown = [n for n in wanted if n not in encoder.schema_.names]
    if unknown:
        raise ServingError(f"fields {unknown} are not in the run's schema "
                           f"({', '.join(encoder.schema_.names)})")
    needed = set(wanted)
    for c in encoder.cfg.crosses:
        if c.name in needed:
            needed |= {c.a, c.b}
    specs = [_spec(encoder, f) for f in encoder.cfg.features if f.name in needed]
    if model in ROW_SCORERS:
        specs = [replace(s, shape=(REQUEST_AXIS, *s.shape[1:])) if _request_side(encoder, s.name) else s
                 for s in specs]
    specs += [_history_spec(encoder, h.name) for h in encoder.cfg.history_crosses if h.name in needed]
    return specs


def request_inputs(first_axes: dict[str, Any]) -> frozenset[str]:
    """The inputs a graph broadcasts from one request row, given each input's first axis (from
    :func:`input_specs` or a session's inputs): those on the request axis, provided some input is on
    the candidates' axis ``N``; else none (a graph exported before the request axis, or one whose rows
    are the request's own, takes the request repeated per row)."""
    if "N" not in first_axes.values():
        return frozenset()
    return frozenset(name for name, axis in first_axes.items() if axis == REQUEST_AXIS)


def one_request(feeds: dict[str, np.ndarray], request: frozenset[str]) -> dict[str, np.ndarray]:
    """``feeds`` of one request's candidates with the ``request`` inputs given once (their first row)."""
    return {k: v[:1] if k in request else v for k, v in feeds.items()}


def _request_side(encoder: Encoder, feature: str) -> bool:
    return _features(encoder)[feature].side != "item"


def request_fields(encoder: Encoder, fields: Sequence[str]) -> list[str]:
    """The fields among ``fields`` computed from user and context inputs only: in a row scorer's
    graph they come out of preprocessing with the request axis and are broadcast to the candidates."""
    features, crosses = _features(encoder), {c.name: c for c in encoder.cfg.crosses}
    out = []
    for name in fields:
        if name in features:
            parts = [name]
        elif name in crosses:
            parts = [crosses[name].a, crosses[name].b]
        else:
            continue  # a history cross: one value per candidate row
        if all(_request_side(encoder, p) for p in parts):
            out.append(name)
    return out


def _features(encoder: Encoder) -> dict[str, FeatureConfig]:
    return {f.name: f for f in encoder.cfg.features}


def _multi_matrix(frame: pl.DataFrame, col: str, f: FeatureConfig, dtype: str = "string") -> np.ndarray:
    """``[N, max_len]`` array of the first non-blank, stripped values: strings padded with ``""``, or
    (``dtype`` int64, sequences of integer ids) integers padded with ``MISSING_INT64``."""
    long = (frame.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("i"),
                         pl.col(col).cast(pl.Utf8).str.split(f.sep).alias("v"))
            .explode("v").with_columns(pl.col("v").str.strip_chars())
            .filter(pl.col("v").is_not_null() & (pl.col("v") != ""))
            .with_columns(pl.int_range(pl.len(), dtype=pl.Int64).over("i").alias("p"))
            .filter(pl.col("p") < f.max_len))
    if dtype == "int64":
        out = np.full((len(frame), f.max_len), MISSING_INT64, dtype=np.int64)
        values = long["v"].cast(pl.Int64, strict=False).fill_null(UNPARSED_INT64).to_numpy()
    else:
        out = np.full((len(frame), f.max_len), MISSING_STRING, dtype=object)
        values = long["v"].to_numpy()
    out[long["i"].to_numpy(), long["p"].to_numpy()] = values
    return out


def _float_column(frame: pl.DataFrame, col: str, name: str) -> pl.Series:
    s = frame[col]
    if not s.dtype.is_numeric():
        raise ServingError(f"feature {name!r}: column {col!r} must be numeric, got {s.dtype}")
    return s.cast(pl.Float64)


def _feed(encoder: Encoder, frame: pl.DataFrame, spec: InputSpec) -> np.ndarray:
    if spec.kind == "history":
        if spec.name not in frame.columns:
            raise ServingError(f"history cross {spec.name!r} is missing from the frame; the feature service "
                               "(or coarserank.data.prepare.add_history_crosses) computes it")
        return _float_column(frame, spec.name, spec.name).to_numpy().astype(np.float32)
    f = _features(encoder)[spec.name]
    col = feature_column(f.name, f.column)
    if col not in frame.columns:
        raise ServingError(f"feature {f.name!r}: column {col!r} is missing from the frame")
    if spec.kind == "numeric":
        return _float_column(frame, col, f.name).to_numpy().astype(np.float32)
    if spec.kind == "bucketed":
        x = _float_column(frame, col, f.name).to_numpy()  # null -> NaN: missing -> OOV, like the encoder
        return x.astype(np.float32)
    if spec.kind in ("multi", "sequence"):
        return _multi_matrix(frame, col, f, spec.dtype)
    try:
        raw = raw_categorical(frame, f)
    except SchemaError as exc:  # fractional numbers where ids are expected: a bad request
        raise ServingError(f"feature {f.name!r}: {exc}") from exc
    if spec.dtype == "int64":
        if raw.dtype != pl.Int64:
            raise ServingError(f"feature {f.name!r} needs int64 ids, column {col!r} is {frame[col].dtype}")
        return raw.fill_null(MISSING_INT64).to_numpy().astype(np.int64)
    if raw.dtype != pl.Utf8:
        raise ServingError(f"feature {f.name!r} needs strings, column {col!r} is {frame[col].dtype}")
    return raw.fill_null(MISSING_STRING).to_numpy().astype(object)


def feeds_from_frame(encoder: Encoder, frame: pl.DataFrame, model: ModelKind,
                     fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds for ``model`` from the raw feature columns of ``frame`` (columnar).

    Columns are found by feature column name (history crosses by their name); nulls become the
    missing-value conventions of :func:`input_specs`, so the graph reproduces
    ``encoder.transform(frame)`` exactly.
    """
    return {spec.name: _feed(encoder, frame, spec) for spec in input_specs(encoder, model, fields)}


def _is_int(v: Any) -> bool:
    integral = isinstance(v, (int, np.integer)) or (isinstance(v, float) and v.is_integer())
    return integral and MISSING_INT64 <= int(v) <= -(MISSING_INT64 + 1)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


_CHECKS = {"int64": (_is_int, "an int64 id (a JSON integer within int64)", pl.Int64),
           "string": (_is_str, "a string", pl.Utf8),
           "float32": (_is_number, "a number", pl.Float64)}


def _record_column(records: list[dict[str, Any]], spec: InputSpec, column: str) -> pl.Series:
    try:
        values = [r[spec.name] for r in records]
    except KeyError:
        where = next(i for i, r in enumerate(records) if spec.name not in r)
        raise ServingError(f"record {where} lacks feature {spec.name!r} (give null for a missing value); "
                           f"the {len(records[where])} keys present: {sorted(records[where])[:20]}") from None
    except TypeError:
        where = next(i for i, r in enumerate(records) if not isinstance(r, dict))
        raise ServingError(f"record {where} is {type(records[where]).__name__}, expected an object") from None
    dtype = "string" if spec.kind in ("multi", "sequence") else spec.dtype
    ok, what, pl_dtype = _CHECKS[dtype]
    bad = next((i for i, v in enumerate(values) if v is not None and not ok(v)), None)
    if bad is not None:
        got = values[bad]
        raise ServingError(f"record {bad}: feature {spec.name!r} needs {what} or null, "
                           f"got {type(got).__name__} {got!r}")
    if dtype == "int64":
        values = [None if v is None else int(v) for v in values]
    return pl.Series(column, values, dtype=pl_dtype)


def feeds_from_records(encoder: Encoder, records: list[dict[str, Any]], model: ModelKind,
                       fields: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """ONNX Runtime feeds for ``model`` from JSON-like records (one dict per row).

    Every record carries every input name of :func:`input_specs`; ``None`` is a missing value.
    A multi-valued feature is its raw string (joined with the feature's separator). A missing key
    or a value of the wrong type raises :class:`~coarserank.errors.ServingError` naming the record
    and the feature.
    """
    if not isinstance(records, list) or not records:
        raise ServingError("records must be a non-empty list of objects (one per row)")
    specs = input_specs(encoder, model, fields)
    features = _features(encoder)
    columns = {}
    for spec in specs:
        col = spec.name if spec.kind == "history" else feature_column(spec.name, features[spec.name].column)
        columns[col] = _record_column(records, spec, col)
    frame = pl.DataFrame(list(columns.values()))
    return {spec.name: _feed(encoder, frame, spec) for spec in specs}
