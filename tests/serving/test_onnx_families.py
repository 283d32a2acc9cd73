"""Every student family through the one exporter: ONNX Runtime on raw rows (unseen and missing values
mixed in) equals PyTorch on the encoded rows within 1e-5."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnx
import polars as pl
import pytest
import torch

from coarserank.config import ColdStudentOptions, ParallelOptions, ShortcutOptions, load_config
from coarserank.data.dataset import encode_splits
from coarserank.data.encode import Encoder
from coarserank.data.prepare import prepare
from coarserank.data.schema import OOV, PAD
from coarserank.data.sources import load_source
from coarserank.serving.onnx_export import export_item_tower, export_model, export_user_tower, onnx_parity
from coarserank.data.matches import match_pairs
from coarserank.student import build_student, with_match_channel

TOLERANCE = 1e-5
COLD_FIELDS = ("user_id", "gender", "hour", "item_id", "tags", "price", "topic_match", "region_x_category",
               "user_category_rate")


@dataclass
class Data:
    encoder: Encoder
    rows: pl.DataFrame


def _edge_rows(frame: pl.DataFrame) -> pl.DataFrame:
    """300 rows with unseen ids and strings, nulls, NaN and out-of-range numbers at different strides."""
    i = pl.int_range(pl.len(), dtype=pl.Int64)

    def put(col: str, n: int, unseen: object) -> pl.Expr:
        return (pl.when(i % n == 0).then(pl.lit(unseen)).when(i % n == 1).then(pl.lit(None))
                .otherwise(pl.col(col)).alias(col))

    rows = frame.head(300).with_columns(pl.col("age").cast(pl.Float64))
    return rows.with_columns(put("user_id", 7, 10_000_000), put("item_id", 5, -3), put("gender", 6, "X"),
                             put("region", 9, "zz-new"), put("category", 8, "c-new"), put("device", 4, "tablet"),
                             put("hour", 11, 99), put("age", 3, 200.0), put("fav_topic", 10, 99_999),
                             put("topic", 13, 99_999), put("tags", 5, " zz| |t01||"), put("price", 6, float("nan")),
                             put("user_category_rate", 7, float("nan")))


@pytest.fixture(scope="module")
def data() -> Data:
    cfg = load_config(overrides=["synthetic.rows=2000"])
    prepared = encode_splits(prepare(load_source(cfg.data, cfg.synthetic, 0), cfg.data), cfg.data)
    return Data(prepared.encoder, _edge_rows(prepared.frame.sort("_split", "_row", descending=[True, False])))


def _scrambled(model: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return model.eval()


STUDENT = load_config().student
FAMILIES = {
    "two_tower": STUDENT,
    "senet": replace(STUDENT, family="senet"),
    "shortcut_top": replace(STUDENT, family="shortcut"),
    "shortcut_fields": replace(STUDENT, family="shortcut",
                               shortcut=ShortcutOptions(user_fields=("user_id", "hour"), item_fields=("tags",))),
    "parallel": replace(STUDENT, family="parallel"),
    "parallel_attention": replace(STUDENT, family="parallel", parallel=ParallelOptions(fusion="attention")),
    "dat": replace(STUDENT, family="dat"),
}


def _small(cfg):
    return replace(cfg, dim=8, embed_dim=4, hidden=(16,))


def test_parity_rows_hold_unseen_and_missing_values(data: Data) -> None:
    encoded = data.encoder.transform(data.rows)
    assert data.rows["user_id"].is_null().any() and (data.rows["user_id"] == 10_000_000).any()
    assert all((encoded[name] == OOV).any() for name in ("user_id", "item_id", "gender"))
    assert data.rows["price"].is_nan().any() and data.rows["tags"].is_null().any()
    assert (encoded["tags"] == PAD).all(axis=1).any()


@pytest.mark.parametrize("family", FAMILIES)
def test_each_tower_family_exports_at_parity_on_raw_rows(data: Data, family: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    student = _scrambled(build_student(data.encoder.schema_, _small(FAMILIES[family])))
    for kind, export in (("user", export_user_tower), ("item", export_item_tower)):
        path = export(student, data.encoder, tmp_path / f"{kind}.onnx", run_hash="test")
        assert onnx_parity(student, data.encoder, path, data.rows, kind) <= TOLERANCE, kind
    inputs = {k: torch.from_numpy(v) for k, v in data.encoder.transform(data.rows).items()}
    with torch.no_grad():
        assert float(student.user_tower(inputs).std()) > 0.01  # a check with something to check


@pytest.mark.parametrize("family", ["parallel", "parallel_attention"])
def test_parallel_towers_export_without_ops_that_rebuild_constants_per_call(data: Data, family: str,
                                                                           tmp_path: Path) -> None:
    """The channel weights and the pooled (fm, multi-valued) sums' identity are graph constants: a
    one-row user tower pays per node, so shape arithmetic per call would cost like a layer."""
    student = build_student(data.encoder.schema_, _small(FAMILIES[family]))
    for kind, export in (("user", export_user_tower), ("item", export_item_tower)):
        graph = onnx.load(export(student, data.encoder, tmp_path / f"{kind}.onnx", run_hash="test")).graph
        assert not {n.op_type for n in graph.node} & {"Shape", "EyeLike", "Tile", "Expand", "ConstantOfShape",
                                                       "Slice", "Split"}, kind


def test_the_cold_student_exports_at_parity_on_raw_rows(data: Data, tmp_path: Path) -> None:
    cfg = _small(replace(STUDENT, family="cold", cold=ColdStudentOptions(features=COLD_FIELDS)))
    torch.manual_seed(0)
    student = _scrambled(build_student(data.encoder.schema_, cfg))
    path = export_model(student, data.encoder, tmp_path / "student.onnx", "cold", fields=student.schema.names)
    assert onnx_parity(student, data.encoder, path, data.rows, "cold") <= TOLERANCE
    inputs = {k: torch.from_numpy(v) for k, v in data.encoder.transform(data.rows).items()}
    with torch.no_grad():
        assert float(np.std(student(inputs).numpy())) > 0.01


def test_towers_with_a_match_channel_export_at_parity_on_raw_rows(data: Data, tmp_path: Path) -> None:
    torch.manual_seed(0)
    pairs = match_pairs(data.encoder)
    assert [p.name for p in pairs] == ["topic_match"]
    student = _scrambled(with_match_channel(build_student(data.encoder.schema_, _small(STUDENT)), pairs, 4))
    with torch.no_grad():
        student.user_tower.match.tables["topic_match"].weight[0].zero_()  # no match: the zero vector, as trained
    for kind, export in (("user", export_user_tower), ("item", export_item_tower)):
        path = export(student, data.encoder, tmp_path / f"{kind}.onnx", run_hash="test")
        assert onnx_parity(student, data.encoder, path, data.rows, kind) <= TOLERANCE, kind
    inputs = {k: torch.from_numpy(v) for k, v in data.encoder.transform(data.rows).items()}
    with torch.no_grad():
        match = student.user_tower.match.side("user", inputs)
    assert (match.abs().sum(dim=1) == 0).any() and (match.abs().sum(dim=1) > 0).any()  # unseen topics: none
