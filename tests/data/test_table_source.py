from __future__ import annotations

import dataclasses
from pathlib import Path

import polars as pl
import pytest

from coarserank.config import SyntheticConfig, load_config
from coarserank.data.encode import Encoder
from coarserank.data.prepare import prepare
from coarserank.data.sources import read_tables
from coarserank.data.synthetic import generate
from coarserank.errors import DataError, SchemaError

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def shop(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shop")
    tables = generate(SyntheticConfig(rows=3000), 0)
    tables.exposures.drop("p_true").rename({"label": "clicked"}).write_parquet(out / "exposures.parquet")
    tables.users.write_csv(out / "users.csv")
    tables.items.write_parquet(out / "items.parquet")
    return out


def _cfg(shop: Path):
    return load_config(REPO / "examples" / "table.toml", overrides=[f'data.path="{shop}"']).data


def test_example_table_config_reads_joins_and_encodes(shop):
    cfg = _cfg(shop)
    frame = prepare(read_tables(cfg), cfg)
    assert len(frame) == 3000 and {"age", "category", "tags", "user_category_rate"} <= set(frame.columns)
    enc = Encoder(cfg).fit(frame.filter(pl.col("_split") == "train"))
    out = enc.transform(frame)
    assert out["tags"].shape == (3000, 4) and out["gender_x_category"].shape == (3000,)


def test_csv_exposure_log_reads_like_parquet(shop):
    pl.read_parquet(shop / "exposures.parquet").write_csv(shop / "exposures.csv")
    cfg = dataclasses.replace(_cfg(shop), exposures="exposures.csv")
    a = prepare(read_tables(cfg), cfg)
    b = prepare(read_tables(_cfg(shop)), _cfg(shop))
    assert a["_split"].to_list() == b["_split"].to_list()


def test_missing_exposure_file_is_named(shop):
    cfg = dataclasses.replace(_cfg(shop), exposures="nope.parquet")
    with pytest.raises(DataError, match=r"data file .*nope\.parquet does not exist"):
        read_tables(cfg)


def test_unreadable_file_is_named(shop):
    (shop / "broken.parquet").write_bytes(b"not parquet at all")
    cfg = dataclasses.replace(_cfg(shop), exposures="broken.parquet")
    with pytest.raises(DataError, match=r"cannot read .*broken\.parquet as parquet"):
        read_tables(cfg)


def test_missing_label_column_lists_existing_columns(shop):
    cfg = dataclasses.replace(_cfg(shop), label_col="click")
    with pytest.raises(SchemaError, match=r"'click' not found; columns that exist: .*clicked"):
        prepare(read_tables(cfg), cfg)
