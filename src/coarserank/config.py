"""Typed run configuration: frozen dataclasses, one per stage, loaded from TOML.

The shipped ``default.toml`` holds every default. A user's file is a partial overlay (tables merge,
arrays replace), ``--set section.key=value`` overrides come last, and the result is validated into
:class:`RunConfig`. An unknown key or a wrong type is a :class:`~coarserank.errors.ConfigError` naming
the key, the file and the nearest valid key.

Example
-------
>>> cfg = load_config(overrides=["synthetic.rows=5000", "run.seed=3"])
>>> cfg.synthetic.rows, cfg.run.seed
(5000, 3)
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import tomllib
import types
import typing
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from coarserank.errors import ConfigError

__all__ = [
    "FeatureConfig",
    "CrossConfig",
    "HistoryCrossConfig",
    "DataConfig",
    "SyntheticConfig",
    "ModelTrainingConfig",
    "TeacherConfig",
    "StudentConfig",
    "DistillConfig",
    "GbdtConfig",
    "ServingConfig",
    "ReportConfig",
    "ColdConfig",
    "RunSection",
    "RunConfig",
    "load_config",
    "config_to_dict",
    "dump_config",
    "config_hash",
    "section_hash",
    "preset_path",
]

Side = Literal["user", "item", "context"]
Kind = Literal["categorical", "numeric", "multi", "sequence"]


@dataclass(frozen=True)
class FeatureConfig:
    """One input feature: where it comes from, which tower may see it, and how it is encoded.

    ``boundaries`` turns a numeric column into a categorical bucket id (``searchsorted`` right);
    ``sep`` splits a multi-valued string column; ``min_count`` sends rarer training values to OOV.

    A ``sequence`` is the user's behaviour history: the raw values of the item-side categorical
    feature ``of`` over the user's last ``max_len`` earlier exposures (``events = "positive"``: only
    rows labelled 1), most recent first. It shares ``of``'s vocabulary. With ``column`` empty,
    ``prepare`` builds it from the log by time (strictly earlier rows only); otherwise ``column``
    names a ready-made column (values joined by ``sep``, most recent first).
    """

    name: str
    side: Side
    kind: Kind
    column: str = ""
    sep: str = "|"
    max_len: int = 8
    min_count: int = 1
    boundaries: tuple[float, ...] = ()
    of: str = ""
    events: Literal["positive", "all"] = "positive"


@dataclass(frozen=True)
class CrossConfig:
    """A teacher-only user x item cross of two categorical/multi features.

    ``product`` gives every (a, b) value pair its own id (a vocabulary over pairs, ``min_count``
    applies); ``match`` is a 0/1 numeric feature that says whether the two raw values are equal.
    """

    name: str
    a: str
    b: str
    op: Literal["product", "match"] = "product"
    min_count: int = 5


@dataclass(frozen=True)
class HistoryCrossConfig:
    """A time-respecting statistical cross: the ``key``'s smoothed positive rate on the row's ``over``
    values, computed only from that key's rows with a strictly earlier timestamp."""

    name: str
    key: str
    over: str
    prior: float = 5.0


