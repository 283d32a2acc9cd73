"""Behaviour sequences through the one exporter: raw histories in, ONNX Runtime equals PyTorch.

A tiny run gets two sequence features: ``hist_item`` over the integer ``item_id`` (input int64
``[N, max_len]``) and ``hist_cat`` over the string ``category`` (input string ``[N, max_len]``). The
teacher pools them by target attention against the candidate, the student's user tower by mean
pooling. The parity rows hold unseen ids and strings, pieces that are not integers, blank pieces,
empty and missing histories and histories longer than ``max_len``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import polars as pl
import pytest
import torch

from coarserank.config import FeatureConfig, load_config
from coarserank.data.encode import Encoder
from coarserank.data.schema import OOV, PAD
from coarserank.pipeline.run import load_context, run
from coarserank.serving.onnx_export import export_item_tower, export_teacher, export_user_tower, onnx_parity
from coarserank.serving.onnx_inputs import UNPARSED_INT64, feeds_from_frame, feeds_from_records, input_specs
from coarserank.serving.ranker import UserFeeds

TOLERANCE = 1e-5
SEQUENCES = (FeatureConfig("hist_item", "user", "sequence", of="item_id", max_len=5, events="all"),
             FeatureConfig("hist_cat", "user", "sequence", of="category", max_len=3, events="positive"))


@dataclass
class Sequenced:
    encoder: Encoder
    models: dict[str, torch.nn.Module]
    paths: dict[str, Path]
    rows: pl.DataFrame


def _edge_rows(frame: pl.DataFrame) -> pl.DataFrame:
    i = pl.int_range(pl.len(), dtype=pl.Int64)

    def put(col: str, *cases: tuple[int, object]) -> pl.Expr:
        expr = pl.col(col)
        for r, value in reversed(cases):
            expr = pl.when(i % 7 == r).then(pl.lit(value, dtype=pl.Utf8)).otherwise(expr)
        return expr.alias(col)

    return frame.head(600).with_columns(
        put("hist_item", (0, "99999999|x| |12"), (1, None), (2, ""), (3, " 3 | 1.0 |+7|007|8|9|10|11"),
            (4, "-5")),
        put("hist_cat", (0, "zz-new|c01"), (1, None), (2, "  |  "), (5, "c00|c01|c02|c03|c04")),
    )


@pytest.fixture(scope="module")
def sequenced(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str]) -> Sequenced:
    root = tmp_path_factory.mktemp("onnx_sequences")
    cfg = load_config(overrides=[*tiny_overrides, "report.enabled=false"])
    cfg = replace(cfg, data=replace(cfg.data, features=cfg.data.features + SEQUENCES))
    run(cfg, root / "run")
    ctx, models = load_context(root / "run")
    assert ctx.encoder is not None and ctx.frame is not None
    student, encoder = models["student"], ctx.encoder
    paths = {"user": export_user_tower(student, encoder, root / "user_tower.onnx", run_hash="r"),
             "item": export_item_tower(student, encoder, root / "item_tower.onnx", run_hash="r"),
             "teacher": export_teacher(models["teacher"], encoder, root / "teacher.onnx", run_hash="r")}
    rows = _edge_rows(ctx.frame.sort(pl.col("_split") == "train", "_row"))
    return Sequenced(encoder, models, paths, rows)


def test_sequence_inputs_take_the_dtype_of_their_items_vocabulary(sequenced: Sequenced) -> None:
    specs = {s.name: s for s in input_specs(sequenced.encoder, "teacher")}
    assert (specs["hist_item"].dtype, specs["hist_item"].shape, specs["hist_item"].kind) == ("int64", ("R", 5),
                                                                                          "sequence")
    assert (specs["hist_cat"].dtype, specs["hist_cat"].shape) == ("string", ("R", 3))  # the request's history
    user = {s.name: s for s in input_specs(sequenced.encoder, "user")}
    assert (user["hist_item"].shape, user["hist_cat"].shape) == (("N", 5), ("N", 3))


def test_the_teacher_given_one_requests_histories_once_scores_like_them_repeated(sequenced: Sequenced) -> None:
    """Target attention over a user's history broadcast to every candidate inside the graph."""
    request = [s.name for s in input_specs(sequenced.encoder, "teacher") if s.shape[0] == "R"]
    rows = sequenced.rows.with_columns(pl.col(c).gather(2).first().alias(c) for c in request)
    feeds = feeds_from_frame(sequenced.encoder, rows, "teacher")
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(sequenced.paths["teacher"]), options, providers=["CPUExecutionProvider"])
    once = session.run(None, {k: v[:1] if k in request else v for k, v in feeds.items()})[0]
    np.testing.assert_array_equal(once, session.run(None, feeds)[0])
    assert once.shape == (rows.height,) and np.std(once) > 0
    assert {"hist_item", "hist_cat"} <= {s.name for s in input_specs(sequenced.encoder, "user")}


def test_parity_rows_hold_unseen_unparsed_empty_and_overlong_histories(sequenced: Sequenced) -> None:
    encoded = sequenced.encoder.transform(sequenced.rows, ["hist_item", "hist_cat"])
    for name in ("hist_item", "hist_cat"):
        assert (encoded[name] == OOV).any() and (encoded[name] == PAD).all(axis=1).any()
        assert (encoded[name] >= 2).all(axis=1).any()  # a full row of known values
    feeds = feeds_from_frame(sequenced.encoder, sequenced.rows, "teacher")
    assert (feeds["hist_item"] == UNPARSED_INT64).any()


@pytest.mark.parametrize("kind", ["user", "teacher"])
def test_onnx_runtime_matches_pytorch_on_raw_histories(sequenced: Sequenced, kind: str) -> None:
    model = sequenced.models["student" if kind == "user" else "teacher"]
    assert onnx_parity(model, sequenced.encoder, sequenced.paths[kind], sequenced.rows, kind) <= TOLERANCE
    assert onnx_parity(model, sequenced.encoder, sequenced.paths[kind], sequenced.rows, kind,
                       optimization="disable") <= TOLERANCE


def test_the_history_changes_the_teacher_logit(sequenced: Sequenced) -> None:
    session = ort.InferenceSession(str(sequenced.paths["teacher"]), providers=["CPUExecutionProvider"])
    feeds = feeds_from_frame(sequenced.encoder, sequenced.rows, "teacher")
    emptied = {**feeds, "hist_item": np.full_like(feeds["hist_item"], np.iinfo(np.int64).min)}
    assert np.abs(session.run(None, feeds)[0] - session.run(None, emptied)[0]).max() > 1e-4


def test_one_request_row_gives_the_same_sequence_feeds_as_records(sequenced: Sequenced) -> None:
    names = [s.name for s in input_specs(sequenced.encoder, "user")]
    user_feeds = UserFeeds(sequenced.encoder)
    for record in sequenced.rows.head(14).select(names).to_dicts():
        want = feeds_from_records(sequenced.encoder, [record], "user")
        got = user_feeds(record)
        for name in ("hist_item", "hist_cat"):
            np.testing.assert_array_equal(got[name], want[name], err_msg=f"{name}: {record[name]!r}")
