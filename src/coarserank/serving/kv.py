"""The item-vector KV store interface shared by the file and Redis backends.

A KV store maps int64 item ids to item vectors (one row of a float matrix ``[count, dim]``) written
by one model, identified by ``model_hash``. It knows nothing about models: the exporter hands it ids,
vectors and a hash string; the coarse-ranking runtime asks it for the vectors of candidate ids.

Two backends implement :class:`KVStore`:

- :class:`~coarserank.serving.kv_file.FileKVStore`, the embedded default: one memory-mapped file
  whose byte layout is documented in ``docs/kv-format.md``;
- :class:`~coarserank.serving.kv_redis.RedisKVStore`: raw little-endian vectors under versioned keys
  with an atomic switch of the current version.

:func:`open_store` picks the backend from a path or a ``redis://`` URL.

Examples
--------
>>> store = open_store("runs/demo/items.kv")                    # doctest: +SKIP
>>> result = store.get(np.array([17, 42, 99]))                  # doctest: +SKIP
>>> result.vectors.shape, result.missing                        # doctest: +SKIP
((2, 32), array([99]))
"""

from __future__ import annotations

import abc
import os
import re
from dataclasses import dataclass
from types import TracebackType
from typing import Final
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from coarserank.errors import DataError, ServingError

__all__ = [
    "DTYPES",
    "KVResult",
    "KVStore",
    "as_query_ids",
    "check_redis_db",
    "open_store",
    "redact_uri",
    "validate_items",
    "widen_float16",
]

#: Storage dtypes a store may hold; vectors are always returned as float32.
DTYPES: Final[tuple[str, ...]] = ("float32", "float16")

_MAX_SHOWN_IDS: Final[int] = 10
_FLOAT16_MAX: Final[float] = float(np.finfo(np.float16).max)
_HALF_TO_SINGLE_SCALE: Final[np.float32] = np.float32(2.0**112)


@dataclass(frozen=True)
class KVResult:
    """The answer to a batch lookup.

    Attributes
    ----------
    vectors : numpy.ndarray
        float32 ``[m, dim]``: the vectors of the ids that were found, in the order requested.
    found : numpy.ndarray
        bool ``[n]``: ``found[i]`` tells whether the i-th requested id is in the store.
    missing : numpy.ndarray
        int64: the requested ids that are not in the store, in the order requested.
    """

    vectors: npt.NDArray[np.float32]
    found: npt.NDArray[np.bool_]
    missing: npt.NDArray[np.int64]


class KVStore(abc.ABC):
    """A read-only mapping from int64 item ids to float32 item vectors.

    Subclasses implement the properties, :meth:`ids` and :meth:`get`; :meth:`get_strict`, ``len``
    and the context-manager protocol come from here.
    """

    @property
    @abc.abstractmethod
    def dim(self) -> int:
        """Vector dimension."""

    @property
    @abc.abstractmethod
    def count(self) -> int:
        """Number of items stored."""

    @property
    @abc.abstractmethod
    def model_hash(self) -> str:
        """Hash of the model that produced the vectors."""

    @property
    @abc.abstractmethod
    def dtype(self) -> str:
        """Storage dtype, one of :data:`DTYPES` (lookups always return float32)."""

    @abc.abstractmethod
    def ids(self) -> npt.NDArray[np.int64]:
        """Return all stored ids, sorted ascending."""

    @abc.abstractmethod
    def get(self, ids: npt.ArrayLike) -> KVResult:
        """Look up a batch of ids; missing ids are reported in the result, never zero-filled."""

    def pin_model(self, model_hash: str) -> None:  # noqa: B027 - optional hook
        """Serve only vectors of ``model_hash`` from now on. A file store never changes under its
        reader; a store that follows newly published versions (Redis) refuses to switch to another
        model's vectors, keeps serving the last version of this model and logs a warning."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release resources held by the store (no-op by default)."""

    def get_strict(self, ids: npt.ArrayLike) -> npt.NDArray[np.float32]:
        """Look up a batch of ids that must all be present.

        Returns
        -------
        numpy.ndarray
            float32 ``[n, dim]`` in the order requested.

        Raises
        ------
        ServingError
            If any id is missing; the message gives how many and lists the first ones.
        """
        result = self.get(ids)
        if result.missing.size:
            shown = ", ".join(str(int(i)) for i in result.missing[:_MAX_SHOWN_IDS])
            more = " ..." if result.missing.size > _MAX_SHOWN_IDS else ""
            raise ServingError(
                f"{result.missing.size} of {result.found.size} requested ids are not in the KV store "
                f"{self!r} (model_hash={self.model_hash}): [{shown}{more}]"
            )
        return result.vectors

    def __len__(self) -> int:
        return self.count

    def __enter__(self) -> KVStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def as_query_ids(ids: npt.ArrayLike) -> npt.NDArray[np.int64]:
    """Convert a lookup request to a 1-D int64 array.

    Raises
    ------
    ServingError
        If ``ids`` is not a 1-D array of integers representable as int64.
    """
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise ServingError(f"item ids to look up must be a 1-D array, got shape {arr.shape}")
    if arr.size == 0:
        return np.empty(0, dtype=np.int64)
    if arr.dtype == np.int64:
        return arr
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max:
        raise ServingError(f"item ids must fit in int64, got {int(arr.max())}")
    if arr.dtype.kind not in "iu":
        raise ServingError(f"item ids to look up must be integers, got dtype {arr.dtype}")
    return arr.astype(np.int64)


