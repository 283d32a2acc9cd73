"""Recall for users with several interest vectors: one Faiss query per interest, merged by score."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.testing import assert_allclose

from coarserank.errors import ConfigError
from coarserank.serving.faiss_index import ItemIndex, merge_by_score, search_interests

DIM = 12


def _clustered(rng: np.random.Generator, n: int, centers: int = 15) -> np.ndarray:
    c = rng.normal(size=(centers, DIM))
    x = c[rng.integers(0, centers, n)] + 0.4 * rng.normal(size=(n, DIM))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_merged_flat_search_is_the_exact_top_k_by_the_maximum_over_interests(rng):
    ids = rng.choice(10**9, size=800, replace=False).astype(np.int64)
    vectors = _clustered(rng, ids.size)
    queries = _clustered(rng, 20 * 4).reshape(20, 4, DIM)
    scores, found = search_interests(ItemIndex.build(ids, vectors, "flat"), queries, 30)
    for u in range(20):
        best = (queries[u] @ vectors.T).max(axis=0)
        order = np.argsort(-best, kind="stable")[:30]
        assert found[u].tolist() == ids[order].tolist()
        assert_allclose(scores[u], best[order], rtol=1e-5)


def test_an_item_found_by_several_interests_appears_once_with_its_best_score():
    scores = np.array([[0.9, 0.5, 0.3, 0.8, 0.5, 0.1]], dtype=np.float32)
    ids = np.array([[7, 3, 2, 3, 7, 9]])
    s, i = merge_by_score(scores, ids, 4)
    assert i.tolist() == [[7, 3, 2, 9]]
    assert_allclose(s, [[0.9, 0.8, 0.3, 0.1]])


def test_rows_with_fewer_distinct_items_than_k_are_padded_with_minus_one():
    s, i = merge_by_score(np.array([[0.5, 0.4, -np.inf]], dtype=np.float32), np.array([[4, 4, -1]]), 3)
    assert i.tolist() == [[4, -1, -1]]
    assert s[0, 0] == np.float32(0.5) and np.isneginf(s[0, 1:]).all()


def test_one_vector_per_user_is_a_plain_search(rng):
    ids = np.arange(100, dtype=np.int64)
    vectors = _clustered(rng, 100)
    index = ItemIndex.build(ids, vectors, "flat")
    q = _clustered(rng, 5)
    for got, want in zip(search_interests(index, q, 10), index.search(q, 10)):
        assert np.array_equal(got, want)


def test_merging_to_fewer_than_one_item_is_a_config_error():
    with pytest.raises(ConfigError, match="k must be >= 1"):
        merge_by_score(np.zeros((1, 2), np.float32), np.zeros((1, 2), np.int64), 0)
