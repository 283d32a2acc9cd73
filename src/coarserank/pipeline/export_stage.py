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

Every artifact carries the same **run id** (:attr:`coarserank.artifacts.Manifest.run_id`: ONNX
metadata ``run_id``, the KV file's header, the Faiss sidecar, ``serving.json``), a hash of what the
run was made from (resolved configuration, data fingerprint, teacher and student checkpoints) that
no single file's hash equals, so a client can check that the pieces it loaded belong together; a
resumed run gets the same id.

Checks, recorded under ``checks.export`` in ``manifest.json`` and enforced against
``serving.parity_tolerance`` (score units; a float16 store adds ``|a| * 2**-11``):

- ``onnx_vs_torch``: max |ONNX Runtime - PyTorch| per exported model on up to 2,000 test rows;
- ``score_path``: max |a * <ONNX user vector, KV item vector> + b - PyTorch student score| on those rows;
- ``faiss_vs_kv``: max |Faiss inner product - <ONNX user vector, KV vector of the returned id>| on the
  index's top 10 (recorded, not enforced, for ``ivfpq``, whose scores are approximate).

:func:`export_models` does all of it into any directory from typed inputs (:class:`RunData`, the
two models and their checkpoint hashes) and returns an :class:`ExportResult`; :func:`run_stage` is
the pipeline stage around it (manifest records and checks). :func:`bench_run` is the pipeline side
of ``distill bench``: it reads the finished run (:class:`~coarserank.artifacts.Run`) to form
realistic requests (users of the test split; the teacher's history crosses from the labelled rows)
and times both paths with :func:`coarserank.serving.ranker.bench_latency`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

import numpy as np
import polars as pl

from coarserank.artifacts import SERVING_FILE, ColdBundle, Run, ServingBundle
from coarserank.atomic import atomic_write_with
from coarserank.data.encode import Encoder
from coarserank.data.prepare import base_rate
from coarserank.errors import ArtifactError
from coarserank.pipeline.rundir import RunDir
from coarserank.pipeline.run_data import RunData
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
    BenchRequest,
    CoarseRanker,
    TeacherScorer,
    UserFeeds,
    bench_latency,
    onnx_session,
)
from coarserank.student import TwoTower, has_towers

if TYPE_CHECKING:
    import torch

    from coarserank.pipeline.run import RunContext

__all__ = ["ExportResult", "enforce_checks", "worst_checks", "export_models", "run_stage", "rebuild_index", "bench_requests", "bench_run",
           "user_sample", "FILES", "PARITY_ROWS"]

FILES = {"user_tower": "user_tower.onnx", "item_tower": "item_tower.onnx", "teacher": "teacher.onnx",
         "catalogue": "items.parquet", "kv": "items.kv", "index": "items.faiss",
         "queries": "index_queries.npy"}
PARITY_ROWS = 2000
_FAISS_CHECK_QUERIES = 200
Progress = Callable[[str], None]


def _quiet(_: str) -> None:
    return None


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_models` wrote and measured.

    ``files``: every file written (the :data:`FILES`, the index sidecar and ``serving.json``);
    ``checks``: the numerical checks (module docstring) with the ``tolerance`` they are held to;
    ``bundle``: the serving bundle; ``facts``: items, index kind and its recall@100.
    """

    files: tuple[Path, ...]
    checks: dict[str, Any]
    bundle: ServingBundle
    encoder: Encoder
    facts: dict[str, Any] = field(default_factory=dict)

    def ranker(self, *, threads: int = 1) -> CoarseRanker:
        """A :class:`~coarserank.serving.ranker.CoarseRanker` over the files this export wrote."""
        root = self.files[0].parent
        session = onnx_session(root / self.bundle.file("user_tower"), threads=threads)
        store = FileKVStore(root / self.bundle.file("kv"), expected_model_hash=self.bundle.model_hash)
        return CoarseRanker(session, UserFeeds(self.encoder), store, self.bundle.a, self.bundle.b)

    def enforce(self) -> None:
        """Raise :class:`ArtifactError` naming every check over its tolerance."""
        enforce_checks(worst_checks(self.checks), self.checks["tolerance"])


def worst_checks(checks: Mapping[str, Any]) -> dict[str, float]:
    """The enforced figures of a tower export's ``checks``: ONNX parity per graph, the score path and,
    unless the index is ivfpq (approximate scores: recorded, not enforced), Faiss against the KV store."""
    worst = {f"onnx_vs_torch.{k}": v for k, v in checks["onnx_vs_torch"].items()}
    worst["score_path"] = checks["score_path"]
    if checks["index_kind"] != "ivfpq":
        worst["faiss_vs_kv"] = checks["faiss_vs_kv"]
    return worst


def enforce_checks(worst: Mapping[str, float], limit: float, what: str = "export") -> None:
    """Raise :class:`ArtifactError` naming every check in ``worst`` over ``limit`` (NaN fails too)."""
    bad = {k: v for k, v in worst.items() if not v <= limit}
    if bad:
        shown = ", ".join(f"{k} = {v:.3g}" for k, v in bad.items())
        raise ArtifactError(f"{what} check failed: {shown} exceeds the tolerance {limit:.3g} "
                            "(serving.parity_tolerance); the exported path does not reproduce PyTorch")


def _sample(frame: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    return frame if frame.height <= n else frame.sample(n, seed=seed).sort("_row")


def user_sample(frame: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """The latest row of up to ``n`` users (seeded choice, shuffled): realistic user/context requests."""
    latest = frame.sort("_time", "_row").unique(subset="_user", keep="last", maintain_order=True)
    return latest.sample(min(n, latest.height), seed=seed, shuffle=True)


def _vectors(session: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(session.run([session.get_outputs()[0].name], feeds)[0], dtype=np.float32)


def _faiss_vs_kv(index: ItemIndex, store: FileKVStore, users: np.ndarray) -> float:
    """max |Faiss inner product - <user vector, KV vector of the returned id>| over the top 10."""
    q = users[:_FAISS_CHECK_QUERIES]
    ip, ids = index.search(q, 10)
    valid = ids != -1
    kv = store.get_strict(ids[valid])
    kv_ip = np.einsum("nd,nd->n", np.repeat(q, valid.sum(axis=1), axis=0).astype(np.float64), kv)
    return float(np.max(np.abs(ip[valid] - kv_ip))) if kv_ip.size else 0.0


def _onnx_files(out_dir: Path, data: RunData, student: TwoTower, teacher: torch.nn.Module,
                hashes: Mapping[str, str], run_id: str) -> tuple[dict[str, Any], pl.DataFrame, np.ndarray]:
    """Export the three graphs (tagged with ``run_id``); return their parity on up to
    :data:`PARITY_ROWS` test rows, those rows and their positions in the test split."""
    opset, tagged = data.cfg.serving.opset, {"run_id": run_id}
    path = {k: out_dir / v for k, v in FILES.items()}
    export_user_tower(student, data.encoder, path["user_tower"], run_hash=hashes["student"], opset=opset,
                      metadata=tagged)
    export_item_tower(student, data.encoder, path["item_tower"], run_hash=hashes["student"], opset=opset,
                      metadata=tagged)
    export_teacher(teacher, data.encoder, path["teacher"], run_hash=hashes["teacher"], opset=opset, metadata=tagged,
                   history_base_rate=base_rate(data.frame))
    rows = _sample(data.test.with_row_index("_pos"), PARITY_ROWS, data.cfg.run.seed)
    positions = rows["_pos"].to_numpy()
    rows = rows.drop("_pos")
    onnx_files = {"user": path["user_tower"], "item": path["item_tower"], "teacher": path["teacher"]}
    parity = {kind: onnx_parity(model, data.encoder, onnx_files[kind], rows, kind)
              for kind, model in (("user", student), ("item", student), ("teacher", teacher))}
    return parity, rows, positions


def export_models(out_dir: Path | str, data: RunData, student: TwoTower, teacher: torch.nn.Module, *,
                  student_hash: str, teacher_hash: str, run_id: str = "", progress: Progress = _quiet) -> ExportResult:
    """Write every serving file of ``student`` and ``teacher`` into ``out_dir`` and check them.

    ``data.test_logits["student"]`` are the PyTorch student's test logits the score path is held
    to; ``student_hash`` (the checkpoint's sha256) keys the KV store and the bundle; ``run_id``
    tags every artifact (none when empty). The checks are measured, not enforced: call
    :meth:`ExportResult.enforce`.
    """
    out = Path(out_dir)
    cfg, serving = data.cfg, data.cfg.serving
    path = {k: out / v for k, v in FILES.items()}
    progress(f"export: ONNX graphs (user tower, item tower, teacher){f', run id {run_id}' if run_id else ''}")
    parity, rows, positions = _onnx_files(out, data, student, teacher,
                                          {"student": student_hash, "teacher": teacher_hash}, run_id)
    catalogue = build_catalogue(data.frame, cfg.data)
    write_catalogue(path["catalogue"], catalogue)
    ids = catalogue_ids(catalogue, cfg.data)
    progress(f"export: encoding {ids.size:,} items through item_tower.onnx into items.kv ({serving.kv_dtype})")
    vectors = encode_items(onnx_session(path["item_tower"]), data.encoder, catalogue)
    write_kv_file(path["kv"], ids, vectors, student_hash, serving.kv_dtype, run_id=run_id)
    with FileKVStore(path["kv"], expected_model_hash=student_hash) as store:
        stored = store.get_strict(ids)
        user_session = onnx_session(path["user_tower"])
        queries = _vectors(user_session, feeds_from_frame(data.encoder, user_sample(data.frame, serving.index_queries,
                                                                                     cfg.run.seed), "user"))
        atomic_write_with(path["queries"], lambda tmp: np.save(tmp, queries, allow_pickle=False), ".npy")
        index = ItemIndex.build(ids, stored, serving.index_kind, seed=cfg.run.seed, progress=progress)
        facts = evaluate(index, ids, stored, queries, target=serving.recall_target)
        progress(f"export: {index.kind} index over {index.count:,} items, recall@100 {facts['recall@100']:.3f}")
        sidecar = index.save(path["index"], {**facts, **({"run_id": run_id} if run_id else {})})[1]
        u = _vectors(user_session, feeds_from_frame(data.encoder, rows, "user"))
        v = store.get_strict(rows[cfg.data.item_col].cast(pl.Int64).to_numpy())
        checks: dict[str, Any] = {"onnx_vs_torch": parity, "faiss_vs_kv": _faiss_vs_kv(index, store, u)}
    a, b = float(student.a.detach()), float(student.b.detach())
    path_scores = a * np.einsum("nd,nd->n", u.astype(np.float64), v) + b
    checks["score_path"] = float(np.max(np.abs(path_scores - data.test_logits["student"][positions])))
    limit = serving.parity_tolerance + (abs(a) * 2.0 ** -11 if serving.kv_dtype == "float16" else 0.0)
    checks.update(tolerance=limit, rows=int(rows.height), index_kind=index.kind,
                  index_recall_at_100=facts["recall@100"])
    rate = base_rate(data.frame)
    bundle = ServingBundle(student_hash, int(stored.shape[1]), int(ids.size), serving.kv_dtype, a, b,
                           {**FILES, "index_sidecar": sidecar.name}, run_id=run_id or None, history_base_rate=rate,
                           history_crosses=history_contract(data.encoder, [h.name for h in cfg.data.history_crosses],
                                                            rate))
    written = (*path.values(), sidecar, bundle.write(out / SERVING_FILE))
    return ExportResult(written, checks, bundle, data.encoder, {"items": int(ids.size), "index": index.kind,
                                                                "recall_at_100": facts["recall@100"]})


def run_stage(ctx: RunContext, models: Mapping[str, torch.nn.Module]) -> None:
    """The 'export' stage of ``distill run``: export, record every file and the checks, enforce them (a
    COLD student: :func:`coarserank.pipeline.export_cold.run_cold_stage`)."""
    if not has_towers(models["student"]):
        from coarserank.pipeline.export_cold import run_cold_stage  # it builds on this module's helpers

        return run_cold_stage(ctx, models)
    run = ctx.run
    run.begin("export")
    student, teacher = models["student"], models["teacher"]
    assert isinstance(student, TwoTower)
    result = export_models(run.path, RunData.from_context(ctx), student, teacher,
                           student_hash=str(run.manifest.file_hash("student.pt")),
                           teacher_hash=str(run.manifest.file_hash("teacher.pt")), run_id=run.manifest.run_id,
                           progress=ctx.progress)
    run.set_check("export", result.checks)
    run.record("export", *result.files)
    result.enforce()
    run.finish("export", **result.facts)


def rebuild_index(run_dir: Path | str, kind: str = "auto", *,
                  progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Rebuild ``items.faiss`` of a finished run from ``items.kv`` as ``kind``, tune and measure it on
    ``index_queries.npy``, and re-record the files and the ``faiss_vs_kv`` check in the manifest."""
    view = Run.open(run_dir, require=("export",))
    cfg, bundle = view.config, view.serving()
    if isinstance(bundle, ColdBundle):
        raise ArtifactError(f"run {run_dir} serves a COLD student, which has no item vectors to index")
    queries = np.load(view.verified(bundle.file("queries")), allow_pickle=False)
    with FileKVStore(view.verified(bundle.file("kv"))) as store:
        ids = np.array(store.ids())
        vectors = store.get_strict(ids)
        index = ItemIndex.build(ids, vectors, kind, seed=cfg.run.seed, progress=progress)
        progress(f"index: tuning and measuring {index.kind} on {queries.shape[0]:,} user vectors")
        facts = evaluate(index, ids, vectors, queries, target=cfg.serving.recall_target)
        check = _faiss_vs_kv(index, store, queries)
    run = RunDir.open(view.path, require=("export",))
    tagged = {"run_id": bundle.run_id} if bundle.run_id else {}
    with run.publishing():  # a reader loads the old index with the old manifest, or the new with the new
        written = index.save(run.file(bundle.file("index")), {**facts, **tagged})
        run.record("export", *written)
        checks = run.manifest.check("export")
        checks.update(faiss_vs_kv=check, index_kind=index.kind, index_recall_at_100=facts["recall@100"])
        run.update_stage("export", index=index.kind, recall_at_100=facts["recall@100"])
        run.set_check("export", checks)
    return {"kind": index.kind, "items": index.count, "build": index.build_params, **facts}


def bench_requests(data: RunData, catalogue: pl.DataFrame, sizes: Sequence[int], users: int,
                   seed: int) -> list[BenchRequest]:
    """Requests for :func:`~coarserank.serving.ranker.bench_latency`: the latest test-split row of
    ``users`` users, and per size candidates drawn from ``catalogue`` (with replacement where it holds
    fewer items) with the teacher's feeds, history crosses computed from the run's labelled rows."""
    d = data.cfg.data
    ids = catalogue_ids(catalogue, d)
    rng = np.random.default_rng(seed)
    prior = base_rate(data.frame)
    wanted = user_columns(d)
    sample = user_sample(data.test, users, seed).select(list(dict.fromkeys(wanted.values())))
    requests = []
    for row in sample.to_dicts():  # one dict per request (users, not data rows)
        req = BenchRequest({name: row[col] for name, col in wanted.items()})
        for size in sizes:
            cand = rng.choice(ids, size, replace=size > ids.size)
            req.candidates[size] = cand
            frame = teacher_frame(catalogue, d, cand, req.user, data.frame, prior)
            req.teacher_feeds[size] = feeds_from_frame(data.encoder, frame, "teacher")
        requests.append(req)
    return requests


def bench_run(run_dir: Path | str, sizes: Sequence[int] = (1000, 5000, 10000), *, users: int = 20,
              repeats: int = 200, warmup: int = 20, threads: int = 1,
              progress: Callable[[str], None] = lambda _m: None) -> dict[str, Any]:
    """Time the student path (the towers' ranker, or the COLD student's on candidate rows) against
    ``teacher.onnx`` on the same requests of a finished run (:func:`bench_requests`; the teacher's rows
    are assembled before timing, the COLD student assembles its own inside the timed call). Reads the
    run only."""
    view = Run.open(run_dir, require=("data", "export"))
    bundle = view.serving()
    ranker = open_ranker(run_dir, threads=threads)
    teacher = TeacherScorer(onnx_session(view.verified(bundle.file("teacher")), threads=threads))
    catalogue = read_catalogue(view.verified(bundle.file("catalogue")), view.config.data)
    progress(f"bench: assembling {users} requests x {list(sizes)} candidates")
    requests = bench_requests(RunData.from_run(view, {}), catalogue, sizes, users, view.config.run.seed)
    progress("bench: timing")
    result = bench_latency(ranker, teacher, requests, sizes, repeats=repeats, warmup=warmup, threads=threads)
    result.update(run=str(run_dir), items=int(catalogue.height), onnx_threads=threads)
    return result
