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
from typing import TYPE_CHECKING, Any

import polars as pl

from coarserank.artifacts import Run
from coarserank.atomic import atomic_write_text, atomic_write_with
from coarserank.config import ReportConfig, section_hash
from coarserank.errors import ArtifactError, ConfigError, DataError
from coarserank.ranking_eval.report import ReportSpec, build_report
from coarserank.ranking_eval.retrieval import retrieval_summary

if TYPE_CHECKING:
    import torch

    from coarserank.pipeline.run import RunContext

__all__ = ["SCORED_MODELS", "REPORT_READS", "ReportOutputs", "check_settings", "read_score_files",
           "report_compare", "report_run", "run_stage", "write_report"]

SCORED_MODELS = ("teacher", "student", "student_hard")
SECTIONS = "report+distill+recall"  # the sections a current report was made with (the grid, retrieval)
GRID_FILE = "distill_grid.json"
REPORT_READS = ("data", "teacher", "logits", "student", "student_hard")
"""The stages whose files the report reads."""
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


def write_report(out_dir: Path, scores: pl.DataFrame, spec: ReportSpec,
                 retrieval: dict[str, Any] | None = None,
                 distill_grid: dict[str, Any] | None = None) -> ReportOutputs:
    """Build the report from ``scores`` and write ``scores.parquet``, ``report.json``, ``report.html``;
    ``retrieval`` (``metrics["test"]["retrieval"]``) adds the retrieval-over-the-catalogue section,
    ``distill_grid`` (a run's ``distill_grid.json``) the distillation trade-off block and plot."""
    from coarserank.ranking_eval.report_html import render_html  # matplotlib: only when writing

    start = time.perf_counter()
    report = build_report(scores, spec)
    if retrieval:
        report["retrieval"] = retrieval_summary(retrieval)
    if distill_grid is not None:
        report["distill_grid"] = distill_grid
    page = render_html(report, scores)
    out_dir = Path(out_dir)
    paths = (atomic_write_with(out_dir / "scores.parquet", scores.write_parquet, ".parquet"),
             atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2, allow_nan=False)),
             atomic_write_text(out_dir / "report.html", page))
    return ReportOutputs(report, *paths, time.perf_counter() - start)


def run_stage(ctx: RunContext, models: dict[str, torch.nn.Module]) -> None:
    """The 'report' stage of ``distill run``: writes ``report/`` and records it in the manifest."""
    ctx.run.begin("report")
    if not ctx.cfg.report.enabled:
        ctx.run.finish("report", skipped="report.enabled is false")
        return
    from coarserank.pipeline.report_scoring import build_run_report
    from coarserank.pipeline.run_data import RunData

    grid_file = ctx.run.file(GRID_FILE)
    grid = json.loads(grid_file.read_text()) if ctx.run.is_done("distill_grid") and grid_file.is_file() else None
    retrieval = json.loads(ctx.run.verified_path("metrics.json").read_text()).get("test", {}).get("retrieval")
    out, scored = build_run_report(RunData.from_context(ctx), models, ctx.device, ctx.progress, grid, retrieval)
    ctx.run.record("report", out.scores, out.json, out.html)
    counts = out.report["counts"]
    ctx.run.finish("report", groups=counts["groups"], candidates=counts["candidates"],
                   scoring_seconds=round(scored, 3), report_seconds=round(out.seconds - scored, 3))


def _current_report(run: Run) -> ReportOutputs | None:
    """The run's report when it is current: its stage done (not stale), made with the run's
    ``report`` settings, and its three files as recorded; else None."""
    m = run.manifest
    files = m.outputs("report")
    if (not run.has("report") or not files
            or m.stage_facts("report").get("section_hash") != section_hash(run.config, SECTIONS)):
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
        progress(f"report: {current.html} is current (same models, data and settings, files as recorded); "
                 "--force rebuilds it")
        current.seconds = time.perf_counter() - start
        return current
    from coarserank.pipeline.report_scoring import build_run_report
    from coarserank.pipeline.run_data import RunData

    models = run.models(SCORED_MODELS, device)
    grid = json.loads(run.verified(GRID_FILE).read_text()) if run.has("distill_grid") else None
    retrieval = run.metrics().get("test", {}).get("retrieval")
    return build_run_report(RunData.from_run(run, models, device), models, device, progress, grid, retrieval)[0]


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
