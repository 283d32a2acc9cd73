"""[student] family and [student.<family>] options: typed, dumped and checked before any training."""

from __future__ import annotations

import pytest

from coarserank.config import dump_config, load_config
from coarserank.errors import ConfigError


def _one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message
    return message


def test_the_default_family_is_the_plain_two_tower():
    assert load_config().student.family == "two_tower"


def test_family_options_live_in_student_sub_tables(tmp_path):
    path = tmp_path / "senet.toml"
    path.write_text('[student]\nfamily = "parallel"\n\n[student.parallel]\nchannels = ["mlp", "fm"]\n'
                    'fusion = "attention"\n')
    cfg = load_config(path)
    assert cfg.student.family == "parallel"
    assert cfg.student.parallel.channels == ("mlp", "fm") and cfg.student.parallel.fusion == "attention"
    assert cfg.student.parallel.cross_layers == load_config().student.parallel.cross_layers


def test_a_dumped_config_with_family_options_loads_back_equal(tmp_path):
    cfg = load_config(overrides=['student.family="shortcut"', 'student.shortcut.user_fields=["age"]',
                                 "student.shortcut.top=3"])
    path = tmp_path / "dumped.toml"
    path.write_text(dump_config(cfg))
    assert "[student.shortcut]" in path.read_text()
    assert load_config(path) == cfg


def test_an_unknown_family_names_the_key_and_the_nearest_family():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=['student.family="senett"'])
    assert "student.family must be one of" in _one_line(exc) and "did you mean 'senet'?" in str(exc.value)


def test_an_unknown_family_option_names_the_nearest_option():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["student.senet.reductio=4"])
    assert "unknown key 'student.senet.reductio'; did you mean 'student.senet.reduction'?" in _one_line(exc)


def test_an_option_under_an_unknown_family_table_names_the_nearest_table():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["student.shortcuts.top=4"])
    assert "did you mean 'student.shortcut'?" in _one_line(exc)


def test_a_shortcut_field_of_the_other_side_is_refused():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=['student.family="shortcut"', 'student.shortcut.user_fields=["topic"]'])
    assert ("student.shortcut.user_fields: 'topic' is on the item side; that tower reads user and context "
            "features") in _one_line(exc)


def test_a_shortcut_field_that_is_a_cross_is_refused():
    with pytest.raises(ConfigError, match=r"student\.shortcut\.item_fields: 'topic_match' is a teacher-only cross"):
        load_config(overrides=['student.family="shortcut"', 'student.shortcut.item_fields=["topic_match"]'])


def test_a_cold_student_without_a_feature_set_is_refused():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=['student.family="cold"'])
    assert "student.family = \"cold\" needs a feature set" in _one_line(exc)


def test_a_cold_feature_that_is_not_declared_names_the_nearest():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=['student.family="cold"', 'student.cold.features=["user_id", "topic_mach"]'])
    assert "'topic_mach' is not a declared feature or cross; did you mean 'topic_match'?" in _one_line(exc)


def test_dat_on_data_without_user_ids_is_refused(tmp_path):
    path = tmp_path / "no_ids.toml"
    path.write_text('[student]\nfamily = "dat"\n\n[data]\ncrosses = []\nhistory_crosses = []\n\n'
                    '[[data.features]]\nname = "gender"\nside = "user"\nkind = "categorical"\n\n'
                    '[[data.features]]\nname = "item_id"\nside = "item"\nkind = "categorical"\n')
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert ("student.dat.user_field = 'user_id' is not a declared user-side categorical feature "
            "(id column 'user_id')") in _one_line(exc)


def test_dat_keyed_by_a_numeric_feature_is_refused():
    with pytest.raises(ConfigError, match=r"student\.dat\.item_field = 'price' is not a declared item-side"):
        load_config(overrides=['student.family="dat"', 'student.dat.item_field="price"'])


def test_an_unknown_parallel_channel_names_the_nearest():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=['student.family="parallel"', 'student.parallel.channels=["mlp", "crosss"]'])
    assert "did you mean 'cross'?" in _one_line(exc)


def test_a_parallel_dim_that_leaves_a_channel_no_dimension_is_rejected_at_load():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=['student.family="parallel"', "student.dim=16", "student.embed_dim=16"])
    assert "student.parallel: dim = 16 leaves 0 dimensions for the mlp and cross channels" in _one_line(exc)


def test_options_of_a_family_not_chosen_are_not_checked():
    cfg = load_config(overrides=['student.shortcut.user_fields=["topic"]'])
    assert cfg.student.family == "two_tower"


def test_a_family_option_out_of_range_names_the_key_the_rule_and_the_layer():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["student.senet.reduction=0"])
    assert "student.senet.reduction must be an integer >= 1, got 0 (set by --set student.senet.reduction=0)" \
        in _one_line(exc)


@pytest.mark.parametrize(("overrides", "message"), [
    (['student.family="cold"', 'student.cold.features=["user_id", "item_id"]'],
     "student.objective = \"sampled_softmax\" trains user and item towers, but student.family = \"cold\" has none"),
    (["distill.grid.alpha=[0.5, 0.8]"], "[distill.grid] sweeps the distillation loss's keys"),
], ids=["cold_student", "distill_grid"])
def test_the_sampled_softmax_student_refuses_what_it_cannot_train_at_load(overrides, message):
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=[*overrides, 'student.objective="sampled_softmax"'])
    assert message in _one_line(exc)


@pytest.mark.parametrize("family", ["two_tower", "senet", "shortcut", "parallel", "dat"])
def test_the_sampled_softmax_objective_loads_with_every_tower_family(family):
    cfg = load_config(overrides=[f'student.family="{family}"', 'student.objective="sampled_softmax"'])
    assert (cfg.student.family, cfg.student.objective) == (family, "sampled_softmax")


def test_the_recall_section_has_no_student_family_tables():
    with pytest.raises(ConfigError) as exc:
        load_config(overrides=["recall.senet.reduction=4"])
    assert "unknown key 'recall.senet" in _one_line(exc)

