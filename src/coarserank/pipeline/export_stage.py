"""Pipeline stage ``export``: ONNX graphs, item catalogue, KV store, Faiss index, and their checks.

Writes into the run directory (each file hashed into ``manifest.json``):

- ``user_tower.onnx``, ``item_tower.onnx``, ``teacher.onnx``: raw feature values in
  (:mod:`coarserank.serving.onnx_export`);
- ``items.parquet``: the catalogue, every item of the data with its item-side raw columns;
- ``items.kv``: the item tower's vectors of the catalogue (through ``item_tower.onnx``, the path new
  items take), ``serving.kv_dtype``, keyed by item id, ``model_hash`` = sha256 of ``student.pt``;
- ``items.faiss`` + ``items.faiss.json``: the recall index over the stored vectors
  (``serving.index_kind``), tuned to ``serving.recall_target`` and measured on user vectors;
- ``index_queries.npy``: those user vectors (``serving.index_queries`` users, latest row each), so
  ``distill index`` can rebuild and re-measure without the training data;
- ``serving.json``: what a ranker needs besides the files: ``a``, ``b``, ``dim``, ``model_hash``,
  ``run_id`` and the history crosses' statistics (prior, training base rate).

Every artifact carries the same **run id** (:func:`run_identifier`: ONNX metadata ``run_id``, the KV
file's header, the Faiss sidecar, ``serving.json``), a hash of what the run was made from (resolved
configuration, data fingerprint, teacher and student checkpoints) that no single file's hash equals,
so a client can check that the pieces it loaded belong together; a resumed run gets the same id.

Checks, recorded under ``checks.export`` in ``manifest.json`` and enforced against
``serving.parity_tolerance`` (score units; a float16 store adds ``|a| * 2**-11``):

- ``onnx_vs_torch``: max |ONNX Runtime - PyTorch| per exported model on up to 2,000 test rows;
- ``score_path``: max |a * <ONNX user vector, KV item vector> + b - PyTorch student score| on those rows;
- ``faiss_vs_kv``: max |Faiss inner product - <ONNX user vector, KV vector of the returned id>| on the
  index's top 10 (recorded, not enforced, for ``ivfpq``, whose scores are approximate).

:func:`bench_run` is the pipeline side of ``distill bench``: it rebuilds the finished run's data to
form realistic requests (users of the test split; the teacher's history crosses from the labelled
rows) and times both paths with :func:`coarserank.serving.ranker.bench_latency`.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import polars as pl

from coarserank.atomic import atomic_write_text, atomic_write_with
from coarserank.data.prepare import base_rate
from coarserank.errors import ArtifactError
from coarserank.serving.catalogue import (
    build_catalogue,
    catalogue_ids,
    encode_items,
    read_catalogue,
    teacher_frame,
    user_columns,
    write_catalogue,
)
from coarserank.serving.cold_ranker import open_ranker
from coarserank.serving.faiss_index import ItemIndex, evaluate
from coarserank.serving.kv_file import FileKVStore, write_kv_file
from coarserank.serving.onnx_contract import history_contract
from coarserank.serving.onnx_export import export_item_tower, export_teacher, export_user_tower, onnx_parity
from coarserank.serving.onnx_inputs import feeds_from_frame
from coarserank.serving.ranker import (
    SERVING_FILE,
    BenchRequest,
    RunFiles,
    TeacherScorer,
    bench_latency,
    onnx_session,
)
from coarserank.student import has_towers

__all__ = ["run_stage", "enforce_checks", "rebuild_index", "bench_requests", "bench_run", "user_sample",
           "run_identifier", "FILES", "PARITY_ROWS"]

FILES = {"user_tower": "user_tower.onnx", "item_tower": "item_tower.onnx", "teacher": "teacher.onnx",
         "catalogue": "items.parquet", "kv": "items.kv", "index": "items.faiss",
         "queries": "index_queries.npy"}
PARITY_ROWS = 2000
_FAISS_CHECK_QUERIES = 200


def run_identifier(manifest: dict[str, Any]) -> str:
    """The run id every serving artifact carries: 32 hex digits of the sha256 of the resolved config
    hash, the data fingerprint and the teacher's and student's checkpoint hashes."""
    files = manifest.get("files", {})
    body = {"config": manifest.get("config_hash"), "data": manifest.get("data_fingerprint"),
            "teacher": files.get("teacher.pt"), "student": files.get("student.pt")}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def _sample(frame: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    return frame if frame.height <= n else frame.sample(n, seed=seed).sort("_row")


def user_sample(frame: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """The latest row of up to ``n`` users (seeded choice, shuffled): realistic user/context requests."""
    latest = frame.sort("_time", "_row").unique(subset="_user", keep="last", maintain_order=True)
    return latest.sample(min(n, latest.height), seed=seed, shuffle=True)


def _vectors(session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(session.run([session.get_outputs()[0].name], feeds)[0], dtype=np.float32)


def _score_checks(ctx: Any, student: Any, store: FileKVStore, index: ItemIndex, user_session: Any,
                  rows: pl.DataFrame, positions: np.ndarray) -> dict[str, float]:
    u = _vectors(user_session, feeds_from_frame(ctx.encoder, rows, "user"))
    v = store.get_strict(rows[ctx.cfg.data.item_col].cast(pl.Int64).to_numpy())
    a, b = float(student.a.detach()), float(student.b.detach())
    path = a * np.einsum("nd,nd->n", u.astype(np.float64), v) + b
    torch_scores = ctx.logits["test"]["student"][positions]
    return {"score_path": float(np.max(np.abs(path - torch_scores))),
            "faiss_vs_kv": _faiss_vs_kv(index, store, u)}


def _faiss_vs_kv(index: ItemIndex, store: FileKVStore, users: np.ndarray) -> float:
    """max |Faiss inner product - <user vector, KV vector of the returned id>| over the top 10."""
    q = users[:_FAISS_CHECK_QUERIES]
    ip, ids = index.search(q, 10)
    valid = ids != -1
    kv = store.get_strict(ids[valid])
    kv_ip = np.einsum("nd,nd->n", np.repeat(q, valid.sum(axis=1), axis=0).astype(np.float64), kv)
    return float(np.max(np.abs(ip[valid] - kv_ip))) if kv_ip.size else 0.0


def enforce_checks(checks: dict[str, Any], limit: float, exact_faiss: bool, what: str = "export") -> None:
    """Raise :class:`ArtifactError` naming every check above ``limit`` (``faiss_vs_kv`` only when the
    index returns exact inner products)."""
    worst = {f"onnx_vs_torch.{k}": v for k, v in checks["onnx_vs_torch"].items()}
    worst["score_path"] = checks["score_path"]
    if exact_faiss:
        worst["faiss_vs_kv"] = checks["faiss_vs_kv"]
    bad = {k: v for k, v in worst.items() if not v <= limit}
    if bad:
        shown = ", ".join(f"{k} = {v:.3g}" for k, v in bad.items())
        raise ArtifactError(f"{what} check failed: {shown} exceeds the tolerance {limit:.3g} "
                            "(serving.parity_tolerance); the exported path does not reproduce PyTorch")


def run_stage(ctx: Any, models: dict[str, Any]) -> None:
    """Export the run's serving artifacts, check them numerically and record everything (a COLD
    student: :func:`coarserank.pipeline.export_cold.run_cold_stage`)."""
    if not has_towers(models["student"]):
        from coarserank.pipeline.export_cold import run_cold_stage  # it builds on this module's helpers

        return run_cold_stage(ctx, models)
    cfg, run, encoder = ctx.cfg, ctx.run, ctx.encoder
    serving = cfg.serving
    run.begin("export")
    student, teacher = models["student"], models["teacher"]
    model_hash = run.manifest["files"]["student.pt"]
    path = {k: run.file(v) for k, v in FILES.items()}
    run_id = run_identifier(run.manifest)
    rate = base_rate(ctx.frame)
    ctx.progress(f"export: ONNX graphs (user tower, item tower, teacher), run id {run_id}")
    tagged = {"run_id": run_id}
    export_user_tower(student, encoder, path["user_tower"], run_hash=model_hash, opset=serving.opset, metadata=tagged)
    export_item_tower(student, encoder, path["item_tower"], run_hash=model_hash, opset=serving.opset, metadata=tagged)
    export_teacher(teacher, encoder, path["teacher"], run_hash=run.manifest["files"]["teacher.pt"],
                   opset=serving.opset, metadata=tagged, history_base_rate=rate)
    test = ctx.frames["test"]
    rows = _sample(test.with_row_index("_pos"), PARITY_ROWS, cfg.run.seed)
    positions = rows["_pos"].to_numpy()
    rows = rows.drop("_pos")
    onnx_files = {"user": path["user_tower"], "item": path["item_tower"], "teacher": path["teacher"]}
    parity = {kind: onnx_parity(model, encoder, onnx_files[kind], rows, kind)
              for kind, model in (("user", student), ("item", student), ("teacher", teacher))}

    catalogue = build_catalogue(ctx.frame, cfg.data)
    write_catalogue(path["catalogue"], catalogue)
    ids = catalogue_ids(catalogue, cfg.data)
    ctx.progress(f"export: encoding {ids.size:,} items through item_tower.onnx into items.kv "
                 f"({serving.kv_dtype})")
    vectors = encode_items(onnx_session(path["item_tower"]), encoder, catalogue)
    write_kv_file(path["kv"], ids, vectors, model_hash, serving.kv_dtype, run_id=run_id)
    store = FileKVStore(path["kv"], expected_model_hash=model_hash)
    stored = store.get_strict(ids)

    user_session = onnx_session(path["user_tower"])
    users = user_sample(ctx.frame, serving.index_queries, cfg.run.seed)
    queries = _vectors(user_session, feeds_from_frame(encoder, users, "user"))
    atomic_write_with(path["queries"], lambda tmp: np.save(tmp, queries, allow_pickle=False), ".npy")
    index = ItemIndex.build(ids, stored, serving.index_kind, seed=cfg.run.seed, progress=ctx.progress)
    facts = evaluate(index, ids, stored, queries, target=serving.recall_target)
    ctx.progress(f"export: {index.kind} index over {index.count:,} items, "
                 f"recall@100 {facts['recall@100']:.3f}")
    written = index.save(path["index"], {**facts, "run_id": run_id})

    checks: dict[str, Any] = {"onnx_vs_torch": parity}
    checks.update(_score_checks(ctx, student, store, index, user_session, rows, positions))
    store.close()
    a = float(student.a.detach())
    limit = serving.parity_tolerance + (abs(a) * 2.0 ** -11 if serving.kv_dtype == "float16" else 0.0)
    checks.update(tolerance=limit, rows=int(rows.height), index_kind=index.kind,
                  index_recall_at_100=facts["recall@100"])
    run.set_check("export", checks)
    history = history_contract(encoder, [h.name for h in cfg.data.history_crosses], rate)
    meta = {"format": 1, "run_id": run_id, "model_hash": model_hash, "dim": int(stored.shape[1]),
            "items": int(ids.size), "history_base_rate": rate, "history_crosses": history,
            "kv_dtype": serving.kv_dtype, "score": {"a": a, "b": float(student.b.detach()),
                                                    "formula": "a * dot(user_vector, item_vector) + b"},
            "files": {**FILES, "index_sidecar": written[1].name}}
    meta_path = atomic_write_text(run.file(SERVING_FILE), json.dumps(meta, indent=2))
    run.record("export", *(path[k] for k in FILES), written[1], meta_path)
    enforce_checks(checks, limit, exact_faiss=index.kind != "ivfpq")
    run.finish("export", items=int(ids.size), index=index.kind, recall_at_100=facts["recall@100"])


def rebuild_index(run_dir: Path | str, kind: str = "auto", *,
                  progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Rebuild ``items.faiss`` of a finished run from ``items.kv`` as ``kind``, tune and measure it on
    ``index_queries.npy``, and re-record the files and the ``faiss_vs_kv`` check in the manifest."""
    from coarserank.config import load_config
    from coarserank.pipeline.rundir import RunDir

    run = RunDir.open(run_dir, require=("export",))
    if run.manifest["stages"]["export"].get("family") == "cold":
        raise ArtifactError(f"run {run_dir} serves a COLD student, which has no item vectors to index")
    cfg = load_config(run.verified_path("config.toml"))
    queries = np.load(run.verified_path(FILES["queries"]), allow_pickle=False)
    with FileKVStore(run.verified_path(FILES["kv"])) as store:
        ids = np.array(store.ids())
        vectors = store.get_strict(ids)
        index = ItemIndex.build(ids, vectors, kind, seed=cfg.run.seed, progress=progress)
        progress(f"index: tuning and measuring {index.kind} on {queries.shape[0]:,} user vectors")
        facts = evaluate(index, ids, vectors, queries, target=cfg.serving.recall_target)
        check = _faiss_vs_kv(index, store, queries)
    run_id = json.loads(run.verified_path(SERVING_FILE).read_text()).get("run_id")
    with run.publishing():  # a reader loads the old index with the old manifest, or the new with the new
        written = index.save(run.file(FILES["index"]), {**facts, **({"run_id": run_id} if run_id else {})})
        run.record("export", *written)
        checks = dict(run.manifest["checks"].get("export", {}))
        checks.update(faiss_vs_kv=check, index_kind=index.kind, index_recall_at_100=facts["recall@100"])
        run.manifest["stages"]["export"].update(index=index.kind, recall_at_100=facts["recall@100"])
        run.set_check("export", checks)
    return {"kind": index.kind, "items": index.count, "build": index.build_params, **facts}


