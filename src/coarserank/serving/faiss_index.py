"""Recall through Faiss: an inner-product index over item vectors, keyed by the int64 item ids.

Kinds (every one is wrapped in ``IndexIDMap2`` so Faiss returns item ids, never row numbers):

``flat``
    ``IndexFlatIP``: exact search, the reference the others are measured against.
``hnsw``
    ``IndexHNSWFlat`` (``METRIC_INNER_PRODUCT``, ``M`` links per node); ``efSearch`` is tuned.
    HNSW cannot delete nodes, so :meth:`ItemIndex.remove` keeps a *tombstone* set and every search
    then filters it inside the graph walk with an ``IDSelectorNot(IDSelectorBatch)``; a removed id
    cannot be re-added until the index is rebuilt (``distill index``), which also drops the dead
    nodes. Rebuild when tombstones pass about a tenth of the items: the walk slows as they grow.
``ivf``
    ``IndexIVFFlat`` with ``nlist = 4 sqrt(n)`` lists (at most one per 39 items), trained on up to 64
    vectors per list; ``nprobe`` is tuned. Removal is real (``remove_ids``).
``ivfpq``
    ``IndexIVFPQ``: as ``ivf`` but vectors compressed to ``dim / 2`` one-byte codes; returned
    scores are approximate inner products.
``auto``
    :func:`choose_kind`: ``flat`` under :data:`AUTO_FLAT_BELOW` items (exact search is fast
    enough and recall is 1), ``ivf`` above: in ``benchmarks/bench_faiss.py`` it reached recall@100
    0.95 at a higher QPS than HNSW at 100k and 1M items, builds in seconds instead of minutes, and
    removes items for real.

Tuning (:func:`tune`) picks the smallest ``efSearch`` / ``nprobe`` whose recall@k reaches the target
with 95% confidence (the one-sided lower bound of the mean) on a set of *user* vectors (the real queries); :func:`evaluate` then reports recall@10/@100 against
exact search on a disjoint set and queries per second. Recall@k is the share of the exact top-k
(by inner product over the same vectors) that the index returns in its top-k, averaged over queries.

Users with several interest vectors (``[nq, K, dim]``, :func:`search_interests`) query the index
once per interest (one batched search of ``nq * K`` rows) and the ``K`` result lists are merged by
score (:func:`merge_by_score`): an item found by several interests keeps its best score, so the
result is the top-``k`` by the maximum over interests among the items any interest found.

New items (an unseen id with known content features) are encoded by the item tower and added with
:meth:`ItemIndex.add` without a rebuild: IVF kinds assign them to the trained lists, HNSW links them in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Final

import faiss
import numpy as np
import numpy.typing as npt

from coarserank.atomic import atomic_write_text, atomic_write_with
from coarserank.errors import ArtifactError, ConfigError, DataError, ServingError
from coarserank.serving.timing import measure

__all__ = ["KINDS", "AUTO_FLAT_BELOW", "ItemIndex", "choose_kind", "exact_search", "recall_at_k", "recall_per_query", "tune",
           "evaluate", "sidecar_path", "merge_by_score", "search_interests"]

KINDS: Final[tuple[str, ...]] = ("flat", "hnsw", "ivf", "ivfpq")
AUTO_FLAT_BELOW: Final[int] = 50_000
SIDECAR_FORMAT: Final[int] = 1
_ONE_SIDED_95: Final[float] = 1.645  # standard normal quantile
_EF_GRID: Final[tuple[int, ...]] = (16, 24, 32, 48, 64, 96, 112, 128, 160, 192, 256, 320, 384, 512, 768, 1024,
                                     1536, 2048)
_ADD_CHUNK: Final[int] = 100_000
_TRAIN_PER_LIST: Final[int] = 64


def sidecar_path(path: Path | str) -> Path:
    """The JSON sidecar of build facts beside an index file (``items.faiss`` -> ``items.faiss.json``)."""
    return Path(f"{path}.json")


def choose_kind(count: int) -> str:
    """``flat`` under :data:`AUTO_FLAT_BELOW` items, else ``ivf``."""
    return "flat" if count < AUTO_FLAT_BELOW else "ivf"


def _as_vectors(vectors: npt.ArrayLike, dim: int | None, what: str) -> np.ndarray:
    x = np.asarray(vectors)
    if x.ndim == 1:
        x = x[None, :]
    if x.ndim != 2 or x.dtype.kind != "f":
        raise DataError(f"{what} must be a float array [n, dim], got dtype {x.dtype} shape {x.shape}")
    if dim is not None and x.shape[1] != dim:
        raise DataError(f"{what} have dim {x.shape[1]}, the index holds dim {dim}")
    if not np.isfinite(x).all():
        raise DataError(f"{what} contain NaN or infinity")
    return np.ascontiguousarray(x, dtype=np.float32)


def _as_ids(ids: npt.ArrayLike, n: int) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim != 1 or arr.dtype.kind not in "iu":
        raise DataError(f"item ids must be a 1-D integer array, got dtype {arr.dtype} shape {arr.shape}")
    if arr.size != n:
        raise DataError(f"{arr.size} item ids but {n} item vectors; the lengths must match")
    arr = arr.astype(np.int64)
    if (arr == -1).any():
        raise DataError("item id -1 cannot be indexed: Faiss uses -1 for 'no result'")
    if np.unique(arr).size != arr.size:
        raise DataError("item ids occur more than once; every indexed item needs a unique id")
    return arr


def _divisor_at_most(dim: int, limit: int) -> int:
    return max(d for d in range(1, max(1, limit) + 1) if dim % d == 0)


def _make(kind: str, dim: int, n: int, hnsw_m: int,
          ef_construction: int) -> tuple[faiss.Index, dict[str, int]]:
    ip = faiss.METRIC_INNER_PRODUCT
    if kind == "flat":
        return faiss.IndexFlatIP(dim), {}
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, hnsw_m, ip)
        index.hnsw.efConstruction = ef_construction
        return index, {"M": hnsw_m, "efConstruction": ef_construction}
    nlist = max(1, min(int(round(4 * math.sqrt(n))), n // 39))
    if kind == "ivf":
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, ip)
        return index, {"nlist": nlist}
    m = _divisor_at_most(dim, dim // 2)
    nbits = int(min(8, max(1, math.floor(math.log2(max(n, 2))))))
    index = faiss.IndexIVFPQ(faiss.IndexFlatIP(dim), dim, nlist, m, nbits, ip)
    index.pq.cp.min_points_per_centroid = 1  # small catalogues: fewer codes, no warning spam
    return index, {"nlist": nlist, "pq_m": m, "pq_nbits": nbits}


class ItemIndex:
    """An inner-product Faiss index over item vectors keyed by item id; see the module docstring.

    Build with :meth:`build`, read with :meth:`load`; ``search`` returns ``(scores, ids)`` with ids
    -1 (score -inf) where fewer than ``k`` items qualify.
    """

    def __init__(self, index: faiss.IndexIDMap2, kind: str, build: dict[str, int],
                 search_params: dict[str, int] | None = None, removed: npt.ArrayLike | None = None) -> None:
        if kind not in KINDS:
            raise ConfigError(f"index kind must be one of {list(KINDS)}, got {kind!r}")
        self.index = index
        self.kind = kind
        self.build_params = dict(build)
        self.removed = np.unique(np.asarray(removed if removed is not None else [], dtype=np.int64))
        self.search_params: dict[str, int] = {}
        self.set_search(**(search_params or {}))

    # -- building ----------------------------------------------------------------------------
    @classmethod
    def build(cls, ids: npt.ArrayLike, vectors: npt.ArrayLike, kind: str = "auto", *, seed: int = 0,
              hnsw_m: int = 32, ef_construction: int = 80,
              progress: Callable[[str], None] | None = None) -> ItemIndex:
        """Build an index of ``kind`` (or ``auto``) over ``vectors [n, dim]`` keyed by ``ids``.

        Raises
        ------
        ConfigError
            An unknown kind.
        DataError
            Bad ids or vectors (duplicates, -1, NaN, mismatched lengths).
        """
        x = _as_vectors(vectors, None, "item vectors")
        id_arr = _as_ids(ids, x.shape[0])
        if x.shape[0] == 0:
            raise DataError("no items to index")
        resolved = choose_kind(x.shape[0]) if kind == "auto" else kind
        if resolved not in KINDS:
            raise ConfigError(f"index kind must be 'auto' or one of {list(KINDS)}, got {kind!r}")
        inner, build = _make(resolved, x.shape[1], x.shape[0], hnsw_m, ef_construction)
        if not inner.is_trained:
            rng = np.random.default_rng(seed)
            nlist = build["nlist"]
            sample = x if x.shape[0] <= _TRAIN_PER_LIST * nlist else \
                x[np.sort(rng.choice(x.shape[0], _TRAIN_PER_LIST * nlist, replace=False))]
            inner.cp.seed = seed
            inner.cp.min_points_per_centroid = 1
            if progress:
                progress(f"index: training {resolved} ({nlist} lists) on {sample.shape[0]:,} vectors")
            inner.train(sample)
        index = faiss.IndexIDMap2(inner)
        for start in range(0, x.shape[0], _ADD_CHUNK):
            index.add_with_ids(x[start:start + _ADD_CHUNK], id_arr[start:start + _ADD_CHUNK])
            if progress and x.shape[0] > _ADD_CHUNK:
                progress(f"index: added {min(start + _ADD_CHUNK, x.shape[0]):,} / {x.shape[0]:,} items")
        return cls(index, resolved, build)

    # -- properties --------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def count(self) -> int:
        """Items a search can return (tombstoned HNSW nodes excluded)."""
        return int(self.index.ntotal) - int(self.removed.size)

    def ids(self) -> np.ndarray:
        """Ids a search can return, sorted."""
        every = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        return np.setdiff1d(every, self.removed)

    def _inner(self) -> faiss.Index:
        return faiss.downcast_index(self.index.index)

    def set_search(self, **params: int) -> None:
        """Set ``efSearch`` (hnsw) or ``nprobe`` (ivf, ivfpq).

        Raises
        ------
        ConfigError
            A parameter the kind does not have, or a value below 1.
        """
        allowed = {"hnsw": "efSearch", "ivf": "nprobe", "ivfpq": "nprobe"}.get(self.kind)
        for name, value in params.items():
            if name != allowed:
                raise ConfigError(f"a {self.kind} index has no search parameter {name!r}"
                                  + (f"; it has {allowed!r}" if allowed else ""))
            if int(value) < 1:
                raise ConfigError(f"{name} must be >= 1, got {value}")
            value = int(value)
            if name == "nprobe":
                value = min(value, int(self._inner().nlist))
                faiss.extract_index_ivf(self.index).nprobe = value
            else:
                self._inner().hnsw.efSearch = value
            self.search_params[name] = value

    # -- queries -----------------------------------------------------------------------------
    def search(self, queries: npt.ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items by inner product for each query row.

        Returns
        -------
        tuple
            ``(scores [nq, k] float32, ids [nq, k] int64)``, best first; -1 / -inf pad short rows.
        """
        q = _as_vectors(queries, self.dim, "query vectors")
        if k < 1:
            raise ConfigError(f"k must be >= 1, got {k}")
        params = None
        if self.kind == "hnsw":
            sel = faiss.IDSelectorNot(faiss.IDSelectorBatch(self.removed)) if self.removed.size else None
            ef = max(self.search_params.get("efSearch", 16), k)
            params = faiss.SearchParametersHNSW(efSearch=ef, sel=sel)
        scores, ids = self.index.search(q, k, params=params)
        scores[ids == -1] = -np.inf
        return scores, ids

    # -- updates -----------------------------------------------------------------------------
    def add(self, ids: npt.ArrayLike, vectors: npt.ArrayLike) -> None:
        """Add new items without a rebuild.

        Raises
        ------
        DataError
            An id already in the index, or (hnsw) an id removed since the last rebuild.
        """
        x = _as_vectors(vectors, self.dim, "item vectors")
        id_arr = _as_ids(ids, x.shape[0])
        present = faiss.vector_to_array(self.index.id_map).astype(np.int64)
        clash = id_arr[np.isin(id_arr, present)]
        if clash.size:
            tomb = clash[np.isin(clash, self.removed)]
            if tomb.size:
                raise DataError(f"item id(s) {tomb[:10].tolist()} were removed from this hnsw index and "
                                "cannot be re-added until it is rebuilt (`distill index`)")
            raise DataError(f"item id(s) {clash[:10].tolist()} are already in the index; remove them first")
        self.index.add_with_ids(x, id_arr)

    def remove(self, ids: npt.ArrayLike) -> int:
        """Remove items so no search returns them; returns how many were present."""
        arr = np.unique(np.asarray(ids, dtype=np.int64))
        if self.kind != "hnsw":
            return int(self.index.remove_ids(arr))
        live = np.setdiff1d(arr[np.isin(arr, faiss.vector_to_array(self.index.id_map))], self.removed)
        self.removed = np.union1d(self.removed, live)
        return int(live.size)

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: Path | str, facts: dict[str, Any] | None = None) -> list[Path]:
        """Write the index to ``path`` and its JSON sidecar (kind, parameters, tombstones, ``facts``)."""
        target = Path(path)
        written = [atomic_write_with(target, lambda tmp: faiss.write_index(self.index, str(tmp)), ".faiss")]
        body = {"format": SIDECAR_FORMAT, "kind": self.kind, "dim": self.dim, "count": self.count,
                "build": self.build_params, "search": self.search_params, "removed": self.removed.tolist(),
                **(facts or {})}
        written.append(atomic_write_text(sidecar_path(target), json.dumps(body, indent=2)))
        return written

    @classmethod
    def load(cls, path: Path | str, sidecar: Path | str | None = None) -> ItemIndex:
        """Read an index written by :meth:`save` (pass ``sidecar`` when it was verified elsewhere).

        Raises
        ------
        ArtifactError
            A missing or unreadable file, or an index that does not match its sidecar.
        """
        path = Path(path)
        meta_path = Path(sidecar) if sidecar is not None else sidecar_path(path)
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"index sidecar {meta_path} is missing or not JSON: {exc}") from exc
        if meta.get("format") != SIDECAR_FORMAT or meta.get("kind") not in KINDS:
            raise ArtifactError(f"index sidecar {meta_path}: unsupported format or kind "
                                f"({meta.get('format')!r}, {meta.get('kind')!r})")
        if not path.is_file():
            raise ArtifactError(f"Faiss index {path} is missing; build it with `distill index --run DIR`")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as exc:
            raise ArtifactError(f"Faiss index {path} is unreadable: {str(exc).splitlines()[0]}") from exc
        if not isinstance(index, faiss.IndexIDMap2) or index.d != meta.get("dim"):
            raise ArtifactError(f"Faiss index {path} does not match its sidecar (an IndexIDMap2 of dim "
                                f"{meta.get('dim')} expected)")
        return cls(index, meta["kind"], meta.get("build", {}), meta.get("search", {}),
                   meta.get("removed", []))


