"""``distill run``: data -> teacher -> logits -> student, hard-label control, GBDT -> metrics.

Each stage records its status and the sha256 of its outputs in ``manifest.json``; re-running the
same configuration into the same directory resumes after the last finished stage. Further stages
(exports, report) plug in through :data:`EXTRA_STAGES`.
"""

from __future__ import annotations

import importlib
import json
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import polars as pl
import torch

from coarserank.artifacts import MODEL_FILES, Run, build_run_teacher, write_prepared
from coarserank.atomic import atomic_write_text, atomic_write_with
from coarserank.config import DistillConfig, ModelTrainingConfig, RunConfig, config_hash, config_to_dict, dump_config, section_hash
from coarserank.data.dataset import EncodedSplit, PreparedData, encode_splits
from coarserank.data.encode import Encoder
from coarserank.data.partitions import PartitionedLog
from coarserank.data.prepare import SPLITS, check_label_mix, prepare
from coarserank.data.schema import Schema
from coarserank.data.sources import load_source
from coarserank.distill.gbdt import GbdtReference
from coarserank.distill.stream_table import StreamingTable
from coarserank.distill.tensors import TensorTable
from coarserank.distill.distributed import DistInfo, alone, barrier, broadcast_object, current
from coarserank.distill.api import Trained, blend_teacher, check_sampling, distill, split_table, train_teacher
from coarserank.distill.families import gate_means
from coarserank.distill.train import EpochInfo, FitResult, FitSettings, predict, predict_shared, resolve_device
from coarserank.errors import ArtifactWarning, CoarseRankError, DistillWarning
from coarserank.pipeline import recall_stage
from coarserank.pipeline.rundir import RunDir
from coarserank.threads import apply_threads, explain_threads
from coarserank.pipeline.stream_data import load_streaming_data, streaming_train, write_train_logits
from coarserank.ranking_eval.metrics import label_metrics
from coarserank.student import build_student

__all__ = ["RunResult", "RunContext", "run", "load_context", "train_student", "default_run_dir", "EXTRA_STAGES", "MODELS"]

Progress = Callable[[str], None]
MODELS = ("teacher", "student", "student_hard", "gbdt")


def _quiet(_: str) -> None:
    return None


@dataclass
class RunResult:
    """Where the run went, its metrics and how long it took."""

    run_dir: Path
    metrics: dict[str, Any]
    seconds: float


@dataclass
class RunContext:
    """State handed from stage to stage inside one process."""

    cfg: RunConfig
    run: RunDir
    device: torch.device
    progress: Progress
    frame: pl.DataFrame | None = None
    encoder: Encoder | None = None
    tables: dict[str, TensorTable] = field(default_factory=dict)
    encoded: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    frames: dict[str, pl.DataFrame] = field(default_factory=dict)
    logits: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    data: PreparedData | None = None  # in-memory runs: the encoded splits, catalogue and pair encoder
    log: PartitionedLog | None = None  # streaming runs: the partitioned log ...
    stream: StreamingTable | None = None  # ... and its train rows, read partition by partition

    @property
    def schema(self) -> Schema:
        assert self.encoder is not None
        return self.encoder.schema_


def default_run_dir(cfg: RunConfig) -> Path:
    """``run.out`` if set, else ``runs/<run.name or <source>-seed<seed>>``."""
    if cfg.run.out:
        return Path(cfg.run.out)
    return Path("runs") / (cfg.run.name or f"{cfg.data.source}-seed{cfg.run.seed}")


# -- stages ------------------------------------------------------------------------------------

