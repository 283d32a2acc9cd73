"""Specification of the coarse-ranking runtime: CoarseRanker against PyTorch, dropped ids, bad input.

One tiny run is trained per session (shared with the other serving-runtime test modules through a
fixed directory under pytest's base temp); tests that modify a run work on a copy.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch

from coarserank.config import load_config
from coarserank.errors import ArtifactError, ServingError
from coarserank.pipeline.run import load_context, run
from coarserank.serving.catalogue import encode_items, read_catalogue
from coarserank.serving.kv_file import FileKVStore, write_kv_file
from coarserank.serving.onnx_inputs import feeds_from_records
from coarserank.serving.ranker import (
    CoarseRanker,
    UserFeeds,
    onnx_session,
    parse_user,
    read_candidates,
    top_positions,
)

USER = {"user_id": 12, "age": 30, "gender": "F", "region": "r03", "fav_topic": 17, "device": "ios",
        "hour": 21}


def served_run_dir(tmp_path_factory: pytest.TempPathFactory, overrides: list[str]) -> Path:
    """A finished tiny run with its exports (built once per session, then resumed)."""
    path = tmp_path_factory.getbasetemp() / "served-run"
    cfg = load_config(overrides=[*overrides, "report.enabled=false", f'run.out="{path}"'])
    run(cfg, path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Path:
    return served_run_dir(tmp_path_factory, tiny_overrides)


@pytest.fixture(scope="module")
def ranker(run_dir: Path) -> CoarseRanker:
    return CoarseRanker.from_run(run_dir)


@pytest.fixture(scope="module")
def context(run_dir: Path) -> tuple[Any, dict[str, torch.nn.Module]]:
    return load_context(run_dir)


@pytest.fixture
def copied(run_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run_dir, tmp_path / "run"))


def _torch_scores(context: tuple[Any, dict], user_row: pl.DataFrame, items: pl.DataFrame) -> np.ndarray:
    """The PyTorch student on (user row x every item), encoded by the run's encoder: the reference."""
    ctx, models = context
    student = models["student"].eval()
    rows = items.join(user_row.drop([c for c in items.columns if c in user_row.columns]), how="cross")
    fields = student.user_tower.schema.names + student.item_tower.schema.names
    inputs = {k: torch.from_numpy(v) for k, v in ctx.encoder.transform(rows, fields).items()}
    with torch.no_grad():
        return student(inputs).numpy()


def test_rank_reproduces_the_pytorch_student_scores_and_order(ranker, context, run_dir) -> None:
    ctx, _ = context
    user_row = ctx.frames["test"].head(1)
    user = {k: user_row[k][0] for k in USER}
    items = read_catalogue(run_dir / "items.parquet", ctx.cfg.data)
    want = _torch_scores(context, user_row, items)
    result = ranker.rank(user, items["item_id"].to_numpy(), 10)
    order = np.argsort(-want, kind="stable")[:10]
    np.testing.assert_allclose(result.scores, want[order], atol=1e-5)
    np.testing.assert_array_equal(result.ids, items["item_id"].to_numpy()[order])


def test_rank_returns_top_n_best_first(ranker) -> None:
    result = ranker.rank(USER, np.arange(100), 7)
    assert result.ids.size == 7 and np.all(np.diff(result.scores) <= 0)


def test_unknown_candidate_ids_are_dropped_and_counted(ranker) -> None:
    result = ranker.rank(USER, np.array([3, 10**9, 5, -4, 7]), 10)
    assert result.dropped == 2
    assert sorted(result.ids.tolist()) == [3, 5, 7]


def test_every_candidate_unknown_gives_an_empty_result(ranker) -> None:
    result = ranker.rank(USER, np.array([10**9, 10**9 + 1]), 10)
    assert (result.ids.size, result.dropped) == (0, 2)


