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


def _with_labels(shop: Path, out: Path, labels: list[float | None] | None, fmt: str = "parquet") -> Path:
    """A copy of the shop whose exposure log has ``labels`` (cycled) in its ``clicked`` column, as
    pandas writes a float column."""
    out.mkdir(exist_ok=True)
    for name in ("users.csv", "items.parquet"):
        (out / name).write_bytes((shop / name).read_bytes())
    log = pl.read_parquet(shop / "exposures.parquet")
    if labels is not None:
        column = pl.Series("clicked", (labels * (log.height // len(labels) + 1))[:log.height], dtype=pl.Float64)
    else:
        column = log["clicked"].cast(pl.Float64)
    log = log.with_columns(column)
    log.write_parquet(out / "exposures.parquet") if fmt == "parquet" else log.write_csv(out / "exposures.csv")
    return out


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_integral_float_labels_read_like_integer_labels(shop, tmp_path, fmt):
    floats = _with_labels(shop, tmp_path / "floats", None, fmt)
    cfg = dataclasses.replace(_cfg(shop), path=str(floats), exposures=f"exposures.{fmt}")
    assert read_tables(cfg).exposures["clicked"].dtype == pl.Float64
    got = prepare(read_tables(cfg), cfg)
    want = prepare(read_tables(_cfg(shop)), _cfg(shop))
    assert got["_label"].dtype == pl.Int8
    assert got["_label"].to_list() == want["_label"].to_list()


def test_nan_labels_are_a_one_line_error_with_their_count(shop, tmp_path):
    data = _with_labels(shop, tmp_path / "nan", [0.0, 1.0, float("nan")])
    cfg = dataclasses.replace(_cfg(shop), path=str(data))
    with pytest.raises(DataError, match=r"label column 'clicked' has 1000 missing \(null or NaN\) value\(s\), "
                                        r"first at row 2; every exposure needs a label$"):
        prepare(read_tables(cfg), cfg)


def test_fractional_labels_are_named(shop, tmp_path):
    data = _with_labels(shop, tmp_path / "frac", [0.0, 1.0, 0.5])
    cfg = dataclasses.replace(_cfg(shop), path=str(data))
    with pytest.raises(DataError, match=r"must hold only 0 and 1; found values such as \[0\.5\]"):
        prepare(read_tables(cfg), cfg)


def test_nan_ratings_are_named_instead_of_counting_as_positive(shop, tmp_path):
    data = _with_labels(shop, tmp_path / "ratings", [4.0, float("nan"), 2.0, 5.0])
    cfg = dataclasses.replace(_cfg(shop), path=str(data), label_col="", rating_col="clicked", label_threshold=4.0)
    with pytest.raises(DataError, match=r"rating column 'clicked' has 750 missing \(null or NaN\) value\(s\)"):
        prepare(read_tables(cfg), cfg)