def bench_requests(ctx: Any, catalogue: pl.DataFrame, sizes: Sequence[int], users: int,
                   seed: int) -> list[BenchRequest]:
    """Requests for :func:`~coarserank.serving.ranker.bench_latency`: the latest test-split row of
    ``users`` users, and per size candidates drawn from ``catalogue`` (with replacement where it holds
    fewer items) with the teacher's feeds, history crosses computed from the run's labelled rows."""
    cfg = ctx.cfg
    ids = catalogue_ids(catalogue, cfg.data)
    rng = np.random.default_rng(seed)
    prior = base_rate(ctx.frame)
    wanted = user_columns(cfg.data)
    sample = user_sample(ctx.frames["test"], users, seed).select(list(dict.fromkeys(wanted.values())))
    requests = []
    for row in sample.to_dicts():  # one dict per request (users, not data rows)
        req = BenchRequest({name: row[col] for name, col in wanted.items()})
        for size in sizes:
            cand = rng.choice(ids, size, replace=size > ids.size)
            req.candidates[size] = cand
            frame = teacher_frame(catalogue, cfg.data, cand, req.user, ctx.frame, prior)
            req.teacher_feeds[size] = feeds_from_frame(ctx.encoder, frame, "teacher")
        requests.append(req)
    return requests