def _stage_data(ctx: RunContext) -> None:
    cfg = ctx.cfg
    start = time.perf_counter()
    if cfg.data.streaming:
        fingerprint = load_streaming_data(ctx)
        assert ctx.log is not None
        counts = dict(ctx.log.split_rows_)
        facts: dict[str, Any] = {"partitions": len(ctx.log.partitions_), "in_memory_rows": ctx.frame.height,
                                 "train_sample_rows": ctx.frames["train"].height}
    else:
        fingerprint, counts = _load_data(ctx)
        facts = {}
    check_label_mix(pl.concat([ctx.frames[s].select("_group", "_label").with_columns(pl.lit(s).alias("_split"))
                               for s in SPLITS]), cfg.data)  # before any model trains
    previous = ctx.run.manifest.data_fingerprint
    if previous and previous != fingerprint:
        raise CoarseRankError(f"run {ctx.run.path}: the data changed since this run started "
                              "(fingerprint differs); use --overwrite to start over")
    if ctx.run.is_done("data"):
        return
    ctx.run.begin("data")
    ctx.run.set_data_fingerprint(fingerprint)
    if ctx.run.writable:
        written = ctx.encoder.save(ctx.run.path)
        written.append(atomic_write_text(ctx.run.file("schema.json"), ctx.schema.dumps()))
        written += write_prepared(ctx.run.path, ctx.frames, ctx.frame)  # what read commands need
        ctx.run.record("data", *written)
    ctx.run.finish("data", rows=counts, fields=len(ctx.schema), read_seconds=round(time.perf_counter() - start, 3),
                   **facts)


def _load_data(ctx: RunContext) -> tuple[str, dict[str, int]]:
    """The in-memory path: the whole log prepared and encoded; returns (fingerprint, rows per split)."""
    cfg = ctx.cfg
    ctx.progress(f"data: reading source {cfg.data.source!r}")
    raw = load_source(cfg.data, cfg.synthetic, cfg.run.seed)
    data = encode_splits(prepare(raw, cfg.data), cfg.data)
    check_sampling(cfg.distill, data.pairs)  # before the teacher trains
    ctx.data = data
    ctx.frame = data.frame
    ctx.encoder = data.encoder
    for split in SPLITS:
        part = data.splits[split]
        ctx.frames[split] = part.frame
        ctx.encoded[split] = part.fields(data.schema)
        ctx.tables[split] = split_table(part)
    counts = {s: len(data.splits[s]) for s in SPLITS}
    ctx.progress("data: " + ", ".join(f"{s} {n:,} rows" for s, n in counts.items())
                 + f"; {len(data.schema)} fields")
    return data.fingerprint(), counts


def _epoch_printer(ctx: RunContext, model: str) -> Callable[[EpochInfo], None]:
    def show(info: EpochInfo) -> None:
        mark = " *" if info.is_best else ""
        ctx.progress(f"{model}: epoch {info.epoch} loss {info.train_loss:.4f} valid gauc {info.valid_gauc:.4f} "
                     f"({info.seconds:.1f}s){mark}")
    return show


def _fit_facts(result: FitResult) -> dict[str, Any]:
    return {"best_epoch": result.best_epoch, "best_valid_gauc": round(result.best_valid_gauc, 6),
            "train_seconds": round(result.train_seconds, 3), "rows_per_second": round(result.rows_per_second, 1),
            "seconds_to_best": round(result.seconds_to_best, 3), "epochs": len(result.history)}


def _save_model(ctx: RunContext, stage: str, name: str, model: torch.nn.Module, result: FitResult,
                **facts: Any) -> None:
    section = ctx.cfg.teacher if stage == "teacher" else ctx.cfg.student
    if result.stopped_early:
        ctx.progress(f"{stage}: early stop after epoch {len(result.history)} of {section.epochs}: valid gauc did "
                     f"not improve for {section.patience} epoch(s); keeping epoch {result.best_epoch}")
    if ctx.run.writable:
        path = atomic_write_with(ctx.run.file(name), lambda tmp: torch.save(model.state_dict(), tmp))
        ctx.run.record(stage, path)
    ctx.run.finish(stage, **_fit_facts(result), **facts)


