"""Catalogue rows of candidate ids: the direct table and the binary search agree with a dictionary."""

from __future__ import annotations

import numpy as np
import pytest

from coarserank.serving.catalogue import RowIndex


def _naive(catalogue: np.ndarray, ids: np.ndarray) -> tuple[list[int], list[bool]]:
    first: dict[int, int] = {}
    for row, item in enumerate(catalogue.tolist()):
        first.setdefault(item, row)
    return [first.get(i, -1) for i in ids.tolist()], [i in first for i in ids.tolist()]


@pytest.mark.parametrize("spread", [1, 3, 10**12], ids=["dense", "gaps", "sparse"])
def test_rows_and_found_equal_a_dictionary_lookup(spread: int) -> None:
    rng = np.random.default_rng(spread % 97)
    catalogue = rng.permutation(np.arange(500, dtype=np.int64) * spread + 7)
    ids = np.concatenate([rng.choice(catalogue, 300), np.array([-5, 0, 6, int(catalogue.max()) + 1, 2**62])])
    rows, found = RowIndex(catalogue).lookup(ids)
    want_rows, want_found = _naive(catalogue, ids)
    np.testing.assert_array_equal(found, want_found)
    np.testing.assert_array_equal(rows[found], np.asarray(want_rows)[found])


def test_dense_ids_use_the_direct_table_and_sparse_ids_the_search() -> None:
    assert RowIndex(np.arange(100, dtype=np.int64))._table is not None
    assert RowIndex(np.array([1, 10**15], dtype=np.int64))._table is None
    assert RowIndex(np.array([-1, 3], dtype=np.int64))._table is None


def test_a_repeated_id_maps_to_its_first_row() -> None:
    rows, found = RowIndex(np.array([4, 2, 4, 9], dtype=np.int64)).lookup(np.array([4, 9, 2]))
    np.testing.assert_array_equal(rows, [0, 3, 1])
    assert found.all()


def test_an_empty_catalogue_finds_nothing() -> None:
    rows, found = RowIndex(np.zeros(0, dtype=np.int64)).lookup(np.array([1, 2]))
    assert rows.shape == (2,) and not found.any()