def bench_run(run_dir: Path | str, sizes: Sequence[int] = (1000, 5000, 10000), *, users: int = 20,
              repeats: int = 200, warmup: int = 20, threads: int = 1,
              progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Time the student path (the towers' ranker, or the COLD student's on candidate rows) against
    ``teacher.onnx`` on the same requests of a finished run (:func:`bench_requests`; the teacher's rows
    are assembled before timing, the COLD student assembles its own inside the timed call)."""
    from coarserank.pipeline.run import load_context

    files = RunFiles(run_dir)
    ctx, _ = load_context(run_dir, progress=progress, require=("metrics", "export"))
    ranker = open_ranker(run_dir, threads=threads)
    teacher = TeacherScorer(onnx_session(files.verified(FILES["teacher"]), threads=threads))
    catalogue = read_catalogue(files.verified(FILES["catalogue"]), ctx.cfg.data)
    progress(f"bench: assembling {users} requests x {list(sizes)} candidates")
    requests = bench_requests(ctx, catalogue, sizes, users, ctx.cfg.run.seed)
    progress("bench: timing")
    result = bench_latency(ranker, teacher, requests, sizes, repeats=repeats, warmup=warmup, threads=threads)
    result.update(run=str(run_dir), items=int(catalogue.height), onnx_threads=threads)
    return result
