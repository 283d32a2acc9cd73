"""Coarse ranking at serving time: user tower (ONNX Runtime) -> item vectors (KV store) -> top-n.

One request costs one ONNX Runtime call on a single row of raw user/context features, one batched
KV lookup of the candidate ids, one matrix-vector product and a partial sort
(``argpartition``, then a sort of the n survivors only)::

    s_i = a * <u, v_i> + b        u = user_tower(user), v_i = KV[candidate_i]

which is exactly the PyTorch student's score (the export stage checks it on every run). Candidate
ids missing from the store are dropped and counted (``RankResult.dropped``), never scored as zero;
duplicate candidate ids are scored once per occurrence.

:meth:`CoarseRanker.from_run` checks every file it reads against its sha256 in ``manifest.json``
and that the KV store holds vectors of the run's student (``model_hash``). The ``user`` of a request
is a dict keyed by feature name (``{"user_id": 12, "gender": "F", ...}``; ``null`` = missing); a
missing feature or a value of the wrong type is a :class:`~coarserank.errors.ServingError` naming it.

:class:`TeacherScorer` runs ``teacher.onnx`` on per-candidate rows for comparison benchmarks, and
:func:`bench_latency` times both paths on the same requests in one process.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, Sequence

import numpy as np
import numpy.typing as npt
import polars as pl

from coarserank.artifacts.bundle import ColdBundle
from coarserank.data.encode import Encoder
from coarserank.errors import ArtifactError, ServingError
from coarserank.serving.faiss_index import ItemIndex, sidecar_path
from coarserank.serving.kv import KVStore, as_query_ids, open_store, redact_uri
from coarserank.serving.onnx_inputs import (
    MISSING_INT64,
    MISSING_STRING,
    UNPARSED_INT64,
    input_specs,
    one_request,
    request_inputs,
)
from coarserank.serving.run_files import SERVING_FILE, RunFiles
from coarserank.serving.timing import machine, measure_side_by_side

__all__ = ["RankResult", "RunFiles", "parse_user", "read_candidates", "UserFeeds", "CoarseRanker",
           "TeacherScorer", "BenchRequest", "Ranker", "top_positions",
           "onnx_session", "bench_latency", "SERVING_FILE"]

@dataclass(frozen=True)
class RankResult:
    """Top-n candidates, best first: ``ids`` (int64), ``scores`` (float32 student scores) and how many
    candidate ids were ``dropped`` because the store does not know them."""

    ids: np.ndarray
    scores: np.ndarray
    dropped: int

    def to_json(self) -> dict[str, Any]:
        return {"ids": self.ids.tolist(), "scores": [round(float(s), 6) for s in self.scores],
                "dropped": self.dropped}


def parse_user(text: str) -> dict[str, Any]:
    """A request's user from JSON text: an object of feature values (``null`` = missing).

    Raises
    ------
    ServingError
        Text that is not JSON, or JSON that is not an object.
    """
    try:
        user = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ServingError(f"the user is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                           'expected an object such as {"user_id": 12, "gender": "F"}') from None
    if not isinstance(user, dict):
        raise ServingError(f"the user must be a JSON object of feature values, got {type(user).__name__}")
    return user


def read_candidates(path: Path | str, text: str | None = None) -> np.ndarray:
    """Candidate ids from a text file of one integer id per line (blank lines skipped); ``text``
    replaces reading ``path`` (which then only names the source in errors, e.g. ``-`` for stdin).

    Raises
    ------
    ServingError
        An unreadable file, a line that is not an int64 integer (named by number), or no ids at all.
    """
    if text is None:
        try:
            text = Path(path).read_text()
        except (OSError, UnicodeDecodeError) as exc:
            raise ServingError(f"cannot read the candidates file {path}: {exc}") from exc
    lines = pl.Series("line", text.splitlines(), dtype=pl.Utf8).str.strip_chars()
    filled = lines != ""
    ids = lines.cast(pl.Int64, strict=False)
    bad = (filled & ids.is_null()).arg_true()
    if bad.len():
        i = int(bad[0])
        raise ServingError(f"candidates file {path}, line {i + 1}: {lines[i]!r} is not an integer item id "
                           f"({bad.len()} such line(s)); the file holds one integer id per line")
    out = ids.filter(filled).to_numpy().astype(np.int64)
    if out.size == 0:
        raise ServingError(f"candidates file {path} holds no item ids")
    return out


def top_positions(scores: np.ndarray, n: int) -> np.ndarray:
    """Positions of the ``n`` largest scores, best first: a partial sort, then a sort of ``n``.

    Ties keep candidate order: of equal scores the earlier position comes first, and where equal
    scores straddle the cut the earlier positions are kept (``docs/serving.md``).
    """
    if n >= scores.size:
        return np.argsort(-scores, kind="stable")
    kth = scores[np.argpartition(-scores, n - 1)[n - 1]]  # the n-th largest score
    above = np.flatnonzero(scores > kth)
    chosen = np.concatenate([above, np.flatnonzero(scores == kth)[: n - above.size]])
    chosen.sort()
    return chosen[np.argsort(-scores[chosen], kind="stable")]


def onnx_session(path: Path | str, *, threads: int = 1) -> Any:
    """An ONNX Runtime CPU session: ``threads`` intra-op threads, sequential execution, full graph
    optimisation. A single request row gains nothing from more threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise ArtifactError(f"ONNX model {path} cannot be loaded: {str(exc).splitlines()[0]}") from exc


