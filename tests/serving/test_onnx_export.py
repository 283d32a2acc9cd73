"""ONNX export of the towers and the teacher: raw rows in, ONNX Runtime equals PyTorch within 1e-5.

The run adds crosses the default config lacks (a string match, an int-vs-string match, a
bucketed-vs-int match, a multi x single product and a bucketed x string product), and the parity
rows are test rows rewritten to hold unseen ids and strings, nulls, NaN, numbers outside every
bucket, blank and overlong multi-valued strings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import polars as pl
import pytest
import torch

from coarserank.config import load_config
from coarserank.data.encode import Encoder
from coarserank.data.schema import OOV, PAD
from coarserank.errors import ArtifactError, ConfigError, ServingError
from coarserank.pipeline.run import load_context, run
from coarserank.serving.onnx_export import (
    export_item_tower,
    export_model,
    export_teacher,
    export_user_tower,
    onnx_parity,
)
from coarserank.serving.onnx_inputs import feeds_from_frame, feeds_from_records, input_specs

KINDS = ("user", "item", "teacher")
TOLERANCE = 1e-5
RUN_HASH = "0123abcd" * 8
CROSSES = ('data.crosses=['
           '{name="topic_match", a="fav_topic", b="topic", op="match"},'
           '{name="region_x_category", a="region", b="category"},'
           '{name="device_x_category", a="device", b="category"},'
           '{name="region_is_category", a="region", b="category", op="match"},'
           '{name="hour_is_device", a="hour", b="device", op="match"},'
           '{name="age_is_topic", a="age", b="topic", op="match"},'
           '{name="gender_x_tags", a="gender", b="tags", min_count=1},'
           '{name="age_x_device", a="age", b="device", min_count=1}]')


@dataclass
class Exported:
    encoder: Encoder
    models: dict[str, torch.nn.Module]
    paths: dict[str, Path]
    rows: pl.DataFrame


def _torch_model(exported: Exported, kind: str) -> torch.nn.Module:
    if kind == "teacher":
        return exported.models["teacher"]
    student = exported.models["student"]
    return student.user_tower if kind == "user" else student.item_tower


def _edge_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """1,000 rows with unseen, missing and out-of-range values mixed in at different strides."""
    i = pl.int_range(pl.len(), dtype=pl.Int64)

    def every(n: int, r: int) -> pl.Expr:
        return i % n == r

    def put(col: str, *cases: tuple[pl.Expr, object]) -> pl.Expr:
        expr = pl.col(col)
        for cond, value in reversed(cases):
            expr = pl.when(cond).then(pl.lit(value)).otherwise(expr)
        return expr.alias(col)

    nan = float("nan")
    rows = frame.head(1000).with_columns(pl.col("age").cast(pl.Float64), pl.col("topic").cast(pl.Int64))
    return rows.with_columns(
        put("user_id", (every(10, 1), 10_000_000), (every(10, 2), None)),
        put("item_id", (every(10, 3), -7), (every(10, 4), None)),
        put("age", (every(7, 0), None), (every(7, 1), -5.0), (every(7, 2), 200.0), (every(7, 3), 35.0),
            (every(7, 4), nan), (every(7, 5), 24.999)),
        put("gender", (every(11, 0), None), (every(11, 1), "X")),
        put("region", (every(9, 0), "zz-new"), (every(9, 1), None)),
        put("category", (every(9, 0), "zz-new"), (every(9, 1), None), (every(9, 2), "c-new")),
        put("fav_topic", (every(8, 0), 99_999), (every(8, 1), None)),
        put("topic", (every(8, 0), 99_999), (every(8, 1), None), (every(8, 3), 3)),
        put("device", (every(6, 0), "7"), (every(6, 1), None), (every(6, 2), "tablet")),
        put("hour", (every(6, 0), 7), (every(13, 1), None), (every(13, 2), 99)),
        put("tags", (every(5, 0), " t00| |zz-new||t02|t03|t04|t05"), (every(5, 1), None), (every(5, 2), ""),
            (every(5, 3), "  |  ")),
        put("price", (every(8, 0), nan), (every(8, 1), None), (every(8, 2), 250.0), (every(8, 3), -3.5)),
        put("user_category_rate", (every(15, 0), None), (every(15, 1), nan)),
    )


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Exported:
    root = tmp_path_factory.mktemp("onnx_export")
    cfg = load_config(overrides=[*tiny_overrides, CROSSES, "report.enabled=false"])
    run(cfg, root / "run")
    ctx, models = load_context(root / "run")
    assert ctx.encoder is not None and ctx.frame is not None
    student, encoder = models["student"], ctx.encoder
    paths = {
        "user": export_user_tower(student, encoder, root / "user_tower.onnx", run_hash=RUN_HASH),
        "item": export_item_tower(student, encoder, root / "item_tower.onnx", run_hash=RUN_HASH),
        "teacher": export_teacher(models["teacher"], encoder, root / "teacher.onnx", run_hash=RUN_HASH),
    }
    held_out_first = ctx.frame.sort(pl.col("_split") == "train", "_row")
    rows = _edge_rows(held_out_first)
    return Exported(ctx.encoder, models, paths, rows)


_SESSIONS: dict[tuple[Path, int], ort.InferenceSession] = {}


def _session(path: Path, level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
             ) -> ort.InferenceSession:
    key = (path, int(level))
    if key not in _SESSIONS:
        options = ort.SessionOptions()
        options.graph_optimization_level = level
        options.intra_op_num_threads = 1
        _SESSIONS[key] = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return _SESSIONS[key]


def _torch_output(exported: Exported, kind: str, rows: pl.DataFrame) -> np.ndarray:
    model = _torch_model(exported, kind).eval()
    fields = model.embedding.schema.names
    inputs = {k: torch.from_numpy(v) for k, v in exported.encoder.transform(rows, fields).items()}
    with torch.no_grad():
        return model(inputs).numpy()


def _onnx_output(exported: Exported, kind: str, rows: pl.DataFrame,
                 level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL) -> np.ndarray:
    return _session(exported.paths[kind], level).run(None, feeds_from_frame(exported.encoder, rows, kind))[0]


def test_parity_rows_hold_unseen_missing_and_out_of_range_values(exported: Exported) -> None:
    encoded = exported.encoder.transform(exported.rows)
    for field in exported.encoder.schema_.fields:
        if field.kind == "categorical":
            assert (encoded[field.name] == OOV).any(), field.name
    assert (encoded["tags"] == OOV).any() and (encoded["tags"] == PAD).all(axis=1).any()
    assert (encoded["gender_x_tags"] == PAD).any() and (encoded["gender_x_tags"] == OOV).any()
    for match in ("topic_match", "region_is_category", "hour_is_device", "age_is_topic"):
        assert len(np.unique(encoded[match])) == 2, match  # both equal and unequal rows
    assert exported.rows["price"].is_nan().any() and exported.rows["price"].is_null().any()


@pytest.mark.parametrize("level", [ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                                   ort.GraphOptimizationLevel.ORT_DISABLE_ALL],
                         ids=["enable_all", "disable_all"])
@pytest.mark.parametrize("kind", KINDS)
def test_onnx_runtime_matches_pytorch_on_1000_raw_rows(exported: Exported, kind: str,
                                                       level: ort.GraphOptimizationLevel) -> None:
    got = _onnx_output(exported, kind, exported.rows, level)
    want = _torch_output(exported, kind, exported.rows)
    assert got.shape == want.shape == ((1000,) if kind == "teacher" else (1000, 16))
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("kind", KINDS)
def test_one_row_gives_the_same_output_as_that_row_in_a_batch(exported: Exported, kind: str) -> None:
    batch = _onnx_output(exported, kind, exported.rows)
    for row in (0, 4, 999):
        single = _onnx_output(exported, kind, exported.rows.slice(row, 1))
        assert single.shape[0] == 1
        np.testing.assert_allclose(single[0], batch[row], rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_onnx_parity_reports_the_largest_absolute_difference(exported: Exported, kind: str) -> None:
    model = exported.models["teacher" if kind == "teacher" else "student"]
    reported = onnx_parity(model, exported.encoder, exported.paths[kind], exported.rows, kind)
    want = np.abs(_onnx_output(exported, kind, exported.rows).astype(np.float64)
                  - _torch_output(exported, kind, exported.rows)).max()
    assert reported == pytest.approx(want, abs=1e-9)
    assert reported <= TOLERANCE


@pytest.mark.parametrize("kind", KINDS)
def test_exported_graph_passes_the_onnx_checker(exported: Exported, kind: str) -> None:
    onnx.checker.check_model(onnx.load(str(exported.paths[kind])), full_check=True)


@pytest.mark.parametrize("kind", KINDS)
def test_graph_uses_only_the_standard_onnx_and_onnx_ml_domains(exported: Exported, kind: str) -> None:
    model = onnx.load(str(exported.paths[kind]))
    assert {n.domain for n in model.graph.node} <= {"", "ai.onnx.ml"}
    assert {o.domain: o.version for o in model.opset_import} == {"": 17, "ai.onnx.ml": 2}


@pytest.mark.parametrize("kind", ["user", "item"])
def test_tower_metadata_carries_schema_dimension_score_and_run_hash(exported: Exported, kind: str) -> None:
    meta = {p.key: p.value for p in onnx.load(str(exported.paths[kind])).metadata_props}
    student = exported.models["student"]
    assert meta["model_kind"] == kind
    assert meta["schema_version"] == "1"
    assert meta["vector_dim"] == "16"
    assert float(meta["score_a"]) == pytest.approx(float(student.a.detach()), abs=0)
    assert float(meta["score_b"]) == pytest.approx(float(student.b.detach()), abs=0)
    assert meta["run_hash"] == RUN_HASH
    assert meta["input_names"].split(",") == [s.name for s in input_specs(exported.encoder, kind)]


def test_teacher_metadata_carries_schema_version_and_run_hash(exported: Exported) -> None:
    meta = {p.key: p.value for p in onnx.load(str(exported.paths["teacher"])).metadata_props}
    assert (meta["model_kind"], meta["schema_version"], meta["run_hash"]) == ("teacher", "1", RUN_HASH)
    assert meta["output_name"] == "logit"


@pytest.mark.parametrize("kind", KINDS)
def test_graph_inputs_are_the_documented_specs(exported: Exported, kind: str) -> None:
    onnx_types = {"tensor(int64)": "int64", "tensor(string)": "string", "tensor(float)": "float32"}
    got = [(i.name, onnx_types[i.type], tuple(i.shape)) for i in _session(exported.paths[kind]).get_inputs()]
    assert got == [(s.name, s.dtype, s.shape) for s in input_specs(exported.encoder, kind)]


def test_teacher_takes_each_raw_feature_once_plus_the_history_cross(exported: Exported) -> None:
    names = [s.name for s in input_specs(exported.encoder, "teacher")]
    features = [f.name for f in exported.encoder.cfg.features]
    assert names == [*features, "user_category_rate"]


def test_user_tower_takes_only_user_and_context_features(exported: Exported) -> None:
    names = [s.name for s in input_specs(exported.encoder, "user")]
    assert names == ["user_id", "age", "gender", "region", "fav_topic", "device", "hour"]


def test_input_dtype_follows_the_vocabulary_and_bucketed_input_is_float(exported: Exported) -> None:
    specs = {s.name: s for s in input_specs(exported.encoder, "teacher")}
    dtypes = (specs["user_id"].dtype, specs["region"].dtype, specs["age"].dtype)
    assert dtypes == ("int64", "string", "float32")
    assert (specs["tags"].dtype, specs["tags"].shape) == ("string", ("N", 4))


def test_records_give_the_same_feeds_as_the_frame(exported: Exported) -> None:
    rows = exported.rows.head(60)
    names = [s.name for s in input_specs(exported.encoder, "teacher")]
    from_records = feeds_from_records(exported.encoder, rows.select(names).to_dicts(), "teacher")
    from_frame = feeds_from_frame(exported.encoder, rows, "teacher")
    assert from_records.keys() == from_frame.keys()
    for name, value in from_frame.items():
        np.testing.assert_array_equal(from_records[name], value, err_msg=name)


def test_record_without_a_feature_is_a_serving_error(exported: Exported) -> None:
    records = exported.rows.head(3).select("item_id", "category", "topic", "tags").to_dicts()
    with pytest.raises(ServingError, match=r"record 0 lacks feature 'price'"):
        feeds_from_records(exported.encoder, records, "item")


def test_record_with_a_string_where_an_int64_id_is_required_is_a_serving_error(exported: Exported) -> None:
    records = exported.rows.head(3).select("item_id", "category", "topic", "tags", "price").to_dicts()
    records[2]["item_id"] = "abc"
    with pytest.raises(ServingError, match=r"record 2: feature 'item_id' needs an int64 id .* got str 'abc'"):
        feeds_from_records(exported.encoder, records, "item")


def test_record_with_a_number_where_a_string_is_required_is_a_serving_error(exported: Exported) -> None:
    records = exported.rows.head(2).select("item_id", "category", "topic", "tags", "price").to_dicts()
    records[1]["category"] = 5
    with pytest.raises(ServingError, match=r"record 1: feature 'category' needs a string or null, got int 5"):
        feeds_from_records(exported.encoder, records, "item")


def test_opset_19_export_keeps_parity(exported: Exported, tmp_path: Path) -> None:
    teacher = exported.models["teacher"]
    path = export_teacher(teacher, exported.encoder, tmp_path / "t.onnx", run_hash=RUN_HASH, opset=19)
    assert onnx_parity(teacher, exported.encoder, path, exported.rows, "teacher") <= TOLERANCE


def test_opset_below_13_is_a_config_error(exported: Exported, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="serving.opset must be at least 13, got 12"):
        export_user_tower(exported.models["student"], exported.encoder, tmp_path / "u.onnx",
                          run_hash=RUN_HASH, opset=12)


class _MultiInterest(torch.nn.Module):
    """A user tower of another shape: K = 3 interest vectors of 5 values per row, ``[N, 3, 5]``."""

    def __init__(self, schema) -> None:
        super().__init__()
        from coarserank.layers import FeatureEmbedding

        self.schema = schema
        self.embedding = FeatureEmbedding(schema, 4, init_std=0.5)
        self.proj = torch.nn.Linear(len(schema) * 4, 15)

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.tanh(self.proj(self.embedding(inputs).flatten(1))).reshape(-1, 3, 5)


def _scrambled(module: torch.nn.Module, seed: int = 3) -> torch.nn.Module:
    """Weights far from their near-zero initialisation, so a 1e-5 parity check has something to check."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return module.eval()


