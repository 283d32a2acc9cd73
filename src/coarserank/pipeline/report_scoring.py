"""Scoring the report's candidate sets with every model (torch): :func:`build_scores`.

Kept apart from :mod:`coarserank.pipeline.report_stage` so that reading a run's report, comparing
score files and the command line never load torch; this module is imported when a report is built.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

import numpy as np
import polars as pl
import torch

from coarserank.data.encode import Encoder
from coarserank.distill.tensors import make_table
from coarserank.distill.train import predict
from coarserank.pipeline.candidates import (
    ORACLES,
    POPULARITY_SHARES,
    Oracle,
    ReportCandidates,
    activity_segments,
    candidate_sets,
)
from coarserank.pipeline.report_stage import SCORED_MODELS, Progress, ReportOutputs, check_settings, write_report
from coarserank.pipeline.run_data import RunData
from coarserank.ranking_eval.report import ReportSpec
from coarserank.student import Tower, TwoTower
from coarserank.teacher.blend import TeacherBlend

__all__ = ["build_scores", "build_run_report", "report_oracle"]

_CHUNK = 1 << 16  # rows per tower / scoring batch


def _quiet(_: str) -> None:
    return None


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(z, dtype=np.float64)))


def _score(model: torch.nn.Module, encoded: dict[str, np.ndarray], rows: int,
           device: torch.device) -> np.ndarray:
    zeros = np.zeros(rows, dtype=np.int64)
    return predict(model, make_table(encoded, zeros, zeros), device)


@torch.no_grad()
def _two_tower_score(model: TwoTower, encoder: Encoder, sets: ReportCandidates, device: torch.device) -> np.ndarray:
    """Sampled candidates' logits the way a coarse ranker computes them.

    One user vector per user, one item vector per catalogue item, then ``a * <u, v> + b`` per
    candidate: the student's forward pass, without encoding a million rows through both towers.
    """
    model.eval()

    def vectors(tower: Tower, frame: pl.DataFrame) -> torch.Tensor:
        enc = encoder.transform(frame, fields=tower.schema.names)
        return torch.cat([tower({k: torch.from_numpy(np.ascontiguousarray(v[lo:lo + _CHUNK])).to(device)
                                 for k, v in enc.items()}) for lo in range(0, frame.height, _CHUNK)])

    u, v = vectors(model.user_tower, sets.base), vectors(model.item_tower, sets.catalogue)
    ui, ii = (torch.from_numpy(sets.sampled[c].to_numpy().astype(np.int64)).to(device) for c in ("_u", "_c"))
    return np.concatenate([model.score(u[ui[lo:lo + _CHUNK]], v[ii[lo:lo + _CHUNK]]).float().cpu().numpy()
                           for lo in range(0, len(ui), _CHUNK)] or [np.zeros(0, dtype=np.float32)])


def _scores(data: RunData, models: Mapping[str, torch.nn.Module], sets: ReportCandidates,
            oracle: Oracle | None, device: torch.device, progress: Progress) -> pl.DataFrame:
    """Probabilities of every model (and the oracle) for exposed then sampled candidates."""
    item_col = data.cfg.data.item_col
    exp, smp = sets.exposed, sets.sampled
    progress(f"report: scoring {smp.height:,} sampled candidates for {sets.users.height:,} users")
    encoded = data.encoder.transform(smp)
    idx = exp["_i"].to_numpy()
    cols = {}
    for m in SCORED_MODELS:
        model = models[m]
        z = (_two_tower_score(model, data.encoder, sets, device) if isinstance(model, TwoTower)
             else _score(model, encoded, smp.height, device))
        cols[m] = np.concatenate([data.test_logits[m][idx], z])
    keys = [pl.col("_user").alias("group"), pl.col(item_col).alias("item_id"),
            pl.col("_label").cast(pl.Int8).alias("label"),
            pl.col("_pos").cast(pl.Int64).alias("set_position"), pl.col("_u"), pl.col("_c")]
    scores = pl.concat([
        exp.select(*keys, pl.lit(True).alias("exposed"), pl.col("_row").cast(pl.Int64).alias("row")),
        smp.select(*keys, pl.lit(False).alias("exposed"), pl.lit(None, dtype=pl.Int64).alias("row")),
    ]).with_columns(pl.Series(m, _sigmoid(z)) for m, z in cols.items())
    if oracle is not None:
        known = np.concatenate([oracle.probability(data.cfg, exp), oracle.probability(data.cfg, smp)])
        scores = scores.with_columns(pl.Series("oracle", known, dtype=pl.Float64))
    elif "_oracle" in exp.columns:
        shown = pl.concat([exp["_oracle"].cast(pl.Float64), pl.Series([None] * smp.height, dtype=pl.Float64)])
        scores = scores.with_columns(shown.alias("oracle"))
    return scores


def _with_segments(scores: pl.DataFrame, sets: ReportCandidates,
                   frame: pl.DataFrame) -> tuple[pl.DataFrame, tuple[tuple[str, str], ...]]:
    """Add user and item segment columns (and their bases); return their definitions too."""
    user_rows = (frame.filter(pl.col("_split") == "train").group_by("_user").len()
                 .join(sets.users, on="_user", how="right").sort("_u")["len"].fill_null(0).to_numpy())
    activity, (q1, q2) = activity_segments(user_rows)
    per_user = pl.DataFrame({"_u": sets.users["_u"], "user_train_rows": user_rows.astype(np.int64),
                             "user_activity": activity})
    per_item = sets.catalogue.select("_c", "item_train_rows", "item_popularity")
    scores = (scores.join(per_user, on="_u", how="left").join(per_item, on="_c", how="left")
              .with_columns((pl.col("item_train_rows") > 0).alias("seen_in_train"),
                            pl.len().over("_u").cast(pl.Int64).alias("set_size"))
              .sort("_u", "set_position").drop("_u", "_c"))
    head, torso = POPULARITY_SHARES
    return scores, (
        ("user_activity", f"the user's train rows: light <= {q1:g} < medium <= {q2:g} < heavy "
                          "(tertiles over the report's users)"),
        ("item_popularity", f"items ranked by train exposures: head holds the first {head:.0%} of them, "
                            f"torso up to {torso:.0%}, tail the rest (never-exposed items included)"),
        ("seen_in_train", "true: the item has train exposures; false: unseen in training"),
    )


def _teacher_text(family: str, teacher: torch.nn.Module | None) -> str:
    """Which teacher the report's reference is: the heavy model alone or blended (``teacher.blend``)."""
    if isinstance(teacher, TeacherBlend):
        return (f"{family} blended with the hard-label two-tower at w = {float(teacher.weight):g} "
                "(teacher.blend, chosen on validation GAUC)")
    return f"{family} alone"


