"""report.json from a scores frame: every number against scikit-learn, scipy or a naive per-group loop."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import polars as pl
import pytest
from scipy.stats import kendalltau
from sklearn.metrics import log_loss, roc_auc_score

from coarserank.errors import DataError
from coarserank.ranking_eval.report import DEFINITIONS, SCHEMA_VERSION, ReportSpec, build_report

GROUPS = 24
EXPOSED = 8


def make_scores(rng: np.random.Generator, groups: int = GROUPS) -> pl.DataFrame:
    """Candidate sets of 8 labelled exposures plus 60-200 sampled rows, shuffled, with segments."""
    frames = []
    for g in range(groups):
        n = EXPOSED + int(rng.integers(60, 200))
        teacher = rng.beta(2, 5, n)
        exposed = np.arange(n) < EXPOSED
        label = np.where(exposed, (rng.random(n) < teacher).astype(float), np.nan)
        frames.append(pl.DataFrame({
            "group": np.full(n, 1000 + g), "item_id": rng.permutation(5000)[:n],
            "label": pl.Series(label).fill_nan(None).cast(pl.Int8), "exposed": exposed,
            "set_position": np.arange(n), "teacher": teacher,
            "student": np.clip(teacher + rng.normal(0, 0.05, n), 0.001, 0.999),
            "student_hard": np.clip(teacher + rng.normal(0, 0.15, n), 0.001, 0.999),
            "oracle": np.clip(teacher + rng.normal(0, 0.1, n), 0.001, 0.999),
            "user_activity": ["light", "medium", "heavy"][g % 3],
            "item_popularity": rng.choice(["head", "torso", "tail"], n),
        }))
    return pl.concat(frames).sample(fraction=1.0, shuffle=True, seed=int(rng.integers(1 << 30)))


def spec(**kw: object) -> ReportSpec:
    base: dict[str, object] = dict(reference="teacher", models=("student", "student_hard"),
                                   label_models=("teacher", "student", "student_hard"),
                                   gains=(("student", "student_hard"),), oracle="oracle", sizes=(50, 100),
                                   ks=(10,), ns=(10, 50, 100), n_boot=50, seed=3, source="scores.parquet",
                                   segments=(("user_activity", "activity"),
                                             ("item_popularity", "popularity")))
    base.update(kw)
    return ReportSpec(**base)  # type: ignore[arg-type]


@pytest.fixture
def scores(rng: np.random.Generator) -> pl.DataFrame:
    return make_scores(rng)


def _top(x: np.ndarray, k: int) -> set[int]:
    return set(sorted(range(len(x)), key=lambda i: (-x[i], i))[:k])


def _naive_recall(frame: pl.DataFrame, col: str, k: int, n: int) -> tuple[float, int]:
    values = []
    for _, part in frame.group_by("group", maintain_order=True):
        if part.height >= n:
            t, s = part["teacher"].to_numpy(), part[col].to_numpy()
            values.append(len(_top(t, k) & _top(s, n)) / k)
    return float(np.mean(values)), len(values)


def test_label_metrics_match_sklearn_on_the_labelled_rows(scores: pl.DataFrame) -> None:
    report = build_report(scores, spec())
    lab = scores.filter(pl.col("label").is_not_null())
    y = lab["label"].to_numpy()
    for model in ("teacher", "student", "student_hard"):
        got = report["label_metrics"][model]
        assert got["auc"] == pytest.approx(roc_auc_score(y, lab[model]))
        assert got["logloss"] == pytest.approx(log_loss(y, lab[model]))
        assert got["rows"] == lab.height == GROUPS * EXPOSED


def test_gauc_is_the_row_weighted_mean_of_per_group_sklearn_aucs(scores: pl.DataFrame) -> None:
    got = build_report(scores, spec())["label_metrics"]["student"]
    lab = scores.filter(pl.col("label").is_not_null())
    aucs, weights = [], []
    for _, part in lab.group_by("group"):
        if part["label"].n_unique() == 2:
            aucs.append(roc_auc_score(part["label"], part["student"]))
            weights.append(part.height)
    assert got["gauc"] == pytest.approx(np.average(aucs, weights=weights))
    assert got["gauc_groups_used"] == len(aucs)
    assert got["gauc_groups_used"] + got["gauc_groups_skipped"] == GROUPS


def test_recall_k_in_n_matches_a_naive_loop_over_groups_with_n_candidates(scores: pl.DataFrame) -> None:
    got = build_report(scores, spec())["consistency"]["student_hard"]
    expected, used = _naive_recall(scores, "student_hard", 10, 100)
    assert got["recall@10_in_100"] == pytest.approx(expected)
    assert got["groups_used"]["recall@10_in_100"] == used < GROUPS


def test_kendall_tau_is_the_mean_of_per_group_scipy_tau_b(scores: pl.DataFrame) -> None:
    got = build_report(scores, spec())["consistency"]["student"]
    taus = [kendalltau(p["teacher"], p["student"]).statistic for _, p in scores.group_by("group")]
    assert got["kendall_tau"] == pytest.approx(np.mean(taus))
    assert got["rows"] == scores.height and got["groups"] == GROUPS


def test_each_size_keeps_the_first_n_positions_of_groups_that_have_n(scores: pl.DataFrame) -> None:
    entry = build_report(scores, spec())["by_size"]["100"]
    big = scores.filter(pl.len().over("group") >= 100).filter(pl.col("set_position") < 100)
    expected, used = _naive_recall(big, "student", 10, 50)
    assert entry["groups"] == used and entry["rows"] == 100 * used
    assert entry["all"]["student"]["recall@10_in_50"] == pytest.approx(expected)


def test_exposed_and_sampled_candidates_are_reported_separately(scores: pl.DataFrame) -> None:
    entry = build_report(scores, spec())["by_size"]["50"]
    exposed = scores.filter(pl.col("exposed"))
    taus = [kendalltau(p["teacher"], p["student"]).statistic for _, p in exposed.group_by("group")]
    assert entry["exposed"]["student"]["kendall_tau"] == pytest.approx(np.mean(taus))
    assert entry["exposed"]["student"]["rows"] == GROUPS * EXPOSED
    assert entry["sampled"]["student"]["rows"] == GROUPS * (50 - EXPOSED)


def test_segments_break_down_by_each_value_of_the_column(scores: pl.DataFrame) -> None:
    seg = build_report(scores, spec())["segments"]["user_activity"]
    assert seg["definition"] == "activity" and set(seg["values"]) == {"light", "medium", "heavy"}
    heavy = scores.filter(pl.col("user_activity") == "heavy")
    expected, _ = _naive_recall(heavy, "student", 10, 50)
    assert seg["values"]["heavy"]["consistency"]["student"]["recall@10_in_50"] == pytest.approx(expected)
    assert seg["values"]["heavy"]["rows"] == heavy.height and seg["values"]["heavy"]["groups"] == GROUPS // 3


def test_item_segments_split_rows_inside_groups(scores: pl.DataFrame) -> None:
    values = build_report(scores, spec())["segments"]["item_popularity"]["values"]
    assert sum(v["rows"] for v in values.values()) == scores.height
    tail = scores.filter(pl.col("item_popularity") == "tail")
    lab = tail.filter(pl.col("label").is_not_null())
    assert values["tail"]["label_metrics"]["teacher"]["auc"] == pytest.approx(roc_auc_score(lab["label"],
                                                                                            lab["teacher"]))


def test_gain_is_the_paired_per_group_difference_with_a_bootstrap_interval(scores: pl.DataFrame) -> None:
    report = build_report(scores, spec())
    gain = report["gain"]["student_vs_student_hard"]["metrics"]
    lm = report["label_metrics"]
    assert gain["gauc"]["difference"] == pytest.approx(lm["student"]["gauc"] - lm["student_hard"]["gauc"])
    cons = report["consistency"]
    tau = gain["kendall_tau"]
    expected = cons["student"]["kendall_tau"] - cons["student_hard"]["kendall_tau"]
    assert tau["difference"] == pytest.approx(expected)
    assert tau["low"] <= tau["difference"] <= tau["high"] and tau["groups"] == GROUPS
    assert tau["low"] > 0  # the less noisy student agrees with the teacher more, clearly


def test_gap_closed_is_the_share_of_the_gauc_gap_to_the_reference_with_an_interval(scores: pl.DataFrame) -> None:
    report = build_report(scores, spec())
    gap = report["gain"]["student_vs_student_hard"]["gap_closed"]
    lab = scores.filter(pl.col("label").is_not_null())
    per: dict[str, list[float]] = {"teacher": [], "student": [], "student_hard": []}
    weights = []
    for _, part in lab.group_by("group"):
        if part["label"].n_unique() == 2:
            for m in per:
                per[m].append(roc_auc_score(part["label"], part[m]))
            weights.append(part.height)
    t, s, h = (np.array(per[m]) for m in ("teacher", "student", "student_hard"))
    w = np.array(weights, dtype=float)
    assert gap["share"] == pytest.approx(np.dot(w, s - h) / np.dot(w, t - h))
    assert gap["low"] <= gap["share"] <= gap["high"] and gap["reference"] == "teacher"


def test_gain_interval_is_reproducible_by_seed(scores: pl.DataFrame) -> None:
    a = build_report(scores, spec(seed=1))["gain"]
    assert a == build_report(scores, spec(seed=1))["gain"]
    assert a != build_report(scores, spec(seed=2))["gain"]


def test_oracle_is_compared_with_the_reference_and_every_model(scores: pl.DataFrame) -> None:
    report = build_report(scores, spec())
    assert set(report["oracle_consistency"]) == {"teacher", "student", "student_hard"}
    assert "oracle" in report["label_metrics"]
    assert "oracle_consistency" not in build_report(scores, spec(oracle=None))


def test_an_oracle_known_on_exposures_only_covers_those_rows_and_says_so(scores: pl.DataFrame) -> None:
    partial = scores.with_columns(pl.when(pl.col("exposed")).then(pl.col("oracle")).alias("oracle"))
    report = build_report(partial, spec())
    assert report["oracle_consistency"]["student"]["rows"] == GROUPS * EXPOSED
    assert any("oracle is known for" in note for note in report["notes"])


def test_report_is_strict_json_with_schema_version_and_sample_sizes(scores: pl.DataFrame) -> None:
    report = build_report(scores, spec())
    body = json.loads(json.dumps(report, allow_nan=False))
    assert body["schema"] == "coarserank.report" and body["schema_version"] == SCHEMA_VERSION
    assert body["counts"]["groups"] == GROUPS and body["counts"]["labelled"] == GROUPS * EXPOSED
    assert body["setup"]["score_kind"]["teacher"] == "probability"


def test_every_consistency_metric_has_a_definition(scores: pl.DataFrame) -> None:
    block = build_report(scores, spec())["consistency"]["student"]
    for key in block["groups_used"]:
        generic = re.sub(r"\d+", lambda m: "k", key, count=1)
        generic = re.sub(r"_in_\d+", "_in_n", generic)
        assert generic in DEFINITIONS, key


def test_a_reference_that_is_not_a_probability_gets_no_ndcg_and_no_logloss(scores: pl.DataFrame) -> None:
    logits = scores.with_columns((pl.col("teacher") * 8 - 4).alias("teacher"))
    report = build_report(logits, spec(oracle=None))
    assert "ndcg@10" not in report["consistency"]["student"]
    assert "recall@10_in_100" in report["consistency"]["student"]
    assert report["label_metrics"]["teacher"]["logloss"] is None
    assert "logloss" in report["label_metrics"]["teacher"]["undefined"]
    assert report["setup"]["score_kind"]["teacher"] == "score"


def test_no_labelled_rows_leaves_label_metrics_out_and_says_so(scores: pl.DataFrame) -> None:
    report = build_report(scores.with_columns(pl.lit(None, dtype=pl.Int8).alias("label")), spec())
    assert report["label_metrics"] == {}
    assert "gauc" not in report["gain"]["student_vs_student_hard"]["metrics"]
    assert any("no labelled rows" in note for note in report["notes"])


# --------------------------------------------------------------------------- bad input


def test_a_missing_group_column_names_the_source_and_the_column(scores: pl.DataFrame) -> None:
    with pytest.raises(DataError, match=r"scores\.parquet: column 'group' is missing"):
        build_report(scores.drop("group"), spec())


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
def test_a_non_finite_score_is_an_error_never_dropped(scores: pl.DataFrame, bad: float) -> None:
    broken = scores.with_columns(pl.when(pl.int_range(pl.len()) == 7).then(bad).otherwise(pl.col("student"))
                                 .alias("student"))
    message = r"scores\.parquet: score column 'student' has 1 NaN, infinite or null"
    with pytest.raises(DataError, match=message):
        build_report(broken, spec())


def test_a_null_score_is_an_error(scores: pl.DataFrame) -> None:
    broken = scores.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col("teacher"))
                                 .alias("teacher"))
    with pytest.raises(DataError, match=r"score column 'teacher' has 1 NaN, infinite or null"):
        build_report(broken, spec())


@pytest.mark.parametrize("empty", [None, " "], ids=["null", "blank"])
def test_an_empty_group_id_is_an_error(scores: pl.DataFrame, empty: str | None) -> None:
    named = scores.with_columns(pl.col("group").cast(pl.String))
    broken = named.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit(empty))
                                .otherwise(pl.col("group")).alias("group"))
    with pytest.raises(DataError, match=r"column 'group' has 1 empty \(null or blank\) group id"):
        build_report(broken, spec())


def test_a_repeated_candidate_is_an_error(scores: pl.DataFrame) -> None:
    with pytest.raises(DataError, match=r"columns 'group', 'item_id' repeat 1 candidate"):
        build_report(pl.concat([scores, scores.head(1)]), spec())


def test_labels_must_be_zero_one_or_null(scores: pl.DataFrame) -> None:
    with pytest.raises(DataError, match=r"column 'label' must hold 0, 1 or null"):
        build_report(scores.with_columns(pl.col("label") * 2), spec())


def test_a_text_label_column_is_an_error(scores: pl.DataFrame) -> None:
    with pytest.raises(DataError, match=r"column 'label' must be numeric \(0, 1 or null\), got String"):
        build_report(scores.with_columns(pl.col("label").cast(pl.String)), spec())


def test_boolean_labels_are_read_as_zero_one(scores: pl.DataFrame) -> None:
    as_bool = scores.with_columns(pl.col("label").cast(pl.Boolean))
    assert build_report(as_bool, spec())["label_metrics"] == build_report(scores, spec())["label_metrics"]


def test_the_report_modules_never_import_torch() -> None:
    code = ("import sys, coarserank.ranking_eval.report, coarserank.ranking_eval.report_html; "
            "sys.exit('torch' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_recall_whose_cutoff_covers_every_set_is_left_out(scores: pl.DataFrame) -> None:
    report = build_report(scores, spec())
    by_size = report["by_size"]["50"]["all"]["student"]
    assert "recall@10_in_10" in by_size and "recall@10_in_50" not in by_size and "recall@10_in_100" not in by_size
    largest = scores.group_by("group").len()["len"].max()
    assert largest > 100 and "recall@10_in_100" in report["consistency"]["student"]


def test_segment_values_are_listed_in_their_natural_order(scores: pl.DataFrame) -> None:
    report = build_report(scores, spec())
    assert list(report["segments"]["user_activity"]["values"]) == ["light", "medium", "heavy"]
    assert list(report["segments"]["item_popularity"]["values"]) == ["head", "torso", "tail"]