def _load_model(ctx: RunContext, name: str, model: torch.nn.Module) -> torch.nn.Module:
    return ctx.run.load_state(name, model).to(ctx.device)


def _settings(ctx: RunContext, section: ModelTrainingConfig, grouped: bool = False) -> FitSettings:
    return FitSettings(section.lr, section.batch_size, section.epochs, section.patience, section.weight_decay,
                       ctx.cfg.run.seed, grouped, bf16=ctx.cfg.run.precision == "bf16")


def _stage_teacher(ctx: RunContext, control: torch.nn.Module) -> torch.nn.Module:
    """The teacher that is distilled: the heavy model, blended with the hard-label ``control`` at the
    ``teacher.blend`` weight with the best validation GAUC (:func:`coarserank.distill.api.blend_teacher`)."""
    torch.manual_seed(ctx.cfg.run.seed)
    if ctx.run.is_done("teacher"):
        return _load_model(ctx, "teacher.pt", build_run_teacher(ctx.schema, ctx.cfg, ctx.run.manifest))
    ctx.run.begin("teacher")
    train = ctx.stream if ctx.stream is not None else ctx.tables["train"]
    trained = train_teacher(train, ctx.tables["valid"], ctx.schema, ctx.cfg.teacher, seed=ctx.cfg.run.seed,
                            device=ctx.device, bf16=ctx.cfg.run.precision == "bf16",
                            progress=_epoch_printer(ctx, "teacher"))
    blended = blend_teacher(trained.model, control, ctx.tables["valid"], ctx.cfg.teacher.blend, ctx.device)
    if len(blended.valid_gauc) > 1:
        tried = ", ".join(f"w={w:g} {g:.4f}" for w, g in blended.valid_gauc.items())
        ctx.progress(f"teacher: blend with the hard-label two-tower at w = {blended.weight:g} (valid gauc {tried})")
    _save_model(ctx, "teacher", "teacher.pt", blended.model, trained.history, blend_weight=blended.weight,
                blend_valid_gauc={f"{w:g}": round(g, 6) for w, g in blended.valid_gauc.items()})
    return blended.model


def _sample_logits(ctx: RunContext, teacher: torch.nn.Module) -> None:
    """A streaming run's in-memory train logits: the teacher's on the train sample."""
    ctx.logits.setdefault("train", {})["teacher"] = predict_shared(teacher, ctx.tables["train"], ctx.device)


def _stage_logits(ctx: RunContext, teacher: torch.nn.Module) -> None:
    # a streaming run writes train logits per partition; train logits in memory are the sample's
    in_files = ("valid", "test") if ctx.stream is not None else SPLITS
    if ctx.run.is_done("logits"):
        for split in in_files:
            body = pl.read_parquet(ctx.run.verified_path(f"logits/{split}.parquet"))
            ctx.logits.setdefault(split, {})["teacher"] = body["logit"].to_numpy()
        if ctx.stream is not None:  # is_done checked every partition's file against its sha256
            _sample_logits(ctx, teacher)
        return
    ctx.run.begin("logits")
    temperature = ctx.cfg.distill.temperature
    written = []
    if ctx.stream is not None:
        written += write_train_logits(ctx, teacher)
        _sample_logits(ctx, teacher)
    for split in in_files:
        z = predict_shared(teacher, ctx.tables[split], ctx.device)
        ctx.logits.setdefault(split, {})["teacher"] = z
        if ctx.run.writable:
            body = pl.DataFrame({"row": ctx.frames[split]["_row"], "logit": z, "soft": z / temperature})
            written.append(atomic_write_with(ctx.run.file(f"logits/{split}.parquet"), body.write_parquet, ".parquet"))
        ctx.progress(f"logits: {split} {len(z):,} rows")
    ctx.run.record("logits", *written)
    ctx.run.finish("logits", temperature=temperature)


