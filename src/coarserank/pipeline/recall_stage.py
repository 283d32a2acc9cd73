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

import time
from typing import Any, Callable

import torch
from torch import nn

from coarserank.atomic import atomic_write_with
from coarserank.config import RecallConfig, RunConfig, section_hash
from coarserank.data.schema import STUDENT_USER_SIDES, Schema
from coarserank.distill.recall import PairView, RecallFields, check_recall_inputs, recall_loss_fn
from coarserank.distill.train import EpochInfo, FitResult, FitSettings, fit
from coarserank.pipeline.retrieval_data import retrieval_data, retrieval_table, tower_vectors
from coarserank.student import build_student
from coarserank.student.multi_interest import build_multi_interest, sequence_field

__all__ = ["STAGE", "MODEL_FILE", "check", "recall_fields", "build_recall_model", "train_recall", "load_recall",
           "run_recall"]

STAGE = "recall"
MODEL_FILE = "recall.pt"


def recall_fields(schema: Schema, cfg: RunConfig) -> RecallFields:
    """The item id field (``data.item_col``) and, when it is a user-side categorical field, the user id."""
    user = cfg.data.user_col
    has_user = user in schema.names and schema[user].side in STUDENT_USER_SIDES and schema[user].kind == "categorical"
    return RecallFields(item=cfg.data.item_col, user=user if has_user else "")


def check(ctx: Any) -> None:
    """One-line errors, before any training, for recall settings this data cannot train."""
    cfg, schema = ctx.cfg, ctx.schema
    fields = recall_fields(schema, cfg)
    if cfg.recall.enabled:
        if cfg.recall.family == "multi_interest":
            sequence_field(schema, cfg.recall.sequence)
        if cfg.recall.objective == "sampled_softmax":
            check_recall_inputs(schema, ctx.tables["train"], cfg.recall, fields, "recall")
    if cfg.student.objective == "sampled_softmax":
        check_recall_inputs(schema, ctx.tables["train"], cfg.student, fields, "student")


def build_recall_model(schema: Schema, cfg: RecallConfig) -> nn.Module:
    """The untrained recall model of ``cfg`` (a :class:`RecallConfig` is also a student config)."""
    return build_multi_interest(schema, cfg) if cfg.family == "multi_interest" else build_student(schema, cfg)


def _printer(progress: Callable[[str], None]) -> Callable[[EpochInfo], None]:
    def show(info: EpochInfo) -> None:
        mark = " *" if info.is_best else ""
        progress(f"recall: epoch {info.epoch} loss {info.train_loss:.4f} valid gauc {info.valid_gauc:.4f} "
                 f"({info.seconds:.1f}s){mark}")
    return show


def train_recall(ctx: Any, teacher: nn.Module | None) -> tuple[nn.Module, FitResult]:
    """Train the recall model on ``ctx``'s training rows (the teacher is used when
    ``recall.softmax_alpha > 0``); writes nothing."""
    cfg = ctx.cfg
    r = cfg.recall
    torch.manual_seed(cfg.run.seed)
    model = build_recall_model(ctx.schema, r)
    settings = FitSettings(r.lr, r.batch_size, r.epochs, r.patience, r.weight_decay, cfg.run.seed,
                           bf16=cfg.run.precision == "bf16")
    train = ctx.stream if ctx.stream is not None else ctx.tables["train"]
    if r.objective == "sampled_softmax":
        loss = recall_loss_fn(model, ctx.tables["train"], ctx.schema, r, recall_fields(ctx.schema, cfg),
                              teacher=teacher if r.softmax_alpha > 0 else None,
                              teacher_temperature=cfg.distill.temperature, seed=cfg.run.seed)
        result = fit(PairView(model), loss, train, ctx.tables["valid"], settings, ctx.device, _printer(ctx.progress))
    else:
        from coarserank.distill.losses import hard_loss

        result = fit(model, lambda s, b: hard_loss(s, b.label), train, ctx.tables["valid"], settings, ctx.device,
                     _printer(ctx.progress))
    return model, result


def load_recall(ctx: Any) -> nn.Module:
    """The run's trained recall model from ``recall.pt`` (verified against the manifest)."""
    torch.manual_seed(ctx.cfg.run.seed)
    model = build_recall_model(ctx.schema, ctx.cfg.recall)
    state = torch.load(ctx.run.verified_path(MODEL_FILE), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.to(ctx.device).eval()


def _trained(ctx: Any, teacher: nn.Module | None) -> nn.Module:
    """Load the recall model when this recall section trained it already, else train and save it."""
    run, wanted = ctx.run, section_hash(ctx.cfg, STAGE)
    if run.is_done(STAGE) and run.manifest["stages"][STAGE].get("section_hash") == wanted:
        return load_recall(ctx)
    run.begin(STAGE)
    model, result = train_recall(ctx, teacher)
    if run.writable:
        path = atomic_write_with(run.file(MODEL_FILE), lambda tmp: torch.save(model.state_dict(), tmp))
        run.record(STAGE, path)
    run.finish(STAGE, section_hash=wanted, best_epoch=result.best_epoch,
               best_valid_gauc=round(result.best_valid_gauc, 6), train_seconds=round(result.train_seconds, 3),
               epochs=len(result.history), family=ctx.cfg.recall.family, interests=ctx.cfg.recall.interests)
    return model.eval()


def run_recall(ctx: Any, models: dict[str, nn.Module]) -> dict[str, Any]:
    """Train (or load) the recall model when enabled and measure retrieval over the catalogue for
    ``recall``, ``student`` and ``popularity``; returns ``{model: {"recall@K": ..., ...}}``."""
    cfg = ctx.cfg
    start = time.perf_counter()
    ctx.progress("retrieval: building the catalogue and the test users' queries")
    data = retrieval_data(ctx.frames, ctx.frame, ctx.encoder, cfg.data, max_users=cfg.recall.max_users,
                          seed=cfg.run.seed)
    vectors = {"student": tower_vectors(models["student"], data, ctx.device)}
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