def test_rank_scores_equal_a_times_inner_product_plus_b(ranker) -> None:
    ids = np.arange(20)
    result = ranker.rank(USER, ids, 20)
    u = ranker.user_vector(USER)
    v = ranker.store.get_strict(result.ids)
    np.testing.assert_allclose(result.scores, ranker.a * (v @ u) + ranker.b, rtol=1e-6)


@pytest.mark.parametrize("n", [1, 5, 50, 200])
def test_partial_sort_matches_a_full_sort(n: int, rng: np.random.Generator) -> None:
    scores = rng.normal(size=100).astype(np.float32)
    np.testing.assert_array_equal(top_positions(scores, n), np.argsort(-scores, kind="stable")[:n])


@pytest.mark.parametrize("n", [1, 7, 30, 99])
def test_ties_keep_candidate_order_inside_and_at_the_cut(n: int, rng: np.random.Generator) -> None:
    scores = rng.integers(0, 4, size=100).astype(np.float32)  # few distinct values: ties everywhere
    got = top_positions(scores, n)
    want = sorted(range(100), key=lambda i: (-scores[i], i))[:n]  # best score first, then earlier candidate
    np.testing.assert_array_equal(got, want)


def test_user_missing_a_feature_names_it(ranker) -> None:
    user = {k: v for k, v in USER.items() if k != "gender"}
    with pytest.raises(ServingError, match="the user lacks feature 'gender' .*reads: user_id, age, gender"):
        ranker.rank(user, np.arange(5))


@pytest.mark.parametrize(("feature", "value", "needs"), [
    ("gender", 3, "a string"), ("user_id", "12", r"an int64 id \(a JSON integer\)"),
    ("user_id", 1.5, r"an int64 id \(a JSON integer\)"), ("age", "thirty", "a number"),
    ("hour", True, r"an int64 id \(a JSON integer\)"),
])
def test_user_feature_of_wrong_type_names_feature_and_type(ranker, feature, value, needs) -> None:
    problem = f"feature '{feature}' needs {needs} or null, got {type(value).__name__}"
    with pytest.raises(ServingError, match=problem):
        ranker.rank({**USER, feature: value}, np.arange(5))


def test_a_user_id_beyond_int64_is_named_not_an_overflow(ranker) -> None:
    with pytest.raises(ServingError, match=r"feature 'user_id' is 1180591620717411303424, beyond the int64 range"):
        ranker.rank({**USER, "user_id": 2**70}, np.arange(5))


def test_a_number_beyond_float32_is_named_without_a_numpy_warning(ranker, recwarn) -> None:
    with pytest.raises(ServingError, match=r"feature 'age' is 1e\+39, beyond the float32 range"):
        ranker.rank({**USER, "age": 1e39}, np.arange(5))
    assert not [w for w in recwarn if issubclass(w.category, RuntimeWarning)]


def test_null_features_are_missing_values_not_errors(ranker) -> None:
    assert ranker.rank({k: None for k in USER}, np.arange(5), 3).ids.size == 3


def test_non_integer_candidate_ids_are_rejected(ranker) -> None:
    with pytest.raises(ServingError, match="must be integers"):
        ranker.rank(USER, np.array([1.5, 2.0]))


def test_user_feeds_equal_the_reference_feeds_from_records(context) -> None:
    ctx, _ = context
    user = {**USER, "region": None, "age": None}
    fast, slow = UserFeeds(ctx.encoder)(user), feeds_from_records(ctx.encoder, [user], "user")
    assert fast.keys() == slow.keys()
    for name in fast:
        assert fast[name].dtype == slow[name].dtype and fast[name].shape == slow[name].shape
        np.testing.assert_array_equal(fast[name].astype(str), slow[name].astype(str))


def test_item_feeds_split_multi_valued_strings_like_the_reference(context) -> None:
    ctx, _ = context
    item = {"item_id": 3, "category": "c01", "topic": 4, "tags": " t01| |t02||t03|t04|t05", "price": 9.5}
    fast, slow = UserFeeds(ctx.encoder, "item")(item), feeds_from_records(ctx.encoder, [item], "item")
    np.testing.assert_array_equal(fast["tags"], slow["tags"])


