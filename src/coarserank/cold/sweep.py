"""COLD-style feature-selection sweep: top-k features -> distilled coarse model -> quality and cost.

:func:`run_sweep` works on a finished run's typed data (:class:`SweepData`: the encoded splits, the
teacher's logits, the run's fingerprints) and writes ``sweep/`` (``SweepData.out_dir``; the file
format is documented in ``docs/sweep.md``):

1. Importance (:mod:`coarserank.cold.importance`): SE gates of a COLD model on every field, LightGBM
   gain, and permutation importance of the family's model on all its fields (``two_tower``: the
   run's distilled student when it exists, else one trained here; ``cold``: the SE model itself).
   Saved to ``sweep/importance-<family>.json``.
2. For each k: the top-k fields of the ``rank_by`` ranking the family can use (``cold``: every field,
   crosses included; ``two_tower``: user, context and item fields, with at least one field per tower:
   if the top-k lacks a tower's side, its lowest-ranked pick is swapped for that side's best field).
   The family's model is trained on them with :func:`coarserank.distill.train.fit` and the run's
   distillation loss, then measured: validation GAUC (of its best epoch, the weights kept), test AUC
   and GAUC, Recall@10-in-100 against the teacher on the candidate sets, ONNX Runtime latency
   (:mod:`coarserank.cold.latency`) and cost (:mod:`coarserank.cold.cost`). Saved to ``sweep/points/<family>-k<k>.json`` (+ its ONNX files).
3. Pareto flags of validation GAUC against p99 latency (1 intra-op thread), the choice under the
   budget (:mod:`coarserank.cold.pareto`), ``sweep/sweep.json`` and ``sweep/frontier.png``. The
   choice never looks at the test split: test GAUC is reported beside it, as the unbiased estimate
   of the chosen point.

A point or importance file is reused when its ``fingerprint`` (run, teacher, data, every setting
that changes it) and its features match, so an interrupted sweep resumes where it stopped.

Under torch.distributed (``distill sweep --nproc N`` or torchrun) every rank calls :func:`run_sweep`
with the same arguments. Training (:func:`~coarserank.distill.train.fit`, DistributedDataParallel)
runs on every rank; everything else runs on rank 0 only: deciding what is reused (rank 0 reads the
files and broadcasts the plan, so every rank trains the same models in the same order), the
importance scores (SE gates, LightGBM, permutation; broadcast to the other ranks), the test metrics,
ONNX export and latency timing (while the other ranks wait, so nothing competes with the timed
calls), and every file written. Only rank 0 reports progress; every rank returns rank 0's result.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import polars as pl
import torch
from torch import nn

from coarserank.atomic import atomic_write_text
from coarserank.cold.cost import point_cost
from coarserank.cold.importance import (
    Importance,
    gate_penalty,
    gbdt_importance,
    permutation_importance,
    rank_agreement,
    se_importance,
    soft_label_loss,
)
from coarserank.cold.latency import cold_latency, two_tower_latency
from coarserank.cold.pareto import check_budget, choose_under_budget, pareto_flags, write_chosen_config
from coarserank.config import RunConfig, config_to_dict
from coarserank.data.encode import Encoder
from coarserank.data.schema import STUDENT_ITEM_SIDES, STUDENT_USER_SIDES, Schema
from coarserank.data.dataset import EncodedSplit
from coarserank.data.splits import CandidateSets
from coarserank.distill.distributed import broadcast_object, current
from coarserank.distill.tensors import TensorTable, make_table
from coarserank.distill.train import EpochInfo, FitSettings, fit, predict
from coarserank.errors import ArtifactError, ConfigError, DataError
from coarserank.ranking_eval import auc, gauc, recall_k_in_n
from coarserank.student import TwoTower, build_student
from coarserank.student.cold import build_cold_model
from coarserank.threads import apply_threads, explain_threads

__all__ = ["FAMILIES", "CandidateSets", "SweepData", "SweepResult", "parse_ks", "resolve_ks", "eligible_fields",
           "select_top_k",
           "run_sweep", "write_chosen_config", "SWEEP_FORMAT"]

FAMILIES = ("cold", "two_tower")
SWEEP_FORMAT = 1
RECALL_K, RECALL_N = 10, 100
Progress = Callable[[str], None]


@dataclass(frozen=True)
class SweepData:
    """What a sweep reads from a finished run, passed explicitly.

    ``splits`` holds the encoded train, valid and test splits, ``teacher`` the teacher's logits for
    each (same row order), ``test_rows`` the raw test rows with the ``encoder`` that encodes them
    (what a served model receives), ``identity`` what identifies the run's trained models (config
    hash, data fingerprint, teacher checkpoint hash: a reused point must match them), ``out_dir``
    where ``sweep/`` goes and ``label`` how ``sweep.json`` names the run.
    """

    cfg: RunConfig
    schema: Schema
    encoder: Encoder
    test_rows: pl.DataFrame
    splits: Mapping[str, EncodedSplit]
    teacher: Mapping[str, np.ndarray]
    identity: Mapping[str, str | None]
    out_dir: Path
    device: torch.device
    label: str


@dataclass(frozen=True)
class SweepResult:
    """``sweep.json``'s body, where it went, the budget message when no point met it, and the config
    of the chosen point when one was written."""

    body: dict[str, Any]
    path: Path
    plot: Path
    budget_error: str | None = None
    chosen_config: Path | None = None


def parse_ks(text: str | Sequence[int | str]) -> list[int | None]:
    """``"4,8,all"`` or ``[4, 8, 0]`` -> ``[4, 8, None]`` (``all`` and 0 mean every field).

    Raises
    ------
    ConfigError
        If a value is not a positive integer or ``all``, or the list is empty.
    """
    items = [s.strip() for s in text.split(",")] if isinstance(text, str) else list(text)
    out: list[int | None] = []
    for item in items:
        if isinstance(item, str) and item.lower() == "all":
            out.append(None)
            continue
        try:
            k = int(item)
        except (TypeError, ValueError):
            raise ConfigError(f"--k must list positive integers or 'all', e.g. 4,8,12,all; got {item!r}") from None
        if k < 0:
            raise ConfigError(f"--k values must be >= 1 (or 'all'), got {k}")
        out.append(None if k == 0 else k)
    if not out:
        raise ConfigError("--k is empty; give at least one k, e.g. 4,8,all")
    return out


def eligible_fields(schema: Schema, family: str) -> list[str]:
    """Fields the family may use: every field (``cold``) or user, context and item fields (``two_tower``)."""
    if family not in FAMILIES:
        raise ConfigError(f"family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if family == "cold":
        return schema.names
    return schema.select(STUDENT_USER_SIDES + STUDENT_ITEM_SIDES).names


def select_top_k(ranking: Sequence[str], schema: Schema, family: str, k: int) -> list[str]:
    """The top-k eligible fields of ``ranking`` in schema order (two-tower: one per tower at least)."""
    allowed = eligible_fields(schema, family)
    order = [f for f in ranking if f in allowed]
    picked = order[:k]
    if family == "two_tower":
        for side in (STUDENT_USER_SIDES, STUDENT_ITEM_SIDES):
            if not any(schema[f].side in side for f in picked):
                best = next(f for f in order if schema[f].side in side)
                other = [f for f in picked if schema[f].side not in side]
                picked.remove(other[-1])
                picked.append(best)
    return [f for f in schema.names if f in picked]


def resolve_ks(ks: Sequence[int | None], schema: Schema, family: str) -> list[int]:
    """Feature counts to sweep: ``None`` -> every eligible field, repeats dropped, order kept.

    Raises
    ------
    ConfigError
        If a k exceeds the fields the family can use, or is below 2 for ``two_tower``.
    """
    n = len(eligible_fields(schema, family))
    out: list[int] = []
    for k in ks:
        value = n if k is None else k
        if value > n:
            raise ConfigError(f"k={value} is larger than the {n} features the {family} family can use; "
                              f"use k <= {n} or 'all'")
        if family == "two_tower" and value < 2:
            raise ConfigError("the two_tower family needs k >= 2 (one field per tower at least)")
        if value not in out:
            out.append(value)
    return out


def _fingerprint(data: SweepData, family: str, extra: dict[str, Any]) -> str:
    cfg = data.cfg
    body = {"format": SWEEP_FORMAT, "config": data.identity.get("config"), "data": data.identity.get("data"),
            "teacher": data.identity.get("teacher"), "family": family,
            "cold": config_to_dict(replace(cfg.cold, family="cold", k=(), budget_ms=0.0, rank_by="se")),
            "student": config_to_dict(cfg.student), "distill": config_to_dict(cfg.distill), **extra}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()


def _read_if_current(path: Path, fingerprint: str) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        body = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return body if isinstance(body, dict) and body.get("fingerprint") == fingerprint else None


def _table(data: SweepData, split: str, fields: Sequence[str], teacher: bool = False) -> TensorTable:
    s = data.splits[split]
    return make_table({f: s.inputs[f] for f in fields}, s.label, s.group,
                      data.teacher[split] if teacher else None)


def _epochs(progress: Progress, what: str) -> Callable[[EpochInfo], None]:
    def show(info: EpochInfo) -> None:
        progress(f"{what}: epoch {info.epoch} loss {info.train_loss:.4f} valid gauc {info.valid_gauc:.4f} "
                 f"({info.seconds:.1f}s){' *' if info.is_best else ''}")
    return show


def _train(data: SweepData, family: str, fields: Sequence[str], progress: Progress, what: str,
           gate_l1: float = 0.0) -> tuple[nn.Module, dict[str, Any]]:
    cfg = data.cfg
    torch.manual_seed(cfg.run.seed)
    schema = data.schema.select(names=fields)
    listwise = cfg.distill.alpha > 0 and cfg.distill.soft == "listwise"
    if family == "cold":
        c = cfg.cold
        model: nn.Module = build_cold_model(schema, c.embed_dim, c.hidden)
        settings = FitSettings(c.lr, c.batch_size, c.epochs, c.patience, 0.0, cfg.run.seed, listwise)
        loss = gate_penalty(model, soft_label_loss(cfg.distill), gate_l1)  # type: ignore[arg-type]
    else:
        s = replace(cfg.student, family="two_tower")  # two-tower points are plain towers on the chosen fields
        model = build_student(schema, s)
        settings = FitSettings(s.lr, s.batch_size, s.epochs, s.patience, s.weight_decay, cfg.run.seed, listwise)
        loss = soft_label_loss(cfg.distill)
    result = fit(model, loss, _table(data, "train", fields, teacher=True), _table(data, "valid", fields), settings,
                 data.device, _epochs(progress, what))
    return model, {"best_epoch": result.best_epoch, "best_valid_gauc": result.best_valid_gauc,
                   "epochs": len(result.history), "train_seconds": round(result.train_seconds, 3)}


def _importance(data: SweepData, models: Mapping[str, nn.Module], family: str,
                progress: Progress) -> dict[str, Any]:
    """The importance body (rank 0's on every rank): reused from its file or computed. The models
    are trained on every rank (DDP); the scores are computed and written by rank 0 alone."""
    cfg, schema = data.cfg, data.schema
    main = current().is_main
    path = data.out_dir / f"importance-{family}.json"
    fingerprint = _fingerprint(data, family, {"what": "importance", "gbdt": config_to_dict(cfg.gbdt)})
    done = broadcast_object(_read_if_current(path, fingerprint) if main else None)
    if done is not None:
        progress(f"sweep: importance ({family}) already computed, reusing {path.name}")
        return done
    start = time.perf_counter()
    progress("sweep: importance 1/3: COLD model with SE gates on every field")
    se_model, _ = _train(data, "cold", schema.names, progress, "importance se", cfg.cold.gate_l1)
    fields = eligible_fields(schema, family)
    if family == "cold":
        swept, which = se_model, "the SE importance model (COLD, every field)"
    elif "student" in models and isinstance(models["student"], TwoTower):
        swept, which = models["student"], "the run's distilled two-tower student (every user/context/item field)"
    else:
        swept, _ = _train(data, "two_tower", fields, progress, "importance two_tower")
        which = "a two-tower model distilled here on every user/context/item field"
    if not main:  # the rest trains nothing: rank 0 scores, writes and broadcasts
        return broadcast_object(None)
    se = se_importance(se_model, _table(data, "valid", schema.names), data.device)
    progress("sweep: importance 2/3: LightGBM gain")
    train, valid = data.splits["train"], data.splits["valid"]
    gb = gbdt_importance(schema, train.fields(schema), train.label, valid.fields(schema), valid.label, cfg.gbdt,
                         seed=cfg.run.seed, threads=torch.get_num_threads())  # the run's thread policy
    progress(f"sweep: importance 3/3: permutation importance of {which}")
    perm = permutation_importance(swept, _table(data, "valid", schema.names), fields,
                                  repeats=cfg.cold.permutation_repeats, seed=cfg.run.seed, device=data.device)
    methods = [se, gb, perm]
    body = {"fingerprint": fingerprint, "family": family, "permutation_model": which,
            "methods": {m.method: m.to_json() for m in methods}, "agreement_kendall_tau_b": rank_agreement(methods),
            "seconds": round(time.perf_counter() - start, 3)}
    atomic_write_text(path, json.dumps(body, indent=2))
    return broadcast_object(body)


def _exposure_sets(data: SweepData) -> CandidateSets:
    test = data.splits["test"]
    return CandidateSets(test.fields(data.schema), test.group, data.teacher["test"],
                         "each test group's own test exposures")


def _latency_rows(data: SweepData, n: int) -> pl.DataFrame:
    """``n`` raw test rows (repeated when the split has fewer): one request's candidates."""
    test = data.test_rows
    return test[np.arange(n) % test.height]


def _measure_point(data: SweepData, model: nn.Module, family: str, fields: list[str], sets: CandidateSets,
                   out_dir: Path) -> dict[str, Any]:
    cfg = data.cfg
    test = data.splits["test"]
    y, groups = test.label, test.group
    z = predict(model, _table(data, "test", fields), data.device)
    p = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
    cand = make_table({f: sets.inputs[f] for f in fields}, np.zeros(len(sets.groups)), np.zeros(len(sets.groups)))
    s = predict(model, cand, data.device)
    try:
        recall: float | None = recall_k_in_n(sets.teacher, s, sets.groups, RECALL_K, RECALL_N).value
    except DataError:
        recall = None
    rows = _latency_rows(data, cfg.cold.candidates)
    timer = cold_latency if family == "cold" else two_tower_latency
    lat = timer(model, data.encoder, rows, out_dir, opset=cfg.serving.opset,  # type: ignore[operator]
                repeats=cfg.cold.latency_repeats, warmup=cfg.cold.latency_warmup)
    primary = lat.timings["threads_1"]
    cost = point_cost(model, out_dir, cfg.cold.candidates)
    return {"auc": auc(y, p), "gauc": gauc(y, p, groups).value, "recall_10_in_100": recall,
            "p50_ms": primary.p50_ms, "p99_ms": primary.p99_ms, "params": cost["params"],
            "macs_per_candidate": cost["macs_per_candidate"], "latency": lat.to_json(), "cost": cost}


def _plot(points: list[dict[str, Any]], chosen: int | None, budget: float | None, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    front = sorted((p for p in points if p["pareto"]), key=lambda p: p["p99_ms"])
    ax.plot([p["p99_ms"] for p in front], [p["valid_gauc"] for p in front], "-", color="#1f77b4", lw=1,
            label="Pareto frontier")
    for i, p in enumerate(points):
        style = {"color": "#1f77b4"} if p["pareto"] else {"facecolors": "none", "edgecolors": "#888888"}
        ax.scatter([p["p99_ms"]], [p["valid_gauc"]], s=36, zorder=3, **style)
        ax.annotate(f"k={p['k']} (test {p['gauc']:.3f})", (p["p99_ms"], p["valid_gauc"]), textcoords="offset points",
                    xytext=(5, 4), fontsize=8)
        if i == chosen:
            ax.scatter([p["p99_ms"]], [p["valid_gauc"]], marker="*", s=220, color="#d62728", zorder=4,
                       label="chosen")
    if budget is not None:
        ax.axvline(budget, color="#d62728", ls="--", lw=1, label=f"budget {budget:g} ms")
    ax.set_xlabel("p99 latency per request, ms (ONNX Runtime, 1 thread)")
    ax.set_ylabel("validation GAUC (chosen on it; test GAUC in labels)")
    ax.set_title(f"{points[0]['family']} sweep: GAUC vs p99 latency (hollow = dominated)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def run_sweep(data: SweepData, models: Mapping[str, nn.Module], family: str, ks: Sequence[int | None],
              budget_ms: float | None, progress: Progress | None = None, *, rank_by: str | None = None,
              candidates: CandidateSets | None = None) -> SweepResult:
    """Sweep the top-k features of a finished run (see the module docstring); writes ``sweep/``.

    Parameters
    ----------
    data : SweepData
        The finished run's encoded splits, teacher logits and identity.
    models : Mapping[str, nn.Module]
        The run's trained models: ``teacher`` (required) and ``student`` when it exists.
    family : str
        ``cold`` or ``two_tower``.
    ks : Sequence[int | None]
        Feature counts; ``None`` means every field the family can use.
    budget_ms : float or None
        p99 latency budget (1 thread); ``None`` chooses the highest GAUC.
    progress : callable, optional
        Receives one line per step and epoch.
    rank_by : str, optional
        ``se``, ``gbdt`` or ``permutation`` (default ``cold.rank_by``).
    candidates : CandidateSets, optional
        Sets for Recall@10-in-100 (default: each test group's exposures). Under torch.distributed
        only rank 0's are used (other ranks may pass ``None``).

    Under torch.distributed every rank must call this with the same run, family, ``ks`` and
    ``rank_by``: models are trained on every rank, the rest runs on rank 0 (module docstring), and
    every rank returns rank 0's result.

    Raises
    ------
    ArtifactError
        If the run has no teacher or no teacher logits.
    ConfigError
        For an unknown family or ranking, a bad budget, or a k larger than the number of fields.
    """
    main = current().is_main
    say = progress if progress is not None and main else (lambda _m: None)
    cfg = data.cfg
    if "teacher" not in models or "train" not in data.teacher:
        raise ArtifactError(f"run {data.label} has no trained teacher (or no teacher logits); the sweep "
                            "distils from them: finish the run with `distill run` first")
    rank_by = rank_by or cfg.cold.rank_by
    if rank_by not in ("se", "gbdt", "permutation"):
        raise ConfigError(f"rank_by must be one of se, gbdt, permutation, got {rank_by!r}")
    budget = check_budget(budget_ms)
    threads, why = explain_threads(cfg.run.threads, processes=current().world)
    apply_threads(threads)
    say(f"sweep: {why}")
    resolved = resolve_ks(ks, data.schema, family)
    sets = candidates or _exposure_sets(data)
    if sets.teacher is None:
        raise ConfigError("the sweep's candidate sets need the teacher's logit per row (CandidateSets.teacher)")
    start = time.perf_counter()
    importance = _importance(data, models, family, say)
    ranking = Importance.from_json(importance["methods"][rank_by]).ranking()
    fingerprint = _fingerprint(data, family, {"what": "point", "candidates": sets.description,
                                              "timed_graph": "raw inputs, as shipped"})
    plan, reused = _plan(data, family, resolved, ranking, fingerprint)
    points = _points(data, family, plan, reused, sets, {"rank_by": rank_by, "fingerprint": fingerprint}, say)
    if not main:
        shared = broadcast_object(None)  # rank 0's (body, budget error)
        return SweepResult(shared[0], data.out_dir / "sweep.json", data.out_dir / shared[0]["plot"], shared[1])
    head = {"format": SWEEP_FORMAT, "run": data.label, "family": family, "rank_by": rank_by, "budget_ms": budget}
    result = _finish(data, head, points, importance, sets.description, start)
    broadcast_object((result.body, result.budget_error))
    return result


def _points(data: SweepData, family: str, plan: list[tuple[int, list[str], bool]], reused: dict[int, dict[str, Any]],
            sets: CandidateSets, extra: dict[str, Any], say: Progress) -> list[dict[str, Any]]:
    """Train every planned point (every rank), measure and write it (rank 0); rank 0's points."""
    main = current().is_main
    points: list[dict[str, Any]] = []
    for i, (k, features, train_it) in enumerate(plan, 1):
        name = f"{family}-k{k}"
        path = _point_path(data, family, k)
        if not train_it:
            if main:
                done = reused[k]
                done.setdefault("valid_gauc", done["train"]["best_valid_gauc"])  # points of earlier versions
                say(f"sweep [{i}/{len(plan)}] {name}: done before, reusing (valid gauc {done['valid_gauc']:.4f}, "
                    f"test gauc {done['gauc']:.4f}, p99 {done['p99_ms']:.3f} ms)")
                points.append(done)
            continue
        say(f"sweep [{i}/{len(plan)}] {name}: training on {', '.join(features)}")
        t0 = time.perf_counter()
        model, train = _train(data, family, features, say, f"sweep {name}")
        if not main:  # on to the next fit; rank 0 measures (alone on the machine) and writes
            continue
        point = {"k": k, "family": family, "features": features, "rank_by": extra["rank_by"],
                 "valid_gauc": train["best_valid_gauc"],
                 **_measure_point(data, model, family, features, sets, path.parent / name), "train": train,
                 "seconds": round(time.perf_counter() - t0, 3), "fingerprint": extra["fingerprint"]}
        atomic_write_text(path, json.dumps(point, indent=2))
        say(f"sweep [{i}/{len(plan)}] {name}: valid gauc {point['valid_gauc']:.4f} test gauc {point['gauc']:.4f} "
            f"p99 {point['p99_ms']:.3f} ms "
            f"({point['seconds']:.0f}s)")
        points.append(point)
    return points


def _plan(data: SweepData, family: str, ks: list[int], ranking: list[str],
          fingerprint: str) -> tuple[list[tuple[int, list[str], bool]], dict[int, dict[str, Any]]]:
    """``(k, features, train it)`` per point, the same on every rank (rank 0 decides what is reused
    and broadcasts it), and rank 0's reused points by k."""
    reused: dict[int, dict[str, Any]] = {}  # rank 0 only
    plan: list[tuple[int, list[str], bool]] = []
    if current().is_main:
        for k in ks:
            features = select_top_k(ranking, data.schema, family, k)
            done = _read_if_current(_point_path(data, family, k), fingerprint)
            if done is not None and done.get("features") == features:
                reused[k] = done
            plan.append((k, features, k not in reused))
    return broadcast_object(plan), reused


def _finish(data: SweepData, head: dict[str, Any], points: list[dict[str, Any]], importance: dict[str, Any],
            candidates: str, start: float) -> SweepResult:
    """Pareto flags, the choice under the budget, the plot and ``sweep.json`` (rank 0)."""
    budget = head["budget_ms"]
    flags = pareto_flags([p["valid_gauc"] for p in points], [p["p99_ms"] for p in points])
    points = [{**{k: v for k, v in p.items() if k != "fingerprint"}, "pareto": f} for p, f in zip(points, flags)]
    error: str | None = None
    try:
        chosen: int | None = choose_under_budget([p["valid_gauc"] for p in points], [p["p99_ms"] for p in points],
                                                 budget)
    except ConfigError as exc:
        chosen, error = None, str(exc)
    plot = _plot(points, chosen, budget, data.out_dir / "frontier.png")
    body = {**head, "chosen": chosen, "budget_note": error,
            "latency_axis": "p99_ms: ONNX Runtime with 1 intra-op thread, one request of "
                            f"{data.cfg.cold.candidates} candidates", "candidates": candidates,
            "quality_axis": "valid_gauc: validation GAUC of each point's kept (best) epoch; the Pareto frontier "
                            "and the choice use it, never the test split, whose gauc and auc are reported beside",
            "recall": f"Recall@{RECALL_K}-in-{RECALL_N} against the teacher, mean over candidate sets with "
                      f">= {RECALL_N} rows; null when none has",
            "importance": {k: v for k, v in importance.items() if k != "fingerprint"}, "points": points,
            "plot": plot.name, "seconds": round(time.perf_counter() - start, 3)}
    path = atomic_write_text(data.out_dir / "sweep.json", json.dumps(body, indent=2))
    return SweepResult(body, path, plot, error)


def _point_path(data: SweepData, family: str, k: int) -> Path:
    return data.out_dir / "points" / f"{family}-k{k}.json"
