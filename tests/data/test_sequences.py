from __future__ import annotations

import dataclasses

import numpy as np
import polars as pl
import pytest

from coarserank.config import DataConfig, FeatureConfig, load_config
from coarserank.data.encode import Encoder
from coarserank.data.prepare import prepare
from coarserank.data.sequences import add_sequences
from coarserank.data.tables import RawTables
from coarserank.errors import ConfigError

SEQ = FeatureConfig("hist", "user", "sequence", of="item_id", max_len=4)


def _cfg(**kw) -> DataConfig:
    base = DataConfig(source="table", group_col="", timestamp_col="ts", features=(
        FeatureConfig("user_id", "user", "categorical"), FeatureConfig("item_id", "item", "categorical"), SEQ))
    return dataclasses.replace(base, **kw)


def _log(n_users: int = 4, per_user: int = 25, seed: int = 0) -> RawTables:
    rng = np.random.default_rng(seed)
    n = n_users * per_user
    return RawTables(pl.DataFrame({
        "user_id": np.repeat(np.arange(n_users), per_user),
        "item_id": rng.integers(0, 30, n),
        "ts": rng.integers(0, n // 2, n).astype(np.int64),  # repeated instants on purpose
        "label": rng.integers(0, 2, n),
    }))


def _naive(frame: pl.DataFrame, max_len: int, positive_only: bool) -> list[str]:
    rows = frame.to_dicts()
    out = []
    for r in rows:
        earlier = [e for e in rows if e["_user"] == r["_user"] and e["_time"] < r["_time"]
                   and (e["_label"] == 1 or not positive_only)]
        earlier.sort(key=lambda e: (e["_time"], e["_row"]), reverse=True)
        out.append("|".join(str(e["item_id"]) for e in earlier[:max_len]))
    return out


@pytest.mark.parametrize("events", ["positive", "all"])
def test_sequence_matches_a_naive_loop_over_strictly_earlier_rows(events):
    cfg = _cfg(features=(*_cfg().features[:2], dataclasses.replace(SEQ, events=events)))
    frame = prepare(_log(), cfg)
    assert frame["hist"].to_list() == _naive(frame, 4, events == "positive")


def test_sequence_never_sees_a_later_row():
    frame = prepare(_log(seed=3), _cfg())
    cut = int(frame["_time"].median())
    early = frame.filter(pl.col("_time") <= cut)
    again = add_sequences(early.drop("hist"), _cfg())  # the rows after `cut` removed from the history
    assert again.sort("_row")["hist"].to_list() == early.sort("_row")["hist"].to_list()


def test_query_rows_take_their_history_from_the_labelled_log():
    history = prepare(_log(), _cfg())
    query = history.select("_row", "_user", "_time").head(5).with_columns(pl.col("_time") + 10_000)
    out = add_sequences(query, _cfg(), history=history)
    last = (history.filter((pl.col("_user") == query["_user"][0]) & (pl.col("_label") == 1))
            .sort("_time", "_row", descending=True)["item_id"].head(4).cast(pl.Utf8).to_list())
    assert out["hist"][0] == "|".join(last)


def test_sequence_is_encoded_with_the_vocabulary_of_its_item_field():
    frame = prepare(_log(), _cfg())
    enc = Encoder(_cfg()).fit(frame.filter(pl.col("_split") == "train"))
    encoded = enc.transform(frame)
    field = enc.schema_["hist"]
    assert (field.kind, field.of, field.size, field.max_len) == ("sequence", "item_id", enc.schema_["item_id"].size, 4)
    first = frame["hist"][int(np.flatnonzero(frame["hist"].str.len_chars().to_numpy() > 0)[0])].split("|")[0]
    target = enc.transform(pl.DataFrame({"item_id": [int(first)]}), fields=["item_id"])["item_id"][0]
    row = int(np.flatnonzero(frame["hist"].str.len_chars().to_numpy() > 0)[0])
    assert encoded["hist"].shape == (frame.height, 4) and encoded["hist"][row, 0] == target


def test_a_sequence_without_timestamps_is_a_config_error():
    with pytest.raises(ConfigError, match="sequences need time order"):
        load_config(overrides=['data.timestamp_col=""', *_seq_override()])


def test_a_sequence_of_a_user_field_is_a_config_error():
    with pytest.raises(ConfigError, match="must name an item-side categorical feature"):
        load_config(overrides=_seq_override(of="age"))


def _seq_override(of: str = "item_id") -> list[str]:
    base = load_config()
    feats = ", ".join("{" + ", ".join(f"{k} = {_toml(v)}" for k, v in dataclasses.asdict(f).items()) + "}"
                      for f in base.data.features)
    seq = f'{{name = "hist", side = "user", kind = "sequence", of = "{of}", max_len = 5}}'
    return [f"data.features=[{feats}, {seq}]"]


def _toml(v):
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return "[" + ", ".join(map(str, v)) + "]"
    return repr(v)