def test_cold_model_over_every_field_matches_pytorch_on_raw_rows(exported: Exported, tmp_path: Path) -> None:
    from coarserank.student.cold import build_cold_model

    torch.manual_seed(0)
    cold = _scrambled(build_cold_model(exported.encoder.schema_, 4, (16,)))
    path = export_model(cold, exported.encoder, tmp_path / "scorer.onnx", "cold")
    got = _session(path).run(None, feeds_from_frame(exported.encoder, exported.rows, "cold"))[0]
    inputs = {k: torch.from_numpy(v) for k, v in exported.encoder.transform(exported.rows).items()}
    with torch.no_grad():
        want = cold(inputs).numpy()
    assert got.shape == (1000,) and np.std(want) > 0.1
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)
    assert onnx_parity(cold, exported.encoder, path, exported.rows, "cold") <= TOLERANCE


def test_any_module_returning_n_k_d_exports_with_its_shape_and_parity(exported: Exported, tmp_path: Path) -> None:
    schema = exported.encoder.schema_.select(("user", "context"))
    model = _scrambled(_MultiInterest(schema))
    path = export_model(model, exported.encoder, tmp_path / "interests.onnx", "user")
    session = _session(path)
    assert [d for d in session.get_outputs()[0].shape] == ["N", 3, 5]
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert (meta["output_shape"], meta["vector_dim"]) == ('["N", 3, 5]', "5")
    got = session.run(None, feeds_from_frame(exported.encoder, exported.rows, "user"))[0]
    inputs = {k: torch.from_numpy(v) for k, v in exported.encoder.transform(exported.rows, schema.names).items()}
    with torch.no_grad():
        want = model(inputs).numpy()
    assert got.shape == (1000, 3, 5)
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


