from __future__ import annotations

import dataclasses
import re

import tomllib
from pathlib import Path

import pytest

from coarserank.config_rules import CONSTRAINTS
from coarserank.config import RunConfig, _build, config_hash, dump_config, load_config
from coarserank.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_defaults_load_into_typed_sections():
    cfg = load_config()
    assert cfg.data.source == "synthetic"
    assert cfg.student.dim == 64
    assert isinstance(cfg.teacher.hidden, tuple)


def test_overrides_are_applied_last_and_typed():
    cfg = load_config(overrides=["distill.alpha=0.7", "teacher.hidden=[64, 32]", "run.name=abc"])
    assert cfg.distill.alpha == 0.7
    assert cfg.teacher.hidden == (64, 32)
    assert cfg.run.name == "abc"


def test_integer_is_accepted_where_a_float_is_expected():
    assert load_config(overrides=["distill.alpha=1"]).distill.alpha == 1.0


def test_user_file_is_a_partial_overlay(tmp_path):
    path = tmp_path / "my.toml"
    path.write_text("[student]\ndim = 32\n")
    cfg = load_config(path)
    assert cfg.student.dim == 32
    assert cfg.student.embed_dim == load_config().student.embed_dim
    assert len(cfg.data.features) == len(load_config().data.features)


def test_unknown_key_names_file_and_nearest_valid_key(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[student]\ndimm = 32\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: unknown key 'student\.dimm'; did you mean 'student\.dim'"):
        load_config(path)


def test_unknown_key_inside_feature_list_is_reported(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[data.features]]\nname = "x"\nside = "user"\nkind = "categorical"\nsides = "user"\n')
    with pytest.raises(ConfigError, match=r"unknown key 'data\.features\[0\]\.sides'"):
        load_config(path)


def test_wrong_type_names_key_and_expected_type(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[teacher]\nepochs = "three"\n')
    with pytest.raises(ConfigError, match=r"teacher\.epochs must be an integer, got str 'three'"):
        load_config(path)


def test_literal_value_lists_allowed_values():
    with pytest.raises(ConfigError, match=r"distill\.soft must be one of 'pointwise', 'listwise'"):
        load_config(overrides=["distill.soft=\"pairwise\""])


def test_missing_config_file_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


def test_cross_of_undeclared_feature_is_rejected(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[[data.crosses]]\nname = "c"\na = "gender"\nb = "nonexistent"\n')
    with pytest.raises(ConfigError, match="'nonexistent' is not a declared feature"):
        load_config(path)


def test_alpha_outside_unit_interval_is_rejected():
    with pytest.raises(ConfigError, match=r"distill\.alpha must be a number in \[0, 1\], got 1\.5"):
        load_config(overrides=["distill.alpha=1.5"])


def test_dumped_config_loads_back_equal():
    cfg = load_config(preset="movielens-100k", overrides=["run.seed=7"])
    again = _build(RunConfig, tomllib.loads(dump_config(cfg)), "dump", "")
    assert again == cfg
    assert config_hash(again) == config_hash(cfg)


def test_config_hash_ignores_output_location_but_not_seed():
    a = load_config(overrides=["run.out=\"x\""])
    b = load_config(overrides=["run.out=\"y\""])
    c = load_config(overrides=["run.seed=5"])
    assert config_hash(a) == config_hash(b) != config_hash(c)


def test_config_hash_covers_training_not_report_or_serving_settings():
    base = load_config()
    assert config_hash(base) == config_hash(load_config(overrides=["report.sampled=10", "serving.kv_dtype=\"float16\""]))
    assert config_hash(base) != config_hash(load_config(overrides=["student.dim=32"]))


def test_shipped_example_matches_the_movielens_preset(ml100k_dir):
    example = load_config(REPO / "examples" / "movielens-100k.toml", overrides=["data.path=\"\""])
    preset = load_config(preset="movielens-100k")
    assert example == preset


def test_unknown_preset_lists_the_shipped_ones():
    with pytest.raises(ConfigError, match="presets shipped: default, movielens-100k"):
        load_config(preset="criteo")


STREAMING = ["data.source=\"table\"", "data.exposures=\"log\"", "data.split=\"global_time\"", "data.streaming=true",
             "distill.sampled=0", "data.history_crosses=[]"]


def test_the_shipped_streaming_example_loads():
    cfg = load_config(Path(__file__).resolve().parents[1] / "examples" / "streaming.toml")
    assert cfg.data.streaming and cfg.data.split == "global_time" and not cfg.data.history_crosses


def test_streaming_needs_the_table_source():
    with pytest.raises(ConfigError, match="data.streaming reads a table source"):
        load_config(overrides=[*STREAMING, "data.source=\"synthetic\""])


def test_streaming_needs_the_global_time_split():
    with pytest.raises(ConfigError, match="global_time"):
        load_config(overrides=[*STREAMING, "data.split=\"user_time\""])


def test_streaming_refuses_history_crosses():
    with pytest.raises(ConfigError, match="history_crosses"):
        load_config(overrides=STREAMING[:-1])


def test_precision_accepts_only_fp32_and_bf16():
    assert load_config(overrides=["run.precision=\"bf16\""]).run.precision == "bf16"
    with pytest.raises(ConfigError, match="run.precision must be one of"):
        load_config(overrides=["run.precision=\"fp16\""])


@pytest.mark.parametrize(("override", "message"), [
    ("student.dim=0", r"student\.dim must be an integer >= 1, got 0"),
    ("teacher.embed_dim=0", r"teacher\.embed_dim must be an integer >= 1, got 0"),
    ("report.sampled=0", r"report\.sampled must be an integer >= 1, got 0"),
    ("distill.temperature=nan", r"distill\.temperature must be a number > 0, got nan"),
    ("distill.temperature=inf", r"distill\.temperature must be a number > 0, got inf"),
    ("teacher.lr=nan", r"teacher\.lr must be a number > 0, got nan"),
    ("teacher.dropout=1.5", r"teacher\.dropout must be a number in \[0, 1\), got 1\.5"),
    ("run.threads=-1", r"run\.threads must be an integer >= 0, got -1"),
    ("teacher.patience=-1", r"teacher\.patience must be an integer >= 1, got -1"),
    ("serving.recall_target=2", r"serving\.recall_target must be a number in \(0, 1\], got 2\.0"),
    ("data.valid_frac=0", r"data\.valid_frac must be a number in \(0, 1\), got 0\.0"),
    ("report.ks=[50, 10]", r"report\.ks must be a non-empty, strictly increasing array with every value an "
                           r"integer >= 1, got \[50, 10\]"),
    ("student.hidden=[64, 0]", r"student\.hidden must be an array with every value an integer >= 1, got \[64, 0\]"),
])
def test_out_of_range_values_fail_at_load_naming_key_rule_and_override(override, message):
    with pytest.raises(ConfigError, match=rf"^{message} \(set by --set {re.escape(override)}\)$"):
        load_config(overrides=[override])


def test_an_out_of_range_value_names_the_file_that_set_it(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text("[teacher]\ndropout = 1.5\n")
    with pytest.raises(ConfigError, match=rf"teacher\.dropout .* \(set by {re.escape(str(path))}\)"):
        load_config(path)


def _with_item_feature(tmp_path, item: str):
    """A config file declaring a user id and the item feature ``item`` (TOML lines)."""
    path = tmp_path / "mine.toml"
    path.write_text('[[data.features]]\nname = "u"\nside = "user"\nkind = "categorical"\n'
                    f'[[data.features]]\nside = "item"\n{item}\n')
    return path


def test_a_feature_entry_out_of_range_is_named_by_position_and_name(tmp_path):
    path = _with_item_feature(tmp_path, 'name = "tags"\nkind = "multi"\nmax_len = 0')
    with pytest.raises(ConfigError, match=r"data\.features\[1\] \('tags'\)\.max_len must be an integer >= 1, got 0"):
        load_config(path)


def test_boundaries_on_a_numeric_feature_are_rejected(tmp_path):
    path = _with_item_feature(tmp_path, 'name = "price"\nkind = "numeric"\nboundaries = [1.0, 2.0]')
    with pytest.raises(ConfigError, match=r"'price': boundaries .* need kind = \"categorical\"; this feature is 'numeric'"):
        load_config(path)


def test_every_constrained_key_exists_in_its_section():
    cfg = load_config()
    for section, table in CONSTRAINTS.items():
        parent, _, array = section.partition(".")
        body = getattr(getattr(cfg, parent), array) if array else getattr(cfg, parent)
        body = body if dataclasses.is_dataclass(body) else body[0]  # a sub-table, or an array's first entry
        assert set(table) <= {f.name for f in dataclasses.fields(body)}, section


def test_the_shipped_defaults_and_presets_satisfy_every_constraint(ml100k_dir):
    load_config()
    load_config(preset="movielens-100k", overrides=[f'data.path="{ml100k_dir}"'])