def widen_float16(values: npt.NDArray[np.float16]) -> npt.NDArray[np.float32]:
    """Convert float16 to float32 exactly, about 3x faster than ``astype`` (numpy 2.x, x86).

    The 15 magnitude bits shifted into float32 position and scaled by 2**112 give the exact value for
    normal and subnormal halves alike; infinities and NaNs are patched afterwards.
    """
    bits = np.ascontiguousarray(values).view(np.uint16).astype(np.uint32)
    sign = bits & 0x8000
    bits ^= sign
    special = bits >= 0x7C00
    bits <<= 13
    out = bits.view(np.float32)
    out *= _HALF_TO_SINGLE_SCALE
    if special.any():
        bits[special] = (bits[special] & 0x007FE000) | 0x7F800000
    sign <<= 16
    bits |= sign
    return out


def validate_items(
    ids: npt.ArrayLike, vectors: npt.ArrayLike, dtype: str
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.intp], npt.NDArray[np.floating]]:
    """Check items before they are published and sort them by id.

    Parameters
    ----------
    ids : array_like
        1-D integers representable as int64, unique.
    vectors : array_like
        2-D float ``[len(ids), dim]``, all finite (and within float16 range when ``dtype`` is float16).
    dtype : str
        Storage dtype, one of :data:`DTYPES`.

    Returns
    -------
    tuple
        ``(sorted_ids, order, vectors)``: the ids sorted ascending, the permutation that sorts them
        (``vectors[order]`` are the rows in id order) and ``vectors`` as a float array.

    Raises
    ------
    DataError
        Naming the problem: wrong dtype/shape, duplicate ids, non-finite values, mismatched lengths.
    """
    if dtype not in DTYPES:
        raise DataError(f"KV storage dtype must be one of {list(DTYPES)}, got {dtype!r}")
    id_arr = np.asarray(ids)
    vec_arr = np.asarray(vectors)
    if id_arr.ndim != 1:
        raise DataError(f"item ids must be a 1-D array, got shape {id_arr.shape}")
    if id_arr.dtype.kind not in "iu":
        raise DataError(f"item ids must be integers (int64), got dtype {id_arr.dtype}")
    if id_arr.dtype.kind == "u" and id_arr.size and int(id_arr.max()) > np.iinfo(np.int64).max:
        raise DataError(f"item ids must fit in int64, got {int(id_arr.max())}")
    if vec_arr.ndim != 2:
        raise DataError(f"item vectors must be a 2-D array [n, dim], got shape {vec_arr.shape}")
    if vec_arr.dtype.kind != "f":
        raise DataError(f"item vectors must be floating point, got dtype {vec_arr.dtype}")
    if vec_arr.shape[1] < 1:
        raise DataError(f"item vectors must have dim >= 1, got shape {vec_arr.shape}")
    if id_arr.shape[0] != vec_arr.shape[0]:
        raise DataError(
            f"{id_arr.shape[0]} item ids but {vec_arr.shape[0]} item vectors; the lengths must match"
        )
    if id_arr.size == 0:
        raise DataError("no items to store: ids and vectors are empty")
    finite = np.isfinite(vec_arr).all(axis=1)
    if not finite.all():
        bad = id_arr[~finite]
        shown = ", ".join(str(int(i)) for i in bad[:_MAX_SHOWN_IDS])
        raise DataError(f"{bad.size} item vectors contain NaN or infinity, e.g. for ids [{shown}]")
    if dtype == "float16":
        peak = float(np.abs(vec_arr).max())
        if peak > _FLOAT16_MAX:
            raise DataError(
                f"item vectors reach |x| = {peak:g}, beyond the float16 range ({_FLOAT16_MAX:g}); "
                "store them as float32"
            )
    id64 = id_arr.astype(np.int64, copy=False)
    order = np.argsort(id64, kind="stable")
    sorted_ids = id64[order]
    dup = sorted_ids[1:] == sorted_ids[:-1]
    if dup.any():
        dups = np.unique(sorted_ids[1:][dup])
        shown = ", ".join(str(int(i)) for i in dups[:_MAX_SHOWN_IDS])
        raise DataError(f"{dups.size} item ids occur more than once, e.g. [{shown}]; ids must be unique")
    return sorted_ids, order, vec_arr


