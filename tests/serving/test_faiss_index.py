"""Specification of the Faiss recall index: ids, kinds, tuning, recall, add/remove, persistence.

Vectors are clustered (a Gaussian mixture on the unit sphere, like a trained item tower's output),
never uniform random (DESIGN.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from coarserank.errors import ArtifactError, ConfigError, DataError
from coarserank.serving.faiss_index import (
    AUTO_FLAT_BELOW,
    ItemIndex,
    choose_kind,
    evaluate,
    exact_search,
    recall_at_k,
    recall_per_query,
    sidecar_path,
    tune,
)

DIM = 16
KINDS = ["flat", "hnsw", "ivf", "ivfpq"]


def _clustered(rng: np.random.Generator, n: int, centers: int = 20) -> np.ndarray:
    c = rng.normal(size=(centers, DIM))
    x = c[rng.integers(0, centers, n)] + 0.35 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture
def items(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.choice(10**12, size=3000, replace=False).astype(np.int64)
    return ids, _clustered(rng, ids.size)


def _exact_top(ids: np.ndarray, x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """Reference written independently: full numpy sort of q @ x.T."""
    return ids[np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]]


def test_choose_kind_is_flat_for_small_catalogues_and_ivf_for_large() -> None:
    assert choose_kind(AUTO_FLAT_BELOW - 1) == "flat"
    assert choose_kind(AUTO_FLAT_BELOW) == "ivf"


def test_flat_index_returns_item_ids_and_inner_products_of_exact_search(items, rng) -> None:
    ids, x = items
    q = _clustered(rng, 5)
    scores, found = ItemIndex.build(ids, x, "flat").search(q, 10)
    np.testing.assert_array_equal(found, _exact_top(ids, x, q, 10))
    pos = np.searchsorted(np.sort(ids), found)
    rows = np.argsort(ids)[pos]
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[rows]), atol=1e-5)


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_reach_recall_target_after_tuning(kind, items, rng) -> None:
    ids, x = items
    index = ItemIndex.build(ids, x, kind)
    facts = evaluate(index, ids, x, _clustered(rng, 200), target=0.95, repeats=1)
    assert facts["recall@100"] >= 0.9
    assert facts["tune_recall"] >= 0.95


def test_recall_per_query_matches_a_naive_set_intersection(items, rng) -> None:
    ids, x = items
    index = ItemIndex.build(ids, x, "ivf")
    index.set_search(nprobe=2)
    q = _clustered(rng, 30)
    truth, found = _exact_top(ids, x, q, 50), index.search(q, 50)[1]
    naive = [len(set(t) & set(f)) / len(t) for t, f in zip(truth.tolist(), found.tolist())]
    np.testing.assert_allclose(recall_per_query(truth, found, 50), naive)
    assert recall_at_k(truth, found, 50) == pytest.approx(np.mean(naive))


def test_tuning_stops_at_the_first_setting_whose_95_percent_lower_bound_reaches_the_target(items, rng) -> None:
    from scipy import stats

    ids, x = items
    index = ItemIndex.build(ids, x, "ivf")
    q = _clustered(rng, 100)
    truth = _exact_top(ids, x, q, 100)
    got = tune(index, q, truth, k=100, target=0.9)

    def lower(nprobe: int) -> float:
        index.set_search(nprobe=nprobe)
        r = np.array([len(set(t) & set(f)) / 100 for t, f in zip(truth.tolist(), index.search(q, 100)[1].tolist())])
        return float(r.mean() - stats.norm.ppf(0.95) * stats.sem(r))

    assert got["tune_recall_lower"] == pytest.approx(lower(got["nprobe"]), abs=1e-3) and got["tune_recall_lower"] >= 0.9
    smaller = [p for p in (1, 2, 3, 4, 6, 8, 12, 16, 24, 32) if p < got["nprobe"]]
    assert smaller and all(lower(p) < 0.9 for p in smaller)  # it did not stop late
    assert got["tune_recall"] > got["tune_recall_lower"]


def test_evaluate_reports_recall_qps_and_the_tuned_parameter(items, rng) -> None:
    ids, x = items
    facts = evaluate(ItemIndex.build(ids, x, "ivf"), ids, x, _clustered(rng, 40), repeats=1)
    assert {"recall@10", "recall@100", "qps", "exact_qps", "speedup", "nprobe", "threads"} <= facts.keys()
    assert facts["queries"] == 20 and facts["tune_queries"] == 20


def test_auto_kind_resolves_by_catalogue_size(items) -> None:
    ids, x = items
    assert ItemIndex.build(ids, x, "auto").kind == "flat"


def test_unknown_kind_is_rejected_with_the_allowed_kinds(items) -> None:
    ids, x = items
    with pytest.raises(ConfigError, match="index kind must be 'auto' or one of .*'hnsw'.*got 'annoy'"):
        ItemIndex.build(ids, x, "annoy")


def test_duplicate_ids_are_rejected(items) -> None:
    ids, x = items
    with pytest.raises(DataError, match="occur more than once"):
        ItemIndex.build(np.concatenate([ids[:-1], ids[:1]]), x, "flat")


def test_id_minus_one_is_rejected_because_faiss_uses_it_for_no_result(items) -> None:
    ids, x = items
    with pytest.raises(DataError, match="item id -1 cannot be indexed"):
        ItemIndex.build(np.concatenate([ids[:-1], [-1]]), x, "flat")


def test_query_of_wrong_dimension_is_rejected(items) -> None:
    ids, x = items
    with pytest.raises(DataError, match="query vectors have dim 8, the index holds dim 16"):
        ItemIndex.build(ids, x, "flat").search(np.ones((1, 8), dtype=np.float32), 5)


def test_search_pads_with_minus_one_when_fewer_items_than_k(rng) -> None:
    x = _clustered(rng, 3)
    scores, found = ItemIndex.build(np.array([5, 6, 7]), x, "flat").search(x[:1], 5)
    assert sorted(found[0, :3].tolist()) == [5, 6, 7]
    assert found[0, 3:].tolist() == [-1, -1] and np.isneginf(scores[0, 3:]).all()


@pytest.mark.parametrize("kind", KINDS)
def test_new_item_is_found_without_a_rebuild(kind, items, rng) -> None:
    ids, x = items
    index = ItemIndex.build(ids, x, kind)
    index.set_search(**({"efSearch": 256} if kind == "hnsw" else {"nprobe": 64} if kind != "flat" else {}))
    new_id = 10**13
    new_vec = _clustered(rng, 1)
    index.add([new_id], new_vec)
    assert index.count == ids.size + 1
    assert new_id in index.search(new_vec, 10)[1][0]


@pytest.mark.parametrize("kind", KINDS)
def test_removed_items_disappear_from_results(kind, items) -> None:
    ids, x = items
    index = ItemIndex.build(ids, x, kind)
    gone = ids[:50]
    assert index.remove(gone) == 50
    found = index.search(x[:50], 20)[1]
    assert not np.isin(found, gone).any()
    assert index.count == ids.size - 50
    assert not np.isin(gone, index.ids()).any()


def test_removing_unknown_ids_counts_only_present_ones(items) -> None:
    ids, x = items
    index = ItemIndex.build(ids, x, "hnsw")
    assert index.remove([ids[0], ids[0], 10**13]) == 1
    assert index.remove([ids[0]]) == 0


def test_adding_an_id_already_present_is_rejected(items) -> None:
    ids, x = items
    with pytest.raises(DataError, match="already in the index"):
        ItemIndex.build(ids, x, "flat").add(ids[:1], x[:1])


def test_hnsw_cannot_re_add_a_removed_id_before_a_rebuild(items) -> None:
    ids, x = items
    index = ItemIndex.build(ids, x, "hnsw")
    index.remove(ids[:1])
    with pytest.raises(DataError, match="removed from this hnsw index .* until it is rebuilt"):
        index.add(ids[:1], x[:1])


def test_flat_index_can_re_add_a_removed_id(items) -> None:
    ids, x = items
    index = ItemIndex.build(ids, x, "flat")
    index.remove(ids[:1])
    index.add(ids[:1], x[:1])
    assert index.search(x[:1], 1)[1][0, 0] == ids[0]


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_round_trip_keeps_results_parameters_and_tombstones(kind, items, tmp_path) -> None:
    ids, x = items
    index = ItemIndex.build(ids, x, kind)
    if kind != "flat":
        index.set_search(**({"efSearch": 128} if kind == "hnsw" else {"nprobe": 8}))
    index.remove(ids[:3])
    written = index.save(tmp_path / "items.faiss", {"recall@100": 0.97})
    assert written == [tmp_path / "items.faiss", tmp_path / "items.faiss.json"]
    loaded = ItemIndex.load(tmp_path / "items.faiss")
    assert (loaded.kind, loaded.search_params, loaded.count) == (kind, index.search_params, index.count)
    np.testing.assert_array_equal(loaded.search(x[:5], 10)[1], index.search(x[:5], 10)[1])
    assert json.loads(sidecar_path(tmp_path / "items.faiss").read_text())["recall@100"] == 0.97


def test_loading_a_missing_index_names_the_file_and_the_fix(items, tmp_path: Path) -> None:
    ids, x = items
    ItemIndex.build(ids, x, "flat").save(tmp_path / "items.faiss")
    (tmp_path / "items.faiss").unlink()
    with pytest.raises(ArtifactError, match=r"items.faiss is missing; build it with `distill index"):
        ItemIndex.load(tmp_path / "items.faiss")


def test_unknown_search_parameter_names_the_right_one(items) -> None:
    ids, x = items
    with pytest.raises(ConfigError, match="a hnsw index has no search parameter 'nprobe'; it has 'efSearch'"):
        ItemIndex.build(ids, x, "hnsw").set_search(nprobe=4)


def test_recall_at_k_matches_a_per_row_set_reference(rng) -> None:
    truth = np.stack([rng.permutation(50)[:10] for _ in range(30)])
    found = np.stack([rng.permutation(50)[:10] for _ in range(30)])
    found[0, 5:] = -1
    expected = np.mean([len(set(t) & (set(f) - {-1})) / 10 for t, f in zip(truth, found)])
    assert recall_at_k(truth, found, 10) == pytest.approx(expected)


def test_recall_at_k_ignores_padding_in_the_truth(rng) -> None:
    truth = np.array([[3, 4, -1, -1]])
    assert recall_at_k(truth, np.array([[4, 3, -1, -1]]), 4) == 1.0


def test_exact_search_agrees_with_a_numpy_sort(items, rng) -> None:
    ids, x = items
    q = _clustered(rng, 4)
    np.testing.assert_array_equal(exact_search(ids, x, q, 7)[1], _exact_top(ids, x, q, 7))
