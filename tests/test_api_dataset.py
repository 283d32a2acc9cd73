"""cr.Dataset: a log prepared from a configuration or a polars frame, through the data stage's own code."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import coarserank as cr
from coarserank.config import config_to_dict
from coarserank.data.schema import OOV
from coarserank.data.synthetic import generate
from coarserank.errors import ConfigError, SchemaError


@pytest.fixture(scope="module")
def raw(api_cfg: cr.RunConfig):
    return generate(api_cfg.synthetic, api_cfg.run.seed)


def _from_frame(api_cfg: cr.RunConfig, raw, **changes) -> cr.Dataset:
    d = api_cfg.data
    kwargs = dict(
        features=d.features,
        label=d.label_col,
        group=d.group_col,
        timestamp=d.timestamp_col,
        users=raw.users,
        items=raw.items,
        crosses=d.crosses,
        history_crosses=d.history_crosses,
    )
    return cr.Dataset.from_frame(raw.exposures, **(kwargs | changes))


def test_from_config_reads_a_config_file_with_overrides(
    api_dataset: cr.Dataset, api_overrides: list[str], tmp_path: Path
) -> None:
    path = tmp_path / "run.toml"
    path.write_text("[synthetic]\nrows = 1500\n")
    got = cr.Dataset.from_config(path, overrides=[o for o in api_overrides if not o.startswith("synthetic.rows")])
    assert got.config.synthetic.rows == 1500
    assert got.prepared.fingerprint() == api_dataset.prepared.fingerprint()


def test_from_config_prepares_what_prepare_data_prepares(api_dataset: cr.Dataset, api_cfg: cr.RunConfig) -> None:
    assert api_dataset.prepared.fingerprint() == cr.prepare_data(api_cfg).fingerprint()


def test_splits_are_train_valid_test_in_that_order(api_dataset: cr.Dataset) -> None:
    assert [s.name for s in api_dataset.splits()] == ["train", "valid", "test"]
    assert sum(len(s) for s in api_dataset.splits()) == api_dataset.prepared.frame.height


def test_the_encoder_is_fitted_on_train_only(api_dataset: cr.Dataset) -> None:
    train, _, test = api_dataset.splits()
    unseen = ~np.isin(test.frame["item_id"].to_numpy(), train.frame["item_id"].to_numpy())
    assert unseen.any(), "the tiny log should have test items never shown in train"
    assert (test.inputs["item_id"][unseen] == OOV).all()
    assert (test.inputs["item_id"][~unseen] != OOV).all()


def test_from_frame_prepares_the_log_as_the_config_source_does(
    api_dataset: cr.Dataset, api_cfg: cr.RunConfig, raw
) -> None:
    got = _from_frame(api_cfg, raw)
    assert got.schema == api_dataset.schema
    assert got.prepared.fingerprint() == api_dataset.prepared.fingerprint()


def test_from_frame_takes_features_as_dicts(api_dataset: cr.Dataset, api_cfg: cr.RunConfig, raw) -> None:
    got = _from_frame(api_cfg, raw, features=[config_to_dict(f) for f in api_cfg.data.features])
    assert got.prepared.fingerprint() == api_dataset.prepared.fingerprint()


def test_a_missing_label_column_is_one_line_naming_it(api_cfg: cr.RunConfig, raw) -> None:
    with pytest.raises(SchemaError, match=r"frame \(label\): column\(s\) 'click' not found") as err:
        _from_frame(api_cfg, raw, label="click")
    assert "\n" not in str(err.value)


def test_an_unknown_feature_column_is_one_line_naming_it(api_cfg: cr.RunConfig, raw) -> None:
    features = [*api_cfg.data.features, {"name": "colour", "side": "item", "kind": "categorical"}]
    with pytest.raises(SchemaError, match=r"frame: data.features: column\(s\) 'colour' not found") as err:
        _from_frame(api_cfg, raw, features=features)
    assert "\n" not in str(err.value)


def test_an_unknown_option_is_a_config_error_with_the_nearest_key(api_cfg: cr.RunConfig, raw) -> None:
    with pytest.raises(ConfigError, match=r"unknown key 'data.valid_fraction'; did you mean 'data.valid_frac'"):
        _from_frame(api_cfg, raw, valid_fraction=0.2)


def test_an_invalid_feature_value_is_a_config_error_naming_the_key(api_cfg: cr.RunConfig, raw) -> None:
    features = [{"name": "user_id", "side": "user", "kind": "categoric"}]
    with pytest.raises(ConfigError, match=r"data.features\[0\].kind must be one of"):
        _from_frame(api_cfg, raw, features=features)


def test_an_option_that_an_argument_gives_is_refused(api_cfg: cr.RunConfig, raw) -> None:
    with pytest.raises(ConfigError, match=r"data.label_col is not an option here \(pass label=\)"):
        _from_frame(api_cfg, raw, label_col="label")


def test_a_side_table_given_as_a_column_name_is_refused(api_cfg: cr.RunConfig, raw) -> None:
    with pytest.raises(ConfigError, match=r"users= takes the user side table .* name the id column with user="):
        _from_frame(api_cfg, raw, users="user_id")