def report_oracle(data: RunData) -> Oracle | None:
    """The data source's oracle when the run's rows carry the columns it reads."""
    oracle = ORACLES.get(data.cfg.data.source)
    return oracle if oracle is not None and set(oracle.columns) <= set(data.frame.columns) else None


def build_scores(data: RunData, models: Mapping[str, torch.nn.Module], *, device: torch.device | str = "cpu",
                 progress: Progress = _quiet) -> tuple[pl.DataFrame, ReportSpec]:
    """Candidate sets of the selected test users, scored by every model, and the spec of their report.

    Returns the scores frame (one row per candidate: ``group`` = the user, ``item_id``, ``label``,
    ``exposed``, ``set_position``, ``row``, probabilities per model, ``oracle`` when the source knows
    it, and the segment columns) and the :class:`ReportSpec` that says how to read it.
    """
    cfg = data.cfg
    r = cfg.report
    check_settings(r)
    oracle = report_oracle(data)
    sets = candidate_sets(cfg, data.frame, data.test, oracle)
    scores, segments = _with_segments(_scores(data, models, sets, oracle, torch.device(device), progress), sets,
                                      data.frame)
    has_oracle = "oracle" in scores.columns
    notes = [f"label metrics cover the labelled test exposures of the report's {sets.users.height} users "
             "(each item once); metrics.json scores every test row, so its figures differ"]
    if sets.repeated:
        notes.append(f"{sets.repeated} repeated test exposure(s) of an item to the same user are left out: "
                     "a candidate set holds each item once (its first exposure)")
    if has_oracle and oracle is None:
        notes.append("the source cannot score unseen rows: the oracle is the exposures' _oracle only")
    where = data.path.resolve()  # the same text whichever way the run directory was named
    setup = {"mode": "run", "run_dir": str(where), "users": sets.users.height,
             "candidates": {"sampled_per_group": r.sampled, "sampling": r.sampling, "max_users": r.max_users,
                            "seed": cfg.run.seed, "excluded": "the user's test exposures",
                            "weights": "uniform: 1; popularity: train exposures + 1",
                            "context": "a sampled candidate copies the user's first test row"},
             "scores": "probabilities: sigmoid of each model's logit",
             "teacher": _teacher_text(cfg.teacher.family, models.get("teacher")),
             "oracle_definition": ("noise-free click probability of the data generator" if oracle
                                   else "the exposures' _oracle" if has_oracle else None)}
    spec = ReportSpec(reference="teacher", models=("student", "student_hard"), label_models=SCORED_MODELS,
                      gains=(("student", "student_hard"),), oracle="oracle" if has_oracle else None,
                      sizes=r.sizes, ks=r.ks, ns=r.ns, segments=segments, n_boot=r.bootstrap,
                      seed=cfg.run.seed, source=str(where / "report" / "scores.parquet"),
                      setup=setup, notes=tuple(notes))
    return scores, spec


def build_run_report(data: RunData, models: Mapping[str, torch.nn.Module], device: torch.device | str,
                     progress: Progress, distill_grid: dict[str, Any] | None = None,
                     retrieval: dict[str, Any] | None = None) -> tuple[ReportOutputs, float]:
    """Score the candidate sets, then write ``data.path/report`` (with the run's distill grid, if
    any); returns the outputs and the scoring seconds."""
    start = time.perf_counter()
    scores, spec = build_scores(data, models, device=device, progress=progress)
    scored = time.perf_counter() - start
    progress("report: computing metrics and plots")
    out = write_report(data.path / "report", scores, spec, retrieval, distill_grid)
    counts = out.report["counts"]
    progress(f"report: {counts['candidates']:,} candidates in {counts['groups']:,} sets -> "
             f"{out.html} ({time.perf_counter() - start:.1f}s)")
    out.seconds = time.perf_counter() - start
    return out, scored