_INT64_MIN, _INT64_MAX = int(np.iinfo(np.int64).min), int(np.iinfo(np.int64).max)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@dataclass(frozen=True)
class _Input:
    name: str
    kind: str
    dtype: str
    sep: str = "|"
    max_len: int = 1


class UserFeeds:
    """ONNX feeds for one request row, built without a data frame (microseconds, not a millisecond).

    Produces exactly what :func:`coarserank.serving.onnx_inputs.feeds_from_records` produces for a
    one-record list (a test holds them equal); booleans are not accepted as ids or numbers.
    """

    def __init__(self, encoder: Encoder, model: str = "user", fields: Sequence[str] | None = None) -> None:
        self.encoder = encoder
        by_name = {f.name: f for f in encoder.cfg.features}
        self.inputs = [_Input(s.name, s.kind, "string" if s.kind == "multi" else s.dtype,
                              by_name[s.name].sep if s.name in by_name else "|",
                              by_name[s.name].max_len if s.name in by_name else 1)
                       for s in input_specs(encoder, model, fields)]  # type: ignore[arg-type]
        self.names = [i.name for i in self.inputs]
        self.reader = "the user tower" if model == "user" else f"the {model} model"

    def __call__(self, user: dict[str, Any]) -> dict[str, np.ndarray]:
        if not isinstance(user, dict):
            raise ServingError(f"the user must be a JSON object of features, got {type(user).__name__}")
        feeds: dict[str, np.ndarray] = {}
        for spec in self.inputs:
            if spec.name not in user:
                raise ServingError(f"the user lacks feature {spec.name!r} (give null for a missing value); "
                                   f"{self.reader} reads: {', '.join(self.names)}")
            feeds[spec.name] = self._one(spec, user[spec.name])
        return feeds

    @staticmethod
    def _wrong(spec: _Input, what: str, value: Any) -> ServingError:
        return ServingError(f"feature {spec.name!r} needs {what} or null, "
                            f"got {type(value).__name__} {value!r}")

    def _one(self, spec: _Input, v: Any) -> np.ndarray:
        if spec.kind == "sequence":
            return self._sequence(spec, v)
        number = isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
        if spec.dtype == "int64":
            if v is None:
                return np.array([MISSING_INT64], dtype=np.int64)
            if not number or (isinstance(v, (float, np.floating)) and not float(v).is_integer()):
                raise self._wrong(spec, "an int64 id (a JSON integer)", v)
            if not _INT64_MIN <= int(v) <= _INT64_MAX:
                raise ServingError(f"feature {spec.name!r} is {v}, beyond the int64 range of ids "
                                   f"[{_INT64_MIN}, {_INT64_MAX}]")
            return np.array([int(v)], dtype=np.int64)
        if spec.dtype == "float32":
            if v is None:
                return np.array([np.nan], dtype=np.float32)
            if not number:
                raise self._wrong(spec, "a number", v)
            x = float(v)
            if math.isfinite(x) and abs(x) > _FLOAT32_MAX:
                raise ServingError(f"feature {spec.name!r} is {v!r}, beyond the float32 range of model inputs "
                                   f"(|x| <= {_FLOAT32_MAX:.4g})")
            if spec.kind == "bucketed" and math.isnan(x):  # as the reference: NaN sorts above every boundary
                x = math.inf
            return np.array([x], dtype=np.float32)
        if v is not None and not isinstance(v, str):
            raise self._wrong(spec, "a string", v)
        if spec.kind != "multi":
            return np.array([MISSING_STRING if v is None else v], dtype=object)
        out = np.full((1, spec.max_len), MISSING_STRING, dtype=object)
        pieces = [p for p in (x.strip() for x in (v or "").split(spec.sep)) if p][:spec.max_len]
        out[0, :len(pieces)] = pieces
        return out

    def _sequence(self, spec: _Input, v: Any) -> np.ndarray:
        """A behaviour sequence: its joined string split like a multi-valued input; integer pieces
        parsed as polars parses them (ASCII digits, optional sign, within int64), others unparsed."""
        if v is not None and not isinstance(v, str):
            raise self._wrong(spec, f"a string of values joined by {spec.sep!r}", v)
        pieces = [p for p in (x.strip() for x in (v or "").split(spec.sep)) if p][:spec.max_len]
        if spec.dtype != "int64":
            out = np.full((1, spec.max_len), MISSING_STRING, dtype=object)
            out[0, :len(pieces)] = pieces
            return out
        out = np.full((1, spec.max_len), MISSING_INT64, dtype=np.int64)
        out[0, :len(pieces)] = [_as_int64(p) for p in pieces]
        return out