def train_student(ctx: RunContext, stage: str, distill_cfg: DistillConfig,
                  teacher: torch.nn.Module | None = None) -> Trained:
    """Train the student (``student.family``) on ``ctx``'s data with ``distill_cfg`` (``alpha = 0``: the
    hard-label control); same architecture, data and seed for every call. Writes nothing."""
    soft = distill_cfg.alpha > 0
    if ctx.cfg.student.objective == "sampled_softmax":  # the recall objective (docs/recall.md)
        return recall_stage.train_student_recall(ctx, stage, teacher if soft else None, _epoch_printer(ctx, stage))
    if ctx.stream is not None:
        train: TensorTable | StreamingTable | EncodedSplit = streaming_train(ctx, with_teacher=soft)
    else:
        assert ctx.data is not None
        train = ctx.data.train
    return distill(teacher if soft else None, train, ctx.tables["valid"], ctx.schema, ctx.cfg.student, distill_cfg,
                   train_logits=ctx.logits["train"]["teacher"] if soft and ctx.stream is None else None,
                   pairs=ctx.data.pairs if ctx.data is not None else None, seed=ctx.cfg.run.seed, device=ctx.device,
                   bf16=ctx.cfg.run.precision == "bf16", progress=_epoch_printer(ctx, stage))


def _stage_student(ctx: RunContext, stage: str, filename: str, alpha: float,
                   teacher: torch.nn.Module | None) -> torch.nn.Module:
    if ctx.run.is_done(stage):
        return _load_model(ctx, filename, build_student(ctx.schema, ctx.cfg.student))
    ctx.run.begin(stage)
    trained = train_student(ctx, stage, replace(ctx.cfg.distill, alpha=alpha), teacher)
    extra = ({"sampled_rows_per_second": round(trained.sampled_rows_per_second, 1),
              "teacher_scoring_seconds": round(trained.teacher_seconds, 3)} if trained.sampled_rows else {})
    gates = gate_means(trained.model, ctx.tables["valid"], ctx.device)
    if gates:  # SE-gated families: mean gate weight per field on validation rows (an importance signal)
        extra["field_gates"] = gates
    _save_model(ctx, stage, filename, trained.model, trained.history, **extra)
    return trained.model


def _stage_gbdt(ctx: RunContext) -> None:
    model = GbdtReference(ctx.schema, ctx.cfg.gbdt, ctx.cfg.run.seed, torch.get_num_threads())
    if ctx.run.is_done("gbdt"):
        import lightgbm as lgb

        model.booster_ = lgb.Booster(model_file=str(ctx.run.verified_path("gbdt.txt")))
    else:
        ctx.run.begin("gbdt")
        ctx.progress("gbdt: fitting LightGBM reference")
        model.fit(ctx.encoded["train"], ctx.frames["train"]["_label"].to_numpy(),
                  ctx.encoded["valid"], ctx.frames["valid"]["_label"].to_numpy(), progress=ctx.progress)
        path = atomic_write_with(ctx.run.file("gbdt.txt"), lambda tmp: model.booster_.save_model(str(tmp)), ".txt")
        ctx.run.record("gbdt", path)
        ctx.run.finish("gbdt", best_iteration=model.booster_.best_iteration)
    for split in SPLITS:
        ctx.logits[split]["gbdt"] = model.predict_logit(ctx.encoded[split])


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -50, 50)))


def _teacher_notes(valid: dict[str, dict[str, Any]]) -> list[str]:
    """What a user must know before trusting the distilled student, from validation figures only."""
    teacher, control = valid["teacher"]["gauc"], valid["student_hard"]["gauc"]
    if not teacher > control:
        return [f"the teacher is not stronger than the hard-label student on validation (GAUC {teacher:.4f} "
                f"against {control:.4f}): distillation cannot be expected to pay; give the teacher what two "
                "towers cannot see (crosses, history crosses, sequences: docs/distillation.md) or compare "
                "distill.alpha values on validation with [distill.grid]"]
    return []


