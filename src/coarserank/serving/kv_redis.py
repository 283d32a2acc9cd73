"""The Redis KV store: raw little-endian vectors under versioned keys, switched atomically.

Key layout under a namespace ``ns`` (default ``coarserank:items``; see ``docs/kv-format.md``)::

    {ns}:next_version      INCR counter handing out version numbers
    {ns}:current           the published version readers use (a decimal integer)
    {ns}:versions          list of completed versions, oldest first
    {ns}:v{v}:{id}         one item vector: dim little-endian float32 or float16 values
    {ns}:v{v}:ids          all ids of version v, sorted, as little-endian int64 bytes
    {ns}:v{v}:meta         hash: dim, dtype, count, model_hash, format_version (, run_id)

Publishing writes every item key and the id list of a fresh version, then the meta hash (which marks
the version complete), then sets ``current`` in a MULTI/EXEC together with the ``versions`` list.
Old versions beyond ``keep_previous`` are deleted meta first, so a reader that finds the meta in the
same MULTI/EXEC as its MGET has read a complete, single version. A failed publish never touches
``current``; the partial version is removed on a best-effort basis.

The connection URL may carry a password (``redis://:pw@127.0.0.1:6379/0``) or TLS (``rediss://``,
with redis-py's query options such as ``?ssl_ca_certs=/path/ca.pem``); neither is stored beyond the
client, printed in ``repr`` or included in error messages.

A reader that follows the current version and was told which model it serves (:meth:`pin_model`)
never switches to a version of another model: it keeps serving the last version of its own model,
logs a warning once per refused version, and fails only once that version is deleted.

Examples
--------
>>> store = RedisKVStore("redis://127.0.0.1:6379/0")                   # doctest: +SKIP
>>> version = store.publish(ids, vectors, model_hash="3f2a...")        # doctest: +SKIP
>>> RedisKVStore("redis://127.0.0.1:6379/0", version="current").get([3, 5]).missing  # doctest: +SKIP
array([5])
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any, Final, Literal, NoReturn, cast

import numpy as np
import numpy.typing as npt
import redis
from redis.connection import parse_url

from coarserank.errors import DataError, ServingError
from coarserank.serving.kv import DTYPES, KVResult, KVStore, as_query_ids, check_redis_db, validate_items, widen_float16

__all__ = ["REDIS_FORMAT_VERSION", "RedisKVStore"]

#: Value of the ``format_version`` field of each version's meta hash.
REDIS_FORMAT_VERSION: Final[int] = 1

_STORAGE: Final[dict[str, np.dtype]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_IDS_CHUNK: Final[int] = 1 << 20
_RESOLVE_ATTEMPTS: Final[int] = 5
_log = logging.getLogger(__name__)
_NO_PASSWORD: Final[tuple[str, ...]] = ("NOAUTH", "HELLO must be called", "Authentication required")


class RedisKVStore(KVStore):
    """A KV store in Redis, for publishing and for reading.

    Parameters
    ----------
    url : str
        ``redis://[[user]:password@]host[:port][/db]``, ``rediss://...`` (TLS) or ``unix://path``.
    namespace : str
        Prefix of every key this store reads or writes.
    version : int, "current" or None
        ``None`` follows the current version: each :meth:`get` checks it in the same round trip and
        switches to a newly published version. ``"current"`` pins the version current at open; an
        int pins that version. A pinned store fails once its version is deleted.
    expected_dim : int, optional
        Fail when the version read holds vectors of another dimension.
    password : str, optional
        Alternative to a password inside ``url`` (for a caller that reads it from the environment).
    socket_timeout : float
        Seconds to wait for a connection or a reply.

    Raises
    ------
    ServingError
        Redis unreachable (the message names host:port, never the password), or a pinned version
        that does not exist.
    """

    def __init__(
        self,
        url: str,
        namespace: str = "coarserank:items",
        *,
        version: int | Literal["current"] | None = None,
        expected_dim: int | None = None,
        password: str | None = None,
        socket_timeout: float = 5.0,
    ) -> None:
        try:
            parts: dict[str, Any] = parse_url(url)  # type: ignore[no-untyped-call]
        except ValueError:  # the message may quote parts of the URL: not repeated here
            scheme = url.split("://", 1)[0] if "://" in url else "?"
            raise ServingError(
                f"not a valid Redis URL (scheme {scheme!r}); expected "
                "redis://[[user]:password@]host[:port][/db], rediss://... (TLS) or unix://path"
            ) from None
        check_redis_db(url, parts)
        self._secret = password or parts.get("password")
        if "path" in parts:
            self._address = f"unix:{parts['path']}"
        else:
            self._address = f"{parts.get('host', '127.0.0.1')}:{parts.get('port', 6379)}"
        self._display = f"{url.split('://', 1)[0]}://{self._address}/{parts.get('db', 0)}"
        self._ns = namespace
        self._expected_dim = expected_dim
        kwargs: dict[str, object] = {
            "socket_connect_timeout": socket_timeout,
            "socket_timeout": socket_timeout,
        }
        if password is not None:
            kwargs["password"] = password
        self._client = redis.Redis.from_url(url, **kwargs)
        self._version: int | None = None
        self._meta: dict[str, str] | None = None
        self._model: str | None = None
        self._refused: set[int] = set()
        with self._errors("connect"):
            self._client.ping()
        self._pinned = version is not None
        if version == "current":
            self._resolve(None)
        elif version is not None:
            self._resolve(int(version))

    # ---- errors and keys ---------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        return text.replace(self._secret, "***") if self._secret else text

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        try:
            yield
        except redis.exceptions.RedisError as exc:
            text = str(exc)
            if any(marker in text for marker in _NO_PASSWORD):
                raise ServingError(
                    f"Redis KV store at {self._address}: {action} failed: the server requires a password; give "
                    "it in the URL (redis://:PASSWORD@host:port/db or redis://USER:PASSWORD@...)") from None
            problem = self._scrub(f"{type(exc).__name__}: {text}")
            raise ServingError(f"Redis KV store at {self._address}: {action} failed ({problem})") from None

    def _fail(self, problem: str) -> NoReturn:
        raise ServingError(f"Redis KV store at {self._address}, namespace {self._ns!r}: {problem}")

    def _key(self, suffix: str) -> str:
        return f"{self._ns}:{suffix}"

    def _vkey(self, version: int, suffix: str) -> str:
        return f"{self._ns}:v{version}:{suffix}"

    def _get_bytes(self, key: str) -> bytes | None:
        return cast(bytes | None, self._client.get(key))

    # ---- reading -----------------------------------------------------------------------------

    def _resolve(self, version: int | None) -> int:
        """Load the meta of ``version`` (or of the current one) and make it this store's version."""
        requested = version
        for _ in range(_RESOLVE_ATTEMPTS):
            with self._errors("reading the version"):
                if requested is None:
                    raw = self._get_bytes(self._key("current"))
                    if raw is None:
                        self._fail("nothing is published yet (no current version)")
                    version = int(raw)
                assert version is not None
                meta = {
                    k.decode(): v.decode()
                    for k, v in cast(
                        dict[bytes, bytes], self._client.hgetall(self._vkey(version, "meta"))
                    ).items()
                }
            if meta:
                break
            if requested is not None:
                self._fail(f"version {version} does not exist (never completed, or deleted)")
            # the current version was replaced and deleted between the two reads: read it again
        else:
            self._fail(f"the current version changed {_RESOLVE_ATTEMPTS} times while being read")
        assert version is not None
        if meta.get("format_version") != str(REDIS_FORMAT_VERSION) or meta.get("dtype") not in DTYPES:
            self._fail(
                f"version {version} has format_version={meta.get('format_version')!r}, "
                f"dtype={meta.get('dtype')!r}; expected format_version {REDIS_FORMAT_VERSION} "
                f"and one of {DTYPES}"
            )
        if self._model is not None and meta.get("model_hash") != self._model:
            return self._refuse(version, meta)
        if self._expected_dim is not None and int(meta["dim"]) != self._expected_dim:
            self._fail(
                f"dimension mismatch: version {version} holds dim {meta['dim']}, "
                f"expected {self._expected_dim}"
            )
        self._version, self._meta = version, meta
        return version

    def _refuse(self, version: int, meta: dict[str, str]) -> int:
        """A newly current ``version`` holds another model's vectors: keep the last good version."""
        assert self._version is not None  # pin_model read a version of the model first
        if version not in self._refused:
            self._refused.add(version)
            _log.warning("Redis KV store at %s, namespace %r: the current version %d holds vectors of model %r, "
                         "not of model %r which this reader serves; still serving version %d",
                         self._address, self._ns, version, meta.get("model_hash"), self._model, self._version)
        return self._version

    def pin_model(self, model_hash: str) -> None:
        """Serve only versions whose vectors come from ``model_hash`` (see the module docstring);
        a :class:`ServingError` when the version read now holds another model's vectors."""
        if self.model_hash != model_hash:
            self._fail(f"version {self.version} holds vectors of model {self.model_hash!r}, not of model "
                       f"{model_hash!r}")
        self._model = model_hash

    @property
    def refused_versions(self) -> list[int]:
        """Versions that became current but were refused: they hold another model's vectors."""
        return sorted(self._refused)

    def _current_meta(self) -> dict[str, str]:
        if self._meta is None:
            self._resolve(None)
        assert self._meta is not None
        return self._meta

    def refresh(self) -> int:
        """Re-read the current version (and unpin); return it."""
        self._pinned = False
        return self._resolve(None)

    @property
    def version(self) -> int:
        """The version this store read last (resolving the current one if none yet)."""
        self._current_meta()
        assert self._version is not None
        return self._version

    @property
    def namespace(self) -> str:
        """Prefix of every key this store reads or writes."""
        return self._ns

    @property
    def dim(self) -> int:
        """Vector dimension of :attr:`version`."""
        return int(self._current_meta()["dim"])

    @property
    def count(self) -> int:
        """Number of items in :attr:`version`."""
        return int(self._current_meta()["count"])

    @property
    def model_hash(self) -> str:
        """Hash of the model that produced :attr:`version`."""
        return self._current_meta()["model_hash"]

    @property
    def run_id(self) -> str:
        """The run the current version belongs to (``""`` when it was published without one)."""
        return self._current_meta().get("run_id", "")

    @property
    def dtype(self) -> str:
        """Storage dtype of :attr:`version`."""
        return self._current_meta()["dtype"]

    def versions(self) -> list[int]:
        """Completed versions still stored, oldest first."""
        with self._errors("listing versions"):
            return [int(v) for v in self._client.lrange(self._key("versions"), 0, -1)]

    def ids(self) -> npt.NDArray[np.int64]:
        """Return all ids of :attr:`version`, sorted ascending."""
        version = self.version
        with self._errors("reading ids"):
            raw = self._get_bytes(self._vkey(version, "ids"))
        if raw is None:
            self._fail(f"version {version} has no id list (deleted?)")
        return np.frombuffer(raw, dtype="<i8").astype(np.int64)

    def get(self, ids: npt.ArrayLike) -> KVResult:
        """Look up a batch of ids in one MULTI/EXEC round trip (MGET plus a version check).

        Every vector returned comes from a single complete version: the current one at the time of
        the call, or the pinned one.

        Raises
        ------
        ServingError
            Redis unreachable, the pinned version deleted, or a stored value of the wrong size.
        """
        query = as_query_ids(ids)
        version = self.version
        for _ in range(_RESOLVE_ATTEMPTS):
            prefix = self._vkey(version, "")
            keys = [prefix + str(i) for i in query.tolist()]
            with self._errors("batch get"):
                pipe = self._client.pipeline(transaction=True)
                pipe.get(self._key("current"))
                pipe.exists(self._vkey(version, "meta"))
                if keys:
                    pipe.mget(keys)
                replies = pipe.execute()
            current, meta_exists = replies[0], bool(replies[1])
            values: list[bytes | None] = replies[2] if keys else []
            if self._pinned:
                if not meta_exists:
                    self._fail(f"pinned version {version} was deleted; reopen the store on a newer version")
                break
            if meta_exists and current is not None and (int(current) == version or int(current) in self._refused):
                break
            if current is None:
                self._fail("nothing is published any more (the current key is gone)")
            if not meta_exists and int(current) in self._refused:
                self._fail(f"version {version}, the last of model {self._model!r}, was deleted, and the current "
                           f"version {int(current)} holds another model's vectors; publish this model's item "
                           "vectors again or serve the new model")
            version = self._resolve(None)
        else:
            self._fail(f"the current version changed {_RESOLVE_ATTEMPTS} times during one lookup")
        return self._decode(query, values)

    def _decode(self, query: npt.NDArray[np.int64], values: list[bytes | None]) -> KVResult:
        meta = self._current_meta()
        dim, storage = int(meta["dim"]), _STORAGE[meta["dtype"]]
        found = np.fromiter((v is not None for v in values), dtype=bool, count=len(values))
        present = [v for v in values if v is not None]
        blob = b"".join(present)
        if len(blob) != len(present) * dim * storage.itemsize:
            sizes = {len(v) for v in present}
            self._fail(
                f"version {self._version} holds values of {sorted(sizes)} bytes, expected "
                f"{dim * storage.itemsize} (dim {dim} x {meta['dtype']})"
            )
        stored = np.frombuffer(blob, dtype=storage).reshape(len(present), dim)
        vectors = widen_float16(stored) if meta["dtype"] == "float16" else stored.astype(np.float32)
        return KVResult(vectors=vectors, found=found, missing=query[~found])

    # ---- publishing --------------------------------------------------------------------------

    def publish(
        self,
        ids: npt.ArrayLike,
        vectors: npt.ArrayLike,
        model_hash: str,
        dtype: str = "float32",
        *,
        keep_previous: int = 1,
        chunk_size: int = 5_000,
        run_id: str = "",
    ) -> int:
        """Write a new version and make it current once it is complete.

        Parameters
        ----------
        ids, vectors : array_like
            Unique int64 ids and their finite float vectors ``[len(ids), dim]``.
        model_hash : str
            Identifies the model that produced the vectors.
        dtype : {"float32", "float16"}
            Storage dtype of the values.
        keep_previous : int
            Completed versions to keep besides the new one (readers pinned to them keep working);
            older ones are deleted after the switch.
        chunk_size : int
            Items per pipelined MSET round trip.
        run_id : str
            The run the vectors belong to (stored in the version's meta hash when given).

        Returns
        -------
        int
            The new version, now current.

        Raises
        ------
        DataError
            Invalid input (nothing is written).
        ServingError
            Redis failed; ``current`` and the versions already published are left as they were.
        """
        sorted_ids, order, vec_arr = validate_items(ids, vectors, dtype)
        if not isinstance(model_hash, str) or not model_hash:
            raise DataError(f"model_hash must be a non-empty string, got {model_hash!r}")
        if keep_previous < 0 or chunk_size < 1:
            raise DataError(
                f"keep_previous must be >= 0 and chunk_size >= 1, got {keep_previous}, {chunk_size}"
            )
        storage = _STORAGE[dtype]
        count, dim = int(vec_arr.shape[0]), int(vec_arr.shape[1])
        with self._errors("allocating a version"):
            version = int(self._client.incr(self._key("next_version")))
        try:
            self._write_version(version, sorted_ids, order, vec_arr, storage, chunk_size)
            meta = {
                "dim": dim,
                "dtype": dtype,
                "count": count,
                "model_hash": model_hash,
                "format_version": REDIS_FORMAT_VERSION,
                **({"run_id": run_id} if run_id else {}),
            }
            with self._errors(f"completing version {version}"):
                self._client.hset(self._vkey(version, "meta"), mapping=meta)  # type: ignore[arg-type]
        except BaseException:
            with contextlib.suppress(redis.exceptions.RedisError):
                self._delete_version(version)
            raise
        with self._errors(f"switching current to version {version}"):
            pipe = self._client.pipeline(transaction=True)
            pipe.set(self._key("current"), version)
            pipe.rpush(self._key("versions"), version)
            pipe.execute()
        self._prune(keep_previous, version)
        return version

    def _write_version(
        self,
        version: int,
        sorted_ids: npt.NDArray[np.int64],
        order: npt.NDArray[np.intp],
        vectors: npt.NDArray[np.floating],
        storage: np.dtype,
        chunk_size: int,
    ) -> None:
        prefix = self._vkey(version, "")
        row_bytes = vectors.shape[1] * storage.itemsize
        with self._errors(f"writing version {version}"):
            for start in range(0, sorted_ids.size, chunk_size):
                stop = start + chunk_size
                blob = vectors[order[start:stop]].astype(storage).tobytes()
                mapping = {
                    prefix + str(item): blob[k * row_bytes : (k + 1) * row_bytes]
                    for k, item in enumerate(sorted_ids[start:stop].tolist())
                }
                self._client.mset(mapping)
            id_bytes = sorted_ids.astype("<i8").tobytes()
            ids_key = self._vkey(version, "ids")
            self._client.delete(ids_key)
            for start in range(0, len(id_bytes), 8 * _IDS_CHUNK):
                self._client.append(ids_key, id_bytes[start : start + 8 * _IDS_CHUNK])

    def _prune(self, keep_previous: int, current: int) -> None:
        with self._errors(f"deleting old versions (version {current} is already current)"):
            versions = [int(v) for v in self._client.lrange(self._key("versions"), 0, -1)]
            keep = set(versions[max(0, len(versions) - keep_previous - 1) :]) | {current}
            for old in versions:
                if old not in keep:
                    self._delete_version(old)

    def _delete_version(self, version: int) -> None:
        """Delete a version: meta first (pinned readers then fail cleanly), then items and id list."""
        self._client.delete(self._vkey(version, "meta"))
        raw = self._get_bytes(self._vkey(version, "ids"))
        if raw is not None:
            prefix = self._vkey(version, "")
            ids = np.frombuffer(raw, dtype="<i8").tolist()
            for start in range(0, len(ids), 10_000):
                self._client.unlink(*[prefix + str(i) for i in ids[start : start + 10_000]])
        else:  # a publish that failed before writing its id list: find its keys by pattern
            pattern = _glob_escape(self._vkey(version, "")) + "*"
            for batch in _batched(self._client.scan_iter(match=pattern, count=10_000), 10_000):
                self._client.unlink(*batch)
        self._client.delete(self._vkey(version, "ids"))
        self._client.lrem(self._key("versions"), 0, str(version))

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()

    def __repr__(self) -> str:
        return f"RedisKVStore({self._display!r}, namespace={self._ns!r})"


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


def _batched(items: Iterator[bytes], size: int) -> Iterator[list[bytes]]:
    batch: list[bytes] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