_INTEGER = re.compile(r"[+-]?[0-9]+")


def _as_int64(piece: str) -> int:
    if _INTEGER.fullmatch(piece) is None:
        return UNPARSED_INT64
    value = int(piece)
    return value if MISSING_INT64 <= value <= -(MISSING_INT64 + 1) else UNPARSED_INT64


class CoarseRanker:
    """Rank candidate items for one user with the exported two-tower student.

    Parameters
    ----------
    user_session
        ONNX Runtime session of ``user_tower.onnx`` (raw user/context features -> ``[N, dim]``).
    feeds
        Builds the session's feeds from a user dict (:class:`UserFeeds`).
    store
        KV store of item vectors written for the same student.
    a, b
        The student's score scale and offset: ``s = a * <u, v> + b``.

    Examples
    --------
    >>> ranker = CoarseRanker.from_run("runs/demo")                       # doctest: +SKIP
    >>> ranker.rank({"user_id": 12, "gender": "F", ...}, ids, 100).ids    # doctest: +SKIP
    """

    path = "user dict -> ONNX user tower -> KV lookup -> matrix-vector product -> top-n"

    def __init__(self, user_session: Any, feeds: UserFeeds, store: KVStore, a: float, b: float,
                 files: RunFiles | None = None) -> None:
        self.user_session = user_session
        self.feeds = feeds
        self.store = store
        self.a = np.float32(a)
        self.b = np.float32(b)
        self.files = files
        self._output = [user_session.get_outputs()[0].name]
        self._index: ItemIndex | None = None

    @classmethod
    def from_run(cls, run_dir: Path | str, *, store: str | None = None, namespace: str | None = None,
                 threads: int = 1) -> CoarseRanker:
        """Load from a finished run: ``serving.json``, ``user_tower.onnx`` and ``items.kv`` (or the KV
        store at ``store``, a path or ``redis://`` URL, under ``namespace`` for Redis), each verified.
        The store must hold this run's student's vectors, and a Redis store that later publishes
        another model's is not followed (the last version of this model keeps serving).

        Raises
        ------
        ArtifactError
            A missing, modified or mismatched artifact (the message names it).
        """
        files = RunFiles(run_dir)
        with files.reading():
            bundle = files.bundle()
            if isinstance(bundle, ColdBundle):
                raise ArtifactError(f"run {files.path} serves a COLD student: it scores candidate rows and has no "
                                    "user tower, item vectors or Faiss index (`distill rank` and `distill bench` "
                                    "serve it)")
            encoder = files.encoder()
            session = onnx_session(files.verified(bundle.file("user_tower")), threads=threads)
            kv = open_store(store if store is not None else files.verified(bundle.file("kv")),
                            expected_dim=bundle.dim, namespace=namespace)
        found = kv.model_hash
        if found != bundle.model_hash:
            shown = redact_uri(store) if store is not None else bundle.file("kv")
            kv.close()
            raise ArtifactError(f"KV store {shown} holds vectors of model {found!r}, but run {files.path} "
                                f"serves model {bundle.model_hash!r}; publish this run's item vectors first "
                                "(`distill publish --run DIR --store URL`)")
        kv.pin_model(bundle.model_hash)  # a store that follows new versions never switches to another model's
        return cls(session, UserFeeds(encoder), kv, bundle.a, bundle.b, files)

    def user_vector(self, user: dict[str, Any]) -> np.ndarray:
        """The user tower's L2-normalised vector ``float32 [dim]`` for one request."""
        return self.user_session.run(self._output, self.feeds(user))[0][0]

    def rank(self, user: dict[str, Any], candidate_ids: npt.ArrayLike, top_n: int = 100) -> RankResult:
        """Score ``candidate_ids`` for ``user`` and keep the best ``top_n``.

        Raises
        ------
        ServingError
            A malformed user (missing feature, wrong type) or non-integer candidate ids.
        """
        if top_n < 1:
            raise ServingError(f"top-n must be >= 1, got {top_n}")
        ids = as_query_ids(candidate_ids)
        u = self.user_vector(user)
        found = self.store.get(ids)
        kept = ids if found.missing.size == 0 else ids[found.found]
        scores = found.vectors @ u
        scores *= self.a
        scores += self.b
        best = top_positions(scores, top_n)
        return RankResult(kept[best], scores[best], int(found.missing.size))

    def index(self) -> ItemIndex:
        """The run's Faiss index (``items.faiss`` and its sidecar, verified), loaded once."""
        if self._index is None:
            if self.files is None:
                raise ArtifactError("this ranker was not loaded from a run directory; it has no Faiss index")
            with self.files.reading():
                rel = self.files.bundle().file("index")
                sidecar = self.files.verified(sidecar_path(rel).as_posix())
                self._index = ItemIndex.load(self.files.verified(rel), sidecar)
        return self._index

    def recall(self, user: dict[str, Any], k: int = 100) -> RankResult:
        """Top-``k`` catalogue items for ``user`` from the Faiss index, with student scores."""
        ip, ids = self.index().search(self.user_vector(user)[None, :], k)
        keep = ids[0] != -1
        return RankResult(ids[0][keep], (self.a * ip[0][keep] + self.b).astype(np.float32), 0)


