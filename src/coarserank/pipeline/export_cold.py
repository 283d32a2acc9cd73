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

import json
from typing import Any

import numpy as np
import polars as pl
import torch

from coarserank.atomic import atomic_write_text, atomic_write_with
from coarserank.data.prepare import base_rate
from coarserank.errors import ArtifactError
from coarserank.pipeline.export_stage import PARITY_ROWS, _sample, run_identifier, user_sample
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
from coarserank.serving.ranker import SERVING_FILE, onnx_session

__all__ = ["COLD_FILES", "run_cold_stage"]

COLD_FILES = {"student": "student.onnx", "teacher": "teacher.onnx", "catalogue": "items.parquet"}
_CHECK_USERS = 5
_CHECK_CANDIDATES = 200


def _rank_path(ctx: Any, student: torch.nn.Module, ranker: ColdRanker, catalogue: pl.DataFrame,
               rate: float) -> float:
    """max |ColdRanker score - PyTorch student| over a few test users' random catalogue candidates."""
    cfg = ctx.cfg
    wanted = user_columns(cfg.data)
    users = user_sample(ctx.frames["test"], _CHECK_USERS, cfg.run.seed)
    ids = catalogue_ids(catalogue, cfg.data)
    rng = np.random.default_rng(cfg.run.seed)
    fields = student.schema.names
    worst = 0.0
    for row in users.to_dicts():  # a handful of requests, not data rows
        user = {name: row[col] for name, col in wanted.items()}
        cand = rng.choice(ids, min(_CHECK_CANDIDATES, ids.size), replace=False)
        rows, _ = ranker.rows(cand)
        got = ranker.scores(user, rows)
        frame = teacher_frame(catalogue, cfg.data, cand, user, ctx.frame, rate)
        inputs = {k: torch.from_numpy(v) for k, v in ctx.encoder.transform(frame, fields).items()}
        student.eval()
        with torch.no_grad():
            want = student.cpu()(inputs).numpy()
        worst = max(worst, float(np.max(np.abs(got.astype(np.float64) - want))))
    student.to(ctx.device)
    return worst


def run_cold_stage(ctx: Any, models: dict[str, Any]) -> None:
    """Export a COLD student's serving artifacts, check them numerically and record everything."""
    cfg, run, encoder = ctx.cfg, ctx.run, ctx.encoder
    run.begin("export")
    student, teacher = models["student"], models["teacher"]
    fields = student.schema.names
    history_names = [h.name for h in cfg.data.history_crosses if h.name in fields]
    files = {**COLD_FILES, **({"history": HISTORY_FILE} if history_names else {})}
    path = {k: run.file(v) for k, v in files.items()}
    model_hash, run_id, rate = run.manifest["files"]["student.pt"], run_identifier(run.manifest), base_rate(ctx.frame)
    ctx.progress(f"export: ONNX graphs (COLD student over {len(fields)} fields, teacher), run id {run_id}")
    tagged = {"run_id": run_id}
    export_model(student, encoder, path["student"], "cold", fields=fields, opset=cfg.serving.opset,
                 metadata={"run_hash": model_hash, "score_formula": "logit of the candidate's row", **tagged},
                 history_base_rate=rate)
    export_teacher(teacher, encoder, path["teacher"], run_hash=run.manifest["files"]["teacher.pt"],
                   opset=cfg.serving.opset, metadata=tagged, history_base_rate=rate)
    rows = _sample(ctx.frames["test"], PARITY_ROWS, cfg.run.seed)
    parity = {"cold": onnx_parity(student, encoder, path["student"], rows, "cold"),
              "teacher": onnx_parity(teacher, encoder, path["teacher"], rows, "teacher")}
    catalogue = build_catalogue(ctx.frame, cfg.data)
    write_catalogue(path["catalogue"], catalogue)
    lookups = {}
    if history_names:
        labelled = ctx.frame.filter(pl.col("_label").is_not_null()).select(history_columns(cfg.data, history_names))
        atomic_write_with(path["history"], labelled.write_parquet, ".parquet")
        lookups = {n: HistoryLookup.build(cfg.data, n, labelled, catalogue, rate) for n in history_names}
    ranker = ColdRanker(onnx_session(path["student"]), encoder, catalogue, fields, lookups)
    checks: dict[str, Any] = {"onnx_vs_torch": parity, "rank_path": _rank_path(ctx, student, ranker, catalogue, rate),
                              "tolerance": cfg.serving.parity_tolerance, "rows": int(rows.height)}
    run.set_check("export", checks)
    meta = {"format": 1, "family": "cold", "run_id": run_id, "model_hash": model_hash, "fields": fields,
            "items": int(catalogue.height), "history_base_rate": rate,
            "history_crosses": history_contract(encoder, history_names, rate),
            "score": {"formula": "logit of student.onnx on the candidate's raw row (user + context + item + "
                                 "crosses)"}, "files": files}
    meta_path = atomic_write_text(run.file(SERVING_FILE), json.dumps(meta, indent=2))
    run.record("export", *path.values(), meta_path)
    worst = {**{f"onnx_vs_torch.{k}": v for k, v in parity.items()}, "rank_path": checks["rank_path"]}
    bad = {k: v for k, v in worst.items() if not v <= cfg.serving.parity_tolerance}
    if bad:
        shown = ", ".join(f"{k} = {v:.3g}" for k, v in bad.items())
        raise ArtifactError(f"export check failed: {shown} exceeds the tolerance {cfg.serving.parity_tolerance:.3g} "
                            "(serving.parity_tolerance); the exported path does not reproduce PyTorch")
    run.finish("export", items=int(catalogue.height), family="cold")
