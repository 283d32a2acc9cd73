"""The embedded KV store: one memory-mappable file of sorted ids and an item-vector matrix.

The byte layout is specified in ``docs/kv-format.md``; in short, a 128-byte little-endian header
(magic ``b"CRKV"``, format version, dtype code, count, dim, offsets, CRC32 of the payload, model hash,
CRC32 of the header), the ids as strictly ascending int64 at byte 128, zero padding to a multiple of
64, then the row-major matrix (float32 or float16). The matrix offset is a multiple of 64, so a
memory map gives aligned rows.

Publishing is atomic: the file is written to a temporary file in the same directory, fsynced,
renamed over the target with :func:`os.replace` and the directory is fsynced. A reader that already
has the old file mapped keeps reading the old contents; a failed write leaves the old file untouched.

Examples
--------
>>> write_kv_file("items.kv", ids, vectors, model_hash="3f2a...")   # doctest: +SKIP
>>> with FileKVStore("items.kv", expected_dim=32) as store:           # doctest: +SKIP
...     vecs = store.get_strict(candidate_ids)
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from pathlib import Path
from typing import BinaryIO, Final, Literal, NoReturn

import numpy as np
import numpy.typing as npt

from coarserank.errors import ArtifactError, ConfigError, DataError, ServingError
from coarserank.serving.kv import KVResult, KVStore, as_query_ids, validate_items, widen_float16

__all__ = [
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "MAGIC",
    "FileKVStore",
    "write_kv_file",
]

MAGIC: Final[bytes] = b"CRKV"
FORMAT_VERSION: Final[int] = 1
HEADER_SIZE: Final[int] = 128
ALIGNMENT: Final[int] = 64
MODEL_HASH_FIELD: Final[int] = 64

# magic, version, dtype code, count, dim, flags, ids offset, vectors offset, file size,
# data crc32, model-hash length, model hash, reserved, (header crc32 follows at byte 124)
_HEADER: Final[struct.Struct] = struct.Struct("<4sHHQIIQQQII64sI")
_HEADER_CRC: Final[struct.Struct] = struct.Struct("<I")
assert _HEADER.size + _HEADER_CRC.size == HEADER_SIZE

_DTYPE_CODES: Final[dict[str, int]] = {"float32": 1, "float16": 2}
_CODE_DTYPES: Final[dict[int, str]] = {code: name for name, code in _DTYPE_CODES.items()}
_NUMPY_DTYPES: Final[dict[str, np.dtype]] = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_WRITE_CHUNK_ROWS: Final[int] = 65_536
_CRC_CHUNK_BYTES: Final[int] = 64 << 20
_INDEX_LOAD: Final[float] = 0.25
_MAX_PROBE_ROUNDS: Final[int] = 4
_HASH_MULTIPLIER: Final[np.uint64] = np.uint64(0x9E3779B97F4A7C15)


def _align(n: int) -> int:
    return (n + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def _layout(count: int, dim: int, itemsize: int) -> tuple[int, int, int]:
    """Return ``(ids_offset, vectors_offset, file_size)`` for a file of this shape."""
    vectors_offset = _align(HEADER_SIZE + 8 * count)
    return HEADER_SIZE, vectors_offset, vectors_offset + count * dim * itemsize


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
    vectors_offset: int,
) -> int:
    """Write ids, padding and matrix after the header; return the CRC32 of those bytes."""
    id_bytes = sorted_ids.astype("<i8", copy=False).tobytes()
    padding = b"\x00" * (vectors_offset - HEADER_SIZE - len(id_bytes))
    f.write(id_bytes)
    f.write(padding)
    crc = zlib.crc32(padding, zlib.crc32(id_bytes))
    for start in range(0, order.size, _WRITE_CHUNK_ROWS):
        rows = vectors[order[start : start + _WRITE_CHUNK_ROWS]].astype(storage)
        chunk = rows.tobytes()
        f.write(chunk)
        crc = zlib.crc32(chunk, crc)
    return crc


def _encode_model_hash(model_hash: str) -> bytes:
    if not isinstance(model_hash, str):
        raise DataError(f"model_hash must be a string, got {type(model_hash).__name__}")
    encoded = model_hash.encode("utf-8")
    if not encoded or len(encoded) > MODEL_HASH_FIELD or b"\x00" in encoded:
        raise DataError(
            f"model_hash must be 1 to {MODEL_HASH_FIELD} bytes of UTF-8 without NUL "
            f"(a sha256 hex digest fits), got {len(encoded)} bytes"
        )
    return encoded


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
) -> Path:
    """Write item vectors to a KV file, atomically.

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

    Returns
    -------
    pathlib.Path
        The path written.

    Raises
    ------
    DataError
        Invalid ids, vectors, dtype or model hash (nothing is written).
    ArtifactError
        The file could not be written; the previous file, if any, is left intact.
    """
    target = Path(path)
    sorted_ids, order, vec_arr = validate_items(ids, vectors, dtype)
    hash_bytes = _encode_model_hash(model_hash)
    storage = _NUMPY_DTYPES[dtype]
    count, dim = int(vec_arr.shape[0]), int(vec_arr.shape[1])
    ids_offset, vectors_offset, file_size = _layout(count, dim, storage.itemsize)
    directory = target.parent
    if not directory.is_dir():
        raise ArtifactError(f"cannot write KV file {target}: directory {directory} does not exist")
    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            if os.name == "posix":  # mkstemp creates 0600: keep the old file's mode, else rw-r--r--
                os.fchmod(f.fileno(), target.stat().st_mode & 0o777 if target.exists() else 0o644)
            f.write(b"\x00" * HEADER_SIZE)
            data_crc = _write_payload(f, sorted_ids, order, vec_arr, storage, vectors_offset)
            header = _HEADER.pack(
                MAGIC,
                FORMAT_VERSION,
                _DTYPE_CODES[dtype],
                count,
                dim,
                0,
                ids_offset,
                vectors_offset,
                file_size,
                data_crc,
                len(hash_bytes),
                hash_bytes.ljust(MODEL_HASH_FIELD, b"\x00"),
                0,
            )
            f.seek(0)
            f.write(header + _HEADER_CRC.pack(zlib.crc32(header)))
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
        header = self._read_header()
        (
            magic,
            version,
            dtype_code,
            count,
            dim,
            _flags,
            ids_offset,
            vectors_offset,
            file_size,
            data_crc,
            hash_len,
            hash_field,
            _reserved,
        ) = _HEADER.unpack_from(header)
        if magic != MAGIC:
            self._fail(f"wrong magic {magic!r}, expected {MAGIC!r}: not a coarserank KV file")
        if version != FORMAT_VERSION:
            self._fail(f"unsupported format version {version}, this reader knows version {FORMAT_VERSION}")
        (stored_header_crc,) = _HEADER_CRC.unpack_from(header, _HEADER.size)
        actual_header_crc = zlib.crc32(header[: _HEADER.size])
        if stored_header_crc != actual_header_crc:
            self._fail(
                f"header checksum mismatch (stored {stored_header_crc:#010x}, computed "
                f"{actual_header_crc:#010x}): the header is corrupt"
            )
        if dtype_code not in _CODE_DTYPES:
            self._fail(f"unknown dtype code {dtype_code}, expected one of {_CODE_DTYPES}")
        self._dtype = _CODE_DTYPES[dtype_code]
        storage = _NUMPY_DTYPES[self._dtype]
        if count < 1 or dim < 1 or hash_len < 1 or hash_len > MODEL_HASH_FIELD:
            self._fail(f"invalid header: count={count}, dim={dim}, model hash length={hash_len}")
        expected_layout = _layout(count, dim, storage.itemsize)
        if (ids_offset, vectors_offset, file_size) != expected_layout:
            self._fail(
                "inconsistent header offsets (ids, vectors, size) = "
                f"{(ids_offset, vectors_offset, file_size)}, expected {expected_layout} "
                f"for count={count}, dim={dim}, dtype={self._dtype}"
            )
        actual_size = self._path.stat().st_size
        if actual_size < file_size:
            self._fail(f"truncated: {actual_size} bytes on disk, the header says {file_size}")
        if actual_size > file_size:
            self._fail(f"{actual_size - file_size} unexpected trailing bytes after the declared {file_size}")
        if expected_dim is not None and dim != expected_dim:
            self._fail(f"dimension mismatch: the file holds dim {dim}, expected {expected_dim}")
        self._model_hash: str = hash_field[:hash_len].decode("utf-8", errors="replace")
        if expected_model_hash is not None and self._model_hash != expected_model_hash:
            self._fail(
                f"model hash mismatch: the file has {self._model_hash!r}, expected {expected_model_hash!r}"
            )
        self._count, self._dim, self._data_crc = int(count), int(dim), int(data_crc)
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
                header = f.read(HEADER_SIZE)
        except FileNotFoundError as exc:
            raise ArtifactError(f"KV file {self._path} does not exist") from exc
        except OSError as exc:
            raise ArtifactError(f"cannot read KV file {self._path}: {exc}") from exc
        if len(header) < HEADER_SIZE:
            self._fail(f"truncated: {len(header)} bytes, a KV file has at least a {HEADER_SIZE}-byte header")
        return header

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