def _stage_metrics(ctx: RunContext, retrieval: dict[str, Any]) -> dict[str, Any]:
    ctx.run.begin("metrics")
    metrics: dict[str, Any] = {}
    for split in ("valid", "test"):
        frame = ctx.frames[split]
        y, groups = frame["_label"].to_numpy(), frame["_group"].to_numpy()
        metrics[split] = {m: label_metrics(y, _sigmoid(ctx.logits[split][m]), groups) for m in MODELS}
        if "_oracle" in frame.columns:
            metrics[split]["oracle"] = label_metrics(y, frame["_oracle"].to_numpy(), groups)
    metrics["test"]["retrieval"] = retrieval  # over the whole catalogue (coarserank.pipeline.recall_stage)
    notes = _teacher_notes(metrics["valid"])
    if notes:
        metrics["notes"] = notes
        for note in notes:
            warnings.warn(note, DistillWarning, stacklevel=2)
    gates = {m: facts["field_gates"] for m in ("student", "student_hard")
             for facts in [ctx.run.manifest.stage_facts(m)] if "field_gates" in facts}
    if gates:
        metrics["field_gates"] = gates
    metrics["definitions"] = {
        "auc": "Mann-Whitney AUC over all rows, ties count one half",
        "gauc": "per-group AUC weighted by the group's rows; groups with one class skipped (counted)",
        "logloss": "mean binary cross-entropy of sigmoid(logit), probabilities clipped to [1e-7, 1-1e-7]",
        "group": ctx.cfg.data.group_col or ctx.cfg.data.user_col,
        **({"field_gates": "mean SE gate weight per field over the validation rows, per tower (user, item) "
                           "or over candidate rows (rows: the COLD student)"} if gates else {}),
    }
    path = atomic_write_text(ctx.run.file("metrics.json"), json.dumps(metrics, indent=2))
    ctx.run.record("metrics", path)
    ctx.run.finish("metrics")
    return metrics


# Stages after metrics, run in order: (stage name, module exposing ``run_stage(ctx, models)``).
EXTRA_STAGES: list[tuple[str, str, str]] = [  # (stage, module, config sections it depends on, '+'-joined)
    ("export", "coarserank.pipeline.export_stage", "serving"),
    ("distill_grid", "coarserank.pipeline.grid_stage", "distill"),
    # the report plots the distill grid and summarises metrics.json's retrieval (the recall section)
    ("report", "coarserank.pipeline.report_stage", "report+distill+recall"),
]


def load_context(run_dir: Path | str, *, progress: Progress = _quiet, device: str = "cpu",
                 require: tuple[str, ...] = ("metrics",)) -> tuple[RunContext, dict[str, torch.nn.Module]]:
    """A finished run in memory as a :class:`RunContext`, read through :class:`~coarserank.artifacts.Run`:
    every file checked, nothing trained, nothing written (its ``run`` is not writable). The read
    commands use :class:`~coarserank.artifacts.Run` directly; this serves code still written
    against the context. A streaming run's train table is its in-memory sample."""
    view = Run.open(run_dir, require=("config", "data", *require))
    cfg = replace(view.config, run=replace(view.config.run, device=device))
    ctx = RunContext(cfg, RunDir(view.path, view.manifest, writable=False), resolve_device(device), progress)
    ctx.encoder, ctx.frame = view.encoder, view.frame()
    models = {name: view.model(name, ctx.device) for name in MODEL_FILES if view.has(name)}
    for split in SPLITS:
        part = view.split(split)
        ctx.frames[split], ctx.encoded[split], ctx.tables[split] = part.frame, part.fields(ctx.schema), split_table(part)
        ctx.logits[split] = {"teacher": view.teacher_logits(split)} if view.has("logits") else {}
        for name in ("student", "student_hard"):
            if name in models:
                ctx.logits[split][name] = predict(models[name], ctx.tables[split], ctx.device)
    return ctx, models


