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
import hashlib
import json
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from coarserank.config_models import (
    TOWER_FAMILIES,
    ColdStudentOptions,
    DatOptions,
    ModelTrainingConfig,
    ParallelOptions,
    RecallConfig,
    SenetOptions,
    ShortcutOptions,
    StudentConfig,
    TeacherConfig,
    TowerObjective,
)
from coarserank.config_rules import check_keys as _check_keys
from coarserank.config_rules import coerce_tree as _build
from coarserank.errors import ConfigError

__all__ = [
    "TOWER_FAMILIES",
    "ColdConfig",
    "ColdStudentOptions",
    "CrossConfig",
    "DataConfig",
    "DatOptions",
    "DistillConfig",
    "FeatureConfig",
    "GbdtConfig",
    "HistoryCrossConfig",
    "ModelTrainingConfig",
    "ParallelOptions",
    "RecallConfig",
    "ReportConfig",
    "RunConfig",
    "RunSection",
    "SenetOptions",
    "ServingConfig",
    "ShortcutOptions",
    "StudentConfig",
    "SyntheticConfig",
    "TeacherConfig",
    "TowerObjective",
    "config_hash",
    "config_to_dict",
    "dump_config",
    "load_config",
    "preset_path",
    "section_hash",
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

    rows: int = 100_000
    users: int = 0
    items: int = 0
    topics: int = 300
    popularity_exponent: float = 1.1
    activity_exponent: float = 1.3
    on_topic_share: float = 0.3
    noise: float = 0.3


@dataclass(frozen=True)
class DistillGrid:
    """``[distill.grid]``: values to sweep. Every combination of the non-empty lists trains one student
    on the run's teacher (the ``distill_grid`` stage of ``distill run``); each is measured by
    validation GAUC and validation agreement with the teacher, and the report plots them. The
    grid never changes the run's own student (it is not part of the run's training hash)."""

    alpha: tuple[float, ...] = ()
    temperature: tuple[float, ...] = ()
    soft: tuple[Literal["pointwise", "listwise"], ...] = ()
    sampled: tuple[int, ...] = ()
    sampler: tuple[Literal["uniform", "popularity", "in_batch"], ...] = ()
    sampled_loss: tuple[Literal["pointwise", "listwise"], ...] = ()
    sampled_weight: tuple[float, ...] = ()
    rank_weight: tuple[float, ...] = ()
    rank_top: tuple[int, ...] = ()

    def settings(self) -> dict[str, tuple[Any, ...]]:
        """The swept keys and their values (keys with an empty list are not swept)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name)}


@dataclass(frozen=True)
class DistillConfig:
    """Loss ``(1-alpha)*hard + alpha*T^2*(soft + sampled_weight*sampled) + alpha*rank_weight*rank``.

    ``soft`` is pointwise BCE or listwise KL over the exposures. Entire-space terms: for every
    training exposure ``sampled`` unexposed items are drawn by ``sampler`` and scored by the teacher;
    ``sampled_loss`` fits them pointwise or as a list with the exposure (KL at temperature T);
    ``rank_weight`` adds pairwise ranking distillation of the teacher's top ``rank_top`` per list.
    """

    alpha: float = 0.8
    temperature: float = 2.0
    soft: Literal["pointwise", "listwise"] = "pointwise"
    sampled: int = 4
    sampler: Literal["uniform", "popularity", "in_batch"] = "popularity"
    sampled_loss: Literal["pointwise", "listwise"] = "listwise"
    sampled_weight: float = 1.0
    rank_weight: float = 0.0
    rank_top: int = 3
    grid: DistillGrid = field(default_factory=DistillGrid)


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
    hidden: tuple[int, ...] = (64, 32)
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
    recall: RecallConfig = field(default_factory=RecallConfig)
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
    origins: dict[str, str] = {}
    for origin, layer in layers:
        _check_keys(RunConfig, layer, origin, prefix="")
        merged = _merge(merged, layer)
        origins.update({f"{section}.{key}": origin for section, body in layer.items() if isinstance(body, dict)
                        for key in body})
        origins.update({f"{section}.{table}.{key}": origin for section, body in layer.items()  # [student.senet]
                        if isinstance(body, dict) for table, sub in body.items() if isinstance(sub, dict)
                        for key in sub})
    cfg = _build(RunConfig, merged, origin="the resolved configuration", prefix="")
    validate(cfg, {k: v for k, v in origins.items() if v != "default.toml"})
    return cfg


def validate(cfg: RunConfig, origins: dict[str, str] | None = None) -> None:
    """Check every key against its section's constraints table and the cross-field rules
    (:mod:`coarserank.config_rules`); ``origins`` names the layer that set each ``section.key``."""
    from coarserank.config_rules import validate as check

    check(cfg, origins)


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
        scalars = {k: v for k, v in body.items() if not (isinstance(v, list) and v and isinstance(v[0], dict))
                   and not isinstance(v, dict)}
        tables = {k: v for k, v in body.items() if k not in scalars and not isinstance(v, dict)}
        lines.append(f"[{section}]")
        lines += [f"{k} = {_toml_value(v)}" for k, v in scalars.items()]
        lines.append("")
        for name, sub in body.items():  # sub-tables such as [student.senet]
            if isinstance(sub, dict):
                lines += [f"[{section}.{name}]", *(f"{k} = {_toml_value(v)}" for k, v in sub.items()), ""]
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
    body["distill"] = {k: v for k, v in body["distill"].items() if k != "grid"}  # the grid trains side students
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def section_hash(cfg: RunConfig, section: str) -> str:
    """sha256 of one section of the configuration (``"report+distill"``: of each, '+'-joined)."""
    return "+".join(hashlib.sha256(json.dumps(config_to_dict(getattr(cfg, name)), sort_keys=True).encode()).hexdigest()
                    for name in section.split("+"))