def test_recall_returns_the_exact_top_k_over_the_kv_vectors(ranker) -> None:
    result = ranker.recall(USER, 10)
    ids = np.array(ranker.store.ids())
    scores = ranker.a * (ranker.store.get_strict(ids) @ ranker.user_vector(USER)) + ranker.b
    np.testing.assert_array_equal(result.ids, ids[np.argsort(-scores, kind="stable")[:10]])


def test_new_item_encoded_by_the_item_tower_is_recalled_without_a_rebuild(ranker, run_dir) -> None:
    cfg = load_config(run_dir / "config.toml")
    catalogue = read_catalogue(run_dir / "items.parquet", cfg.data)
    new = catalogue.head(1).with_columns(pl.lit(10**9, dtype=pl.Int64).alias("item_id"))
    vector = encode_items(onnx_session(run_dir / "item_tower.onnx"), ranker.feeds.encoder, new)
    index = ranker.index()
    before = index.count
    index.add([10**9], vector)
    assert index.count == before + 1
    assert 10**9 in index.search(vector, 5)[1][0]
    index.remove([10**9])
    assert 10**9 not in index.search(vector, 5)[1][0]


def test_from_run_refuses_a_modified_artifact(copied: Path) -> None:
    with open(copied / "user_tower.onnx", "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ArtifactError, match="user_tower.onnx does not match its sha256 in manifest.json"):
        CoarseRanker.from_run(copied)


def test_from_run_refuses_a_run_without_exports(copied: Path) -> None:
    manifest = json.loads((copied / "manifest.json").read_text())
    del manifest["stages"]["export"]
    (copied / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="stage 'export' is missing; the serving artifacts come from it"):
        CoarseRanker.from_run(copied)


def test_from_run_refuses_a_missing_artifact(copied: Path) -> None:
    (copied / "items.kv").unlink()
    with pytest.raises(ArtifactError, match=r"items.kv is missing"):
        CoarseRanker.from_run(copied)


def test_from_run_refuses_a_store_of_another_model(run_dir: Path, tmp_path: Path) -> None:
    with FileKVStore(run_dir / "items.kv") as store:
        ids = np.array(store.ids())
        write_kv_file(tmp_path / "other.kv", ids, store.get_strict(ids), "f" * 64)
    with pytest.raises(ArtifactError, match="holds vectors of model 'fff.*publish this run's item vectors"):
        CoarseRanker.from_run(run_dir, store=str(tmp_path / "other.kv"))


def test_read_candidates_skips_blank_lines_and_strips_spaces(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("3\n\n  17 \n-4\n")
    np.testing.assert_array_equal(read_candidates(tmp_path / "c.txt"), [3, 17, -4])


@pytest.mark.parametrize("bad", ["abc", "1.5", "99999999999999999999", "1 2"])
def test_read_candidates_names_the_first_non_integer_line(tmp_path: Path, bad: str) -> None:
    (tmp_path / "c.txt").write_text(f"3\n4\n{bad}\n5\n")
    with pytest.raises(ServingError, match=f"c.txt, line 3: '{bad}' is not an integer item id"):
        read_candidates(tmp_path / "c.txt")


def test_read_candidates_refuses_an_empty_file(tmp_path: Path) -> None:
    (tmp_path / "c.txt").write_text("\n \n")
    with pytest.raises(ServingError, match="holds no item ids"):
        read_candidates(tmp_path / "c.txt")


def test_read_candidates_names_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ServingError, match="cannot read the candidates file .*nope.txt"):
        read_candidates(tmp_path / "nope.txt")


@pytest.mark.parametrize(("text", "problem"), [
    ("{user_id: 1}", "is not valid JSON"), ("[1, 2]", "must be a JSON object of feature values, got list"),
])
def test_parse_user_explains_bad_json(text: str, problem: str) -> None:
    with pytest.raises(ServingError, match=problem):
        parse_user(text)
