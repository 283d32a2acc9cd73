"""The streaming train source: shards, equal step counts, shuffling, prefetch, errors."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from coarserank.distill.stream_table import StreamingTable, prefetch, shard_partitions
from coarserank.distill.tensors import TensorTable, make_table
from coarserank.errors import DataError

SIZES = (300, 120, 0, 250, 90, 400, 160)


def _table(sizes=SIZES, **kw) -> StreamingTable:
    offsets = np.concatenate([[0], np.cumsum(sizes)])

    def read(i: int) -> TensorTable:
        rows = np.arange(offsets[i], offsets[i + 1])
        return make_table({"row": rows}, rows % 2, rows // 7, dense_groups=False)

    return StreamingTable(read, tuple(sizes), **kw)


def _rows(batches) -> np.ndarray:
    return np.concatenate([b.inputs["row"].numpy() for b in batches])


def test_shards_cover_every_non_empty_partition_once():
    shards = shard_partitions(SIZES, 3)
    flat = sorted(i for s in shards for i in s)
    assert flat == [i for i, n in enumerate(SIZES) if n]


def test_shards_are_balanced_by_rows():
    loads = [sum(SIZES[i] for i in s) for s in shard_partitions(SIZES, 2)]
    assert max(loads) - min(loads) <= max(SIZES)


def test_an_epoch_yields_full_batches_of_distinct_rows():
    table = _table(shuffle_partitions=2)
    batches = list(table.batches(64, torch.Generator().manual_seed(0)))
    assert len(batches) == sum(SIZES) // 64 == table.steps(64, 1)
    assert all(len(b) == 64 for b in batches)
    rows = _rows(batches)
    assert len(np.unique(rows)) == len(rows)


def test_batches_mix_rows_of_several_partitions():
    batch = next(_table(shuffle_partitions=3).batches(64, torch.Generator().manual_seed(0)))
    offsets = np.cumsum(SIZES)
    assert len(np.unique(np.searchsorted(offsets, batch.inputs["row"].numpy(), side="right"))) > 1


def test_epochs_differ_and_the_seed_repeats_them():
    table = _table()
    a = _rows(table.batches(64, torch.Generator().manual_seed(0)))
    b = _rows(table.batches(64, torch.Generator().manual_seed(0)))
    c = _rows(table.batches(64, torch.Generator().manual_seed(1)))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_every_rank_takes_the_same_number_of_steps_from_its_own_shard():
    table = _table()
    per_rank = [list(table.batches(64, torch.Generator().manual_seed(0), rank=r, world=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == table.steps(64, 2)
    assert all(len(b) == 32 for batches in per_rank for b in batches)
    shards = shard_partitions(SIZES, 2)
    offsets = np.concatenate([[0], np.cumsum(SIZES)])
    for r, batches in enumerate(per_rank):
        owner = np.searchsorted(offsets, _rows(batches), side="right") - 1
        assert set(owner) <= set(shards[r])


def test_a_rank_without_rows_is_an_error_naming_it():
    with pytest.raises(DataError, match=r"rank 1 of 2 gets 0 training row"):
        _table((500, 0, 0)).steps(64, 2)


def test_grouped_batches_keep_groups_together():
    table = _table(shuffle_partitions=10)
    batch = next(table.batches(64, torch.Generator().manual_seed(0), grouped=True))
    groups = batch.group.numpy()
    changes = (np.diff(groups) != 0).sum()
    assert changes + 1 == len(np.unique(groups))


def test_a_reader_error_reaches_the_training_loop():
    def read(i: int) -> TensorTable:
        raise DataError(f"partition {i} is corrupt")

    with pytest.raises(DataError, match="partition 0 is corrupt"):
        list(StreamingTable(read, (100, 100)).batches(10, torch.Generator().manual_seed(0)))


def test_stopping_early_stops_the_prefetch_thread():
    before = threading.active_count()
    items = prefetch(list(range(100)), lambda i: _table().read(0), depth=2)
    next(items)
    items.close()
    assert threading.active_count() == before
