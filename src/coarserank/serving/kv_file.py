"""The embedded KV store: one memory-mappable file of sorted ids and an item-vector matrix.

The byte layout is specified in ``docs/kv-format.md``; in short, a 128-byte little-endian header
(magic ``b"CRKV"``, format version, dtype code, count, dim, offsets, CRC32 of the payload, model hash,
CRC32 of the header; version 2 adds a 64-byte block with the run id, :mod:`.kv_header`), the ids as
strictly ascending int64 at byte 128 (192 in version 2), zero padding to a multiple of 64, then the
row-major matrix (float32 or float16). The matrix offset is a multiple of 64, so a memory map gives
aligned rows.

Publishing is atomic: the file is written to a temporary file in the same directory, fsynced,
renamed over the target with :func:`os.replace` and the directory is fsynced. A reader that already
has the old file mapped keeps reading the old contents; a failed write leaves the old file untouched.

Examples
--------
>>> write_kv_file("items.kv", ids, vectors, model_hash="3f2a...", run_id="9c1e...")   # doctest: +SKIP
>>> with FileKVStore("items.kv", expected_dim=32) as store:           # doctest: +SKIP
...     vecs = store.get_strict(candidate_ids)
"""

from __future__ import annotations

import os
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Final, Literal, NoReturn

import numpy as np
import numpy.typing as npt

from coarserank.errors import ArtifactError, ConfigError, ServingError
from coarserank.serving.kv import KVResult, KVStore, as_query_ids, validate_items, widen_float16
from coarserank.serving.kv_header import (
    FORMAT_VERSION,
    HEADER_SIZE,
    MAGIC,
    encode_model_hash,
    encode_run_id,
    header_size,
    layout,
    pack_header,
    parse_header,
)

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "FileKVStore",
    "write_kv_file",
]

