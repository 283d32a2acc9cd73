"""Tests for the synthetic exposure-log generator."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import polars as pl
import pytest

import coarserank.data.synthetic as synthetic
from coarserank.config import SyntheticConfig
from coarserank.data.synthetic import generate
from coarserank.data.tables import RawTables
from coarserank.errors import ConfigError

EXPOSURE_SCHEMA = {"user_id": pl.Int64, "item_id": pl.Int64, "timestamp": pl.Int64, "request_id": pl.Int64,
                   "device": pl.String, "hour": pl.Int64, "label": pl.Int64, "p_true": pl.Float64}
USER_SCHEMA = {"user_id": pl.Int64, "age": pl.Int64, "gender": pl.String, "region": pl.String,
               "fav_topic": pl.Int64}
ITEM_SCHEMA = {"item_id": pl.Int64, "category": pl.String, "topic": pl.Int64, "tags": pl.String,
               "price": pl.Float64}


@pytest.fixture(scope="module")
def default_raw() -> RawTables:
    return generate(SyntheticConfig(), seed=0)


def _frames(raw: RawTables) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    assert raw.users is not None and raw.items is not None
    return raw.exposures, raw.users, raw.items


def _with_match(raw: RawTables) -> pl.DataFrame:
    e, users, items = _frames(raw)
    return (e.join(users.select("user_id", "fav_topic"), on="user_id", how="left")
            .join(items.select("item_id", "topic"), on="item_id", how="left")
            .with_columns((pl.col("topic") == pl.col("fav_topic")).alias("match")))


def test_same_seed_gives_identical_tables() -> None:
    cfg = SyntheticConfig(rows=5_000)
    a, b = _frames(generate(cfg, 7)), _frames(generate(cfg, 7))
    for x, y in zip(a, b, strict=True):
        assert x.equals(y)


def test_different_seed_gives_different_tables() -> None:
    cfg = SyntheticConfig(rows=5_000)
    a, b = _frames(generate(cfg, 1)), _frames(generate(cfg, 2))
    for x, y in zip(a, b, strict=True):
        assert not x.equals(y)


@pytest.mark.parametrize("rows", [100, 1_999, 20_000])
def test_row_count_and_schema(rows: int) -> None:
    raw = generate(SyntheticConfig(rows=rows), seed=0)
    e, users, items = _frames(raw)
    assert raw.oracle_col == "p_true"
    assert e.height == rows
    assert dict(e.schema) == EXPOSURE_SCHEMA
    assert dict(users.schema) == USER_SCHEMA
    assert dict(items.schema) == ITEM_SCHEMA
    assert users.height == min(max(100, rows // 20), rows // 2)
    assert items.height == max(100, rows // 40)
    assert users["user_id"].to_list() == list(range(users.height))
    assert items["item_id"].to_list() == list(range(items.height))
    assert e.null_count().sum_horizontal().item() == 0


def test_explicit_sizes_are_used() -> None:
    users, items = _frames(generate(SyntheticConfig(rows=3_000, users=150, items=120, topics=20), seed=0))[1:]
    assert (users.height, items.height) == (150, 120)


def test_value_domains(default_raw: RawTables) -> None:
    e, users, items = _frames(default_raw)
    topics = SyntheticConfig().topics
    assert users["age"].min() >= 18 and users["age"].max() <= 70
    assert set(users["gender"].unique()) == {"F", "M"}
    assert users["region"].str.contains(r"^r[0-4]\d$").all()
    assert users["fav_topic"].is_between(0, topics - 1).all()
    assert items["category"].str.contains(r"^c[0-2]\d$").all()
    assert items["topic"].is_between(0, topics - 1).all()
    assert items["tags"].str.contains(r"^t\d\d(\|t\d\d){0,3}$").all()
    tag_lists = items["tags"].str.split("|")
    assert (tag_lists.list.len() == tag_lists.list.unique().list.len()).all()
    assert 90 <= tag_lists.explode().n_unique() <= 100
    assert (items["price"] > 0).all()
    assert set(e["device"].unique()) == {"ios", "android", "web"}
    assert e["hour"].is_between(0, 23).all()
    assert set(e["label"].unique()) == {0, 1}
    assert e["p_true"].is_between(0.0, 1.0, closed="none").all()
    assert e["timestamp"].min() >= 0 and e["timestamp"].max() < 90 * 86_400
    assert (e["hour"] == (e["timestamp"] // 3_600) % 24).all()
    assert e["user_id"].is_between(0, users.height - 1).all()
    assert e["item_id"].is_between(0, items.height - 1).all()


def test_sorted_by_timestamp_then_user(default_raw: RawTables) -> None:
    e = default_raw.exposures
    key = e["timestamp"] * (e["user_id"].max() + 1) + e["user_id"]
    assert key.is_sorted()


def test_requests_are_per_user_groups_of_5_to_20(default_raw: RawTables) -> None:
    per_request = default_raw.exposures.group_by("request_id").agg(
        pl.col("user_id").n_unique().alias("users"), pl.col("timestamp").n_unique().alias("times"),
        pl.col("device").n_unique().alias("devices"), pl.len().alias("rows"))
    assert (per_request["users"] == 1).all()
    assert (per_request["times"] == 1).all()
    assert (per_request["devices"] == 1).all()
    assert per_request["rows"].max() <= 20
    assert 5 <= per_request["rows"].median() <= 20  # only a user's last request may be shorter than 5


def test_multi_chunk_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(synthetic, "_CHUNK_ROWS", 1_000)
    e = generate(SyntheticConfig(rows=20_000), seed=3).exposures
    assert e.height == 20_000
    assert (e.group_by("request_id").agg(pl.col("user_id").n_unique())["user_id"] == 1).all()
    assert e["request_id"].n_unique() == e.select("user_id", "request_id").n_unique()


def test_item_popularity_follows_a_power_law(default_raw: RawTables) -> None:
    e, _, items = _frames(default_raw)
    counts = np.sort(e["item_id"].value_counts()["count"].to_numpy())[::-1]
    top = max(1, items.height // 100)
    assert counts[:top].sum() / e.height > 0.25  # top 1% of items: over a quarter of exposures


def test_user_activity_is_skewed(default_raw: RawTables) -> None:
    e, users, _ = _frames(default_raw)
    counts = np.sort(e["user_id"].value_counts()["count"].to_numpy())[::-1]
    assert counts.size == users.height
    assert counts[: users.height // 10].sum() / e.height > 0.3
    assert counts[0] > 20 * np.median(counts)


@pytest.mark.parametrize("rows", [100, 1_000, 200_000])
def test_every_user_has_at_least_two_exposures(rows: int, default_raw: RawTables) -> None:
    raw = default_raw if rows == 200_000 else generate(SyntheticConfig(rows=rows), seed=0)
    e, users, _ = _frames(raw)
    counts = e["user_id"].value_counts()
    assert counts.height == users.height
    assert counts["count"].min() >= (5 if rows >= 100 * 5 else 2)


def test_users_spread_over_time(default_raw: RawTables) -> None:
    span = default_raw.exposures.group_by("user_id").agg(
        (pl.col("timestamp").max() - pl.col("timestamp").min()).alias("span"), pl.len().alias("n"))
    assert span.filter(pl.col("n") >= 40)["span"].median() > 60 * 86_400


def test_device_is_mostly_the_primary_one(default_raw: RawTables) -> None:
    per_user = default_raw.exposures.group_by("user_id", "device").agg(pl.col("request_id").n_unique())
    top = per_user.group_by("user_id").agg(pl.col("request_id").max().alias("top"),
                                           pl.col("request_id").sum().alias("all"))
    assert 0.8 < top["top"].sum() / top["all"].sum() < 0.95


def test_label_mean_matches_p_true(default_raw: RawTables) -> None:
    e = default_raw.exposures
    p = e["p_true"].to_numpy()
    se = np.sqrt((p * (1 - p)).sum()) / p.size
    assert abs(e["label"].mean() - p.mean()) < 4 * se
    assert 0.2 <= p.mean() <= 0.3


def test_on_topic_share_plus_chance() -> None:
    def match_share(share: float) -> float:
        raw = generate(SyntheticConfig(rows=50_000, on_topic_share=share), seed=5)
        return float(_with_match(raw)["match"].mean())

    chance = match_share(0.0)
    assert chance < 0.1
    assert match_share(1.0) == 1.0
    for share in (0.3, 0.7):
        assert match_share(share) == pytest.approx(share + (1 - share) * chance, abs=0.02)


def test_topic_match_raises_ctr(default_raw: RawTables) -> None:
    ctr = _with_match(default_raw).group_by("match").agg(pl.col("label").mean()).sort("match")["label"]
    unmatched, matched = ctr.to_list()
    assert matched > unmatched + 0.1


def test_one_million_rows_stay_within_memory() -> None:
    pytest.importorskip("resource")
    script = textwrap.dedent("""
        import json, resource, sys
        from coarserank.config import SyntheticConfig
        from coarserank.data.synthetic import generate
        scale = 1 if sys.platform == "darwin" else 1024
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        raw = generate(SyntheticConfig(rows=1_000_000), seed=0)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
        print(json.dumps({"rows": raw.exposures.height, "increase": after - before}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                         timeout=120)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["rows"] == 1_000_000
    assert result["increase"] < 600 * 2**20  # measured about 270 MiB for 1M rows


@pytest.mark.parametrize(("changes", "key"), [
    ({"rows": 99}, "synthetic.rows"),
    ({"topics": 1}, "synthetic.topics"),
    ({"on_topic_share": 1.5}, "synthetic.on_topic_share"),
    ({"on_topic_share": -0.1}, "synthetic.on_topic_share"),
    ({"on_topic_share": float("nan")}, "synthetic.on_topic_share"),
    ({"popularity_exponent": 0.0}, "synthetic.popularity_exponent"),
    ({"activity_exponent": -1.0}, "synthetic.activity_exponent"),
    ({"noise": -0.5}, "synthetic.noise"),
    ({"users": -1}, "synthetic.users"),
    ({"items": -3}, "synthetic.items"),
    ({"rows": 1_000, "users": 600}, "synthetic.users"),
])
def test_invalid_config_names_the_key(changes: dict[str, float], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        generate(SyntheticConfig(**changes), seed=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("seed", [-1, 1.5, True])
def test_invalid_seed(seed: object) -> None:
    with pytest.raises(ConfigError, match="seed"):
        generate(SyntheticConfig(rows=1_000), seed=seed)  # type: ignore[arg-type]