class TeacherScorer:
    """``teacher.onnx`` over per-candidate rows (raw user, context and item columns plus history
    crosses, as :func:`coarserank.serving.catalogue.teacher_frame` assembles them)."""

    def __init__(self, session: Any) -> None:
        self.session = session
        self._output = [session.get_outputs()[0].name]
        self._request = request_inputs({i.name: i.shape[0] if i.shape else None for i in session.get_inputs()})

    def one_request(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The feeds of one request's candidates with its user and context inputs given once (their
        first row; the graph broadcasts them), as a server hands them over. A graph exported before
        the request axis existed gets ``feeds`` unchanged."""
        return one_request(feeds, self._request)

    def scores(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return np.asarray(self.session.run(self._output, feeds)[0]).reshape(-1)

    def rank(self, feeds: dict[str, np.ndarray], ids: np.ndarray, n: int) -> RankResult:
        s = self.scores(feeds)
        best = top_positions(s, n)
        return RankResult(ids[best], s[best].astype(np.float32), 0)


@dataclass
class BenchRequest:
    """One benchmark request: the user dict and, per candidate count, the candidate ids and the
    teacher's feeds for them (assembled before timing, as a feature service would hand them over)."""

    user: dict[str, Any]
    candidates: dict[int, np.ndarray] = field(default_factory=dict)
    teacher_feeds: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)


class Ranker(Protocol):
    """What ``distill rank`` and ``distill bench`` call: :class:`CoarseRanker` (towers) or
    :class:`~coarserank.serving.cold_ranker.ColdRanker` (the COLD student); ``path`` says what one call does."""

    path: str

    def rank(self, user: dict[str, Any], candidate_ids: npt.ArrayLike, top_n: int = 100) -> RankResult: ...


def bench_latency(ranker: Ranker, teacher: TeacherScorer, requests: Sequence[BenchRequest],
                  sizes: Sequence[int], *, top: int = 100, repeats: int = 200, warmup: int = 20,
                  threads: int = 1) -> dict[str, Any]:
    """Latency of the student path (``ranker.rank`` from the user dict) and of ``teacher.onnx`` on the
    same candidates, per candidate count, cycling through ``requests``; plus p50 and p99 ratios. The
    two paths are timed side by side (:func:`~coarserank.serving.timing.measure_side_by_side`), so the
    ratios hold on a machine whose speed drifts."""
    if not requests:
        raise ServingError("the benchmark needs at least one request")
    out: dict[str, Any] = {}
    for size in sizes:
        student_turn, teacher_turn = iter(range(1 << 62)), iter(range(1 << 62))
        fine_feeds = [teacher.one_request(r.teacher_feeds[size]) for r in requests]

        def student() -> None:
            r = requests[next(student_turn) % len(requests)]
            ranker.rank(r.user, r.candidates[size], top)

        def fine() -> None:
            i = next(teacher_turn) % len(requests)
            teacher.rank(fine_feeds[i], requests[i].candidates[size], top)

        timed = measure_side_by_side({"student": student, "teacher": fine}, repeats=repeats, warmup=warmup,
                                     threads=threads)
        s, t = timed["student"], timed["teacher"]
        out[str(size)] = {"student": s.to_json(), "teacher": t.to_json(),
                          "ratio_p50": round(t.p50_ms / s.p50_ms, 2),
                          "ratio_p99": round(t.p99_ms / s.p99_ms, 2)}
    return {"candidates": out, "top_n": top, "requests": len(requests), "machine": machine(),
            "student_path": ranker.path,
            "teacher_path": "teacher.onnx on prebuilt raw feeds: the request's user and context once, the "
                            "candidates' item columns and history crosses per row (assembly not timed) -> top-n"}
