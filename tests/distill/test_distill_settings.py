"""Bad distillation settings fail with one line naming the key, before any training."""

from __future__ import annotations

import pytest

from coarserank.config import load_config
from coarserank.errors import ConfigError
from coarserank.pipeline.run import run


@pytest.mark.parametrize("override, message", [
    ("distill.sampled=-1", "distill.sampled must be an integer >= 0"),
    ('distill.sampler="hardest"', "distill.sampler must be one of 'uniform', 'popularity', 'in_batch'"),
    ('distill.sampled_loss="pairwise"', "distill.sampled_loss must be one of"),
    ('teacher.family="transformer"', "teacher.family must be one of 'deepfm', 'dcn'"),
    ("distill.alpha=1.5", r"distill.alpha must be a number in \[0, 1\]"),
    ("distill.temperature=0", "distill.temperature must be a number > 0"),
    ("distill.rank_top=0", "distill.rank_top must be an integer >= 1"),
])
def test_bad_distillation_setting_is_named(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_more_sampled_items_than_the_catalogue_fails_before_the_teacher_trains(tmp_path):
    cfg = load_config(overrides=["synthetic.rows=3000", "distill.sampled=100000"])
    with pytest.raises(ConfigError, match=r"distill.sampled = 100000 needs a catalogue of more items; this data has \d+"):
        run(cfg, tmp_path / "run")
    assert not (tmp_path / "run" / "teacher.pt").exists()


def test_a_streaming_run_with_sampled_items_is_refused():
    with pytest.raises(ConfigError, match="needs distill.sampled = 0"):
        load_config(overrides=['data.source="table"', "data.streaming=true", 'data.split="global_time"',
                               "data.history_crosses=[]", "distill.sampled=4"])

