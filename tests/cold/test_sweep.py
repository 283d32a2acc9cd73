"""run_sweep on a tiny finished run: sweep.json contract, resume, choice, bad input."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from coarserank.cold import sweep as sweep_module
from coarserank.cold.pareto import choose_under_budget, pareto_flags
from coarserank.cold.sweep import parse_ks, run_sweep, select_top_k, write_chosen_config
from coarserank.config import load_config
from coarserank.data.schema import Field, Schema
from coarserank.errors import ArtifactError, ConfigError
from coarserank.artifacts import Run
from coarserank.pipeline.run import run
from coarserank.pipeline.sweep_stage import SWEEP_READS, sweep_data

pytestmark = pytest.mark.slow

FAST = ["cold.epochs=1", "cold.hidden=[16]", "cold.embed_dim=4", "cold.latency_repeats=5", "cold.latency_warmup=1",
        "cold.permutation_repeats=1", "report.max_users=10", "report.sampled=20", "report.bootstrap=5"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, tiny_overrides):
    out = tmp_path_factory.mktemp("sweep") / "run"
    run(load_config(overrides=[*tiny_overrides, *FAST]), out)
    finished = Run.open(out, require=SWEEP_READS)
    return sweep_data(finished), finished.models(("teacher", "student"))


@pytest.fixture(scope="module")
def swept(tiny):
    data, models = tiny
    lines: list[str] = []
    result = run_sweep(data, models, "cold", [2, None], None, lines.append)
    return result, lines


def test_sweep_json_holds_the_documented_keys(swept):
    result, _ = swept
    body = json.loads(result.path.read_text())
    assert {"budget_ms", "chosen", "points", "importance", "candidates"} <= set(body)
    for p in body["points"]:
        assert {"k", "family", "features", "auc", "gauc", "p50_ms", "p99_ms", "params", "pareto"} <= set(p)
    assert [p["k"] for p in body["points"]] == [2, 16]


def test_sweep_reports_three_rankings_and_their_agreement(swept):
    imp = swept[0].body["importance"]
    assert set(imp["methods"]) == {"se", "gbdt", "permutation"}
    assert set(imp["agreement_kendall_tau_b"]) == {"se~gbdt", "se~permutation", "gbdt~permutation"}


def test_points_use_the_top_k_of_the_se_ranking(swept):
    body = swept[0].body
    top2 = body["importance"]["methods"]["se"]["ranking"][:2]
    assert sorted(body["points"][0]["features"]) == sorted(top2)


def test_without_a_budget_the_highest_validation_gauc_point_is_chosen(swept):
    body = swept[0].body
    valid = [p["valid_gauc"] for p in body["points"]]
    assert body["chosen"] == choose_under_budget(valid, [p["p99_ms"] for p in body["points"]], None)
    assert [p["pareto"] for p in body["points"]] == pareto_flags(valid, [p["p99_ms"] for p in body["points"]])


def test_each_point_reports_the_validation_gauc_of_its_kept_epoch_beside_test(swept):
    for point in swept[0].body["points"]:
        assert point["valid_gauc"] == point["train"]["best_valid_gauc"]
        assert 0.0 < point["gauc"] < 1.0 and point["gauc"] != point["valid_gauc"]
    assert "never the test split" in swept[0].body["quality_axis"]


def test_progress_names_every_point(swept):
    lines = swept[1]
    assert any("sweep [1/2] cold-k2" in line for line in lines)
    assert any("sweep [2/2] cold-k16" in line for line in lines)


def test_plot_is_written(swept):
    assert swept[0].plot.is_file() and swept[0].plot.stat().st_size > 1000


def test_rerun_reuses_finished_points_without_training(tiny, swept, monkeypatch):
    data, models = tiny

    def refuse(*args, **kwargs):
        raise AssertionError("a finished point was trained again")

    monkeypatch.setattr(sweep_module, "_train", refuse)
    lines: list[str] = []
    again = run_sweep(data, models, "cold", [2, None], None, lines.append)
    assert [p["gauc"] for p in again.body["points"]] == [p["gauc"] for p in swept[0].body["points"]]
    assert sum("reusing" in line for line in lines) == 3  # importance and both points


def test_interrupted_sweep_recomputes_only_the_missing_point(tiny, swept, monkeypatch):
    data, models = tiny
    (data.out_dir / "points" / "cold-k2.json").unlink()
    trained: list[tuple[str, ...]] = []
    real = sweep_module._train

    def counting(data_, family, fields, *args, **kwargs):
        trained.append(tuple(fields))
        return real(data_, family, fields, *args, **kwargs)

    monkeypatch.setattr(sweep_module, "_train", counting)
    run_sweep(data, models, "cold", [2, None], None)
    assert len(trained) == 1 and len(trained[0]) == 2


def test_budget_no_point_meets_leaves_a_message_and_no_choice(tiny, swept):
    data, models = tiny
    result = run_sweep(data, models, "cold", [2, None], 1e-6)
    assert result.body["chosen"] is None
    assert "no sweep point meets the p99 latency budget" in result.budget_error
    assert json.loads(result.path.read_text())["budget_note"] == result.budget_error


def test_k_larger_than_the_features_is_a_clear_error(tiny):
    data, models = tiny
    with pytest.raises(ConfigError, match="k=99 is larger than the 12 features the two_tower family can use"):
        run_sweep(data, models, "two_tower", [99], None)


def test_a_run_without_a_teacher_is_refused(tiny):
    data, models = tiny
    with pytest.raises(ArtifactError, match="has no trained teacher"):
        run_sweep(data, {k: v for k, v in models.items() if k != "teacher"}, "cold", [2], None)


def test_chosen_config_restricts_the_features_and_loads(tiny, tmp_path):
    data, _ = tiny
    path = write_chosen_config(data.cfg, ["user_id", "item_id", "topic_match"], tmp_path / "chosen.toml")
    cfg = load_config(path)
    assert [f.name for f in cfg.data.features] == ["user_id", "fav_topic", "item_id", "topic"]
    assert [c.name for c in cfg.data.crosses] == ["topic_match"]
    assert cfg.data.history_crosses == () and cfg.run.out == ""
    assert replace(cfg, data=data.cfg.data, run=data.cfg.run) == data.cfg


def test_chosen_config_without_an_item_feature_is_refused(tiny, tmp_path):
    data, _ = tiny
    with pytest.raises(ConfigError, match="no user-side or no item-side feature"):
        write_chosen_config(data.cfg, ["user_id", "age"], tmp_path / "c.toml")


def test_parse_ks_reads_all_and_zero_as_every_field():
    assert parse_ks("4, 8,all") == [4, 8, None] and parse_ks([4, 0]) == [4, None]


def test_parse_ks_refuses_words():
    with pytest.raises(ConfigError, match="--k must list positive integers or 'all'"):
        parse_ks("4,many")


def test_two_tower_top_k_keeps_one_field_per_tower():
    schema = Schema((Field("u", "user", "categorical", 5), Field("c", "context", "categorical", 5),
                     Field("i", "item", "categorical", 5), Field("x", "cross", "numeric")))
    assert select_top_k(["x", "u", "c", "i"], schema, "two_tower", 2) == ["u", "i"]
    assert select_top_k(["x", "u", "c", "i"], schema, "cold", 2) == ["u", "x"]


def test_each_point_was_timed_on_its_own_exported_model_with_raw_inputs_as_shipped(swept, tiny):
    import hashlib

    import onnx

    from coarserank.serving.onnx_inputs import input_specs

    data, _ = tiny
    for p in swept[0].body["points"]:
        path = data.out_dir / "points" / f"cold-k{p['k']}" / "scorer.onnx"
        assert p["latency"]["onnx_sha256"] == {"scorer.onnx": hashlib.sha256(path.read_bytes()).hexdigest()}
        model = onnx.load(str(path))
        meta = {m.key: m.value for m in model.metadata_props}
        assert meta["fields"].split(",") == p["features"]
        raw = [s.name for s in input_specs(data.encoder, "cold", p["features"])]
        assert [i.name for i in model.graph.input] == raw
        assert p["latency"]["max_abs_diff"] < 1e-3
