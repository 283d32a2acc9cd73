"""Serving files of the recall model, written by the ``recall`` stage, and their checks.

Files (each hashed into ``manifest.json`` under the ``recall`` stage):

- ``recall_user_tower.onnx``: raw user and context features (the behaviour sequence included) in,
  ``vector`` out: ``[N, K, dim]`` for a multi-interest model, ``[N, dim]`` for a two-tower one;
- ``recall_item_tower.onnx``: raw item features in, ``vector [N, dim]`` out;
- ``recall_items.kv``: the catalogue's item vectors through ``recall_item_tower.onnx``, keyed by item
  id, ``model_hash`` = sha256 of ``recall.pt``;
- ``recall_items.faiss`` + sidecar: the inner-product index over those vectors (``serving.index_kind``),
  tuned to ``serving.recall_target`` on the user tower's interest vectors (every interest is a query);
- ``recall_queries.npy``: those query vectors ``[n, dim]``;
- ``recall.json``: ``run_id`` (the run's, as every artifact carries), ``dim``, ``interests``,
  ``model_hash``, the files, and the score rule (the maximum over interests of ``<u_k, v>``; recall
  merges one Faiss search per interest by that score).

Checks (``checks.recall`` in ``manifest.json``, enforced against ``serving.parity_tolerance``):
``onnx_vs_torch`` per tower on up to 2,000 test rows; ``score_path``: max |max_k <ONNX u_k, KV v> -
PyTorch max_k <u_k, v>| on those rows; ``faiss_vs_kv``: max |merged Faiss score - max_k <u_k, KV vector
of the returned id>| over the top 10 of 200 users (recorded, not enforced, for ``ivfpq``).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import polars as pl
import torch
from torch import nn

from coarserank.atomic import atomic_write_text, atomic_write_with
from coarserank.pipeline.export_stage import PARITY_ROWS, enforce_checks, user_sample, worst_checks
from coarserank.serving.catalogue import build_catalogue, catalogue_ids, encode_items
from coarserank.serving.faiss_index import ItemIndex, evaluate, search_interests
from coarserank.serving.kv_file import FileKVStore, write_kv_file
from coarserank.serving.onnx_export import export_item_tower, export_user_tower, onnx_parity
from coarserank.serving.onnx_inputs import feeds_from_frame
from coarserank.serving.ranker import onnx_session
from coarserank.serving.recall import RECALL_META

if TYPE_CHECKING:
    from coarserank.pipeline.run import RunContext

__all__ = ["RECALL_FILES", "RECALL_META", "export_recall", "interest_vectors"]

RECALL_FILES: Final[dict[str, str]] = {"user_tower": "recall_user_tower.onnx", "item_tower": "recall_item_tower.onnx",
                                       "kv": "recall_items.kv", "index": "recall_items.faiss",
                                       "queries": "recall_queries.npy"}
_FAISS_CHECK_USERS = 200


def interest_vectors(session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    """The ONNX user tower's output as ``float32 [N, K, dim]`` (``K = 1`` for a one-vector tower)."""
    out = np.asarray(session.run([session.get_outputs()[0].name], feeds)[0], dtype=np.float32)
    return out[:, None, :] if out.ndim == 2 else out


def _torch_max_scores(model: nn.Module, encoder: Any, rows: pl.DataFrame) -> np.ndarray:
    fields = [*model.user_tower.schema.names, *model.item_tower.schema.names]
    inputs = {k: torch.from_numpy(v) for k, v in encoder.transform(rows, fields).items()}
    model = model.cpu().eval()
    with torch.no_grad():
        u, v = model.user_tower(inputs), model.item_tower(inputs)
        u = u[:, None, :] if u.dim() == 2 else u
        return torch.einsum("nkd,nd->nk", u, v).amax(dim=1).double().numpy()


def _faiss_vs_kv(index: ItemIndex, store: FileKVStore, users: np.ndarray) -> float:
    """max |merged Faiss score - max_k <u_k, KV vector of the returned id>| over the top 10."""
    q = users[:_FAISS_CHECK_USERS]
    scores, ids = search_interests(index, q, 10)
    valid = ids != -1
    kv = store.get_strict(ids[valid])  # [m, dim]
    owner = np.repeat(np.arange(q.shape[0]), valid.sum(axis=1))
    best = np.einsum("mkd,md->mk", q[owner].astype(np.float64), kv).max(axis=1)
    return float(np.max(np.abs(scores[valid] - best))) if best.size else 0.0