def run(cfg: RunConfig, run_dir: Path | str | None = None, *, overwrite: bool = False,
        progress: Progress = _quiet, extra_stages: bool = True) -> RunResult:
    """Run (or resume) the whole pipeline for ``cfg`` into ``run_dir``; ``extra_stages=False``
    stops after the metrics (exports and report are left for a later resume)."""
    start = time.perf_counter()
    threads, why = explain_threads(cfg.run.threads, processes=current().world)
    apply_threads(threads)  # torch, Faiss; LightGBM reads torch.get_num_threads()
    device = resolve_device(cfg.run.device)
    path = Path(run_dir) if run_dir is not None else default_run_dir(cfg)
    info: DistInfo = current()
    run_: RunDir | None = None
    refused: CoarseRankError | None = None
    if info.is_main:
        try:
            run_ = RunDir.create(path, config_hash(cfg), overwrite=overwrite)
        except CoarseRankError as exc:
            refused = exc
    payload = broadcast_object(refused if refused is not None else run_.manifest if run_ is not None else None)
    if isinstance(payload, CoarseRankError):
        raise payload  # every rank reports the same refusal instead of waiting for rank 0
    if run_ is None:
        run_ = RunDir(path, payload, writable=False)
        progress = _quiet
    resolved = dump_config(cfg)
    config_file = run_.file("config.toml")
    if not run_.is_done("config") or config_file.read_text() != resolved:
        run_.begin("config")  # the resolved configuration, rewritten when a non-training section changed
        run_.record("config", atomic_write_text(config_file, resolved))
        run_.finish("config", config=config_to_dict(cfg))
    for message in run_.invalidate_changed():  # say what is rebuilt and why; rebuild what depends on it
        if info.is_main:
            warnings.warn(message, ArtifactWarning, stacklevel=2)
    ctx = RunContext(cfg, run_, device, progress)
    progress(f"run directory {path} (device {device}, {why})")
    stage = "data"
    try:
        _stage_data(ctx)
        recall_stage.check(ctx)  # recall settings this data cannot train fail before the teacher trains
        stage = "student_hard"  # first: the teacher may blend it in (teacher.blend)
        control = _stage_student(ctx, "student_hard", "student_hard.pt", 0.0, None)
        stage = "teacher"
        teacher = _stage_teacher(ctx, control)
        stage = "logits"
        _stage_logits(ctx, teacher)
        stage = "student"
        student = _stage_student(ctx, "student", "student.pt", cfg.distill.alpha, teacher)
        models: dict[str, torch.nn.Module] = {"teacher": teacher, "student": student, "student_hard": control}
        for split in SPLITS:
            ctx.logits[split]["student"] = predict_shared(student, ctx.tables[split], device)
            ctx.logits[split]["student_hard"] = predict_shared(control, ctx.tables[split], device)
        metrics: dict[str, Any] = {}
        if info.is_main:  # single-process stages: the reference model, metrics, exports, report
            with alone():  # no collectives: the recall model and grid students train here without the other ranks
                stage = "gbdt"
                _stage_gbdt(ctx)
                stage = recall_stage.STAGE
                retrieval = recall_stage.run_recall(ctx, models)
                stage = "metrics"
                metrics = _stage_metrics(ctx, retrieval)
                for name, module, sections in EXTRA_STAGES if extra_stages else []:
                    stage = name
                    wanted = section_hash(cfg, sections)
                    if run_.is_done(name) and run_.manifest.stage_facts(name).get("section_hash") == wanted:
                        continue
                    importlib.import_module(module).run_stage(ctx, models)
                    if run_.stage_status(name) is not None:
                        run_.update_stage(name, section_hash=wanted)
    except BaseException as exc:
        run_.fail(stage, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
        raise
    finally:
        run_.close()
    barrier()
    return RunResult(path, metrics, time.perf_counter() - start)
