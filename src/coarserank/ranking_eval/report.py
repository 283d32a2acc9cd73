"""The offline ranking-consistency report as data: a scores frame in, a JSON-ready dict out.

One row per candidate: ``group`` (the candidate set), ``item_id``, ``label`` (null for candidates
that were never shown) and one column per scorer. Optional columns: ``exposed`` (default: the
label is not null), ``set_position`` (nesting order; enables the per-size breakdown) and any
segment column named in :class:`ReportSpec`. Every number comes from the metric functions of
:mod:`.metrics`, :mod:`.consistency` and :mod:`.bootstrap`, with its sample size beside it and
its definition in ``report["definitions"]``; the layout is documented in ``docs/report-schema.md``.
Scores are checked first: a missing column, an empty group id, a duplicate candidate or a
NaN/inf score raises :class:`~coarserank.errors.DataError` naming the source and column, so no
row is dropped from a metric silently.

Examples
--------
>>> spec = ReportSpec(reference="teacher", models=("student",), label_models=("teacher", "student"))
>>> report = build_report(scores, spec)                    # doctest: +SKIP
>>> report["consistency"]["student"]["recall@10_in_100"]   # doctest: +SKIP
0.83
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import polars as pl

from coarserank.errors import DataError
from coarserank.ranking_eval.bootstrap import gap_closed_ci, paired_bootstrap_ci
from coarserank.ranking_eval.consistency import (
    consistency_table,
    kendall_tau,
    overlap_at_k,
    recall_k_in_n,
    spearman,
)
from coarserank.ranking_eval.calibration import calibration
from coarserank.ranking_eval.metrics import GaucResult, GroupMetric, auc, gauc, logloss

__all__ = ["DEFINITIONS", "SCHEMA", "SCHEMA_VERSION", "ReportSpec", "build_report", "validate_scores"]

SCHEMA = "coarserank.report"
_PerGroup = tuple[np.ndarray, "np.ndarray | None"]  # per-group values (np.unique(group) order), weights
SCHEMA_VERSION = 1

DEFINITIONS: dict[str, str] = {
    "group": "a candidate set, ranked as one request to the coarse ranker; every per-group metric "
             "compares rows of one group only",
    "exposed": "a candidate the user was shown (it has a label); the others were sampled from the catalogue",
    "set_position": "place in the nesting order (the group's exposures by time, then sampled items in draw "
                    "order); the candidate set of size n is set_position < n, in groups with >= n candidates",
    "probability": "a score in [0, 1]: used as is for log loss and calibration, and as NDCG gains when it "
                   "is the reference",
    "auc": "Mann-Whitney AUC over all labelled rows, ties count one half",
    "gauc": "per-group AUC (ties one half) weighted by the group's labelled rows; groups with one class "
            "are skipped and counted (gauc_groups_skipped)",
    "logloss": "mean binary cross-entropy of the probability, clipped to [1e-7, 1 - 1e-7]; "
               "probabilities only",
    "ece": "expected calibration error over equal-width probability bins, bins weighted by their rows",
    "calibration_ratio": "mean predicted probability / mean label",
    "kendall_tau": "Kendall tau-b between the reference's and the model's scores within a group; unweighted "
                   "mean over groups with >= 2 rows and non-constant scores",
    "spearman": "Pearson correlation of within-group average ranks; same groups as kendall_tau",
    "recall@k_in_n": "share of the reference's top-k that the model keeps in its top-n; unweighted mean over "
                     "groups with at least n candidates; tied scores ordered by row order; left out where n is at "
                     "least every set's size (it is then 1 by construction)",
    "overlap@k": "|reference top-k & model top-k| / k; unweighted mean over groups with at least k "
                 "candidates",
    "ndcg@k": "NDCG@k of the model's order with the reference's probabilities as linear gains (tied model "
              "scores share their mean gain); unweighted mean over groups with a positive gain",
    "gap_closed": "share of the baseline -> reference GAUC gap the model closes: mean(model - baseline) / "
                  "mean(reference - baseline) over groups where all three are defined, weighted by labelled "
                  "rows; percentile bootstrap interval resampling groups",
    "gain": "paired per-group difference model - baseline, averaged over groups where both are defined "
            "(GAUC weighted by labelled rows), with a percentile bootstrap interval that resamples groups",
    "rows": "candidates the numbers beside it were computed on",
    "groups": "groups (candidate sets) among those rows",
    "groups_used": "groups a metric was defined on (the others are skipped and not averaged)",
}


@dataclass(frozen=True)
class ReportSpec:
    """What to compute from a scores frame.

    ``reference`` ranks every candidate set and each of ``models`` is compared with it;
    ``label_models`` get label metrics; ``gains`` are ``(model, baseline)`` pairs whose per-group
    difference is bootstrapped; ``oracle`` is compared with the reference and every model where
    it is not null; ``segments`` are ``(column, definition)`` pairs broken down by value; ``setup``
    and ``notes`` are copied into the report as given.
    """

    reference: str
    models: tuple[str, ...]
    label_models: tuple[str, ...]
    gains: tuple[tuple[str, str], ...] = ()
    oracle: str | None = None
    sizes: tuple[int, ...] = ()
    ks: tuple[int, ...] = (10, 50)
    ns: tuple[int, ...] = (50, 100, 200, 500, 1000)
    segments: tuple[tuple[str, str], ...] = ()
    n_boot: int = 200
    seed: int = 0
    level: float = 0.95
    bins: int = 10
    source: str = "scores"
    setup: Mapping[str, Any] = field(default_factory=dict)
    notes: tuple[str, ...] = ()

    @property
    def score_columns(self) -> list[str]:
        """Every scorer column the report reads (the oracle last)."""
        cols = [self.reference, *self.models, *self.label_models, *(m for pair in self.gains for m in pair)]
        return list(dict.fromkeys(cols + ([self.oracle] if self.oracle else [])))


# --------------------------------------------------------------------------- validation


def validate_scores(scores: pl.DataFrame, spec: ReportSpec) -> None:
    """Raise :class:`DataError` naming ``spec.source`` and the column for anything a metric would drop."""
    src = spec.source
    needed = ["group", "item_id", "label", *spec.score_columns]
    missing = [c for c in needed if c not in scores.columns]
    if missing:
        raise DataError(f"{src}: column {missing[0]!r} is missing; need {', '.join(needed)}; "
                        f"present: {', '.join(scores.columns)}")
    if scores.height == 0:
        raise DataError(f"{src}: no candidate rows")
    empty = pl.col("group").is_null()
    if scores.schema["group"] == pl.String:
        empty = empty | (pl.col("group").str.strip_chars() == "")
    n_empty = scores.select(empty.sum()).item()
    if n_empty:
        raise DataError(f"{src}: column 'group' has {n_empty} empty (null or blank) group id(s); every "
                        "candidate needs the id of its candidate set")
    dupes = scores.select("group", "item_id").is_duplicated()
    if dupes.any():
        first = scores.filter(dupes).row(0, named=True)
        extra = scores.height - scores.select("group", "item_id").n_unique()
        raise DataError(f"{src}: columns 'group', 'item_id' repeat {extra} candidate(s) (first: group "
                        f"{first['group']!r}, item {first['item_id']!r}); one row per candidate")
    labels = scores["label"].drop_nulls()
    if not (labels.dtype.is_numeric() or labels.dtype in (pl.Boolean, pl.Null)):
        raise DataError(f"{src}: column 'label' must be numeric (0, 1 or null), got {labels.dtype}")
    labels = labels.cast(pl.Int8, strict=False) if labels.dtype == pl.Boolean else labels
    if labels.len() and not labels.is_in([0, 1]).all():
        raise DataError(f"{src}: column 'label' must hold 0, 1 or null (never shown), got "
                        f"{labels.filter(~labels.is_in([0, 1])).head(3).to_list()}")
    for col in spec.score_columns:
        s = scores[col]
        if not s.dtype.is_numeric():
            raise DataError(f"{src}: score column {col!r} must be numeric, got {s.dtype}")
        bad = scores.filter(~s.cast(pl.Float64).is_finite() | (s.is_null() & (col != spec.oracle)))
        if bad.height:
            row = bad.row(0, named=True)
            raise DataError(f"{src}: score column {col!r} has {bad.height} NaN, infinite or null score(s) "
                            f"(first: group {row['group']!r}, item {row['item_id']!r}, value {row[col]}); "
                            "NaN scores are never dropped from a metric: fix or remove those rows")


# --------------------------------------------------------------------------- blocks


def _num(x: float | None) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def _is_probability(frame: pl.DataFrame, col: str) -> bool:
    s = frame[col].drop_nulls()
    return bool(s.len() and s.min() >= 0.0 and s.max() <= 1.0)  # type: ignore[operator]


def _try(fn: Callable[[], Any], undefined: dict[str, str], key: str) -> Any:
    try:
        return fn()
    except DataError as exc:  # inputs were validated: this means "undefined here" (one class, no group)
        undefined[key] = str(exc)
        return None


def _label_block(lab: pl.DataFrame, col: str, probability: bool) -> tuple[dict[str, Any], GaucResult | None]:
    y = lab["label"].cast(pl.Float64).to_numpy()
    p = lab[col].cast(pl.Float64).to_numpy()
    g = lab["_code"].to_numpy()
    undefined: dict[str, str] = {}
    out: dict[str, Any] = {"auc": _try(lambda: auc(y, p), undefined, "auc")}
    res = _try(lambda: gauc(y, p, g), undefined, "gauc")
    out["gauc"] = None if res is None else res.value
    if probability:
        out["logloss"] = logloss(y, p)
    else:
        out["logloss"] = None
        undefined["logloss"] = f"{col!r} is not a probability (values outside [0, 1])"
    out.update(rows=len(y), positives=int(y.sum()), groups=int(len(np.unique(g))),
               gauc_groups_used=0 if res is None else res.groups_used,
               gauc_groups_skipped=0 if res is None else res.groups_skipped)
    if undefined:
        out["undefined"] = undefined
    return out, res


def _calibration_block(lab: pl.DataFrame, col: str, bins: int) -> dict[str, Any] | None:
    y = lab["label"].cast(pl.Float64).to_numpy()
    if not y.any():
        return None
    c = calibration(y, lab[col].cast(pl.Float64).to_numpy(), bins)

    def clean(a: np.ndarray) -> list[float | None]:
        return [_num(v) for v in a.tolist()]

    return {"ece": c.ece, "ratio": c.ratio, "mean_predicted": c.mean_predicted,
            "mean_observed": c.mean_observed, "rows": len(y),
            "bins": {"edges": clean(c.bin_edges), "predicted": clean(c.bin_predicted),
                     "observed": clean(c.bin_observed), "count": c.bin_count.tolist()}}


def _metrics_without_gains(t: np.ndarray, s: np.ndarray, g: np.ndarray,
                           spec: ReportSpec) -> dict[str, GroupMetric]:
    """The consistency table minus NDCG, for a reference that is not a probability."""
    calls: dict[str, Callable[[], GroupMetric]] = {"kendall_tau": partial(kendall_tau, t, s, g),
                                                   "spearman": partial(spearman, t, s, g)}
    for k in spec.ks:
        for n in spec.ns:
            if n >= k:
                calls[f"recall@{k}_in_{n}"] = partial(recall_k_in_n, t, s, g, k, n)
        calls[f"overlap@{k}"] = partial(overlap_at_k, t, s, g, k)
    skipped: dict[str, str] = {}
    return {name: m for name, call in calls.items() if (m := _try(call, skipped, name)) is not None}


def _consistency_block(frame: pl.DataFrame, ref: str, col: str,
                       spec: ReportSpec) -> tuple[dict[str, Any], dict[str, GroupMetric]]:
    f = frame.filter(pl.col(ref).is_not_null() & pl.col(col).is_not_null())
    out: dict[str, Any] = {"rows": f.height, "groups": f["_code"].n_unique() if f.height else 0}
    if f.height == 0:
        return {**out, "groups_used": {}}, {}
    t, s = f[ref].cast(pl.Float64).to_numpy(), f[col].cast(pl.Float64).to_numpy()
    g = f["_code"].to_numpy()
    if _is_probability(f, ref):
        table = consistency_table(t, s, g, spec.ks, spec.ns)
    else:
        table = _metrics_without_gains(t, s, g, spec)
    largest = int(np.bincount(g).max())  # recall@k_in_n with n >= every set's size is 1 by construction
    table = {name: m for name, m in table.items() if not (name.startswith("recall@") and
                                                          int(name.rsplit("_in_", 1)[1]) >= largest)}
    out = {**{name: m.value for name, m in table.items()}, **out,
           "groups_used": {name: m.groups_used for name, m in table.items()}}
    return out, table


def _per_model(frame: pl.DataFrame, ref: str, models: tuple[str, ...], spec: ReportSpec) -> dict[str, Any]:
    return {m: _consistency_block(frame, ref, m, spec)[0] for m in models}


def _labels_per_model(frame: pl.DataFrame, models: list[str], kinds: dict[str, bool]) -> dict[str, Any]:
    lab = frame.filter(pl.col("label").is_not_null())
    return {m: _label_block(lab, m, kinds[m])[0] for m in models} if lab.height else {}


def _gain(spec: ReportSpec, model: str, base: str, per_group: dict[str, _PerGroup],
          other: dict[str, _PerGroup], reference: dict[str, _PerGroup] | None = None) -> dict[str, Any]:
    metrics: dict[str, Any] = {}
    for name, (a, weights) in per_group.items():
        if name not in other:
            continue
        b = other[name][0]
        both = ~(np.isnan(a) | np.isnan(b))
        if not both.any():
            continue
        w = None if weights is None else weights.astype(np.float64)
        diff, lo, hi = paired_bootstrap_ci(a, b, w, n_boot=spec.n_boot, seed=spec.seed, level=spec.level,
                                           skip_nan=True)
        metrics[name] = {"difference": diff, "low": lo, "high": hi, "groups": int(both.sum())}
    out = {"model": model, "baseline": base, "level": spec.level, "replicates": spec.n_boot, "metrics": metrics}
    if reference is not None and "gauc" in per_group and "gauc" in other and "gauc" in reference:
        (a, weights), b, r = per_group["gauc"], other["gauc"][0], reference["gauc"][0]
        share, lo, hi, groups = gap_closed_ci(a, b, r, None if weights is None else weights.astype(np.float64),
                                              n_boot=spec.n_boot, seed=spec.seed, level=spec.level)
        out["gap_closed"] = {"metric": "gauc", "reference": spec.reference, "share": share, "low": lo, "high": hi,
                             "groups": groups}
    return out


# --------------------------------------------------------------------------- the report


def _prepare_frame(scores: pl.DataFrame) -> pl.DataFrame:
    f = scores.with_columns(pl.col("label").cast(pl.Int8))
    if "exposed" not in f.columns:
        f = f.with_columns(pl.col("label").is_not_null().alias("exposed"))
    return f.with_columns((pl.col("group").rank("dense") - 1).cast(pl.Int64).alias("_code"))


def _by_size(f: pl.DataFrame, spec: ReportSpec) -> dict[str, Any]:
    sized = f.with_columns(pl.len().over("_code").alias("_size"))
    out: dict[str, Any] = {}
    for n in spec.sizes:
        sub = sized.filter((pl.col("set_position") < n) & (pl.col("_size") >= n))
        entry: dict[str, Any] = {"rows": sub.height, "groups": sub["_code"].n_unique() if sub.height else 0}
        parts = (("all", pl.lit(True)), ("exposed", pl.col("exposed")), ("sampled", ~pl.col("exposed")))
        for part, cond in parts:
            entry[part] = _per_model(sub.filter(cond), spec.reference, spec.models, spec)
        out[str(n)] = entry
    return out


def _segments(f: pl.DataFrame, spec: ReportSpec, kinds: dict[str, bool]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for col, definition in spec.segments:
        if col not in f.columns:
            continue
        key = pl.col(col).cast(pl.String).str.to_lowercase()
        values: dict[str, Any] = {}
        for value in sorted(f.select(key.unique().drop_nulls()).to_series().to_list(), key=_segment_order):
            sub = f.filter(key == value)
            values[value] = {"rows": sub.height, "groups": sub["_code"].n_unique(),
                             "labelled": int(sub["label"].is_not_null().sum()),
                             "label_metrics": _labels_per_model(sub, list(spec.label_models), kinds),
                             "consistency": _per_model(sub, spec.reference, spec.models, spec)}
        out[col] = {"definition": definition, "values": values}
    return out


#: Segment values in their natural order (the run report's activity tertiles and popularity bands);
#: other values sort as numbers when they are numbers, else alphabetically.
_VALUE_ORDER = ("light", "medium", "heavy", "head", "torso", "tail", "false", "true")


def _segment_order(value: str) -> tuple[int, float, str]:
    if value in _VALUE_ORDER:
        return 0, _VALUE_ORDER.index(value), ""
    try:
        return 1, float(value), ""
    except ValueError:
        return 2, 0.0, value


def build_report(scores: pl.DataFrame, spec: ReportSpec) -> dict[str, Any]:
    """Compute every section of ``report.json`` from a scores frame.

    Parameters
    ----------
    scores : pl.DataFrame
        One row per candidate (see the module docstring).
    spec : ReportSpec
        Which columns play which part and which breakdowns to compute.

    Returns
    -------
    dict[str, Any]
        JSON-ready (NaN-free) dict laid out as in ``docs/report-schema.md``.

    Raises
    ------
    DataError
        Bad scores (see :func:`validate_scores`).
    """
    validate_scores(scores, spec)
    f = _prepare_frame(scores)
    kinds = {c: _is_probability(f, c) for c in spec.score_columns}
    lab = f.filter(pl.col("label").is_not_null())
    label_models = list(spec.label_models)
    if spec.oracle and lab.height and lab[spec.oracle].null_count() == 0:
        label_models.append(spec.oracle)
    per_group: dict[str, dict[str, _PerGroup]] = {m: {} for m in spec.score_columns}
    label_metrics: dict[str, Any] = {}
    calib: dict[str, Any] = {}
    notes: list[str] = list(spec.notes)
    for m in label_models if lab.height else []:
        label_metrics[m], res = _label_block(lab, m, kinds[m])
        if res is not None:
            per_group[m]["gauc"] = (res.per_group, np.maximum(res.group_rows, 1))
        if kinds[m]:
            calib[m] = _calibration_block(lab, m, spec.bins)
    if not lab.height:
        notes.append("no labelled rows: label metrics, calibration and GAUC gains are left out")
    consistency: dict[str, Any] = {}
    for m in spec.models:
        consistency[m], table = _consistency_block(f, spec.reference, m, spec)
        per_group[m].update({name: (gm.per_group, None) for name, gm in table.items()})
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "setup": {"source": spec.source, "reference": spec.reference, "models": list(spec.models),
                  "label_models": label_models, "oracle": spec.oracle,
                  "score_kind": {c: "probability" if kinds[c] else "score" for c in spec.score_columns},
                  "sizes": list(spec.sizes), "ks": list(spec.ks), "ns": list(spec.ns),
                  "bootstrap": {"replicates": spec.n_boot, "level": spec.level, "seed": spec.seed,
                                "unit": "group"},
                  "calibration_bins": spec.bins, **spec.setup},
        "counts": _counts(f),
        "definitions": DEFINITIONS,
        "label_metrics": label_metrics,
        "calibration": calib,
        "consistency": consistency,
    }
    if spec.oracle:
        oracle_rows = f.filter(pl.col(spec.oracle).is_not_null())
        scorers = (spec.reference, *spec.models)
        report["oracle_consistency"] = _per_model(oracle_rows, spec.oracle, scorers, spec)
        if oracle_rows.height < f.height:
            notes.append(f"the oracle is known for {oracle_rows.height} of {f.height} candidates (exposed "
                         "ones only): oracle_consistency covers those rows")
    if spec.sizes and "set_position" in f.columns:
        report["by_size"] = _by_size(f, spec)
    elif spec.sizes:
        notes.append("no set_position column: the per-size breakdown is left out")
    report["segments"] = _segments(f, spec, kinds)
    report["gain"] = {f"{m}_vs_{b}": _gain(spec, m, b, per_group[m], per_group[b], per_group.get(spec.reference))
                      for m, b in spec.gains}
    report["notes"] = notes
    return _clean(report)


def _counts(f: pl.DataFrame) -> dict[str, Any]:
    sizes = f.group_by("_code").len()["len"].to_numpy()
    labelled = f["label"].drop_nulls()
    return {"groups": len(sizes), "candidates": f.height, "exposed": int(f["exposed"].sum()),
            "sampled": int((~f["exposed"]).sum()), "labelled": labelled.len(),
            "positives": int(labelled.sum()),
            "candidates_per_group": {"min": int(sizes.min()), "median": float(np.median(sizes)),
                                     "max": int(sizes.max())}}


def _clean(x: Any) -> Any:
    """NaN/inf -> None and numpy scalars -> Python, so ``json.dumps(allow_nan=False)`` accepts it."""
    if isinstance(x, dict):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if isinstance(x, bool | np.bool_):
        return bool(x)
    if isinstance(x, int | np.integer):
        return int(x)
    if isinstance(x, float | np.floating):
        return _num(float(x))
    return x
