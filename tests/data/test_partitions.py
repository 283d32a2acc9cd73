"""The partitioned exposure log: discovery, checks, global row ids, the time split, streaming fit."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from coarserank.config import load_config
from coarserank.data.encode import Encoder
from coarserank.data.partitions import PartitionedLog, write_partitions
from coarserank.data.prepare import prepare, time_cutoffs
from coarserank.data.synthetic import generate
from coarserank.data.tables import RawTables
from coarserank.errors import DataError

STREAM = ["data.source=\"table\"", "data.exposures=\"exposures\"", "data.users=\"users.parquet\"",
          "data.items=\"items.parquet\"", "data.split=\"global_time\"", "data.streaming=true", "distill.sampled=0",
          "data.history_crosses=[]"]


@pytest.fixture(scope="module")
def raw() -> RawTables:
    return generate(load_config(overrides=["synthetic.rows=6000"]).synthetic, 3)


@pytest.fixture
def log_dir(tmp_path, raw):
    write_partitions(raw, tmp_path, 1000)
    return tmp_path


def _cfg(path, *extra):
    return load_config(overrides=[*STREAM, f'data.path="{path}"', *extra]).data


def _whole(log: PartitionedLog) -> pl.DataFrame:
    return pl.concat([log.read(i) for i in range(len(log.partitions_))], how="vertical_relaxed")


def test_partitions_are_found_in_path_order_with_their_row_counts(log_dir):
    log = PartitionedLog(_cfg(log_dir)).open()
    assert [p.path.name for p in log.partitions_] == [f"part-{k:05d}.parquet" for k in range(6)]
    assert [p.rows for p in log.partitions_] == [1000] * 6
    assert [p.offset for p in log.partitions_] == [0, 1000, 2000, 3000, 4000, 5000]


def test_read_gives_global_row_ids(log_dir):
    log = PartitionedLog(_cfg(log_dir)).open()
    assert log.read(2)["_row"].to_list() == list(range(2000, 3000))


def test_streamed_partitions_match_the_in_memory_preparation(log_dir, raw):
    cfg = _cfg(log_dir)
    log = PartitionedLog(cfg).open()
    streamed = _whole(log).sort("_row")
    whole = prepare(raw, load_config(overrides=[*STREAM[:5], "data.history_crosses=[]"]).data)
    for col in ("_row", "_label", "_time", "_split", "_group", "category", "fav_topic"):
        assert streamed[col].to_list() == whole[col].to_list(), col


def test_split_rows_count_each_split(log_dir):
    log = PartitionedLog(_cfg(log_dir)).open()
    counts = dict(_whole(log).group_by("_split").len().iter_rows())
    assert log.split_rows_ == {s: counts.get(s, 0) for s in ("train", "valid", "test")}
    assert sum(log.train_rows_) == counts["train"]


def test_time_split_puts_every_train_row_before_every_valid_and_test_row(log_dir):
    frame = _whole(PartitionedLog(_cfg(log_dir)).open())
    train_max = frame.filter(pl.col("_split") == "train")["_time"].max()
    later = frame.filter(pl.col("_split") != "train")["_time"].min()
    valid_max = frame.filter(pl.col("_split") == "valid")["_time"].max()
    test_min = frame.filter(pl.col("_split") == "test")["_time"].min()
    assert train_max < later and valid_max < test_min


def test_time_cutoffs_take_the_last_shares_of_distinct_times():
    times = np.arange(1000, dtype=np.int64)[::-1].copy()
    valid_from, test_from = time_cutoffs(times, 0.1, 0.2)
    assert (times >= test_from).sum() == 200
    assert ((times >= valid_from) & (times < test_from)).sum() == 100


def test_time_cutoffs_without_a_test_share_leave_test_empty():
    valid_from, test_from = time_cutoffs(np.arange(100, dtype=np.int64), 0.1, 0.0)
    assert test_from > 99 and valid_from == 90


def test_a_corrupt_partition_is_named_in_the_error(log_dir):
    (log_dir / "exposures" / "part-00003.parquet").write_bytes(b"PAR1 not really parquet")
    with pytest.raises(DataError, match=r"part-00003\.parquet cannot be read"):
        PartitionedLog(_cfg(log_dir)).open()


def test_a_truncated_partition_is_named_in_the_error(log_dir):
    path = log_dir / "exposures" / "part-00001.parquet"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match=r"part-00001\.parquet cannot be read"):
        PartitionedLog(_cfg(log_dir)).open()


def test_a_partition_missing_a_column_is_named_with_the_column(log_dir):
    path = log_dir / "exposures" / "part-00004.parquet"
    pl.read_parquet(path).drop("label").write_parquet(path)
    with pytest.raises(DataError, match=r"part-00004\.parquet: column\(s\) 'label' not found"):
        PartitionedLog(_cfg(log_dir)).open()


def test_a_directory_without_partitions_is_an_error(tmp_path):
    (tmp_path / "exposures").mkdir()
    with pytest.raises(DataError, match="holds no \\*.parquet partitions"):
        PartitionedLog(_cfg(tmp_path)).open()


def test_a_partition_that_changes_after_open_is_an_error(log_dir):
    log = PartitionedLog(_cfg(log_dir)).open()
    path = log_dir / "exposures" / "part-00002.parquet"
    pl.read_parquet(path).head(10).write_parquet(path)
    with pytest.raises(DataError, match="changed while the run read it"):
        log.read(2)


def test_streaming_fit_equals_the_in_memory_fit(log_dir):
    cfg = _cfg(log_dir)
    log = PartitionedLog(cfg).open()
    parts = [log.read(i).filter(pl.col("_split") == "train") for i in range(len(log.partitions_))]
    whole = Encoder(cfg).fit(pl.concat(parts, how="vertical_relaxed"))
    streamed = Encoder(cfg).fit_batches(lambda: iter(parts))
    assert {k: v.values for k, v in streamed.vocabs_.items()} == {k: v.values for k, v in whole.vocabs_.items()}
    for name, (mean, std) in whole.stats_.items():
        assert streamed.stats_[name] == pytest.approx((mean, std), rel=1e-9, abs=1e-12), name
    for name, values in whole.cross_values_.items():
        np.testing.assert_array_equal(streamed.cross_values_[name], values)


def test_streaming_fit_statistics_match_numpy(log_dir):
    cfg = _cfg(log_dir)
    log = PartitionedLog(cfg).open()
    parts = [log.read(i).filter(pl.col("_split") == "train") for i in range(len(log.partitions_))]
    enc = Encoder(cfg).fit_batches(lambda: iter([*parts, parts[0].head(0)]))
    price = pl.concat(parts, how="vertical_relaxed")["price"].to_numpy()
    assert enc.stats_["price"] == pytest.approx((price.mean(), price.std()), rel=1e-9)
