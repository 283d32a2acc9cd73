"""The allowed keys, types and values of a configuration, checked once at load.

:func:`check_keys` rejects unknown keys (naming the nearest valid one) and :func:`coerce_tree` builds
the typed dataclasses, rejecting wrong types and choices; then the value tables below apply.

Each section of :class:`~coarserank.config.RunConfig` has a table ``{key: rule}`` in
:data:`CONSTRAINTS` (``data.features``, ``data.crosses`` and ``data.history_crosses`` have one per
entry of their arrays; sub-tables such as ``student.senet`` have their own), and :data:`CROSS_FIELD` lists the rules that relate several keys (a cross of
declared features, ``boundaries`` only on categorical features, ``valid_frac + test_frac < 1``...).
:func:`validate` applies both when a config loads, so a bad value fails before any data is read or
any model trains. Every error has one shape (after scikit-learn's parameter constraints)::

    teacher.dropout must be a number in [0, 1), got 1.5 (set by my.toml)

Example
-------
>>> str(Interval(0, 1, high_open=True))
'a number in [0, 1)'
>>> Interval(1, integer=True).ok(0)
False
"""

from __future__ import annotations

import dataclasses
import difflib
import itertools
import math
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from coarserank.errors import ConfigError

__all__ = ["CONSTRAINTS", "CROSS_FIELD", "Each", "Interval", "check_keys", "coerce_tree", "validate"]