# -- several interests per user ------------------------------------------------------------------

def merge_by_score(scores: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge result lists per row: ``scores``/``ids`` ``[nq, m]`` (several lists side by side) ->
    the top-``k`` distinct ids by score ``[nq, k]``, best first, each id with its highest score;
    -1 / -inf pad rows with fewer than ``k`` distinct ids. Equal scores keep the input order."""
    s, i = np.asarray(scores, dtype=np.float32), np.asarray(ids, dtype=np.int64)
    if s.shape != i.shape or s.ndim != 2:
        raise DataError(f"scores and ids must be matching [rows, m] arrays, got {s.shape} and {i.shape}")
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    order = np.argsort(-s, axis=1, kind="stable")
    s, i = np.take_along_axis(s, order, axis=1), np.take_along_axis(i, order, axis=1)
    by_id = np.argsort(i, axis=1, kind="stable")  # equal ids stay in score order: the first is the best
    sorted_ids = np.take_along_axis(i, by_id, axis=1)
    repeat = np.zeros_like(i, dtype=bool)
    np.put_along_axis(repeat, by_id[:, 1:], sorted_ids[:, 1:] == sorted_ids[:, :-1], axis=1)
    drop = repeat | (i == -1)
    s = np.where(drop, -np.inf, s).astype(np.float32)
    order = np.argsort(drop, axis=1, kind="stable")[:, :k]  # kept entries first, still in score order
    out_s, out_i = np.take_along_axis(s, order, axis=1), np.take_along_axis(np.where(drop, -1, i), order, axis=1)
    if out_s.shape[1] < k:
        pad = k - out_s.shape[1]
        out_s = np.pad(out_s, ((0, 0), (0, pad)), constant_values=-np.inf)
        out_i = np.pad(out_i, ((0, 0), (0, pad)), constant_values=-1)
    return out_s, out_i


def search_interests(index: ItemIndex, queries: npt.ArrayLike, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items for users with ``K`` interest vectors ``[nq, K, dim]`` (``[nq, dim]`` = one):
    one search per interest, merged by score (:func:`merge_by_score`)."""
    q = np.asarray(queries)
    if q.ndim == 2:
        return index.search(q, k)
    if q.ndim != 3:
        raise DataError(f"interest queries must be [users, K, dim], got shape {q.shape}")
    n, interests, dim = q.shape
    scores, ids = index.search(q.reshape(n * interests, dim), k)
    return merge_by_score(scores.reshape(n, interests * k), ids.reshape(n, interests * k), k)


# -- evaluation ---------------------------------------------------------------------------------

def exact_search(ids: npt.ArrayLike, vectors: npt.ArrayLike, queries: npt.ArrayLike,
                 k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` by inner product (the ground truth for recall): ``(scores, ids)``."""
    return ItemIndex.build(ids, vectors, "flat").search(queries, k)


def recall_at_k(truth: np.ndarray, found: np.ndarray, k: int) -> float:
    """Mean over query rows of ``|found[:, :k] & truth[:, :k]| / (valid truth ids in the row)``
    (:func:`recall_per_query`)."""
    return float(np.mean(recall_per_query(truth, found, k)))


def recall_per_query(truth: np.ndarray, found: np.ndarray, k: int) -> np.ndarray:
    """Per query row, ``|found[:, :k] & truth[:, :k]| / (valid truth ids in the row)``.

    Ids of -1 (Faiss's "no result") never count; vectorised: per row, sort the union and count
    adjacent equal pairs (each row's ids are unique).
    """
    t, f = np.asarray(truth)[:, :k], np.asarray(found)[:, :k]
    vals = np.concatenate([t, f], axis=1)
    valid = np.concatenate([t != -1, f != -1], axis=1)
    order = np.argsort(vals, axis=1, kind="stable")
    v = np.take_along_axis(vals, order, axis=1)
    ok = np.take_along_axis(valid, order, axis=1)
    hits = ((v[:, 1:] == v[:, :-1]) & ok[:, 1:] & ok[:, :-1]).sum(axis=1)
    denom = np.maximum((t != -1).sum(axis=1), 1)
    return hits / denom


def tune(index: ItemIndex, queries: np.ndarray, truth: np.ndarray, *, k: int = 100,
         target: float = 0.95) -> dict[str, Any]:
    """Set the smallest ``efSearch`` / ``nprobe`` whose recall@k on ``queries`` reaches ``target`` with
    95% confidence (the largest tried if none does); returns ``{parameter: value, "tune_recall": r,
    "tune_recall_lower": lower}``.

    The setting is a promise about queries not seen here, so the sample's mean must clear the target
    by its sampling error: the one-sided 95% lower bound ``mean - 1.645 * sd / sqrt(n)`` of the
    per-query recall must reach ``target``. Tuning on the mean alone leaves about even odds of
    falling short on new queries (benchmarks/RESULTS.md, 16.2).
    """
    if index.kind == "flat":
        return {}
    if index.kind == "hnsw":
        name, grid = "efSearch", [e for e in _EF_GRID if e >= min(k, _EF_GRID[-1])]
    else:
        nlist = int(index._inner().nlist)
        steps = [p for i in range(int(math.log2(nlist)) + 1) for p in (2 ** i, 3 * 2 ** i // 2)]
        name, grid = "nprobe", sorted({min(p, nlist) for p in steps} | {nlist})
    recall, lower = 0.0, 0.0
    for value in grid:
        index.set_search(**{name: value})
        per_query = recall_per_query(truth, index.search(queries, k)[1], k)
        recall = float(per_query.mean())
        spread = float(per_query.std(ddof=1)) / math.sqrt(per_query.size) if per_query.size > 1 else 0.0
        lower = recall - _ONE_SIDED_95 * spread
        if lower >= target:
            break
    return {name: index.search_params[name], "tune_recall": round(recall, 4), "tune_recall_lower": round(lower, 4)}


def evaluate(index: ItemIndex, ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, *,
             target: float = 0.95, repeats: int = 3) -> dict[str, Any]:
    """Tune on half of ``queries``, then report recall@10/@100 against exact search and queries per
    second (one batched ``search(k=100)`` over the other half, best-of-``repeats`` median) for the
    index and for exact search. ``ids``/``vectors`` are what the index holds."""
    q = _as_vectors(queries, index.dim, "query vectors")
    if q.shape[0] < 2:
        raise DataError(f"evaluating an index needs at least 2 query vectors, got {q.shape[0]}")
    half = q.shape[0] // 2
    tune_q, eval_q = q[:half], q[half:]
    k = 100
    exact = ItemIndex.build(ids, vectors, "flat")
    tuned = tune(index, tune_q, exact.search(tune_q, k)[1], k=k, target=target)
    truth = exact.search(eval_q, k)[1]
    found = index.search(eval_q, k)[1]
    threads = faiss.omp_get_max_threads()
    t_index = measure(lambda: index.search(eval_q, k), repeats=repeats, warmup=1, threads=threads)
    t_exact = measure(lambda: exact.search(eval_q, k), repeats=repeats, warmup=1, threads=threads)
    qps, exact_qps = eval_q.shape[0] / (t_index.p50_ms / 1e3), eval_q.shape[0] / (t_exact.p50_ms / 1e3)
    return {"recall@10": round(recall_at_k(truth, found, 10), 4),
            "recall@100": round(recall_at_k(truth, found, k), 4),
            "qps": round(qps, 1), "exact_qps": round(exact_qps, 1), "speedup": round(qps / exact_qps, 2),
            "queries": int(eval_q.shape[0]), "tune_queries": int(half), "threads": threads,
            "recall_target": target, **tuned,
            "recall_definition": "share of the exact inner-product top-k returned in the index's top-k, "
                                 "averaged over held-out user vectors (half the sample; the other "
                                 "half tunes)"}
