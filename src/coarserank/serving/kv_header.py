"""The KV file header (``docs/kv-format.md``): layout constants, packing and checked parsing.

Version 1 has a 128-byte header. Version 2, written when the file is given a run identifier,
appends a 64-byte block: the run id's length (u32), the run id (56 bytes of UTF-8, zero-padded) and
the CRC32 of the block's first 60 bytes; ids then start at byte 192. Everything else is the same, so
a reader of both versions differs only in where the ids start and whether it reads the run id.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from typing import Callable, Final, NoReturn

from coarserank.errors import DataError

__all__ = ["MAGIC", "FORMAT_VERSION", "VERSIONS", "HEADER_SIZE", "RUN_ID_FIELD", "ALIGNMENT", "MODEL_HASH_FIELD",
           "DTYPE_CODES", "Header", "header_size", "layout", "encode_model_hash", "encode_run_id", "pack_header",
           "parse_header"]

MAGIC: Final[bytes] = b"CRKV"
FORMAT_VERSION: Final[int] = 2
"""The newest version; :func:`pack_header` writes version 1 for a file without a run id."""
VERSIONS: Final[tuple[int, ...]] = (1, 2)
HEADER_SIZE: Final[int] = 128
"""Size of the version-1 header, the first 128 bytes of every version."""
_EXTENSION_SIZE: Final[int] = 64
ALIGNMENT: Final[int] = 64
MODEL_HASH_FIELD: Final[int] = 64
RUN_ID_FIELD: Final[int] = 56
DTYPE_CODES: Final[dict[str, int]] = {"float32": 1, "float16": 2}
_CODE_DTYPES: Final[dict[int, str]] = {code: name for name, code in DTYPE_CODES.items()}
_ITEMSIZE: Final[dict[str, int]] = {"float32": 4, "float16": 2}

# magic, version, dtype code, count, dim, flags, ids offset, vectors offset, file size,
# data crc32, model-hash length, model hash, reserved, (header crc32 follows at byte 124)
_HEADER: Final[struct.Struct] = struct.Struct("<4sHHQIIQQQII64sI")
_CRC: Final[struct.Struct] = struct.Struct("<I")
_RUN_ID: Final[struct.Struct] = struct.Struct("<I56s")  # run-id length, run id; crc32 at byte 188
assert _HEADER.size + _CRC.size == HEADER_SIZE and _RUN_ID.size + _CRC.size == _EXTENSION_SIZE


@dataclass(frozen=True)
class Header:
    """The checked header fields of a KV file (``run_id`` is ``""`` in version 1)."""

    version: int
    dtype: str
    count: int
    dim: int
    ids_offset: int
    vectors_offset: int
    file_size: int
    data_crc: int
    model_hash: str
    run_id: str


def header_size(version: int) -> int:
    """Bytes before the ids: 128 (version 1) or 192 (version 2)."""
    return HEADER_SIZE + (_EXTENSION_SIZE if version >= 2 else 0)


def layout(count: int, dim: int, itemsize: int, version: int) -> tuple[int, int, int]:
    """Return ``(ids_offset, vectors_offset, file_size)`` for a file of this shape and version."""
    ids_offset = header_size(version)
    vectors_offset = (ids_offset + 8 * count + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT
    return ids_offset, vectors_offset, vectors_offset + count * dim * itemsize


def _encoded(value: str, what: str, size: int, allow_empty: bool) -> bytes:
    if not isinstance(value, str):
        raise DataError(f"{what} must be a string, got {type(value).__name__}")
    encoded = value.encode("utf-8")
    if (not encoded and not allow_empty) or len(encoded) > size or b"\x00" in encoded:
        raise DataError(f"{what} must be {0 if allow_empty else 1} to {size} bytes of UTF-8 without NUL, "
                        f"got {len(encoded)} bytes")
    return encoded


def encode_model_hash(model_hash: str) -> bytes:
    """The model hash as header bytes (1 to 64 bytes of UTF-8; a sha256 hex digest fits)."""
    return _encoded(model_hash, "model_hash", MODEL_HASH_FIELD, allow_empty=False)


def encode_run_id(run_id: str) -> bytes:
    """The run id as header bytes (0 to 56 bytes of UTF-8)."""
    return _encoded(run_id, "run_id", RUN_ID_FIELD, allow_empty=True)


def pack_header(dtype: str, count: int, dim: int, data_crc: int, model_hash: bytes, run_id: bytes) -> bytes:
    """The header bytes: version 2 when ``run_id`` is not empty, else version 1."""
    version = 2 if run_id else 1
    ids_offset, vectors_offset, file_size = layout(count, dim, _ITEMSIZE[dtype], version)
    head = _HEADER.pack(MAGIC, version, DTYPE_CODES[dtype], count, dim, 0, ids_offset, vectors_offset, file_size,
                        data_crc, len(model_hash), model_hash.ljust(MODEL_HASH_FIELD, b"\x00"), 0)
    out = head + _CRC.pack(zlib.crc32(head))
    if version == 2:
        block = _RUN_ID.pack(len(run_id), run_id.ljust(RUN_ID_FIELD, b"\x00"))
        out += block + _CRC.pack(zlib.crc32(block))
    return out


def parse_header(raw: bytes, fail: Callable[[str], NoReturn]) -> Header:
    """Check and decode the header at the start of ``raw`` (at least its first 192 bytes, or the file).

    ``fail`` raises with a message naming the problem, in the order ``docs/kv-format.md`` lists.
    """
    if len(raw) < HEADER_SIZE:
        fail(f"truncated: {len(raw)} bytes, a KV file has at least a {HEADER_SIZE}-byte header")
    (magic, version, dtype_code, count, dim, _flags, ids_offset, vectors_offset, file_size, data_crc, hash_len,
     hash_field, _reserved) = _HEADER.unpack_from(raw)
    if magic != MAGIC:
        fail(f"wrong magic {magic!r}, expected {MAGIC!r}: not a coarserank KV file")
    if version not in VERSIONS:
        fail(f"unsupported format version {version}, this reader knows versions {', '.join(map(str, VERSIONS))}")
    (stored,) = _CRC.unpack_from(raw, _HEADER.size)
    if stored != zlib.crc32(raw[: _HEADER.size]):
        fail(f"header checksum mismatch (stored {stored:#010x}, computed {zlib.crc32(raw[: _HEADER.size]):#010x}): "
             "the header is corrupt")
    run_id = ""
    if version >= 2:
        if len(raw) < header_size(version):
            fail(f"truncated: {len(raw)} bytes, a version-{version} KV file has a {header_size(version)}-byte header")
        block = raw[HEADER_SIZE: HEADER_SIZE + _RUN_ID.size]
        (stored,) = _CRC.unpack_from(raw, HEADER_SIZE + _RUN_ID.size)
        if stored != zlib.crc32(block):
            fail("run-id block checksum mismatch: the header is corrupt")
        run_len, run_field = _RUN_ID.unpack(block)
        if run_len > RUN_ID_FIELD:
            fail(f"invalid header: run id length {run_len}")
        run_id = run_field[:run_len].decode("utf-8", errors="replace")
    if dtype_code not in _CODE_DTYPES:
        fail(f"unknown dtype code {dtype_code}, expected one of {_CODE_DTYPES}")
    dtype = _CODE_DTYPES[dtype_code]
    if count < 1 or dim < 1 or hash_len < 1 or hash_len > MODEL_HASH_FIELD:
        fail(f"invalid header: count={count}, dim={dim}, model hash length={hash_len}")
    expected = layout(count, dim, _ITEMSIZE[dtype], version)
    if (ids_offset, vectors_offset, file_size) != expected:
        fail(f"inconsistent header offsets (ids, vectors, size) = {(ids_offset, vectors_offset, file_size)}, "
             f"expected {expected} for count={count}, dim={dim}, dtype={dtype}")
    model_hash = hash_field[:hash_len].decode("utf-8", errors="replace")
    return Header(version, dtype, int(count), int(dim), int(ids_offset), int(vectors_offset), int(file_size),
                  int(data_crc), model_hash, run_id)