def test_module_returning_a_tuple_is_an_artifact_error(exported: Exported, tmp_path: Path) -> None:
    class Pair(torch.nn.Module):
        def __init__(self, inner: torch.nn.Module) -> None:
            super().__init__()
            self.inner, self.schema = inner, inner.schema

        def forward(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
            out = self.inner(inputs)
            return out, out

    with pytest.raises(ArtifactError, match=r"must return \[N\], \[N, D\] or \[N, K, D\].*got tuple"):
        export_model(Pair(exported.models["student"].user_tower), exported.encoder, tmp_path / "x.onnx", "user")


def test_unknown_model_kind_is_a_config_error(exported: Exported, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model kind 'ranker'"):
        export_model(exported.models["teacher"], exported.encoder, tmp_path / "x.onnx", "ranker")  # type: ignore[arg-type]


def test_stacked_field_embeddings_are_exported_without_a_node_per_field(exported: Exported) -> None:
    nodes = [n for n in onnx.load(str(exported.paths["user"])).graph.node if n.name.startswith("network/")]
    ops = [n.op_type for n in nodes]
    assert "Unsqueeze" not in ops and "Flatten" not in ops and "Expand" not in ops
    assert ops.count("Concat") == 1


def test_exporting_leaves_the_module_in_its_training_mode(exported: Exported, tmp_path: Path) -> None:
    tower = exported.models["student"].user_tower
    tower.train()
    try:
        export_model(tower, exported.encoder, tmp_path / "u.onnx", "user")
        assert tower.training
    finally:
        tower.eval()


def _request_inputs(exported: Exported, kind: str) -> list[str]:
    return [s.name for s in input_specs(exported.encoder, kind) if s.shape[0] == "R"]


def test_a_row_scorers_user_and_context_inputs_take_the_request_axis(exported: Exported) -> None:
    sides = {f.name: f.side for f in exported.encoder.cfg.features}
    for s in input_specs(exported.encoder, "teacher"):
        want = "N" if s.kind == "history" or sides[s.name] == "item" else "R"
        assert s.shape[0] == want, s.name
    assert all(s.shape[0] == "N" for kind in ("user", "item") for s in input_specs(exported.encoder, kind))


@pytest.mark.parametrize("request_row", [0, 5], ids=["unseen_and_missing_user_values", "known_user_values"])
@pytest.mark.parametrize("kind", ["teacher", "cold"])
def test_a_row_scorer_given_the_request_once_scores_like_that_row_repeated(exported: Exported, tmp_path: Path,
                                                                           kind: str, request_row: int) -> None:
    """One row of user and context values is broadcast to every candidate, string match crosses included."""
    from coarserank.student.cold import build_cold_model

    model = exported.models["teacher"] if kind == "teacher" else \
        _scrambled(build_cold_model(exported.encoder.schema_, 4, (16,)))
    path = exported.paths["teacher"] if kind == "teacher" else \
        export_model(model, exported.encoder, tmp_path / "cold.onnx", "cold")
    request = _request_inputs(exported, kind)
    assert {"region", "device", "hour", "age"} <= set(request)  # the string and bucketed match operands
    rows = exported.rows.with_columns(pl.col(c).gather(request_row).first().alias(c) for c in request)
    repeated = feeds_from_frame(exported.encoder, rows, kind)
    once = {k: v[:1] if k in request else v for k, v in repeated.items()}
    got = _session(path).run(None, once)[0]
    assert got.shape == (1000,)
    np.testing.assert_array_equal(got, _session(path).run(None, repeated)[0])
    inputs = {k: torch.from_numpy(v) for k, v in exported.encoder.transform(rows, model.embedding.schema.names).items()}
    with torch.no_grad():
        want = model.eval()(inputs).numpy()
    assert np.std(want) > 0
    np.testing.assert_allclose(got, want, rtol=0, atol=TOLERANCE)


def test_the_benchmarked_teacher_gets_the_request_once_and_scores_as_per_row(exported: Exported) -> None:
    from coarserank.serving.ranker import TeacherScorer

    request = _request_inputs(exported, "teacher")
    rows = exported.rows.with_columns(pl.col(c).first().alias(c) for c in request)
    feeds = feeds_from_frame(exported.encoder, rows, "teacher")
    teacher = TeacherScorer(_session(exported.paths["teacher"]))
    once = teacher.one_request(feeds)
    assert {k for k, v in once.items() if v.shape[0] == 1} == set(request)
    np.testing.assert_array_equal(teacher.scores(once), teacher.scores(feeds))
    legacy = TeacherScorer(_session(exported.paths["user"]))  # a graph without the request axis
    assert legacy.one_request(feeds_from_frame(exported.encoder, rows, "user"))["user_id"].shape == (1000,)


def _encoded_outputs(path: Path, fields: list[str], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The preprocessing half's outputs (``encoded/<field>``) of a composed graph, read as extra outputs."""
    model = onnx.load(str(path))
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(f"encoded/{f}") for f in fields)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return dict(zip(fields, session.run([f"encoded/{f}" for f in fields], feeds)))


@pytest.mark.parametrize("once", [False, True], ids=["per_row", "request_once"])
def test_the_teachers_preprocessing_gives_exactly_what_the_encoder_gives(exported: Exported, once: bool) -> None:
    """Codes, product and match crosses bit for bit on the edge rows; normalised numbers up to their
    float32 input (the encoder reads the frame's float64 column)."""
    request = _request_inputs(exported, "teacher")
    rows = exported.rows.with_columns(pl.col(c).gather(5).first().alias(c) for c in request) if once \
        else exported.rows
    feeds = feeds_from_frame(exported.encoder, rows, "teacher")
    if once:
        feeds = {k: v[:1] if k in request else v for k, v in feeds.items()}
    fields = exported.encoder.schema_.names
    got = _encoded_outputs(exported.paths["teacher"], fields, feeds)
    want = exported.encoder.transform(rows, fields)
    matches = {c.name for c in exported.encoder.cfg.crosses if c.op == "match"}
    assert len(matches) == 4
    for name in fields:
        assert got[name].dtype == want[name].dtype, name
        if want[name].dtype == np.float32 and name not in matches:
            np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-6, err_msg=name)
        else:
            np.testing.assert_array_equal(got[name], want[name], err_msg=name)
