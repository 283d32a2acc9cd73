"""Retrieval metrics over the catalogue against naive per-user loops and scikit-learn's ndcg_score."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose
from sklearn.metrics import ndcg_score

from coarserank.errors import ConfigError, DataError
from coarserank.ranking_eval.retrieval import (
    UserItems,
    evaluate_retrieval,
    gini,
    popularity_item_vectors,
    popularity_percentiles,
    retrieval_metrics,
    retrieval_summary,
    top_k,
)

KS = (5, 10, 40)


def _random_sets(rng: np.random.Generator, n_users: int, n_items: int, mean_size: float) -> UserItems:
    sizes = rng.poisson(mean_size, n_users)
    users = np.repeat(np.arange(n_users), sizes)
    items = rng.integers(0, n_items, users.size)
    return UserItems.from_pairs(users, items, n_users, n_items)


def _problem(rng: np.random.Generator, n_users: int = 60, n_items: int = 200, interests: int = 1):
    dim = 8
    shape = (n_users, dim) if interests == 1 else (n_users, interests, dim)
    users = rng.normal(size=shape).astype(np.float32)
    items = rng.normal(size=(n_items, dim)).astype(np.float32)
    heldout = _random_sets(rng, n_users, n_items, 3.0)
    exclude = _random_sets(rng, n_users, n_items, 10.0)
    counts = rng.zipf(1.5, n_items).clip(max=500).astype(np.float64)
    return users, items, heldout, exclude, counts


def _naive(users, items, heldout: UserItems, exclude: UserItems, ks, counts) -> dict:
    """One user at a time: score every item, drop the excluded, sort, count hits."""
    recall = {k: [] for k in ks}
    ndcg = {k: [] for k in ks}
    returned = {k: [] for k in ks}
    for u in range(heldout.n_users):
        known = set(exclude.row(u).tolist())
        target = set(heldout.row(u).tolist()) - known
        if not target:
            continue
        vec = users[u] if users.ndim == 3 else users[u][None, :]
        scores = (vec.astype(np.float64) @ items.T.astype(np.float64)).max(axis=0)
        ranked = [i for i in sorted(range(len(items)), key=lambda i: (-scores[i], i)) if i not in known]
        for k in ks:
            top = ranked[:k]
            hits = [r for r, i in enumerate(top) if i in target]
            recall[k].append(len(hits) / len(target))
            dcg = sum(1.0 / np.log2(r + 2) for r in hits)
            idcg = sum(1.0 / np.log2(r + 2) for r in range(min(len(target), k)))
            ndcg[k].append(dcg / idcg)
            returned[k] += top
    out = {"recall": {k: np.mean(v) for k, v in recall.items()}, "ndcg": {k: np.mean(v) for k, v in ndcg.items()},
           "coverage": {k: len(set(v)) / len(items) for k, v in returned.items()}}
    n = len(counts)
    pct = np.array([(np.sum(counts < c) + (np.sum(counts == c) - 1) / 2) / (n - 1) for c in counts])
    out["pct"] = {k: float(np.mean(pct[v])) for k, v in returned.items()}
    return out


def test_top_k_matches_sorting_every_users_scores(rng):
    users, items, _, exclude, _ = _problem(rng)
    got = top_k(users, items, 25, exclude)
    for u in range(users.shape[0]):
        scores = items @ users[u]
        known = set(exclude.row(u).tolist())
        want = [i for i in np.argsort(-scores, kind="stable") if i not in known][:25]
        assert got[u].tolist() == want


@pytest.mark.parametrize("interests", [1, 4])
def test_recall_ndcg_coverage_and_popularity_match_a_naive_per_user_loop(rng, interests):
    users, items, heldout, exclude, counts = _problem(rng, interests=interests)
    got = evaluate_retrieval(users, items, heldout, exclude, KS, counts)
    want = _naive(users, items, heldout, exclude, KS, counts)
    for k in KS:
        assert_allclose(got.recall[k], want["recall"][k], rtol=1e-12)
        assert_allclose(got.ndcg[k], want["ndcg"][k], rtol=1e-12)
        assert_allclose(got.coverage[k], want["coverage"][k], rtol=1e-12)
        assert_allclose(got.popularity_percentile[k], want["pct"][k], rtol=1e-12)


def test_ndcg_matches_sklearn_over_the_non_excluded_catalogue(rng):
    users, items, heldout, exclude, counts = _problem(rng, n_users=30)
    got = evaluate_retrieval(users, items, heldout, exclude, (10,), counts)
    per_user = []
    for u in range(30):
        keep = np.setdiff1d(np.arange(items.shape[0]), exclude.row(u))
        truth = np.isin(keep, heldout.row(u)).astype(float)
        if truth.sum() == 0:
            continue
        per_user.append(ndcg_score(truth[None, :], (items[keep] @ users[u])[None, :], k=10))
    assert_allclose(got.ndcg[10], np.mean(per_user), rtol=1e-6)


def test_users_without_held_out_positives_outside_their_known_items_are_skipped_and_counted():
    heldout = UserItems.from_pairs(np.array([0, 1, 2]), np.array([1, 2, 3]), 4, 5)
    exclude = UserItems.from_pairs(np.array([1]), np.array([2]), 4, 5)
    users = np.eye(4, 5, dtype=np.float32)
    result = evaluate_retrieval(users, np.eye(5, dtype=np.float32), heldout, exclude, (2,), np.ones(5))
    assert (result.users_used, result.users_skipped) == (2, 2)


def test_excluded_items_are_never_returned_and_short_lists_end_in_minus_one():
    exclude = UserItems.from_pairs(np.array([0, 0, 0]), np.array([0, 2, 3]), 1, 4)
    top = top_k(np.ones((1, 2), dtype=np.float32), np.arange(8, dtype=np.float32).reshape(4, 2), 3, exclude)
    assert top.tolist() == [[1, -1, -1]]


def test_popularity_vectors_rank_items_by_train_count_with_ties_by_position():
    counts = np.array([3, 9, 3, 0, 9])
    top = top_k(np.ones((1, 1), dtype=np.float32), popularity_item_vectors(counts), 5)
    assert top.tolist() == [[1, 4, 0, 2, 3]]


def test_head_only_retrieval_shows_in_every_skew_measure(rng):
    n_items = 300
    counts = np.sort(rng.zipf(1.3, n_items).clip(max=10_000))[::-1].astype(float)
    heldout = _random_sets(rng, 50, n_items, 4.0)
    pop = evaluate_retrieval(np.ones((50, 1), np.float32), popularity_item_vectors(counts), heldout, None, (10,),
                             counts)
    spread = evaluate_retrieval(rng.normal(size=(50, 8)).astype(np.float32),
                                rng.normal(size=(n_items, 8)).astype(np.float32), heldout, None, (10,), counts)
    assert pop.coverage[10] == 10 / n_items
    assert pop.popularity_percentile[10] > 0.95 > spread.popularity_percentile[10]
    assert pop.head_share[10] == 1.0 and pop.gini[10] > spread.gini[10]


def test_gini_matches_the_mean_absolute_difference_formula(rng):
    c = rng.integers(0, 20, 50).astype(float)
    mad = np.abs(c[:, None] - c[None, :]).mean()
    assert_allclose(gini(c), mad / (2 * c.mean()), rtol=1e-12)


def test_popularity_percentiles_share_ranks_on_ties():
    assert popularity_percentiles(np.array([5, 1, 5, 7])).tolist() == [0.5, 0.0, 0.5, 1.0]


def test_a_cut_off_below_one_is_a_config_error(rng):
    users, items, heldout, exclude, counts = _problem(rng)
    with pytest.raises(ConfigError, match="cut-off K must be >= 1, got 0"):
        evaluate_retrieval(users, items, heldout, exclude, (0, 10), counts)


def test_ranked_lists_shorter_than_the_largest_cut_off_are_a_data_error(rng):
    heldout = _random_sets(rng, 5, 20, 2.0)
    with pytest.raises(DataError, match="ranked lists must be"):
        retrieval_metrics(np.zeros((5, 3), dtype=np.int64), heldout, (10,), np.ones(20))


def test_user_items_minus_and_take_are_row_wise_set_operations(rng):
    a, b = _random_sets(rng, 20, 30, 6.0), _random_sets(rng, 20, 30, 6.0)
    diff = a.minus(b)
    for u in range(20):
        assert diff.row(u).tolist() == sorted(set(a.row(u).tolist()) - set(b.row(u).tolist()))
    picked = a.take(np.array([7, 3, 3]))
    assert [picked.row(i).tolist() for i in range(3)] == [a.row(7).tolist(), a.row(3).tolist(), a.row(3).tolist()]


def test_the_summary_flags_models_whose_top_k_is_head_only_but_not_the_popularity_baseline(rng):
    n_items = 300
    counts = np.sort(rng.zipf(1.3, n_items).clip(max=10_000))[::-1].astype(float)
    heldout = _random_sets(rng, 40, n_items, 4.0)
    pop = evaluate_retrieval(np.ones((40, 1), np.float32), popularity_item_vectors(counts), heldout, None, (10, 50),
                             counts)
    spread = evaluate_retrieval(rng.normal(size=(40, 8)).astype(np.float32),
                                rng.normal(size=(n_items, 8)).astype(np.float32), heldout, None, (10, 50), counts)
    table = {"recall": spread.to_json(), "student": pop.to_json(), "popularity": pop.to_json()}
    summary = retrieval_summary(table, 100)
    assert summary["head_only"] == ["student"]
    assert [r["k"] for r in summary["rows"]] == [50, 50, 50]
