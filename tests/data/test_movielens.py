from __future__ import annotations

import dataclasses

import polars as pl
import pytest

from coarserank.config import load_config
from coarserank.data.prepare import prepare
from coarserank.data.sources import read_movielens_100k
from coarserank.errors import ConfigError, DataError


def test_reads_the_original_files(ml100k_dir):
    cfg = load_config(preset="movielens-100k", overrides=[f'data.path="{ml100k_dir}"']).data
    raw = read_movielens_100k(cfg)
    assert raw.exposures.shape == (100_000, 4)
    assert raw.users.columns == ["user_id", "age", "gender", "occupation", "zip_prefix"]
    toy_story = raw.items.filter(pl.col("item_id") == 1).row(0, named=True)
    assert toy_story == {"item_id": 1, "genres": "Animation|Children's|Comedy", "year": 1995}


def test_label_is_rating_at_least_four_and_split_is_80_10_10(ml100k_dir):
    cfg = load_config(preset="movielens-100k", overrides=[f'data.path="{ml100k_dir}"']).data
    frame = prepare(read_movielens_100k(cfg), cfg)
    assert (frame["_label"] == (frame["rating"] >= 4)).all()
    shares = frame["_split"].value_counts(normalize=True).sort("_split")
    assert shares["proportion"].to_list() == pytest.approx([0.1, 0.8, 0.1], abs=0.01)


def test_missing_data_directory_is_named(tmp_path):
    cfg = load_config(preset="movielens-100k", overrides=[f'data.path="{tmp_path / "nope"}"']).data
    with pytest.raises(DataError, match="data directory .*nope does not exist"):
        read_movielens_100k(cfg)


def test_directory_without_movielens_files_is_named(tmp_path):
    cfg = load_config(preset="movielens-100k", overrides=[f'data.path="{tmp_path}"']).data
    with pytest.raises(DataError, match="not a MovieLens-100K directory: u.data is missing"):
        read_movielens_100k(cfg)


def test_no_data_path_asks_for_data_dir():
    cfg = dataclasses.replace(load_config(preset="movielens-100k").data, path="")
    with pytest.raises(ConfigError, match="or use --data-dir"):
        read_movielens_100k(cfg)