_CREDENTIALS = re.compile(r"(?P<head>(?:^|/|\s))(?P<user>[^\s/@:]*):(?P<secret>[^\s/@]*)@")
_QUERY_SECRET = re.compile(r"(?P<key>[?&](?:password|pass|pw)=)[^&\s]*", re.IGNORECASE)
_MISTYPED = re.compile(r"^(?P<scheme>rediss|redis|unix)(?::/?(?!/)|//|:(?!/))", re.IGNORECASE)


def redact_uri(text: str) -> str:
    """``text`` with the password of any ``user:password@`` part and of ``?password=`` replaced by
    ``***``; the form every store URI takes in a message (mistyped ones such as ``redis//:pw@h``
    included)."""
    text = _CREDENTIALS.sub(lambda m: f"{m['head']}{m['user']}:***@" if m["secret"] else m[0], str(text))
    return _QUERY_SECRET.sub(lambda m: f"{m['key']}***", text)


def check_redis_db(url: str, parts: dict[str, object]) -> None:
    """redis-py reads ``redis://host/abc`` as database 0; a path that is not a number is an error
    (``parts``: redis-py's ``parse_url`` of ``url``)."""
    if "path" in parts:  # unix://path?db=N
        return
    path = urlsplit(url).path.strip("/")
    if path and not path.isdigit():
        raise ServingError(f"Redis URL: the path {path!r} is not a database number; expected "
                           "redis://host[:port]/DB with DB an integer such as 0")


def open_store(
    uri_or_path: str | os.PathLike[str],
    *,
    expected_dim: int | None = None,
    verify: bool = True,
    namespace: str | None = None,
) -> KVStore:
    """Open a KV store for reading.

    Parameters
    ----------
    uri_or_path : str or os.PathLike
        A path to a KV file, or a ``redis://`` / ``rediss://`` / ``unix://`` URL. A password may only
        come inside the URL (``redis://:pw@127.0.0.1:6379/0``); it is never logged.
    expected_dim : int, optional
        Fail unless the store holds vectors of this dimension.
    verify : bool
        File stores only: check the data checksum on open (reads the whole file once).
    namespace : str, optional
        Redis only: the key prefix (default ``coarserank:items``).

    Raises
    ------
    ArtifactError
        A missing or corrupt KV file.
    ServingError
        An unknown URL scheme or an unreachable Redis server.
    """
    if isinstance(uri_or_path, str) and "://" not in uri_or_path and _MISTYPED.match(uri_or_path):
        scheme = _MISTYPED.match(uri_or_path)["scheme"].lower()  # type: ignore[index]
        raise ServingError(f"KV store {redact_uri(uri_or_path)!r} is not a valid URL: a {scheme} URL starts "
                           f"with {scheme}://, e.g. redis://[[user]:password@]host[:port][/db]")
    if isinstance(uri_or_path, str) and "://" in uri_or_path:
        scheme = uri_or_path.split("://", 1)[0].lower()
        if scheme in ("redis", "rediss", "unix"):
            from coarserank.serving.kv_redis import RedisKVStore

            return RedisKVStore(uri_or_path, expected_dim=expected_dim,
                                **({"namespace": namespace} if namespace else {}))
        if scheme != "file":
            raise ServingError(
                f"unknown KV store scheme {scheme!r}; use a file path, file://, redis:// or rediss://"
            )
        uri_or_path = uri_or_path.split("://", 1)[1]
    if namespace:
        raise ServingError("a namespace applies to a Redis store; a KV file holds one catalogue")
    from coarserank.serving.kv_file import FileKVStore

    return FileKVStore(uri_or_path, verify=verify, expected_dim=expected_dim)
