"""Pipeline stage ``recall``: a recall model beside the coarse ranker, and retrieval quality for every model.

The coarse ranker learns to order what recall returned (negatives that were shown); a recall model
must find relevant items among all of them (negatives from everywhere). With ``recall.enabled`` the
run trains one (``recall.family``: ``multi_interest`` or ``two_tower``, the ``recall.objective``,
sampled softmax by default) on the same training rows, writes ``recall.pt`` and its serving files
(:mod:`coarserank.pipeline.recall_export`). Either way it measures retrieval over the whole
catalogue (:mod:`coarserank.pipeline.retrieval_data`) for the recall model, the coarse student's
vectors and item popularity; :func:`run_recall` returns the table that ``metrics.json`` holds under
``["test"]["retrieval"]``.

:func:`check` runs right after the data stage, so a recall setting that cannot train on the data
fails in one line before the teacher trains.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from coarserank.atomic import atomic_write_with
from coarserank.config import RecallConfig, RunConfig, StudentConfig, TowerObjective, section_hash
from coarserank.data.matches import MatchPair, match_pairs
from coarserank.data.schema import STUDENT_USER_SIDES, Schema
from coarserank.distill.api import Trained
from coarserank.distill.losses import distill_loss
from coarserank.distill.recall import RecallFields, check_recall_inputs, fit_recall
from coarserank.distill.tensors import TensorTable
from coarserank.distill.train import EpochInfo, FitResult, FitSettings, ProgressCallback, fit
from coarserank.errors import CoarseRankError
from coarserank.pipeline.recall_export import export_recall
from coarserank.pipeline.retrieval_data import RetrievalData, retrieval_data, retrieval_table, tower_vectors
from coarserank.ranking_eval.retrieval import evaluate_retrieval
from coarserank.student import build_student, has_towers, with_match_channel
from coarserank.student.multi_interest import build_multi_interest, sequence_field

if TYPE_CHECKING:
    from coarserank.pipeline.run import RunContext

__all__ = ["STAGE", "MODEL_FILE", "check", "recall_fields", "family", "build_recall_model", "RetrievalSelection",
           "train_recall", "train_student_recall", "load_recall", "run_recall"]

STAGE = "recall"
MODEL_FILE = "recall.pt"


def recall_fields(schema: Schema, cfg: RunConfig) -> RecallFields:
    """The item id field (``data.item_col``) and, when it is a user-side categorical field, the user id."""
    user = cfg.data.user_col
    has_user = user in schema.names and schema[user].side in STUDENT_USER_SIDES and schema[user].kind == "categorical"
    return RecallFields(item=cfg.data.item_col, user=user if has_user else "")


def family(schema: Schema, cfg: RecallConfig) -> str:
    """``recall.family`` with ``auto`` resolved: multi-interest when the schema has a user-side sequence."""
    if cfg.family != "auto":
        return cfg.family
    has_sequence = any(f.kind == "sequence" and f.side in STUDENT_USER_SIDES for f in schema.fields)
    return "multi_interest" if has_sequence else "two_tower"


def check(ctx: RunContext) -> None:
    """One-line errors, before any training, for recall settings this data cannot train."""
    cfg, schema = ctx.cfg, ctx.schema
    fields = recall_fields(schema, cfg)
    if cfg.recall.enabled:
        if family(schema, cfg.recall) == "multi_interest":
            sequence_field(schema, cfg.recall.sequence)
        if cfg.recall.objective == "sampled_softmax":
            try:
                check_recall_inputs(schema, ctx.tables["train"], cfg.recall, fields, "recall")
            except CoarseRankError as exc:  # the recall model is on by default: say how to do without it
                raise type(exc)(f"{exc}; or set recall.enabled = false to train no recall model") from None
    if cfg.student.objective == "sampled_softmax":
        check_recall_inputs(schema, ctx.tables["train"], cfg.student, fields, "student")


def build_recall_model(schema: Schema, cfg: RecallConfig, matches: Sequence[MatchPair] = ()) -> nn.Module:
    """The untrained recall model of ``cfg``: multi-interest, or the plain two-tower student with the
    recall section's tower and objective keys (``student.family`` never applies to it); with
    ``cfg.match_channel``, its towers end with shared embeddings of the ``matches`` values
    (:func:`coarserank.data.matches.match_pairs` of the run's encoder)."""
    if family(schema, cfg) == "multi_interest":
        model: nn.Module = build_multi_interest(schema, cfg)
    else:
        shared = {f.name: getattr(cfg, f.name) for f in fields(TowerObjective)}
        model = build_student(schema, StudentConfig(**shared, family="two_tower"))
    return with_match_channel(model, matches, cfg.embed_dim) if cfg.match_channel else model


def _printer(progress: Callable[[str], None], selection: RetrievalSelection) -> Callable[[EpochInfo], None]:
    def show(info: EpochInfo) -> None:
        got = selection.history[-1] if len(selection.history) >= info.epoch else float("nan")
        mark = " *" if selection.best_epoch == info.epoch else ""
        progress(f"recall: epoch {info.epoch} loss {info.train_loss:.4f} valid recall@{selection.k} {got:.4f} "
                 f"gauc {info.valid_gauc:.4f} ({info.seconds:.1f}s){mark}")
    return show


@dataclass
class RetrievalSelection:
    """Model selection for recall: after every epoch, Recall@``k`` over the catalogue on the valid split
    (:func:`retrieval_data` with ``split="valid"``); keeps the best epoch's weights and stops after
    ``patience`` epochs without a better one. GAUC on exposures says little about retrieval."""

    model: nn.Module
    data: RetrievalData
    k: int
    patience: int
    device: torch.device
    best: float = -1.0
    best_epoch: int = 0
    state: dict[str, torch.Tensor] | None = None
    history: list[float] = field(default_factory=list)

    def on_epoch_end(self, info: EpochInfo, module: nn.Module) -> bool:
        u, v = tower_vectors(self.model, self.data, self.device)
        value = evaluate_retrieval(u, v, self.data.heldout, self.data.known, (self.k,), self.data.counts).recall[self.k]
        self.history.append(value)
        if value > self.best:
            self.best, self.best_epoch = value, info.epoch
            self.state = copy.deepcopy(self.model.state_dict())
        return info.epoch - self.best_epoch >= self.patience


def train_recall(ctx: RunContext, teacher: nn.Module | None) -> tuple[nn.Module, FitResult, RetrievalSelection]:
    """Train the recall model on ``ctx``'s training rows, selected on validation retrieval (the teacher is
    used when ``recall.softmax_alpha > 0``, or for a pointwise objective's soft labels); writes nothing."""
    cfg = ctx.cfg
    r = cfg.recall
    torch.manual_seed(cfg.run.seed)
    model = build_recall_model(ctx.schema, r, match_pairs(ctx.encoder))
    valid = retrieval_data(ctx.frames, ctx.frame, ctx.encoder, cfg.data, max_users=r.max_users, seed=cfg.run.seed,
                           split="valid")
    k = 100 if 100 in r.ks else max(r.ks)
    selection = RetrievalSelection(model, valid, k, r.patience, ctx.device)
    # GAUC early stopping off (patience past the last epoch): the retrieval selection decides
    settings = FitSettings(r.lr, r.batch_size, r.epochs, r.epochs + 1, r.weight_decay, cfg.run.seed,
                           bf16=cfg.run.precision == "bf16")
    train = ctx.stream if ctx.stream is not None else ctx.tables["train"]
    show = _printer(ctx.progress, selection)
    if r.objective == "sampled_softmax":
        result = fit_recall(model, train, ctx.tables["valid"], ctx.schema, r, recall_fields(ctx.schema, cfg),
                            sample=ctx.tables["train"], pairs=ctx.data.pairs if ctx.data is not None else None,
                            teacher=teacher if r.softmax_alpha > 0 else None,
                            teacher_temperature=cfg.distill.temperature, seed=cfg.run.seed, device=ctx.device,
                            callbacks=[selection, ProgressCallback(show)], settings=settings, section="recall")
    else:
        d = cfg.distill
        table = ctx.tables["train"].with_teacher(ctx.logits["train"]["teacher"]) if d.alpha > 0 else train

        def loss(m: nn.Module, b: TensorTable) -> torch.Tensor:
            return distill_loss(m(b.inputs), b.label, b.teacher, b.group, alpha=d.alpha, temperature=d.temperature,
                                soft=d.soft)

        result = fit(model, loss, table, ctx.tables["valid"], settings, ctx.device,
                     callbacks=[selection, ProgressCallback(show)])
    if selection.state is not None:
        model.load_state_dict(selection.state)
    return model, result, selection


def train_student_recall(ctx: RunContext, stage: str, teacher: nn.Module | None,
                         progress: Callable[[EpochInfo], None] | None = None) -> Trained:
    """The coarse student trained with ``student.objective = "sampled_softmax"`` (the teacher's candidate
    softmax only when ``teacher`` is given and ``student.softmax_alpha > 0``: the hard-label control
    gets no teacher)."""
    cfg = ctx.cfg
    student_cfg = cfg.student if teacher is not None else replace(cfg.student, softmax_alpha=0.0)
    torch.manual_seed(cfg.run.seed)
    student = build_student(ctx.schema, student_cfg)
    train = ctx.stream if ctx.stream is not None else ctx.tables["train"]
    result = fit_recall(student, train, ctx.tables["valid"], ctx.schema, student_cfg, recall_fields(ctx.schema, cfg),
                        sample=ctx.tables["train"], pairs=ctx.data.pairs if ctx.data is not None else None,
                        teacher=teacher if student_cfg.softmax_alpha > 0 else None,
                        teacher_temperature=cfg.distill.temperature, seed=cfg.run.seed, device=ctx.device,
                        bf16=cfg.run.precision == "bf16", progress=progress, section="student")
    return Trained(student, result)


def load_recall(ctx: RunContext) -> nn.Module:
    """The run's trained recall model from ``recall.pt`` (verified against the manifest)."""
    torch.manual_seed(ctx.cfg.run.seed)
    model = build_recall_model(ctx.schema, ctx.cfg.recall, match_pairs(ctx.encoder))
    state = torch.load(ctx.run.verified_path(MODEL_FILE), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(ctx.device).eval()


def _trained(ctx: RunContext, teacher: nn.Module | None) -> nn.Module:
    """Load the recall model when these recall and serving sections produced it already, else train it,
    save it and export its serving files."""
    run = ctx.run
    wanted = hashlib.sha256((section_hash(ctx.cfg, STAGE) + section_hash(ctx.cfg, "serving")).encode()).hexdigest()
    if run.is_done(STAGE) and run.manifest.stage_facts(STAGE).get("section_hash") == wanted:
        return load_recall(ctx)
    run.begin(STAGE)
    model, result, selection = train_recall(ctx, teacher)
    facts: dict[str, Any] = {}
    if run.writable:
        path = atomic_write_with(run.file(MODEL_FILE), lambda tmp: torch.save(model.state_dict(), tmp))
        run.record(STAGE, path)
        facts = export_recall(ctx, model, STAGE)
    run.finish(STAGE, section_hash=wanted, best_epoch=selection.best_epoch,
               best_valid_recall=round(selection.best, 6), valid_recall_k=selection.k,
               train_seconds=round(result.train_seconds, 3), epochs=len(result.history),
               family=family(ctx.schema, ctx.cfg.recall), **facts)
    return model.to(ctx.device).eval()


def run_recall(ctx: RunContext, models: dict[str, nn.Module]) -> dict[str, Any]:
    """Train (or load) the recall model when enabled and measure retrieval over the catalogue for
    ``recall``, ``student`` (a tower family) and ``popularity``; returns ``{model: {"recall@K": ..., ...}}``."""
    cfg = ctx.cfg
    start = time.perf_counter()
    ctx.progress("retrieval: building the catalogue and the test users' queries")
    data = retrieval_data(ctx.frames, ctx.frame, ctx.encoder, cfg.data, max_users=cfg.recall.max_users,
                          seed=cfg.run.seed)
    vectors: dict[str, tuple[Any, Any]] = {}  # a student without towers (student.family = "cold") scores rows: no catalogue retrieval
    if has_towers(models["student"]):
        vectors["student"] = tower_vectors(models["student"], data, ctx.device)
    if cfg.recall.enabled:
        model = _trained(ctx, models.get("teacher"))
        models["recall"] = model
        vectors["recall"] = tower_vectors(model, data, ctx.device)
    table = retrieval_table(data, vectors, cfg.recall.ks)
    k = 100 if 100 in cfg.recall.ks else max(cfg.recall.ks)
    shown = ", ".join(f"{name} {row[f'recall@{k}']:.4f}" for name, row in table.items())
    ctx.progress(f"retrieval: recall@{k} over {data.item_ids.size:,} items for {data.users.size:,} users: {shown} "
                 f"({time.perf_counter() - start:.1f}s)")
    return table