_NUMPY_DTYPES: Final[dict[str, np.dtype]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_WRITE_CHUNK_ROWS: Final[int] = 65_536
_CRC_CHUNK_BYTES: Final[int] = 64 << 20
_INDEX_LOAD: Final[float] = 0.25
_MAX_PROBE_ROUNDS: Final[int] = 4
_HASH_MULTIPLIER: Final[np.uint64] = np.uint64(0x9E3779B97F4A7C15)


def _crc32(buffer: npt.NDArray[np.uint8], crc: int = 0) -> int:
    view = buffer.data.cast("B")
    for start in range(0, len(view), _CRC_CHUNK_BYTES):
        crc = zlib.crc32(view[start : start + _CRC_CHUNK_BYTES], crc)
    return crc


def _write_payload(
    f: BinaryIO,
    sorted_ids: npt.NDArray[np.int64],
    order: npt.NDArray[np.intp],
    vectors: npt.NDArray[np.floating],
    storage: np.dtype,
    ids_offset: int,
    vectors_offset: int,
) -> int:
    """Write ids, padding and matrix after the header; return the CRC32 of those bytes."""
    id_bytes = sorted_ids.astype("<i8", copy=False).tobytes()
    padding = b"\x00" * (vectors_offset - ids_offset - len(id_bytes))
    f.write(id_bytes)
    f.write(padding)
    crc = zlib.crc32(padding, zlib.crc32(id_bytes))
    for start in range(0, order.size, _WRITE_CHUNK_ROWS):
        rows = vectors[order[start : start + _WRITE_CHUNK_ROWS]].astype(storage)
        chunk = rows.tobytes()
        f.write(chunk)
        crc = zlib.crc32(chunk, crc)
    return crc


def _fsync_dir(directory: Path) -> None:
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _HashIndex:
    """Open-addressing hash table from id to row, built vectorised in O(n) at open.

    Double hashing over a power-of-two table at load factor <= 0.25 (int32 rows, -1 empty): a
    lookup costs about 1.2 probes on average, so a batch needs a few vectorised gathers instead of
    ~log2(n) dependent cache misses per id in a binary search. Ids still unresolved after
    ``_MAX_PROBE_ROUNDS`` rounds fall back to binary search on the sorted ids.
    """

    def __init__(self, sorted_ids: npt.NDArray[np.int64]) -> None:
        n = int(sorted_ids.size)
        self._ids = sorted_ids
        self._bits = max(1, int(np.ceil(np.log2(n / _INDEX_LOAD))))
        self._mask = (1 << self._bits) - 1
        table = np.full(1 << self._bits, -1, dtype=np.int32 if n < 2**31 else np.int64)
        slot, step = self._probe_start(sorted_ids)
        pending = np.arange(n, dtype=table.dtype)
        while pending.size:
            free = table[slot] == -1
            targets, rows = slot[free], pending[free]
            table[targets] = rows  # of the rows aiming at one slot one wins; reading back tells which
            placed = np.zeros(pending.size, dtype=bool)
            placed[free] = table[targets] == rows
            keep = ~placed
            pending, step = pending[keep], step[keep]
            slot = (slot[keep] + step) & self._mask
        self._table = table

    def _probe_start(
        self, keys: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
        mixed = keys.view(np.uint64) * _HASH_MULTIPLIER
        slot = (mixed >> np.uint64(64 - self._bits)).astype(np.int64)
        step = ((mixed >> np.uint64(17)).astype(np.int64) | 1) & self._mask  # odd: visits every slot
        return slot, step

    def rows(self, query: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Row of each query id in the sorted ids, -1 where absent."""
        slot, step = self._probe_start(query)
        row = self._table.take(slot).astype(np.int64)
        hit = row >= 0
        found = hit & (self._ids.take(np.maximum(row, 0)) == query)
        out = np.where(found, row, -1)
        todo = np.flatnonzero(hit & ~found)
        for probe in range(1, _MAX_PROBE_ROUNDS + 1):
            if not todo.size:
                return out
            row = self._table.take((slot[todo] + step[todo] * probe) & self._mask).astype(np.int64)
            hit = row >= 0
            found = hit & (self._ids.take(np.maximum(row, 0)) == query[todo])
            out[todo[found]] = row[found]
            todo = todo[hit & ~found]
        if todo.size:
            rest = query[todo]
            pos = np.minimum(np.searchsorted(self._ids, rest), self._ids.size - 1)
            ok = self._ids[pos] == rest
            out[todo[ok]] = pos[ok]
        return out


class _DirectIndex:
    """id -> row through a table indexed by ``id - min_id``: one gather per batch.

    Used instead of :class:`_HashIndex` when the ids are dense enough (catalogues usually number
    their items 0..n): the table has at most ``_DIRECT_SPAN_FACTOR`` slots per id (int32, -1 where no
    id), so a 1M-item catalogue with ids 0..1M costs 4 MB.
    """

    def __init__(self, sorted_ids: npt.NDArray[np.int64]) -> None:
        self._lo = int(sorted_ids[0])
        span = int(sorted_ids[-1]) - self._lo + 1
        self._table = np.full(span, -1, dtype=np.int32)
        self._table[sorted_ids - self._lo] = np.arange(sorted_ids.size, dtype=np.int32)

    @staticmethod
    def fits(sorted_ids: npt.NDArray[np.int64]) -> bool:
        if sorted_ids.size == 0 or sorted_ids.size >= 2**31:
            return False
        span = int(sorted_ids[-1]) - int(sorted_ids[0]) + 1
        return span <= max(_DIRECT_SPAN_FACTOR * sorted_ids.size, 1 << 16) and span <= _DIRECT_MAX_SLOTS

    def rows(self, query: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        """Row of each query id in the sorted ids, -1 where absent."""
        offset = query - self._lo
        inside = (offset >= 0) & (offset < self._table.size)
        return np.where(inside, self._table.take(np.where(inside, offset, 0)), -1).astype(np.int64)


_DIRECT_SPAN_FACTOR = 4
_DIRECT_MAX_SLOTS = 1 << 28


def write_kv_file(
    path: str | os.PathLike[str],
    ids: npt.ArrayLike,
    vectors: npt.ArrayLike,
    model_hash: str,
    dtype: str = "float32",
    *,
    run_id: str = "",
) -> Path:
    """Write item vectors to a KV file, atomically (format version 2 with a run id, else 1).

    Parameters
    ----------
    path : str or os.PathLike
        Target file; its directory must exist. An existing file is replaced only once the new one
        is completely written and fsynced.
    ids : array_like
        1-D unique integers representable as int64, in any order (the file stores them sorted).
    vectors : array_like
        Float ``[len(ids), dim]``, all finite.
    model_hash : str
        Identifies the model that produced the vectors; 1 to 64 bytes of UTF-8.
    dtype : {"float32", "float16"}
        Storage dtype. float16 halves the file; vectors are read back as float32.
    run_id : str
        The run the file belongs to (0 to 56 bytes of UTF-8; ``docs/serving.md``); empty writes a
        version-1 file.

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    DataError
        Invalid ids, vectors, dtype, model hash or run id (nothing is written).
    ArtifactError
        The file could not be written; the previous file, if any, is left intact.
    """
    target = Path(path)
    sorted_ids, order, vec_arr = validate_items(ids, vectors, dtype)
    hash_bytes, run_bytes = encode_model_hash(model_hash), encode_run_id(run_id)
    storage = _NUMPY_DTYPES[dtype]
    count, dim = int(vec_arr.shape[0]), int(vec_arr.shape[1])
    ids_offset, vectors_offset, _ = layout(count, dim, storage.itemsize, 2 if run_bytes else 1)
    directory = target.parent
    if not directory.is_dir():
        raise ArtifactError(f"cannot write KV file {target}: directory {directory} does not exist")
    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            if os.name == "posix":  # mkstemp creates 0600: keep the old file's mode, else rw-r--r--
                os.fchmod(f.fileno(), target.stat().st_mode & 0o777 if target.exists() else 0o644)
            f.write(b"\x00" * ids_offset)
            data_crc = _write_payload(f, sorted_ids, order, vec_arr, storage, ids_offset, vectors_offset)
            f.seek(0)
            f.write(pack_header(dtype, count, dim, data_crc, hash_bytes, run_bytes))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, target)
        tmp_name = None
        _fsync_dir(directory)
    except OSError as exc:
        raise ArtifactError(f"could not write KV file {target}: {exc}") from exc
    finally:
        if tmp_name is not None:
            Path(tmp_name).unlink(missing_ok=True)
    return target


class FileKVStore(KVStore):
    """A read-only, memory-mapped KV file.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`write_kv_file`.
    verify : bool
        Check the CRC32 of ids and matrix and that ids are strictly ascending on open. This reads
        the whole file once (about 0.1 s per 256 MB, which also warms the page cache). With
        ``verify=False`` opening costs a header read; a corrupt payload then goes unnoticed until
        :meth:`verify` is called. The header is always checked.
    expected_dim : int, optional
        Fail unless the file holds vectors of this dimension.
    expected_model_hash : str, optional
        Fail unless the file was written for this model.
    index : {"hash", "bisect"}
        How ids are found. ``"hash"`` builds an in-memory hash table at open (O(n), about 0.05 s and
        16-32 MB per million items) for lookups of about 1.2 probes per id; ``"bisect"`` opens
        instantly and binary-searches the mapped ids (about 3x slower batches on a 1M-item file).

    Raises
    ------
    ArtifactError
        Missing file, wrong magic or version, corrupt header or payload, truncated file, or a
        dimension/model mismatch; the message names the file, what was found and what was expected.

    Examples
    --------
    >>> store = FileKVStore("items.kv", expected_dim=32)   # doctest: +SKIP
    >>> store.get([3, 5, 8]).missing                       # doctest: +SKIP
    array([5])
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        verify: bool = True,
        expected_dim: int | None = None,
        expected_model_hash: str | None = None,
        index: Literal["hash", "bisect"] = "hash",
    ) -> None:
        if index not in ("hash", "bisect"):
            raise ConfigError(f"FileKVStore index must be 'hash' or 'bisect', got {index!r}")
        self._path = Path(path)
        h = parse_header(self._read_header(), self._fail)
        self._dtype, self._version, self._run_id = h.dtype, h.version, h.run_id
        storage = _NUMPY_DTYPES[h.dtype]
        count, dim, ids_offset, vectors_offset, file_size = h.count, h.dim, h.ids_offset, h.vectors_offset, h.file_size
        actual_size = self._path.stat().st_size
        if actual_size < file_size:
            self._fail(f"truncated: {actual_size} bytes on disk, the header says {file_size}")
        if actual_size > file_size:
            self._fail(f"{actual_size - file_size} unexpected trailing bytes after the declared {file_size}")
        if expected_dim is not None and dim != expected_dim:
            self._fail(f"dimension mismatch: the file holds dim {dim}, expected {expected_dim}")
        self._model_hash: str = h.model_hash
        if expected_model_hash is not None and self._model_hash != expected_model_hash:
            self._fail(
                f"model hash mismatch: the file has {self._model_hash!r}, expected {expected_model_hash!r}"
            )
        self._count, self._dim, self._data_crc = count, dim, h.data_crc
        self._closed = False
        mm = np.memmap(self._path, dtype=np.uint8, mode="r")
        raw = mm.view(np.ndarray)  # plain ndarray views are cheaper to index; they keep the map alive
        self._payload = raw[ids_offset:]
        self._ids: npt.NDArray[np.int64] = raw[ids_offset : ids_offset + 8 * count].view("<i8")
        self._vectors: npt.NDArray[np.floating] = (
            raw[vectors_offset:file_size].view(storage).reshape(count, dim)
        )
        if verify:
            self.verify()
        if index == "bisect":
            self._index: _HashIndex | _DirectIndex | None = None
        elif _DirectIndex.fits(self._ids):
            self._index = _DirectIndex(self._ids)
        else:
            self._index = _HashIndex(self._ids)

    def _fail(self, problem: str) -> NoReturn:
        raise ArtifactError(f"KV file {self._path}: {problem}")

    def _read_header(self) -> bytes:
        try:
            with open(self._path, "rb") as f:
                return f.read(header_size(FORMAT_VERSION))
        except FileNotFoundError as exc:
            raise ArtifactError(f"KV file {self._path} does not exist") from exc
        except OSError as exc:
            raise ArtifactError(f"cannot read KV file {self._path}: {exc}") from exc

    def verify(self) -> None:
        """Check the payload CRC32 and that ids are strictly ascending.

        Raises
        ------
        ArtifactError
            If the file contents do not match its header.
        """
        if self._closed:
            raise ServingError(f"{self!r} is closed")
        actual = _crc32(self._payload)
        if actual != self._data_crc:
            self._fail(
                f"data checksum mismatch (stored {self._data_crc:#010x}, computed {actual:#010x}): "
                "the ids or vectors are corrupt"
            )
        if self._count > 1 and not bool(np.all(self._ids[1:] > self._ids[:-1])):
            self._fail("ids are not strictly ascending")

    @property
    def path(self) -> Path:
        """The file this store reads."""
        return self._path

    @property
    def dim(self) -> int:
        """Vector dimension."""
        return self._dim

    @property
    def count(self) -> int:
        """Number of items stored."""
        return self._count

    @property
    def model_hash(self) -> str:
        """Hash of the model that produced the vectors."""
        return self._model_hash

    @property
    def dtype(self) -> str:
        """Storage dtype, ``"float32"`` or ``"float16"``."""
        return self._dtype

    @property
    def run_id(self) -> str:
        """The run the file belongs to (``""`` for a version-1 file, which has none)."""
        return self._run_id

    @property
    def format_version(self) -> int:
        """The file's format version (1 or 2)."""
        return self._version

    def ids(self) -> npt.NDArray[np.int64]:
        """Return all stored ids, sorted ascending (a read-only view of the map)."""
        return self._ids

    def get(self, ids: npt.ArrayLike) -> KVResult:
        """Look up a batch of ids (vectorised: hash probes or one binary search per batch).

        Parameters
        ----------
        ids : array_like
            1-D integer ids, any order, duplicates allowed.

        Returns
        -------
        KVResult
            float32 vectors of the found ids in the order requested, the found mask and missing ids.
        """
        if self._closed:
            raise ServingError(f"{self!r} is closed")
        query = as_query_ids(ids)
        if self._index is not None:
            pos = self._index.rows(query)
            found = pos >= 0
        else:
            pos = np.searchsorted(self._ids, query)
            np.minimum(pos, self._count - 1, out=pos)
            found = self._ids[pos] == query
        if found.all():
            rows = self._vectors.take(pos, axis=0)
            missing = np.empty(0, dtype=np.int64)
        else:
            rows = self._vectors.take(pos[found], axis=0)
            missing = query[~found]
        vectors = widen_float16(rows) if self._dtype == "float16" else rows
        return KVResult(vectors=vectors, found=found, missing=missing)

    def close(self) -> None:
        """Drop this store's references to the memory map (it is unmapped once unreferenced)."""
        empty = np.empty(0, dtype=np.uint8)
        self._payload = empty
        self._ids = empty.view(np.int64)
        self._vectors = np.empty((0, self._dim), dtype=_NUMPY_DTYPES[self._dtype])
        self._index = None
        self._closed = True

    def __repr__(self) -> str:
        state = ", closed" if self._closed else ""
        return (
            f"FileKVStore({str(self._path)!r}, count={self._count}, dim={self._dim}, "
            f"dtype={self._dtype!r}{state})"
        )
