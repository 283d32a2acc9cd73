"""Pipeline stage 'report': score production-like candidate sets with every model, then write ``report/``.

For each selected test user the candidate set is the user's test exposures plus ``report.sampled``
catalogue items (:mod:`coarserank.pipeline.candidates`). Exposures keep the logits the run already
computed for the test split; sampled candidates are encoded like any row (history crosses as of the
user's first test request) and scored by the teacher, the student and the hard-label control. The
per-candidate scores go to ``report/scores.parquet``; :func:`coarserank.ranking_eval.report.build_report`
turns them into ``report.json`` and :func:`~coarserank.ranking_eval.report_html.render_html` into
``report.html``. :func:`report_compare` builds the same report from any two scorers' files.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import polars as pl
import torch

from coarserank.artifacts import Run
from coarserank.atomic import atomic_write_text, atomic_write_with
from coarserank.config import ReportConfig, section_hash
from coarserank.data.encode import Encoder
from coarserank.distill.tensors import make_table
from coarserank.distill.train import predict
from coarserank.errors import ArtifactError, ConfigError, DataError
from coarserank.pipeline.candidates import (
    ORACLES,
    POPULARITY_SHARES,
    Oracle,
    ReportCandidates,
    activity_segments,
    candidate_sets,
)
from coarserank.pipeline.run_data import SCORED_MODELS, RunData
from coarserank.ranking_eval.report import ReportSpec, build_report
from coarserank.ranking_eval.report_html import render_html
from coarserank.student import Tower, TwoTower

if TYPE_CHECKING:
    from coarserank.pipeline.run import RunContext

__all__ = ["SCORED_MODELS", "REPORT_READS", "ReportOutputs", "build_scores", "check_settings", "read_score_files",
           "report_compare", "report_oracle", "report_run", "run_stage", "write_report"]

REPORT_READS = ("data", "teacher", "logits", "student", "student_hard")
"""The stages whose files the report reads."""
_CHUNK = 1 << 16  # rows per tower / scoring batch
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass
class ReportOutputs:
    """The report dict and where its three files went."""

    report: dict[str, Any]
    scores: Path
    json: Path
    html: Path
    seconds: float
    rebuilt: bool = True


def check_settings(r: ReportConfig) -> None:
    """Raise :class:`ConfigError` naming the ``report.*`` key that is out of range."""
    for key in ("sampled", "max_users", "bootstrap"):
        if getattr(r, key) < 1:
            raise ConfigError(f"report.{key} must be >= 1, got {getattr(r, key)}")
    for key in ("sizes", "ks", "ns"):
        values = getattr(r, key)
        if any(v < 1 for v in values) or list(values) != sorted(set(values)):
            raise ConfigError(f"report.{key} must be increasing integers >= 1, got {list(values)}")


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
    notes = []
    if sets.repeated:
        notes.append(f"{sets.repeated} repeated test exposure(s) of an item to the same user are left out: "
                     "a candidate set holds each item once (its first exposure)")
    if has_oracle and oracle is None:
        notes.append("the source cannot score unseen rows: the oracle is the exposures' _oracle only")
    setup = {"mode": "run", "run_dir": str(data.path), "users": sets.users.height,
             "candidates": {"sampled_per_group": r.sampled, "sampling": r.sampling, "max_users": r.max_users,
                            "seed": cfg.run.seed, "excluded": "the user's test exposures",
                            "weights": "uniform: 1; popularity: train exposures + 1",
                            "context": "a sampled candidate copies the user's first test row"},
             "scores": "probabilities: sigmoid of each model's logit",
             "oracle_definition": ("noise-free click probability of the data generator" if oracle
                                   else "the exposures' _oracle" if has_oracle else None)}
    spec = ReportSpec(reference="teacher", models=("student", "student_hard"), label_models=SCORED_MODELS,
                      gains=(("student", "student_hard"),), oracle="oracle" if has_oracle else None,
                      sizes=r.sizes, ks=r.ks, ns=r.ns, segments=segments, n_boot=r.bootstrap,
                      seed=cfg.run.seed, source=str(data.path / "report" / "scores.parquet"),
                      setup=setup, notes=tuple(notes))
    return scores, spec


def write_report(out_dir: Path, scores: pl.DataFrame, spec: ReportSpec) -> ReportOutputs:
    """Build the report from ``scores`` and write ``scores.parquet``, ``report.json``, ``report.html``."""
    start = time.perf_counter()
    report = build_report(scores, spec)
    page = render_html(report, scores)
    out_dir = Path(out_dir)
    paths = (atomic_write_with(out_dir / "scores.parquet", scores.write_parquet, ".parquet"),
             atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, allow_nan=False)),
             atomic_write_text(out_dir / "report.html", page))
    return ReportOutputs(report, *paths, time.perf_counter() - start)


def _build(data: RunData, models: Mapping[str, torch.nn.Module], device: torch.device | str,
           progress: Progress) -> tuple[ReportOutputs, float]:
    """Score, then write ``data.path/report``; returns the outputs and the scoring seconds."""
    start = time.perf_counter()
    scores, spec = build_scores(data, models, device=device, progress=progress)
    scored = time.perf_counter() - start
    progress("report: computing metrics and plots")
    out = write_report(data.path / "report", scores, spec)
    counts = out.report["counts"]
    progress(f"report: {counts['candidates']:,} candidates in {counts['groups']:,} sets -> "
             f"{out.html} ({time.perf_counter() - start:.1f}s)")
    out.seconds = time.perf_counter() - start
    return out, scored


def run_stage(ctx: RunContext, models: dict[str, torch.nn.Module]) -> None:
    """The 'report' stage of ``distill run``: writes ``report/`` and records it in the manifest."""
    ctx.run.begin("report")
    if not ctx.cfg.report.enabled:
        ctx.run.finish("report", skipped="report.enabled is false")
        return
    out, scored = _build(RunData.from_context(ctx), models, ctx.device, ctx.progress)
    ctx.run.record("report", out.scores, out.json, out.html)
    counts = out.report["counts"]
    ctx.run.finish("report", groups=counts["groups"], candidates=counts["candidates"],
                   scoring_seconds=round(scored, 3), report_seconds=round(out.seconds - scored, 3))


def _current_report(run: Run) -> ReportOutputs | None:
    """The run's report when it is current: its stage done, not stale, made with the run's
    ``report`` settings, and its three files as recorded; else None."""
    m = run.manifest
    files = m.outputs("report")
    if (not run.has("report") or m.stale_stage("report") is not None or not files
            or m.stage_facts("report").get("section_hash") != section_hash(run.config, "report")):
        return None
    try:
        paths = {Path(rel).name: run.verified(rel) for rel in files}
    except ArtifactError:
        return None  # modified or missing: rebuilt from the models
    if set(paths) != {"scores.parquet", "report.json", "report.html"}:
        return None
    report = json.loads(paths["report.json"].read_text())
    return ReportOutputs(report, paths["scores.parquet"], paths["report.json"], paths["report.html"], 0.0,
                         rebuilt=False)


def report_run(run_dir: Path | str, *, progress: Progress = _quiet, device: str = "cpu",
               force: bool = False) -> ReportOutputs:
    """(Re)build the report of a finished run directory (``distill report --run DIR``).

    Reads the run through :class:`~coarserank.artifacts.Run` (every file of the stages the report
    reads checked against the manifest; nothing is trained, and nothing of the log is encoded but
    the test split and the candidates) and writes ``DIR/report/`` only: ``manifest.json`` keeps
    what ``distill run`` recorded (the report is deterministic, so a rebuild of an unchanged run
    matches those hashes). A report that is current (same models, data and ``report`` settings,
    files as recorded) is not rebuilt unless ``force``, as ``distill run`` does not redo a finished
    stage; :attr:`ReportOutputs.rebuilt` says which happened.
    """
    start = time.perf_counter()
    run = Run.open(run_dir, require=REPORT_READS)
    if not run.config.report.enabled:
        raise ConfigError(f"run {run_dir}: report.enabled is false in its config; nothing to report")
    current = None if force else _current_report(run)
    if current is not None:
        progress(f"report: {current.html.parent} is current (same models, data and settings, files as "
                 "recorded); --force rebuilds it")
        current.seconds = time.perf_counter() - start
        return current
    models = run.models(SCORED_MODELS, device)
    return _build(RunData.from_run(run, models, device), models, device, progress)[0]


# --------------------------------------------------------------------------- comparing score files

_KEYS = ("group", "item_id")
_LABEL_EXTRAS = ("exposed", "set_position", "user_activity", "item_popularity", "seen_in_train")


def _read(path: Path) -> pl.DataFrame:
    if not path.is_file():
        raise DataError(f"score file {path} does not exist")
    try:
        return pl.read_parquet(path) if path.suffix in (".parquet", ".pq") else pl.read_csv(path)
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise DataError(f"{path}: cannot read it as {'parquet' if path.suffix else 'CSV'}: "
                        f"{str(exc).splitlines()[0]}") from exc


def _keyed(path: Path, table: pl.DataFrame, what: str) -> pl.DataFrame:
    for key in _KEYS:
        if key not in table.columns:
            raise DataError(f"{path}: column {key!r} is missing; a {what} file needs one row per candidate "
                            f"with columns group, item_id and {what}; present: {', '.join(table.columns)}")
    blank = table["group"].cast(pl.String)
    empty = int((blank.is_null() | (blank.str.strip_chars() == "")).sum())
    if empty:
        raise DataError(f"{path}: column 'group' has {empty} empty (null or blank) group id(s)")
    table = table.with_columns(pl.col(k).cast(pl.String) for k in _KEYS)
    dupes = table.select(_KEYS).is_duplicated()
    if dupes.any():
        row = table.filter(dupes).row(0, named=True)
        extra = table.height - table.select(_KEYS).n_unique()
        raise DataError(f"{path}: columns 'group', 'item_id' repeat {extra} candidate(s) (first: group "
                        f"{row['group']!r}, item {row['item_id']!r}); one row per candidate")
    return table


def _score_column(path: Path, table: pl.DataFrame, column: str | None) -> str:
    if column is None:
        numeric = [c for c in table.columns
                   if c not in (*_KEYS, "label") and table[c].dtype.is_numeric()]
        column = "score" if "score" in table.columns else (numeric[0] if len(numeric) == 1 else None)
        if column is None:
            raise DataError(f"{path}: say which column holds the scores (FILE:COLUMN); numeric columns: "
                            f"{', '.join(numeric) or 'none'}")
    if column not in table.columns:
        raise DataError(f"{path}: score column {column!r} is missing; present: {', '.join(table.columns)}")
    s = table[column]
    if not s.dtype.is_numeric():
        raise DataError(f"{path}: score column {column!r} must be numeric, got {s.dtype}")
    bad = table.filter(~s.cast(pl.Float64).is_finite() | s.is_null())
    if bad.height:
        row = bad.row(0, named=True)
        raise DataError(f"{path}: score column {column!r} has {bad.height} NaN, infinite or null score(s) "
                        f"(first: group {row['group']!r}, item {row['item_id']!r}); they are never dropped "
                        "silently")
    return column


def read_score_files(files: list[str], labels: str | None = None) -> tuple[pl.DataFrame, list[str]]:
    """Merge score files (``FILE`` or ``FILE:COLUMN``) and an optional labels file on (group, item_id).

    Every score file must score exactly the same candidates; the labels file (columns group,
    item_id, label, optionally exposed, set_position and segment columns) may cover a subset.
    Returns the merged frame (keys as strings) and the scorer names, in file order.
    """
    merged: pl.DataFrame | None = None
    names: list[str] = []
    first: Path | None = None
    for spec in files:
        path, column = Path(spec), None
        if not path.exists() and ":" in spec:
            head, column = spec.rsplit(":", 1)
            path = Path(head)
        table = _keyed(path, _read(path), "score")
        column = _score_column(path, table, column)
        name = path.stem if column == "score" else column
        name = name if name not in names else f"{name}_{len(names) + 1}"
        names.append(name)
        part = table.select(*_KEYS, pl.col(column).cast(pl.Float64).alias(name))
        if merged is None:
            merged, first = part, path
            continue
        only_a, only_b = merged.join(part, on=_KEYS, how="anti"), part.join(merged, on=_KEYS, how="anti")
        if only_a.height or only_b.height:
            row = (only_a if only_a.height else only_b).row(0, named=True)
            raise DataError(f"score files {first} and {path} do not hold the same rows: {only_a.height} "
                            f"candidate(s) only in {first}, {only_b.height} only in {path} (first: group "
                            f"{row['group']!r}, item {row['item_id']!r}); columns 'group', 'item_id' must "
                            "match")
        merged = merged.join(part, on=_KEYS, how="inner")
    if merged is None or len(names) < 2:
        raise ConfigError("comparing needs at least two score files (--scores A --scores B)")
    if labels is None:
        return merged.with_columns(pl.lit(None, dtype=pl.Int8).alias("label")), names
    lpath = Path(labels)
    table = _keyed(lpath, _read(lpath), "label")
    if "label" not in table.columns:
        raise DataError(f"{lpath}: column 'label' is missing; present: {', '.join(table.columns)}")
    extra = table.join(merged, on=_KEYS, how="anti")
    if extra.height:
        row = extra.row(0, named=True)
        raise DataError(f"{lpath}: {extra.height} labelled row(s) are not in the score files (first: group "
                        f"{row['group']!r}, item {row['item_id']!r})")
    keep = [*_KEYS, "label", *(c for c in _LABEL_EXTRAS if c in table.columns)]
    return merged.join(table.select(keep), on=_KEYS, how="left"), names


def report_compare(files: list[str], out_dir: Path | str, *, labels: str | None = None, n_boot: int = 200,
                   seed: int = 0, progress: Progress = _quiet) -> ReportOutputs:
    """Report on two (or more) scorers' outputs: the first is the reference the others are compared with."""
    scores, names = read_score_files(files, labels)
    progress(f"report: {scores.height:,} candidates, reference {names[0]!r}, compared {', '.join(names[1:])}")
    sizes = ReportConfig().sizes if "set_position" in scores.columns else ()
    segments = tuple((c, f"as given in {labels}") for c in _LABEL_EXTRAS[2:] if c in scores.columns)
    has_labels = scores["label"].is_not_null().any()
    spec = ReportSpec(reference=names[0], models=tuple(names[1:]),
                      label_models=tuple(names) if has_labels else (),
                      gains=tuple((n, names[0]) for n in names[1:]), sizes=sizes, segments=segments,
                      n_boot=n_boot, seed=seed, source=f"merged score files ({', '.join(files)})",
                      setup={"mode": "compare", "files": list(files), "labels": labels})
    return write_report(Path(out_dir), scores, spec)
