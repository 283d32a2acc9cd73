"""Latency is measured through ONNX Runtime on the exported model of the point itself; costs are counted."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import polars as pl
import pytest
import torch

from coarserank.cold import latency as latency_module
from coarserank.cold.cost import feature_costs, onnx_macs, point_cost
from coarserank.cold.latency import cold_latency, two_tower_latency
from coarserank.student.cold import build_cold_model
from coarserank.config import CrossConfig, DataConfig, FeatureConfig, StudentConfig
from coarserank.data.encode import Encoder
from coarserank.serving.onnx_export import export_model
from coarserank.serving.onnx_inputs import feeds_from_frame
from coarserank.student import build_student

DATA = DataConfig(features=(
    FeatureConfig("user_id", "user", "categorical"),
    FeatureConfig("device", "context", "categorical"),
    FeatureConfig("item_id", "item", "categorical"),
    FeatureConfig("tags", "item", "multi", max_len=3),
    FeatureConfig("price", "item", "numeric"),
), crosses=(CrossConfig("u_x_i", "user_id", "item_id", min_count=1),), history_crosses=())


def _raw(n: int, seed: int = 0) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    tags = ["|".join(f"t{t:02d}" for t in rng.integers(0, 12, k)) for k in rng.integers(0, 5, n)]
    return pl.DataFrame({"user_id": rng.integers(0, 30, n), "device": rng.choice(["ios", "web", "tv"], n),
                         "item_id": rng.integers(0, 40, n), "tags": tags,
                         "price": rng.normal(size=n)})


@pytest.fixture(scope="module")
def encoder() -> Encoder:
    return Encoder(DATA).fit(_raw(2000, seed=1))


@pytest.fixture
def cold(encoder):
    torch.manual_seed(0)
    return build_cold_model(encoder.schema_.select(names=["user_id", "item_id", "tags", "u_x_i"]), 4, (8,)).eval()


@pytest.fixture
def tower(encoder):
    torch.manual_seed(0)
    schema = encoder.schema_.select(sides=("user", "context", "item"))
    return build_student(schema, StudentConfig(dim=8, embed_dim=4, hidden=(16,), dropout=0.0)).eval()


_REAL_SESSION = ort.InferenceSession


class _Recorder:
    """Stands in for ``onnxruntime.InferenceSession``: records which file served which call."""

    calls: list[tuple[str, int, tuple[str, ...], dict[str, int]]] = []

    def __init__(self, path: str, *args, **kwargs) -> None:
        self.path = path
        self.inner = _REAL_SESSION(path, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def run(self, output_names, feeds):
        rows = max(len(v) for v in feeds.values())
        _Recorder.calls.append((self.path, rows, tuple(feeds), {k: len(v) for k, v in feeds.items()}))
        return self.inner.run(output_names, feeds)


@pytest.fixture
def recorder(monkeypatch):
    _Recorder.calls = []
    monkeypatch.setattr(latency_module.ort, "InferenceSession", _Recorder)
    return _Recorder


def test_scorer_takes_the_raw_features_of_the_point_fields_crosses_built_in_the_graph(cold, encoder, tmp_path):
    path = export_model(cold, encoder, tmp_path / "m.onnx", "cold", fields=cold.schema.names)
    assert [i.name for i in onnx.load(str(path)).graph.input] == ["user_id", "item_id", "tags"]


def test_onnx_runtime_scores_on_raw_rows_equal_the_point_model_scores(cold, encoder, tmp_path):
    rows = _raw(50, seed=2).with_columns(pl.when(pl.int_range(50) % 7 == 0).then(None)
                                         .otherwise(pl.col("item_id")).alias("item_id"))
    path = export_model(cold, encoder, tmp_path / "m.onnx", "cold", fields=cold.schema.names)
    got = ort.InferenceSession(str(path)).run(None, feeds_from_frame(encoder, rows, "cold", cold.schema.names))[0]
    with torch.no_grad():
        want = cold({k: torch.as_tensor(v) for k, v in encoder.transform(rows, cold.schema.names).items()}).numpy()
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


def test_cold_latency_times_the_exported_scorer_on_every_candidate(cold, encoder, tmp_path, recorder):
    result = cold_latency(cold, encoder, _raw(300), tmp_path, repeats=7, warmup=2)
    scorer = str(tmp_path / "scorer.onnx")
    timed = [c for c in recorder.calls if c[0] == scorer]
    assert len(timed) >= 2 * (7 + 2)  # both thread settings, warm-up and repeats
    assert {c[1] for c in timed} == {300}
    assert {c[2] for c in timed} == {("user_id", "item_id", "tags")}
    assert timed[-1][3] == {"user_id": 1, "item_id": 300, "tags": 300}  # the request's user once, as served
    assert result.onnx == {"scorer.onnx": hashlib.sha256((tmp_path / "scorer.onnx").read_bytes()).hexdigest()}
    assert set(result.timings) == {"threads_1", "threads_default"}
    assert result.timings["threads_1"].threads == 1 and result.timings["threads_1"].repeats == 7
    assert result.max_abs_diff <= 1e-5


def test_two_tower_latency_runs_the_user_tower_on_one_row_per_request(tower, encoder, tmp_path, recorder):
    result = two_tower_latency(tower, encoder, _raw(200), tmp_path, repeats=5, warmup=1)
    user = [c for c in recorder.calls if c[0] == str(tmp_path / "user_tower.onnx")]
    item = [c for c in recorder.calls if c[0] == str(tmp_path / "item_tower.onnx")]
    assert len(user) >= 2 * (5 + 1) and {c[1] for c in user} == {1}
    assert len(item) == 1 and item[0][1] == 200  # item vectors precomputed once, off the timed path
    assert set(result.onnx) == {"user_tower.onnx", "item_tower.onnx"}
    assert result.max_abs_diff < 1e-4


def test_onnx_macs_counts_the_weight_matrix_products(cold, encoder, tmp_path):
    export_model(cold, encoder, tmp_path / "scorer.onnx", "cold", fields=cold.schema.names)
    fields, dim = 4, 4
    se, hidden, out = fields * dim * fields, fields * dim * 8, 8 * 1
    expand = fields * fields * dim  # the gate spread over the embedding columns (the serving form's 0/1 product)
    pooled = 3 * dim * dim  # tags' sum over its 3 slots: one product with a constant stacked identity
    assert onnx_macs(tmp_path / "scorer.onnx") == se + expand + pooled + hidden + out


def test_feature_cost_tells_a_wide_multi_valued_table_from_a_numeric_scale(tower):
    costs = {c["field"]: c for c in feature_costs(tower.item_tower.embedding, 16, 1000)}
    assert costs["tags"]["table_bytes"] == (12 + 2) * 4 * 4 and costs["tags"]["lookups_per_row"] == 3
    assert costs["tags"]["floats_per_request"] == 3 * 4 * 1000
    assert costs["price"]["table_bytes"] == 4 * 4 and costs["price"]["floats_per_request"] == 0


def test_two_tower_item_features_cost_nothing_per_request(tower, encoder, tmp_path):
    two_tower_latency(tower, encoder, _raw(20), tmp_path, repeats=1, warmup=0)
    cost = point_cost(tower, tmp_path, 1000)
    by_field = {c["field"]: c for c in cost["features"]}
    assert by_field["item_id"]["online"] is False and by_field["item_id"]["floats_per_request"] == 0
    assert by_field["user_id"]["rows_per_request"] == 1
    assert cost["macs_per_candidate"] == pytest.approx(cost["user_tower_macs"] / 1000 + 8)
