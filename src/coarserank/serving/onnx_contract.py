"""The serving contract an exported ONNX file carries in its ``metadata_props``.

A ranker in C++ or Java needs nothing but the file to build its inputs: for every raw input the
name, dtype, shape, missing value, how a multi-valued or sequence string is split (separator,
``max_len``), where the value comes from (source column, or how a derived column, a sequence or a
history cross is computed), and for history crosses the smoothing formula with its prior and the
training base rate. :func:`model_metadata` writes it; :func:`read_contract` reads it back (the
``distill describe`` command prints it). The keys are listed in ``docs/serving.md``.

Example
-------
>>> meta = model_metadata(encoder, "user", fields, "vector", (16,), {"run_id": rid})  # doctest: +SKIP
>>> json.loads(meta["inputs"])[0]["missing"]                                        # doctest: +SKIP
'-9223372036854775808'
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Sequence

from coarserank.config import DataConfig, FeatureConfig, HistoryCrossConfig
from coarserank.data.encode import Encoder
from coarserank.data.prepare import feature_column
from coarserank.data.schema import SCHEMA_VERSION
from coarserank.errors import ArtifactError
from coarserank.serving.onnx_inputs import (
    MISSING_INT64,
    MISSING_STRING,
    UNPARSED_INT64,
    InputSpec,
    ModelKind,
    input_specs,
)

__all__ = ["CONTRACT_VERSION", "HISTORY_FORMULA", "InputContract", "model_metadata", "input_contract",
           "history_contract", "read_contract"]

CONTRACT_VERSION = 1
HISTORY_FORMULA = ("rate(v) = (positives + prior * base_rate) / (count + prior), where positives and count are "
                   "the key's labelled rows with this over value v and a timestamp strictly before the row's; "
                   "the input is the mean of rate(v) over the row's over values (one value unless over is "
                   "multi-valued: split on over_sep, blanks dropped), and base_rate when the row has none")
_MISSING = {"int64": str(MISSING_INT64), "string": MISSING_STRING, "float32": "NaN"}


@dataclass(frozen=True)
class InputContract:
    """One raw input as a client must build it (``docs/serving.md``, ``distill describe``)."""

    name: str
    dtype: str
    shape: list[str | int]
    kind: str
    missing: str
    source: str
    sep: str | None = None
    max_len: int | None = None
    derivation: str = ""

    def to_json(self) -> dict[str, Any]:
        """A plain dict, leaving out ``sep`` and ``max_len`` where they do not apply."""
        body = {"name": self.name, "dtype": self.dtype, "shape": self.shape, "kind": self.kind,
                "missing": self.missing, "source": self.source, "sep": self.sep, "max_len": self.max_len,
                "derivation": self.derivation}
        return {k: v for k, v in body.items() if v is not None}


def _derived(cfg: DataConfig) -> dict[str, str]:
    from coarserank.data.sources import DERIVED_COLUMNS

    return DERIVED_COLUMNS.get(cfg.source, {})


def _sequence_derivation(f: FeatureConfig) -> str:
    events = getattr(f, "events", "positive")
    which = "labelled positive" if events == "positive" else "exposed"
    built = (f"built from the exposure log: the {getattr(f, 'of', '')!r} values of the user's last "
             f"{f.max_len} {which} rows with a timestamp strictly before the row's, most recent first")
    return built if not f.column else f"ready-made column {f.column!r} (most recent first)"


def _contract(encoder: Encoder, spec: InputSpec) -> InputContract:
    cfg = encoder.cfg
    missing = _MISSING[spec.dtype]
    if spec.kind == "history":
        return InputContract(spec.name, spec.dtype, list(spec.shape), spec.kind, missing, spec.name,
                             derivation="history cross, computed by the feature service: see history_crosses")
    f = next(x for x in cfg.features if x.name == spec.name)
    source = feature_column(f.name, f.column)
    derivation = _derived(cfg).get(source, "")
    sep = max_len = None
    if spec.kind in ("multi", "sequence"):
        sep, max_len = f.sep, f.max_len
        pad = "INT64_MIN" if spec.dtype == "int64" else repr(MISSING_STRING)
        split = (f"split on {f.sep!r}, strip whitespace from each piece, drop blank pieces, keep the first "
                 f"{f.max_len}, pad with {pad}")
        if spec.kind == "sequence":
            derivation = f"{_sequence_derivation(f)}; {split}"
            if spec.dtype == "int64":
                derivation += f"; a piece that is not an integer is sent as {UNPARSED_INT64} (-> OOV)"
        else:
            derivation = f"{derivation + '; ' if derivation else ''}{split}"
    elif spec.kind == "categorical":
        known = len(encoder.vocabs_[f.name].values)
        derivation = (f"{derivation + '; ' if derivation else ''}raw value, looked up in the graph among "
                      f"{known} known values; unseen or missing -> OOV")
    elif spec.kind == "bucketed":
        derivation = (f"{derivation + '; ' if derivation else ''}raw number, bucketed in the graph at "
                      f"{list(f.boundaries)} (bucket = count of boundaries <= x)")
    elif spec.kind == "numeric":
        mean, std = encoder.stats_[f.name]
        derivation = (f"{derivation + '; ' if derivation else ''}raw number, normalised in the graph as "
                      f"(x - {mean!r}) / {std!r}")
    return InputContract(spec.name, spec.dtype, list(spec.shape), spec.kind, missing, source, sep, max_len,
                         derivation)


def input_contract(encoder: Encoder, kind: ModelKind, fields: Sequence[str]) -> list[InputContract]:
    """The contract of every raw input of the graph that reads ``fields``, in graph order."""
    return [_contract(encoder, spec) for spec in input_specs(encoder, kind, fields)]


def _history(h: HistoryCrossConfig, cfg: DataConfig, encoder: Encoder, base_rate: float | None) -> dict[str, Any]:
    over = next(f for f in cfg.features if f.name == h.over)
    key = next(f for f in cfg.features if f.name == h.key)
    mean, std = encoder.stats_[h.name]
    return {"name": h.name, "key": h.key, "key_column": feature_column(key.name, key.column), "over": h.over,
            "over_column": feature_column(over.name, over.column),
            "over_sep": over.sep if over.kind == "multi" else None, "prior": h.prior, "base_rate": base_rate,
            "base_rate_is": "the positive rate of the training split's labelled rows",
            "formula": HISTORY_FORMULA, "normalised_in_graph": f"(x - {mean!r}) / {std!r}; NaN -> 0"}


def history_contract(encoder: Encoder, names: Sequence[str], base_rate: float | None) -> list[dict[str, Any]]:
    """Formula, prior and base rate of each history cross in ``names`` (those a graph takes)."""
    wanted = set(names)
    return [_history(h, encoder.cfg, encoder, base_rate) for h in encoder.cfg.history_crosses if h.name in wanted]


def model_metadata(encoder: Encoder, kind: ModelKind, fields: Sequence[str], output: str,
                   out_shape: tuple[int, ...], extra: dict[str, str], *,
                   base_rate: float | None = None) -> dict[str, str]:
    """``metadata_props`` of an exported graph: the input contract, the output, and ``extra``."""
    contract = input_contract(encoder, kind, fields)
    meta = {"model_kind": kind, "contract_version": str(CONTRACT_VERSION), "schema_version": str(SCHEMA_VERSION),
            "output_name": output, "output_shape": json.dumps(["N", *out_shape]),
            "input_names": ",".join(c.name for c in contract),
            "inputs": json.dumps([c.to_json() for c in contract]), "fields": ",".join(fields),
            "missing_int64": str(MISSING_INT64), "missing_string": MISSING_STRING, "missing_float32": "NaN"}
    if output == "vector":
        meta["vector_dim"] = str(out_shape[-1])
    crosses = [{"name": c.name, "op": c.op, "a": c.a, "b": c.b} for c in encoder.cfg.crosses if c.name in fields]
    if crosses:
        meta["graph_crosses"] = json.dumps(crosses)
    history = history_contract(encoder, [c.name for c in contract if c.kind == "history"], base_rate)
    if history:
        meta["history_crosses"] = json.dumps(history)
    return {**meta, **extra}


def read_contract(meta: dict[str, str], where: str) -> dict[str, Any]:
    """The parsed contract of one file's metadata: kind, output, inputs, history crosses, the rest.

    Raises
    ------
    ArtifactError
        If the metadata lacks the keys an exported coarserank graph has, or holds malformed JSON.
    """
    missing = [k for k in ("model_kind", "inputs", "output_name") if k not in meta]
    if missing:
        raise ArtifactError(f"{where}: metadata lacks {missing}; not a graph exported by coarserank")
    try:
        inputs = json.loads(meta["inputs"])
        history = json.loads(meta.get("history_crosses", "[]"))
        shape = json.loads(meta["output_shape"]) if "output_shape" in meta else None
        crosses = json.loads(meta.get("graph_crosses", "[]"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{where}: metadata holds malformed JSON: {exc}") from exc
    shown = {"inputs", "history_crosses", "output_shape", "graph_crosses"}
    return {"model_kind": meta["model_kind"], "output": {"name": meta["output_name"], "shape": shape},
            "inputs": inputs, "history_crosses": history, "graph_crosses": crosses,
            "properties": {k: v for k, v in sorted(meta.items()) if k not in shown}}