@dataclass(frozen=True)
class DataConfig:
    """Where the exposure log comes from and which features it carries."""

    source: Literal["synthetic", "movielens-100k", "table"] = "synthetic"
    path: str = ""
    exposures: str = ""
    users: str = ""
    items: str = ""
    format: Literal["auto", "csv", "parquet"] = "auto"
    csv_separator: str = ","
    user_col: str = "user_id"
    item_col: str = "item_id"
    label_col: str = "label"
    rating_col: str = ""
    label_threshold: float = 1.0
    timestamp_col: str = "timestamp"
    group_col: str = ""
    valid_frac: float = 0.1
    test_frac: float = 0.1
    split: Literal["user_time", "global_time"] = "user_time"
    streaming: bool = False
    shuffle_partitions: int = 4
    sample_rows: int = 500_000
    features: tuple[FeatureConfig, ...] = ()
    crosses: tuple[CrossConfig, ...] = ()
    history_crosses: tuple[HistoryCrossConfig, ...] = ()


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and shape of the built-in synthetic exposure log (see ``coarserank.data.synthetic``)."""

    rows: int = 200_000
    users: int = 0
    items: int = 0
    topics: int = 300
    popularity_exponent: float = 1.1
    activity_exponent: float = 1.3
    on_topic_share: float = 0.3
    noise: float = 0.3


@dataclass(frozen=True)
class ModelTrainingConfig:
    """Embedding width, hidden layers and optimiser settings shared by the teacher and the students."""

    embed_dim: int = 16
    hidden: tuple[int, ...] = (256, 128)
    dropout: float = 0.0
    lr: float = 2e-3
    weight_decay: float = 0.0
    batch_size: int = 2048
    epochs: int = 8
    patience: int = 2


@dataclass(frozen=True)
class TeacherConfig(ModelTrainingConfig):
    """The teacher over every field, crosses included: ``family`` DeepFM (FM + DNN) or DCN-v2 (cross
    network + DNN). With ``attention``, each behaviour sequence is pooled by DIN-style target
    attention against the candidate item (``attention_hidden``: the activation unit's widths)."""

    family: Literal["deepfm", "dcn"] = "deepfm"
    attention: bool = True
    attention_hidden: tuple[int, ...] = (64, 32)
    cross_layers: int = 3


@dataclass(frozen=True)
class StudentConfig(ModelTrainingConfig):
    """Two-tower student: user tower (user + context fields), item tower (item fields) of ``dim``."""

    dim: int = 64


@dataclass(frozen=True)
class DistillConfig:
    """Loss ``(1-alpha)*hard + alpha*T^2*(soft + sampled_weight*sampled) + alpha*rank_weight*rank``.

    ``soft`` is pointwise BCE or listwise KL over the exposures. Entire-space terms: for every
    training exposure ``sampled`` unexposed items are drawn by ``sampler`` and scored by the teacher;
    ``sampled_loss`` fits them pointwise or as a list with the exposure (KL at temperature T);
    ``rank_weight`` adds pairwise ranking distillation of the teacher's top ``rank_top`` per list.
    """

    alpha: float = 0.5
    temperature: float = 2.0
    soft: Literal["pointwise", "listwise"] = "pointwise"
    sampled: int = 0
    sampler: Literal["uniform", "popularity", "in_batch"] = "popularity"
    sampled_loss: Literal["pointwise", "listwise"] = "listwise"
    sampled_weight: float = 1.0
    rank_weight: float = 0.0
    rank_top: int = 3


@dataclass(frozen=True)
class GbdtConfig:
    """LightGBM reference model on the teacher's features."""

    num_leaves: int = 63
    learning_rate: float = 0.05
    rounds: int = 1000
    early_stopping: int = 50
    multi_hot_top: int = 64


@dataclass(frozen=True)
class ServingConfig:
    """Exports written by ``distill run``: ONNX opset, KV dtype, Faiss index kind and its tuning, and the
    largest ONNX-vs-PyTorch / score-path difference the export accepts (score units; a float16 KV
    store adds ``|a| * 2**-11``)."""

    opset: int = 17
    kv_dtype: Literal["float32", "float16"] = "float32"
    index_kind: Literal["auto", "flat", "hnsw", "ivf", "ivfpq"] = "auto"
    recall_target: float = 0.95
    index_queries: int = 2000
    parity_tolerance: float = 1e-3


@dataclass(frozen=True)
class ReportConfig:
    """Offline consistency report: candidate sets of exposures plus sampled catalogue items."""

    enabled: bool = True
    sampled: int = 1000
    sampling: Literal["uniform", "popularity"] = "popularity"
    max_users: int = 300
    bootstrap: int = 200
    sizes: tuple[int, ...] = (100, 500, 1000)
    ks: tuple[int, ...] = (10, 50)
    ns: tuple[int, ...] = (50, 100, 200, 500, 1000)


@dataclass(frozen=True)
class ColdConfig:
    """COLD-style feature-selection sweep."""

    family: Literal["cold", "two_tower"] = "cold"
    k: tuple[int, ...] = (4, 8, 12, 0)
    budget_ms: float = 0.0
    candidates: int = 1000
    rank_by: Literal["se", "gbdt", "permutation"] = "se"
    gate_l1: float = 0.05
    embed_dim: int = 16
    hidden: tuple[int, ...] = (128, 64)
    lr: float = 2e-3
    batch_size: int = 2048
    epochs: int = 8
    patience: int = 2
    recall_sampled: int = 100
    permutation_repeats: int = 2
    latency_repeats: int = 200
    latency_warmup: int = 20


@dataclass(frozen=True)
class RunSection:
    """Run-wide settings: name, seed, device, and where the run directory goes."""

    name: str = ""
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    out: str = ""
    threads: int = 0
    precision: Literal["fp32", "bf16"] = "fp32"


@dataclass(frozen=True)
class RunConfig:
    """The resolved configuration of one ``distill run``; each stage receives its own section."""

    run: RunSection = field(default_factory=RunSection)
    data: DataConfig = field(default_factory=DataConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    gbdt: GbdtConfig = field(default_factory=GbdtConfig)
    serving: ServingConfig = field(default_factory=ServingConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    cold: ColdConfig = field(default_factory=ColdConfig)


# ----------------------------------------------------------------------------------------------
# loading


def preset_path(name: str) -> Path:
    """Path of a shipped preset TOML (``default`` or a dataset preset such as ``movielens-100k``)."""
    base = resources.files("coarserank")
    path = Path(str(base / "default.toml")) if name == "default" else Path(str(base / "presets" / f"{name}.toml"))
    if not path.is_file():
        known = sorted(p.name.removesuffix(".toml") for p in Path(str(base / "presets")).glob("*.toml"))
        raise ConfigError(f"no preset named {name!r}; presets shipped: {', '.join(['default', *known])}")
    return path


def _read_toml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value (arrays included) replaces the base value."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _parse_override(item: str) -> dict[str, Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    dotted, raw = item.split("=", 1)
    keys = dotted.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"override {item!r}: the key must be section.key, got {dotted!r}")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    node: dict[str, Any] = {keys[-1]: value}
    for key in reversed(keys[:-1]):
        node = {key: node}
    return node


def load_config(
    path: str | Path | None = None,
    *,
    preset: str | None = None,
    overrides: list[str] | tuple[str, ...] = (),
) -> RunConfig:
    """Build a :class:`RunConfig`: defaults, then ``preset``, then the file at ``path``, then overrides."""
    layers: list[tuple[str, dict[str, Any]]] = [("default.toml", _read_toml(preset_path("default")))]
    if preset:
        layers.append((f"preset {preset}", _read_toml(preset_path(preset))))
    if path is not None:
        layers.append((str(path), _read_toml(Path(path))))
    for item in overrides:
        layers.append((f"--set {item}", _parse_override(item)))
    merged: dict[str, Any] = {}
    for origin, layer in layers:
        _check_keys(RunConfig, layer, origin, prefix="")
        merged = _merge(merged, layer)
    cfg = _build(RunConfig, merged, origin="the resolved configuration", prefix="")
    validate(cfg)
    return cfg


def _check_keys(cls: type, raw: dict[str, Any], origin: str, prefix: str) -> None:
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
                    _check_keys(inner, sub, origin, label)


def _dataclass_of(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp  # type: ignore[return-value]
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if args and dataclasses.is_dataclass(args[0]):
            return args[0]  # type: ignore[return-value]
    return None


def _build(cls: type, raw: Any, origin: str, prefix: str) -> Any:
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
        return _build(tp, value, origin, f"{where}.")  # type: ignore[arg-type]
    if origin_tp is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(f"{origin}: {where} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
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


def _check_sequence(f: FeatureConfig, by_name: dict[str, FeatureConfig], d: DataConfig) -> None:
    """A sequence is user-side, reads an item-side categorical feature and needs time order."""
    where = f"data.features {f.name!r}"
    if f.kind != "sequence":
        if f.of:
            raise ConfigError(f"{where}: 'of' applies only to kind = \"sequence\" features")
        return
    if f.side != "user":
        raise ConfigError(f"{where}: a sequence is the user's history, so side must be \"user\", got {f.side!r}")
    of = by_name.get(f.of)
    if of is None or of.side != "item" or of.kind != "categorical" or of.boundaries:
        items = [g.name for g in by_name.values() if g.side == "item" and g.kind == "categorical" and not g.boundaries]
        raise ConfigError(f"{where}: of = {f.of!r} must name an item-side categorical feature without "
                          f"boundaries; candidates: {', '.join(items) or 'none declared'}")
    if not f.column and not d.timestamp_col:
        raise ConfigError(f"{where}: sequences need time order, but data.timestamp_col is empty; set the "
                          "timestamp column (or give a ready-made sequence column)")
    if not f.column and d.streaming:
        raise ConfigError(f"{where}: a streaming run cannot build sequences from the whole log; give a "
                          "ready-made column (values joined by sep, most recent first) with 'column'")


def _check_entire_space(t: DistillConfig, d: DataConfig) -> None:
    """Sampled-item settings that no data can make right."""
    for key in ("sampled", "sampled_weight", "rank_weight"):
        if getattr(t, key) < 0:
            raise ConfigError(f"distill.{key} must be >= 0, got {getattr(t, key)}")
    if t.rank_top < 1:
        raise ConfigError(f"distill.rank_top must be >= 1, got {t.rank_top}")
    if t.sampled and d.streaming:
        raise ConfigError("distill.sampled > 0 scores sampled items against in-memory training rows; a streaming "
                          "run (data.streaming = true) needs distill.sampled = 0")


def validate(cfg: RunConfig) -> None:
    """Cross-field checks that types alone cannot express."""
    d = cfg.data
    names = [f.name for f in d.features] + [c.name for c in d.crosses] + [h.name for h in d.history_crosses]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ConfigError(f"data: feature names must be unique; repeated: {', '.join(dupes)}")
    by_name = {f.name: f for f in d.features}
    for f in d.features:
        if f.kind != "numeric" and f.boundaries and f.kind != "categorical":
            raise ConfigError(f"data.features {f.name!r}: boundaries only apply to categorical features")
        if f.min_count < 1 or f.max_len < 1:
            raise ConfigError(f"data.features {f.name!r}: min_count and max_len must be >= 1")
        if list(f.boundaries) != sorted(f.boundaries):
            raise ConfigError(f"data.features {f.name!r}: boundaries must be increasing")
    for f in d.features:
        _check_sequence(f, by_name, d)
    for c in d.crosses:
        for part in (c.a, c.b):
            if part not in by_name:
                raise ConfigError(f"data.crosses {c.name!r}: {part!r} is not a declared feature; "
                                  f"declared: {', '.join(by_name)}")
            if by_name[part].kind in ("numeric", "sequence"):
                raise ConfigError(f"data.crosses {c.name!r}: {part!r} is {by_name[part].kind}; crosses need "
                                  "categorical or multi features")
        if c.op == "product" and by_name[c.a].kind == "multi" and by_name[c.b].kind == "multi":
            raise ConfigError(f"data.crosses {c.name!r}: at most one side of a product cross may be multi-valued")
        if c.op == "match" and "multi" in (by_name[c.a].kind, by_name[c.b].kind):
            raise ConfigError(f"data.crosses {c.name!r}: a match cross needs two single-valued features")
    for h in d.history_crosses:
        for part in (h.key, h.over):
            if part not in by_name:
                raise ConfigError(f"data.history_crosses {h.name!r}: {part!r} is not a declared feature")
            if by_name[part].kind == "sequence":
                raise ConfigError(f"data.history_crosses {h.name!r}: {part!r} is a sequence; history crosses "
                                  "need categorical or multi features")
    sides = {f.side for f in d.features}
    if d.features and not {"user", "item"} <= sides:
        raise ConfigError("data.features: the student needs at least one user-side and one item-side feature")
    if not 0 <= d.valid_frac < 1 or not 0 <= d.test_frac < 1 or d.valid_frac + d.test_frac >= 1:
        raise ConfigError(f"data: valid_frac + test_frac must lie in [0, 1), got {d.valid_frac} + {d.test_frac}")
    if d.shuffle_partitions < 1 or d.sample_rows < 1:
        raise ConfigError("data.shuffle_partitions and data.sample_rows must be >= 1")
    if d.streaming:
        if d.source != "table":
            raise ConfigError(f"data.streaming reads a table source's parquet partitions; data.source is {d.source!r} "
                              "(write the log as parquet partitions and use source = \"table\")")
        if d.split != "global_time":
            raise ConfigError("data.streaming needs data.split = \"global_time\": a per-user split needs every "
                              "user's whole history in memory")
        if d.history_crosses:
            raise ConfigError("data.streaming does not compute data.history_crosses (they need the whole log in "
                              "time order); precompute them as numeric columns of the log instead")
    if not 0.0 <= cfg.distill.alpha <= 1.0:
        raise ConfigError(f"distill.alpha must lie in [0, 1], got {cfg.distill.alpha}")
    if cfg.distill.temperature <= 0:
        raise ConfigError(f"distill.temperature must be > 0, got {cfg.distill.temperature}")
    _check_entire_space(cfg.distill, d)
    if cfg.synthetic.rows < 100:
        raise ConfigError(f"synthetic.rows must be >= 100, got {cfg.synthetic.rows}")
    for section in (cfg.teacher, cfg.student):
        if section.batch_size < 1 or section.epochs < 1 or section.lr <= 0:
            raise ConfigError(f"{type(section).__name__}: batch_size, epochs must be >= 1 and lr > 0")


# ----------------------------------------------------------------------------------------------
# dumping


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) of a config dataclass."""

    def conv(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        return v

    return conv(cfg)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)  # pragma: no cover


def dump_config(cfg: RunConfig) -> str:
    """TOML text of the resolved configuration; loading it back gives an equal :class:`RunConfig`."""
    lines: list[str] = []
    for section, body in config_to_dict(cfg).items():
        scalars = {k: v for k, v in body.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))}
        tables = {k: v for k, v in body.items() if k not in scalars}
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
        lines.append("")
        for name, items in tables.items():
            for item in items:
                lines.append(f"[[{section}.{name}]]")
                lines += [f"{k} = {_toml_value(v)}" for k, v in item.items()]
                lines.append("")
    return "\n".join(lines)


TRAINING_SECTIONS = ("run", "data", "synthetic", "teacher", "student", "distill", "gbdt")


def config_hash(cfg: RunConfig) -> str:
    """sha256 of what determines a run's trained models: the data and training sections, excluding
    where the output goes and how many threads run. Exports, report and sweep settings are not part
    of it: changing them re-runs only their own stage (see :func:`section_hash`)."""
    body = {k: v for k, v in config_to_dict(cfg).items() if k in TRAINING_SECTIONS}
    body["run"] = {k: v for k, v in body["run"].items() if k not in ("out", "name", "threads", "device")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def section_hash(cfg: RunConfig, section: str) -> str:
    """sha256 of one section of the configuration."""
    return hashlib.sha256(json.dumps(config_to_dict(getattr(cfg, section)), sort_keys=True).encode()).hexdigest()
