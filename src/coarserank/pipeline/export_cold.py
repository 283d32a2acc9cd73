"""The export stage of a run whose student is the COLD model (``student.family = "cold"``).

A COLD student scores full candidate rows (user, context, item and cross fields), so there are no
towers, item vectors, KV store or Faiss index. The stage writes (each recorded in ``manifest.json``):

- ``student.onnx``: raw feature values of the student's fields in, ``logit [N]`` out, through the one
  exporter (:func:`coarserank.serving.onnx_export.export_model`, kind ``cold``);
- ``teacher.onnx`` and ``items.parquet`` (the catalogue), as for the towers;
- ``history.parquet``: only when the student reads history crosses: the labelled rows' key, value,
  ``_time`` and ``_label`` columns those crosses are computed from at request time;
- ``serving.json`` with ``family = "cold"``, the fields and the files.

Checks (``checks.export``, enforced against ``serving.parity_tolerance``): ``onnx_vs_torch`` for the
student and the teacher on up to 2,000 raw test rows, and ``rank_path``: the largest difference
between :class:`~coarserank.serving.cold_ranker.ColdRanker` (what ``distill rank`` runs: a request's
user dict and candidate ids) and the PyTorch student on the same candidates' rows.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import torch

from coarserank.artifacts import SERVING_FILE, ColdBundle
from coarserank.atomic import atomic_write_with
from coarserank.data.prepare import base_rate
from coarserank.pipeline.export_stage import PARITY_ROWS, _sample, enforce_checks, user_sample
from coarserank.pipeline.run_data import RunData
from coarserank.serving.catalogue import (
    build_catalogue,
    catalogue_ids,
    teacher_frame,
    user_columns,
    write_catalogue,
)
from coarserank.serving.cold_ranker import HISTORY_FILE, ColdRanker, HistoryLookup, history_columns
from coarserank.serving.onnx_contract import history_contract
from coarserank.serving.onnx_export import export_model, export_teacher, onnx_parity
from coarserank.serving.ranker import onnx_session

if TYPE_CHECKING:
    from coarserank.pipeline.run import RunContext

__all__ = ["COLD_FILES", "run_cold_stage"]

COLD_FILES = {"student": "student.onnx", "teacher": "teacher.onnx", "catalogue": "items.parquet"}
_CHECK_USERS = 5
_CHECK_CANDIDATES = 200


def _rank_path(data: RunData, student: torch.nn.Module, ranker: ColdRanker, catalogue: pl.DataFrame, rate: float,
               device: torch.device) -> float:
    """max |ColdRanker score - PyTorch student| over a few test users' random catalogue candidates."""
    cfg = data.cfg
    wanted = user_columns(cfg.data)
    users = user_sample(data.test, _CHECK_USERS, cfg.run.seed)
    ids = catalogue_ids(catalogue, cfg.data)
    rng = np.random.default_rng(cfg.run.seed)
    fields = student.schema.names
    worst = 0.0
    student.eval()
    for row in users.to_dicts():  # a handful of requests, not data rows
        user = {name: row[col] for name, col in wanted.items()}
        cand = rng.choice(ids, min(_CHECK_CANDIDATES, ids.size), replace=False)
        rows, _ = ranker.rows(cand)
        got = ranker.scores(user, rows)
        frame = teacher_frame(catalogue, cfg.data, cand, user, data.frame, rate)
        inputs = {k: torch.from_numpy(v) for k, v in data.encoder.transform(frame, fields).items()}
        with torch.no_grad():
            want = student.cpu()(inputs).numpy()
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))))
    student.to(device)
    return worst


def run_cold_stage(ctx: RunContext, models: Mapping[str, torch.nn.Module]) -> None:
    """Export a COLD student's serving artifacts, check them numerically and record everything."""
    run, data = ctx.run, RunData.from_context(ctx)
    cfg, encoder = data.cfg, data.encoder
    run.begin("export")
    student, teacher = models["student"], models["teacher"]
    fields = student.schema.names
    history_names = [h.name for h in cfg.data.history_crosses if h.name in fields]
    files = {**COLD_FILES, **({"history": HISTORY_FILE} if history_names else {})}
    path = {k: run.file(v) for k, v in files.items()}
    model_hash, run_id = str(run.manifest.file_hash("student.pt")), run.manifest.run_id
    rate = base_rate(data.frame)
    ctx.progress(f"export: ONNX graphs (COLD student over {len(fields)} fields, teacher), run id {run_id}")
    tagged = {"run_id": run_id}
    export_model(student, encoder, path["student"], "cold", fields=fields, opset=cfg.serving.opset,
                 metadata={"run_hash": model_hash, "score_formula": "logit of the candidate's row", **tagged},
                 history_base_rate=rate)
    export_teacher(teacher, encoder, path["teacher"], run_hash=str(run.manifest.file_hash("teacher.pt")),
                   opset=cfg.serving.opset, metadata=tagged, history_base_rate=rate)
    rows = _sample(data.test, PARITY_ROWS, cfg.run.seed)
    parity = {"cold": onnx_parity(student, encoder, path["student"], rows, "cold"),
              "teacher": onnx_parity(teacher, encoder, path["teacher"], rows, "teacher")}
    catalogue = build_catalogue(data.frame, cfg.data)
    write_catalogue(path["catalogue"], catalogue)
    lookups = {}
    if history_names:
        labelled = data.frame.filter(pl.col("_label").is_not_null()).select(history_columns(cfg.data, history_names))
        atomic_write_with(path["history"], labelled.write_parquet, ".parquet")
        lookups = {n: HistoryLookup.build(cfg.data, n, labelled, catalogue, rate) for n in history_names}
    ranker = ColdRanker(onnx_session(path["student"]), encoder, catalogue, fields, lookups)
    checks: dict[str, Any] = {"onnx_vs_torch": parity,
                              "rank_path": _rank_path(data, student, ranker, catalogue, rate, ctx.device),
                              "tolerance": cfg.serving.parity_tolerance, "rows": int(rows.height)}
    run.set_check("export", checks)
    bundle = ColdBundle(model_hash, int(catalogue.height), tuple(fields), files, run_id=run_id,
                        history_base_rate=rate, history_crosses=history_contract(encoder, history_names, rate))
    run.record("export", *path.values(), bundle.write(run.file(SERVING_FILE)))
    worst = {**{f"onnx_vs_torch.{k}": v for k, v in parity.items()}, "rank_path": checks["rank_path"]}
    enforce_checks(worst, cfg.serving.parity_tolerance)
    run.finish("export", items=int(catalogue.height), family="cold")
