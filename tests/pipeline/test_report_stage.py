"""The 'report' stage: production-like candidate sets, their scores and the files in report/."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from coarserank.config import DataConfig, ReportConfig, SyntheticConfig, load_config
from coarserank.data.prepare import add_history_crosses, base_rate
from coarserank.data.synthetic import generate, oracle_probability
from coarserank.distill.tensors import make_table
from coarserank.distill.train import predict
from coarserank.errors import ConfigError
from coarserank.pipeline.candidates import (
    activity_segments,
    build_catalogue,
    sample_items,
    sampling_weights,
)
from coarserank.pipeline.report_stage import check_settings, report_run
from coarserank.pipeline.run import load_context, run

REPORT = ["report.max_users=60", "report.sampled=150", "report.sizes=[50, 100]", "report.ns=[20, 50, 100]",
          "report.bootstrap=50"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    run(load_config(overrides=[*tiny_overrides, "synthetic.rows=6000", "synthetic.items=400", *REPORT]), out)
    return out


@pytest.fixture(scope="module")
def scores(tiny: Path) -> pl.DataFrame:
    return pl.read_parquet(tiny / "report" / "scores.parquet")


@pytest.fixture(scope="module")
def context(tiny: Path) -> tuple:
    return load_context(tiny)


# --------------------------------------------------------------------------- sampling (no models)


def test_sampled_items_are_distinct_per_user_and_skip_excluded_pairs(rng: np.random.Generator) -> None:
    weights = rng.random(300) + 0.1
    ex_user, ex_item = rng.integers(0, 40, 500), rng.integers(0, 300, 500)
    user, item, order = sample_items(weights, 40, ex_user, ex_item, 120, seed=5)
    pairs = set(zip(user.tolist(), item.tolist(), strict=True))
    assert len(pairs) == len(user) == 40 * 120
    assert not pairs & set(zip(ex_user.tolist(), ex_item.tolist(), strict=True))
    for u in range(40):
        assert order[user == u].tolist() == list(range(120))


def test_a_user_gets_every_available_item_when_the_catalogue_is_small() -> None:
    user, item, _ = sample_items(np.ones(10), 2, np.array([0, 0]), np.array([3, 4]), 50, seed=0)
    assert sorted(item[user == 0].tolist()) == [0, 1, 2, 5, 6, 7, 8, 9]
    assert sorted(item[user == 1].tolist()) == list(range(10))


def test_the_first_draw_follows_the_weights_so_prefixes_are_weighted_samples() -> None:
    weights = np.array([8.0, 4.0, 2.0, 1.0, 1.0])
    none = np.array([], dtype=int)
    user, item, order = sample_items(weights, 20_000, none, none, 3, seed=1)
    first = np.bincount(item[order == 0], minlength=5) / 20_000
    np.testing.assert_allclose(first, weights / weights.sum(), atol=0.012)


def test_sampling_is_reproducible_by_seed() -> None:
    args = (np.arange(1.0, 51.0), 5, np.array([], dtype=int), np.array([], dtype=int), 10)
    a, b, c = sample_items(*args, seed=4), sample_items(*args, seed=4), sample_items(*args, seed=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[1], c[1])


def test_popularity_weights_add_one_and_uniform_weights_are_flat() -> None:
    counts = np.array([0, 3, 10])
    assert sampling_weights(counts, "popularity").tolist() == [1.0, 4.0, 11.0]
    assert sampling_weights(counts, "uniform").tolist() == [1.0, 1.0, 1.0]


def test_catalogue_segments_split_train_exposures_50_30_20() -> None:
    counts = [50, 20, 10, 10, 5, 5, 0]  # shares before each item: 0, .5, .7, .8, .9, .95
    frame = pl.DataFrame({"item_id": np.append(np.repeat(np.arange(7), counts), 6),  # item 6: test only
                          "_split": ["train"] * 100 + ["test"], "_time": np.arange(101),
                          "_row": np.arange(101)})
    cat = build_catalogue(frame, DataConfig(item_col="item_id"))
    assert cat["item_train_rows"].to_list() == counts
    assert cat["item_popularity"].to_list() == ["head", "torso", "torso", "tail", "tail", "tail", "tail"]


def test_activity_segments_are_tertiles() -> None:
    labels, (q1, q2) = activity_segments(np.arange(1, 10))
    assert (q1, q2) == pytest.approx((11 / 3, 19 / 3))
    assert labels.tolist() == ["light"] * 3 + ["medium"] * 3 + ["heavy"] * 3


def test_the_oracle_reproduces_the_generators_p_true_without_noise() -> None:
    cfg = SyntheticConfig(rows=3000, noise=0.0)
    e = generate(cfg, 9).exposures
    p = oracle_probability(cfg, 9, e["user_id"].to_numpy(), e["item_id"].to_numpy(), e["device"].to_numpy(),
                           e["hour"].to_numpy())
    np.testing.assert_allclose(p, e["p_true"].to_numpy(), rtol=0, atol=1e-15)


# --------------------------------------------------------------------------- the stage in a run


@pytest.mark.slow
def test_the_stage_writes_and_records_its_three_files(tiny: Path) -> None:
    manifest = json.loads((tiny / "manifest.json").read_text())
    stage = manifest["stages"]["report"]
    assert stage["status"] == "done"
    assert sorted(stage["outputs"]) == ["report/report.html", "report/report.json", "report/scores.parquet"]


@pytest.mark.slow
def test_each_candidate_set_is_the_users_exposures_plus_sampled_items(scores: pl.DataFrame) -> None:
    per = scores.group_by("group").agg(pl.col("exposed").sum().alias("e"), pl.len().alias("n"),
                                       pl.col("label").null_count().alias("unlabelled"),
                                       pl.col("set_position").sort().alias("pos"))
    assert per.height == 60
    assert (per["n"] - per["e"] == 150).all()  # 400 items: always enough to sample 150
    assert (per["unlabelled"] == per["n"] - per["e"]).all()
    assert all(p == list(range(len(p))) for p in per["pos"].to_list())
    assert scores.select("group", "item_id").is_unique().all()


@pytest.mark.slow
def test_exposures_come_first_in_the_nesting_order(scores: pl.DataFrame) -> None:
    first_sampled = scores.filter(~pl.col("exposed")).group_by("group").agg(pl.col("set_position").min())
    exposed = scores.filter(pl.col("exposed")).group_by("group").len()
    joined = first_sampled.join(exposed, on="group", how="left").with_columns(pl.col("len").fill_null(0))
    assert (joined["set_position"] == joined["len"]).all()


@pytest.mark.slow
def test_exposed_scores_are_the_runs_test_logits(tiny: Path, scores: pl.DataFrame) -> None:
    logits = pl.read_parquet(tiny / "logits" / "test.parquet")
    exposed = scores.filter(pl.col("exposed")).join(logits, on="row")
    np.testing.assert_allclose(exposed["teacher"], 1 / (1 + np.exp(-exposed["logit"].to_numpy())), rtol=1e-6)


@pytest.mark.slow
def test_sampled_oracle_is_the_generators_noise_free_probability(context: tuple,
                                                                  scores: pl.DataFrame) -> None:
    ctx, _ = context
    first = (ctx.frames["test"].sort("_time", "_row").group_by("_user", maintain_order=True).first()
             .select(pl.col("_user").alias("group"), "device", "hour"))
    sampled = scores.filter(~pl.col("exposed")).join(first, on="group")
    expected = oracle_probability(ctx.cfg.synthetic, ctx.cfg.run.seed, sampled["group"].to_numpy(),
                                  sampled["item_id"].to_numpy(), sampled["device"].to_numpy(),
                                  sampled["hour"].to_numpy())
    np.testing.assert_allclose(sampled["oracle"].to_numpy(), expected, rtol=1e-12)


@pytest.mark.slow
def test_sampled_candidates_are_scored_like_any_encoded_row(context: tuple, scores: pl.DataFrame) -> None:
    ctx, models = context
    row = scores.filter(~pl.col("exposed")).head(1)
    base = ctx.frames["test"].sort("_time", "_row").filter(pl.col("_user") == row["group"][0]).head(1)
    item_cols = ["item_id", "category", "topic", "tags", "price"]
    item = (ctx.frame.filter(pl.col("item_id") == row["item_id"][0]).sort("_time", "_row").tail(1)
            .select(item_cols))
    cand = pl.concat([base.drop(item_cols), item], how="horizontal").with_columns(pl.lit(10**9).alias("_row"))
    cand = add_history_crosses(cand.drop("user_category_rate"), ctx.cfg.data, base_rate(ctx.frame), ctx.frame)
    encoded = ctx.encoder.transform(cand)
    for model in ("teacher", "student", "student_hard"):
        z = predict(models[model], make_table(encoded, np.zeros(1), np.zeros(1)), ctx.device)
        assert row[model][0] == pytest.approx(1 / (1 + np.exp(-float(z[0]))), rel=1e-5)


@pytest.mark.slow
def test_segment_columns_follow_train_counts(scores: pl.DataFrame) -> None:
    assert set(scores["user_activity"].unique()) <= {"light", "medium", "heavy"}
    assert set(scores["item_popularity"].unique()) <= {"head", "torso", "tail"}
    assert (scores["seen_in_train"] == (scores["item_train_rows"] > 0)).all()
    light = scores.filter(pl.col("user_activity") == "light")["user_train_rows"].max()
    heavy = scores.filter(pl.col("user_activity") == "heavy")["user_train_rows"].min()
    assert light < heavy


@pytest.mark.slow
def test_report_json_can_be_recomputed_from_scores_parquet(tiny: Path, scores: pl.DataFrame) -> None:
    saved = json.loads((tiny / "report" / "report.json").read_text())
    lab = scores.filter(pl.col("label").is_not_null())
    expected = roc_auc_score(lab["label"], lab["student"])
    assert saved["label_metrics"]["student"]["auc"] == pytest.approx(expected)
    assert saved["counts"]["candidates"] == scores.height
    assert set(saved["consistency"]) == {"student", "student_hard"}
    assert "recall@10_in_50" in saved["consistency"]["student"]
    assert set(saved["oracle_consistency"]) == {"teacher", "student", "student_hard"}


@pytest.mark.slow
def test_rebuilding_the_report_gives_the_same_scores(tiny: Path, scores: pl.DataFrame) -> None:
    out = report_run(tiny, force=True)
    assert out.rebuilt and pl.read_parquet(out.scores).equals(scores)
    saved = json.loads((tiny / "report" / "report.json").read_text())
    assert out.report["consistency"] == saved["consistency"]


@pytest.mark.parametrize(("override", "message"), [
    ({"sizes": (500, 100)}, r"report.sizes must be increasing integers >= 1"),
    ({"ns": (0, 10)}, r"report.ns must be increasing integers >= 1"),
    ({"sampled": 0}, r"report.sampled must be >= 1"),
    ({"max_users": 0}, r"report.max_users must be >= 1"),
])
def test_report_settings_are_checked(override: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_settings(replace(ReportConfig(), **override))


@pytest.mark.slow
def test_a_disabled_report_finishes_as_skipped(tiny: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny, tmp_path / "run"))
    run(load_config(copy / "config.toml", overrides=["report.enabled=false"]), copy)  # resumes: report only
    stage = json.loads((copy / "manifest.json").read_text())["stages"]["report"]
    assert stage["status"] == "done" and stage["skipped"] == "report.enabled is false"