def export_recall(ctx: RunContext, model: nn.Module, stage: str) -> dict[str, Any]:
    """Write and check the recall model's serving files; returns the facts for the manifest.

    Raises
    ------
    ArtifactError
        A check above ``serving.parity_tolerance`` (the files stay recorded for inspection).
    """
    cfg, run, encoder = ctx.cfg, ctx.run, ctx.encoder
    serving = cfg.serving
    model_hash = run.manifest.file_hash("recall.pt")
    path = {k: run.file(v) for k, v in RECALL_FILES.items()}
    interests = int(getattr(model.user_tower, "interests", 1))
    run_id = run.manifest.run_id
    extra = {"run_id": run_id, "interests": str(interests),
             "score_formula": "max over interests k of dot(user_vector_k, item_vector)"}
    ctx.progress("recall: ONNX graphs (recall user tower, recall item tower)")
    model = model.cpu().eval()
    export_user_tower(model, encoder, path["user_tower"], run_hash=model_hash, opset=serving.opset, metadata=extra)
    export_item_tower(model, encoder, path["item_tower"], run_hash=model_hash, opset=serving.opset, metadata=extra)
    test = ctx.frames["test"]
    rows = test if test.height <= PARITY_ROWS else test.sample(PARITY_ROWS, seed=cfg.run.seed).sort("_row")
    parity = {kind: onnx_parity(model, encoder, path[f"{kind}_tower"], rows, kind) for kind in ("user", "item")}

    catalogue = build_catalogue(ctx.frame, cfg.data)
    ids = catalogue_ids(catalogue, cfg.data)
    ctx.progress(f"recall: encoding {ids.size:,} items through recall_item_tower.onnx into recall_items.kv")
    vectors = encode_items(onnx_session(path["item_tower"]), encoder, catalogue)
    write_kv_file(path["kv"], ids, vectors, model_hash, serving.kv_dtype, run_id=run_id)
    store = FileKVStore(path["kv"], expected_model_hash=model_hash)
    stored = store.get_strict(ids)

    user_session = onnx_session(path["user_tower"])
    u_rows = interest_vectors(user_session, feeds_from_frame(encoder, rows, "user", model.user_tower.schema.names))
    v_rows = store.get_strict(rows[cfg.data.item_col].cast(pl.Int64).to_numpy())
    served = np.einsum("nkd,nd->nk", u_rows.astype(np.float64), v_rows).max(axis=1)
    score_path = float(np.max(np.abs(served - _torch_max_scores(model, encoder, rows))))

    users = user_sample(ctx.frame, serving.index_queries, cfg.run.seed)
    per_user = interest_vectors(user_session, feeds_from_frame(encoder, users, "user", model.user_tower.schema.names))
    queries = per_user.reshape(-1, per_user.shape[-1])
    atomic_write_with(path["queries"], lambda tmp: np.save(tmp, queries, allow_pickle=False), ".npy")
    index = ItemIndex.build(ids, stored, serving.index_kind, seed=cfg.run.seed, progress=ctx.progress)
    facts = evaluate(index, ids, stored, queries, target=serving.recall_target)
    written = index.save(path["index"], {**facts, "run_id": run_id})
    checks = {"onnx_vs_torch": parity, "score_path": score_path, "faiss_vs_kv": _faiss_vs_kv(index, store, per_user),
              "rows": int(rows.height), "index_kind": index.kind, "index_recall_at_100": facts["recall@100"]}
    store.close()
    limit = serving.parity_tolerance + (2.0 ** -11 if serving.kv_dtype == "float16" else 0.0)
    checks["tolerance"] = limit
    run.set_check(stage, checks)
    meta = {"format": 1, "run_id": run_id, "model_hash": model_hash, "dim": int(stored.shape[1]),
            "interests": interests, "items": int(ids.size), "kv_dtype": serving.kv_dtype,
            "score": "max over interests k of dot(user_vector_k, item_vector); recall merges one search per "
                     "interest by it", "files": {**RECALL_FILES, "index_sidecar": written[1].name}}
    meta_path = atomic_write_text(run.file(RECALL_META), json.dumps(meta, indent=2))
    run.record(stage, *(path[k] for k in RECALL_FILES), written[1], meta_path)
    enforce_checks(worst_checks(checks), limit, what="recall export")
    ctx.progress(f"recall: {index.kind} index over {index.count:,} items, recall@100 {facts['recall@100']:.3f} "
                 f"on {queries.shape[0]:,} interest vectors")
    return {"interests": interests, "items": int(ids.size), "index": index.kind,
            "index_recall_at_100": facts["recall@100"]}