@dataclass(frozen=True)
class Interval:
    """A finite number (or integer) between ``low`` and ``high``; ``None`` leaves a side open."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    integer: bool = False

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        kind = "an integer" if self.integer else "a number"
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"{kind} in {left}{_num(self.low)}, {_num(self.high)}{right}"
        if self.low is not None:
            return f"{kind} {'>' if self.low_open else '>='} {_num(self.low)}"
        if self.high is not None:
            return f"{kind} {'<' if self.high_open else '<='} {_num(self.high)}"
        return f"a finite {kind.split()[-1]}"


@dataclass(frozen=True)
class Each:
    """Every element of an array satisfies ``rule``; ``increasing``: strictly, ``nonempty``: at least one."""

    rule: Interval
    increasing: bool = False
    nonempty: bool = False

    def ok(self, value: Any) -> bool:
        values = list(value)
        if self.nonempty and not values:
            return False
        if self.increasing and any(b <= a for a, b in itertools.pairwise(values)):
            return False
        return all(self.rule.ok(v) for v in values)

    def __str__(self) -> str:
        parts = [p for p, on in (("non-empty", self.nonempty), ("strictly increasing", self.increasing)) if on]
        return f"{'a ' + ', '.join(parts) if parts else 'an'} array with every value {self.rule}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else repr(x)


Rule = Interval | Each
COUNT = Interval(1, integer=True)  # a positive integer
NATURAL = Interval(0, integer=True)  # 0 allowed (0 = "auto" / "none" where documented)
POSITIVE = Interval(0, low_open=True)
NON_NEGATIVE = Interval(0)
SHARE = Interval(0, 1, low_open=True, high_open=True)  # a fraction of rows that must leave some of each
PROBABILITY = Interval(0, 1)
FINITE = Interval()

_TRAINING: dict[str, Rule] = {
    "embed_dim": COUNT, "hidden": Each(COUNT), "dropout": Interval(0, 1, high_open=True), "lr": POSITIVE,
    "weight_decay": NON_NEGATIVE, "batch_size": COUNT, "epochs": COUNT, "patience": COUNT,
}

_OBJECTIVE: dict[str, Rule] = {  # the recall objective's keys (docs/recall.md)
    "softmax_temperature": POSITIVE, "extra_negatives": NATURAL, "softmax_alpha": PROBABILITY,
    "softmax_teacher_rows": COUNT,
}

#: section (or array of tables) -> key -> rule. Keys not listed are checked by type and choices only.
CONSTRAINTS: dict[str, dict[str, Rule]] = {
    "run": {"seed": NATURAL, "threads": NATURAL},
    "data": {"label_threshold": FINITE, "valid_frac": SHARE, "test_frac": SHARE, "shuffle_partitions": COUNT,
             "sample_rows": COUNT},
    "data.features": {"max_len": COUNT, "min_count": COUNT, "boundaries": Each(FINITE, increasing=True)},
    "data.crosses": {"min_count": COUNT},
    "data.history_crosses": {"prior": NON_NEGATIVE},
    "synthetic": {"rows": Interval(100, integer=True), "users": NATURAL, "items": NATURAL,
                  "topics": Interval(2, integer=True), "popularity_exponent": POSITIVE,
                  "activity_exponent": POSITIVE, "on_topic_share": PROBABILITY, "noise": NON_NEGATIVE},
    "teacher": {**_TRAINING, "attention_hidden": Each(COUNT), "cross_layers": NATURAL,
                "blend": Each(Interval(0, 1, high_open=True))},
    "student": {**_TRAINING, "dim": COUNT, **_OBJECTIVE},
    "student.senet": {"reduction": COUNT},
    "student.shortcut": {"top": COUNT},
    "student.parallel": {"cross_layers": COUNT},
    "student.dat": {"mimic_weight": NON_NEGATIVE},
    "recall": {**_TRAINING, "dim": COUNT, **_OBJECTIVE, "interests": COUNT, "sharpness": NON_NEGATIVE,
               "routing_iterations": COUNT, "ks": Each(COUNT, increasing=True, nonempty=True), "max_users": NATURAL},
    "distill": {"alpha": PROBABILITY, "temperature": POSITIVE, "sampled": NATURAL, "sampled_weight": NON_NEGATIVE,
                "rank_weight": NON_NEGATIVE, "rank_top": COUNT},
    "distill.grid": {"alpha": Each(PROBABILITY), "temperature": Each(POSITIVE), "sampled": Each(NATURAL),
                     "sampled_weight": Each(NON_NEGATIVE), "rank_weight": Each(NON_NEGATIVE), "rank_top": Each(COUNT)},
    "gbdt": {"num_leaves": Interval(2, integer=True), "learning_rate": POSITIVE, "rounds": COUNT,
             "early_stopping": COUNT, "multi_hot_top": COUNT},
    "serving": {"opset": Interval(13, integer=True), "recall_target": Interval(0, 1, low_open=True),
                "index_queries": Interval(2, integer=True), "parity_tolerance": POSITIVE},
    "report": {"sampled": COUNT, "max_users": COUNT, "bootstrap": COUNT,
               "sizes": Each(COUNT, increasing=True, nonempty=True), "ks": Each(COUNT, increasing=True, nonempty=True),
               "ns": Each(COUNT, increasing=True, nonempty=True)},
    "cold": {"k": Each(NATURAL, nonempty=True), "budget_ms": NON_NEGATIVE, "candidates": COUNT,
             "gate_l1": NON_NEGATIVE, "embed_dim": COUNT, "hidden": Each(COUNT), "lr": POSITIVE,
             "batch_size": COUNT, "epochs": COUNT, "patience": COUNT, "recall_sampled": COUNT,
             "permutation_repeats": COUNT, "latency_repeats": COUNT, "latency_warmup": NATURAL},
}


def _check_table(section: str, body: Any, label: str, origin: Callable[[str], str]) -> None:
    for key, rule in CONSTRAINTS[section].items():
        value = getattr(body, key)
        if not rule.ok(value):
            shown = list(value) if isinstance(value, tuple) else value
            raise ConfigError(f"{label}.{key} must be {rule}, got {shown!r}{origin(f'{section}.{key}')}")


def _check_tables(cfg: Any, origin: Callable[[str], str]) -> None:
    for section in CONSTRAINTS:
        if "." not in section:
            _check_table(section, getattr(cfg, section), section, origin)
            continue
        parent, array = section.split(".")
        value = getattr(getattr(cfg, parent), array)
        if dataclasses.is_dataclass(value):  # a sub-table such as [student.senet]
            _check_table(section, value, section, origin)
            continue
        for i, entry in enumerate(value):
            _check_table(section, entry, f"{section}[{i}] ({entry.name!r})", lambda _k, s=section: origin(s))


# -- keys and types ------------------------------------------------------------------------------

def check_keys(cls: type, raw: dict[str, Any], origin: str, prefix: str) -> None:
    """Reject unknown keys early, so the error names the layer (file or override) that holds them."""
    hints = typing.get_type_hints(cls)
    for key, value in raw.items():
        where = f"{prefix}{key}"
        if key not in hints:
            near = difflib.get_close_matches(key, list(hints), n=1)
            hint = f"; did you mean '{prefix}{near[0]}'?" if near else f"; valid keys: {', '.join(hints)}"
            raise ConfigError(f"{origin}: unknown key {where!r}{hint}")
        inner = _dataclass_of(hints[key])
        if inner is not None:
            items = value if isinstance(value, list) else [value]
            for i, sub in enumerate(items):
                if isinstance(sub, dict):
                    label = f"{where}[{i}]." if isinstance(value, list) else f"{where}."
                    check_keys(inner, sub, origin, label)


def _dataclass_of(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if args and dataclasses.is_dataclass(args[0]):
            return args[0]  # type: ignore[return-value]
    return None


def coerce_tree(cls: type, raw: Any, origin: str, prefix: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{origin}: {prefix.rstrip('.') or 'config'} must be a table, got {raw!r}")
    hints = typing.get_type_hints(cls)
    kwargs: dict[str, Any] = {}
    required = [f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING]  # type: ignore[misc]
    for name in required:
        if name not in raw:
            raise ConfigError(f"{origin}: {prefix}{name} is required")
    for key, value in raw.items():
        kwargs[key] = _coerce(hints[key], value, origin, f"{prefix}{key}")
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, origin: str, where: str) -> Any:
    origin_tp = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return coerce_tree(tp, value, origin, f"{where}.")  # type: ignore[arg-type]
    if origin_tp is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            near = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            raise ConfigError(f"{origin}: {where} must be one of {', '.join(map(repr, allowed))}, "
                              f"got {value!r}{hint}")
        return value
    if origin_tp is tuple:
        item_tp = typing.get_args(tp)[0]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{origin}: {where} must be an array, got {type(value).__name__} {value!r}")
        return tuple(_coerce(item_tp, v, origin, f"{where}[{i}]") for i, v in enumerate(value))
    if origin_tp in (types.UnionType, typing.Union):
        for arg in typing.get_args(tp):
            if arg is type(None) and value is None:
                return None
        return _coerce(next(a for a in typing.get_args(tp) if a is not type(None)), value, origin, where)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{origin}: {where} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{origin}: {where} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{origin}: {where} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{origin}: {where} must be a string, got {type(value).__name__} {value!r}")
        return value
    raise ConfigError(f"{origin}: {where}: unsupported type {tp}")  # pragma: no cover


# -- rules that relate several keys ------------------------------------------------------------

def _unique_names(cfg: Any) -> None:
    d = cfg.data
    names = [f.name for f in d.features] + [c.name for c in d.crosses] + [h.name for h in d.history_crosses]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"data: feature names must be unique; repeated: {', '.join(dupes)}")


def _boundaries_on_categorical(cfg: Any) -> None:
    for f in cfg.data.features:
        if f.boundaries and f.kind != "categorical":
            raise ConfigError(f"data.features {f.name!r}: boundaries bucket a number into a categorical id, so "
                              f"they need kind = \"categorical\"; this feature is {f.kind!r}")


def _crosses_of_declared_features(cfg: Any) -> None:
    by_name = {f.name: f for f in cfg.data.features}
    for c in cfg.data.crosses:
        for part in (c.a, c.b):
            if part not in by_name:
                raise ConfigError(f"data.crosses {c.name!r}: {part!r} is not a declared feature; "
                                  f"declared: {', '.join(by_name)}")
            if by_name[part].kind in ("numeric", "sequence"):
                raise ConfigError(f"data.crosses {c.name!r}: {part!r} is {by_name[part].kind}; crosses need "
                                  "categorical or multi features")
        kinds = (by_name[c.a].kind, by_name[c.b].kind)
        if c.op == "product" and kinds == ("multi", "multi"):
            raise ConfigError(f"data.crosses {c.name!r}: at most one side of a product cross may be multi-valued")
        if c.op == "match" and "multi" in kinds:
            raise ConfigError(f"data.crosses {c.name!r}: a match cross needs two single-valued features")
    for h in cfg.data.history_crosses:
        for part in (h.key, h.over):
            if part not in by_name:
                raise ConfigError(f"data.history_crosses {h.name!r}: {part!r} is not a declared feature; "
                                  f"declared: {', '.join(by_name)}")
            if by_name[part].kind == "sequence":
                raise ConfigError(f"data.history_crosses {h.name!r}: {part!r} is a sequence; history crosses "
                                  "need categorical or multi features")


def _sequences(cfg: Any) -> None:
    """A sequence is user-side, reads an item-side categorical feature and needs time order."""
    d = cfg.data
    by_name = {f.name: f for f in d.features}
    for f in d.features:
        where = f"data.features {f.name!r}"
        if f.kind != "sequence":
            if f.of:
                raise ConfigError(f"{where}: 'of' applies only to kind = \"sequence\" features")
            continue
        if f.side != "user":
            raise ConfigError(f"{where}: a sequence is the user's history, so side must be \"user\", got {f.side!r}")
        of = by_name.get(f.of)
        if of is None or of.side != "item" or of.kind != "categorical" or of.boundaries:
            items = [g.name for g in d.features if g.side == "item" and g.kind == "categorical" and not g.boundaries]
            raise ConfigError(f"{where}: of = {f.of!r} must name an item-side categorical feature without "
                              f"boundaries; candidates: {', '.join(items) or 'none declared'}")
        if not f.column and not d.timestamp_col:
            raise ConfigError(f"{where}: sequences need time order, but data.timestamp_col is empty; set the "
                              "timestamp column (or give a ready-made sequence column)")
        if not f.column and d.streaming:
            raise ConfigError(f"{where}: a streaming run cannot build sequences from the whole log; give a "
                              "ready-made column (values joined by sep, most recent first) with 'column'")


def _both_towers(cfg: Any) -> None:
    sides = {f.side for f in cfg.data.features}
    if cfg.data.features and not {"user", "item"} <= sides:
        raise ConfigError("data.features: the student needs at least one user-side and one item-side feature")


def _split_shares(cfg: Any) -> None:
    d = cfg.data
    if d.valid_frac + d.test_frac >= 1:
        raise ConfigError(f"data.valid_frac + data.test_frac must be < 1 so that rows are left to train on, "
                          f"got {d.valid_frac} + {d.test_frac}")


def _streaming(cfg: Any) -> None:
    d = cfg.data
    if not d.streaming:
        return
    if d.source != "table":
        raise ConfigError(f"data.streaming reads a table source's parquet partitions; data.source is {d.source!r} "
                          "(write the log as parquet partitions and use source = \"table\")")
    if d.split != "global_time":
        raise ConfigError("data.streaming needs data.split = \"global_time\": a per-user split needs every "
                          "user's whole history in memory")
    if d.history_crosses:
        raise ConfigError("data.streaming does not compute data.history_crosses (they need the whole log in "
                          "time order); precompute them as numeric columns of the log instead")
    if cfg.distill.sampled:
        raise ConfigError("distill.sampled > 0 scores sampled items against in-memory training rows; a streaming "
                          "run (data.streaming = true) needs distill.sampled = 0")
    if cfg.distill.grid.settings():
        raise ConfigError("[distill.grid] trains its students on in-memory training rows; a streaming run "
                          "(data.streaming = true) cannot sweep them")


def _nearest(name: str, names: list[str]) -> str:
    near = difflib.get_close_matches(name, names, n=1)
    return f"did you mean {near[0]!r}?" if near else f"choose from {', '.join(names) or 'none'}"


def _student_family(cfg: Any) -> None:
    """The chosen family's options against the data: shortcut fields on their tower's side, parallel
    channels, DAT's id features, the COLD student's feature set."""
    s, d = cfg.student, cfg.data
    sides = {f.name: f.side for f in d.features}
    kinds = {f.name: f.kind for f in d.features}
    user = [n for n, side in sides.items() if side in ("user", "context")]
    item = [n for n, side in sides.items() if side == "item"]
    if s.family == "shortcut":
        crosses = {c.name for c in d.crosses} | {h.name for h in d.history_crosses}
        for key, allowed, label in (("user_fields", user, "user and context"), ("item_fields", item, "item")):
            for name in getattr(s.shortcut, key):
                if name not in allowed:
                    where = (f"is on the {sides[name]} side" if name in sides else "is a teacher-only cross"
                             if name in crosses else "is not a declared feature")
                    raise ConfigError(f"student.shortcut.{key}: {name!r} {where}; that tower reads {label} "
                                      f"features: {', '.join(allowed)}")
    if s.family == "parallel":
        p = s.parallel
        bad = [c for c in p.channels if c not in ("mlp", "cross", "fm")]
        if bad or not p.channels or len(set(p.channels)) != len(p.channels):
            hint = f"; {_nearest(bad[0], ['mlp', 'cross', 'fm'])}" if bad else ""
            raise ConfigError(f"student.parallel.channels must list distinct channels of 'mlp', 'cross', 'fm', "
                              f"got {list(p.channels)}{hint}")
        p.widths(s.dim, s.embed_dim)
    if s.family == "dat":
        for key, allowed, col in (("user_field", user, d.user_col), ("item_field", item, d.item_col)):
            name = getattr(s.dat, key)
            if name not in allowed or kinds[name] != "categorical":
                raise ConfigError(f"student.family = \"dat\" keys augmentation vectors by id, but "
                                  f"student.dat.{key} = {name!r} is not a declared {key.split('_')[0]}-side "
                                  f"categorical feature (id column {col!r}); declare the id in "
                                  "[[data.features]] or set student.dat." + key)
    if s.family == "cold":
        declared = [*sides, *(c.name for c in d.crosses), *(h.name for h in d.history_crosses)]
        if not s.cold.features:
            raise ConfigError("student.family = \"cold\" needs a feature set: list the fields in "
                              "student.cold.features (`distill sweep --write-config` writes a chosen one)")
        for name in s.cold.features:
            if name not in declared:
                raise ConfigError(f"student.cold.features: {name!r} is not a declared feature or cross; "
                                  + _nearest(name, declared))


def _recall(cfg: Any) -> None:
    """A multi-interest recall model reads a behaviour sequence (recall.sequence names one); the
    sampled-softmax objective trains towers, which the COLD student lacks, and ignores the distillation
    keys a [distill.grid] sweeps."""
    r = cfg.recall
    sequences = [f.name for f in cfg.data.features if f.kind == "sequence"]
    if r.sequence and r.sequence not in sequences:
        raise ConfigError(f"recall.sequence = {r.sequence!r} is not a sequence feature; sequence features: "
                          f"{', '.join(sequences) or 'none declared'}")
    if r.enabled and r.family == "multi_interest" and cfg.data.features and not sequences:
        raise ConfigError("recall.family = \"multi_interest\" reads the user's behaviour sequence, but no "
                          "data.features entry has kind = \"sequence\"; add one (e.g. of = \"item_id\") or use "
                          "recall.family = \"two_tower\" (\"auto\" picks it)")
    if cfg.student.objective == "sampled_softmax" and cfg.student.family == "cold":
        raise ConfigError("student.objective = \"sampled_softmax\" trains user and item towers, but "
                          "student.family = \"cold\" has none (it scores candidate rows); use a tower family "
                          "(two_tower, senet, shortcut, parallel, dat) or student.objective = \"pointwise\"")
    if cfg.student.objective == "sampled_softmax" and cfg.distill.grid.settings():
        raise ConfigError("[distill.grid] sweeps the distillation loss's keys, which a student trained with "
                          "student.objective = \"sampled_softmax\" does not read; drop the grid or use "
                          "student.objective = \"pointwise\"")


#: Rules over several keys, applied in this order after the per-key tables.
CROSS_FIELD: tuple[Callable[[Any], None], ...] = (
    _unique_names, _boundaries_on_categorical, _crosses_of_declared_features, _sequences, _both_towers,
    _split_shares, _streaming, _student_family, _recall,
)


def validate(cfg: Any, origins: Mapping[str, str] | None = None) -> None:
    """Check ``cfg`` (a :class:`~coarserank.config.RunConfig`) against :data:`CONSTRAINTS` and
    :data:`CROSS_FIELD`; ``origins`` maps ``section.key`` to the file or override that set it."""
    def origin(key: str) -> str:
        where = (origins or {}).get(key)
        return f" (set by {where})" if where else ""

    _check_tables(cfg, origin)
    for rule in CROSS_FIELD:
        rule(cfg)
