"""Tests for the embedded KV file: format, lookups, validation, corruption and atomic publish."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pytest

from coarserank.errors import ArtifactError, ConfigError, DataError, ServingError
from coarserank.serving import kv_file
from coarserank.serving.kv import KVResult, open_store, widen_float16
from coarserank.serving.kv_file import HEADER_SIZE, MAGIC, FileKVStore, write_kv_file

MODEL_HASH = "a3f1" * 16  # a sha256 hex digest is 64 characters


def _items(rng: np.random.Generator, n: int = 200, dim: int = 8) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.choice(2**41, size=n, replace=False).astype(np.int64) - 2**40
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return ids, vectors


@pytest.fixture
def kv_path(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, np.ndarray, np.ndarray]:
    ids, vectors = _items(rng)
    path = write_kv_file(tmp_path / "items.kv", ids, vectors, MODEL_HASH)
    return path, ids, vectors


def _patch(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


# ---- round trips and lookups ------------------------------------------------------------------


def test_round_trip_float32_is_exact(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, ids, vectors = kv_path
    with FileKVStore(path) as store:
        result = store.get(ids)
        assert store.dim == 8 and store.count == 200 and store.dtype == "float32"
        assert store.model_hash == MODEL_HASH
    assert result.vectors.dtype == np.float32
    np.testing.assert_array_equal(result.vectors, vectors)
    assert result.found.all() and result.missing.size == 0


def test_round_trip_float16_matches_float16_rounding(tmp_path: Path, rng: np.random.Generator) -> None:
    ids, vectors = _items(rng)
    path = write_kv_file(tmp_path / "items16.kv", ids, vectors, MODEL_HASH, dtype="float16")
    store = FileKVStore(path)
    assert store.dtype == "float16"
    got = store.get(ids).vectors
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, vectors.astype(np.float16).astype(np.float32))


def test_float16_file_is_about_half_the_float32_file(tmp_path: Path, rng: np.random.Generator) -> None:
    ids, vectors = _items(rng, n=1000, dim=64)
    size32 = write_kv_file(tmp_path / "a.kv", ids, vectors, MODEL_HASH).stat().st_size
    size16 = write_kv_file(tmp_path / "b.kv", ids, vectors, MODEL_HASH, dtype="float16").stat().st_size
    assert size16 - 8 * 1000 < 0.51 * (size32 - 8 * 1000)


def test_unsorted_input_ids_are_stored_sorted(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, ids, _ = kv_path
    assert not np.all(np.diff(ids) > 0)
    np.testing.assert_array_equal(FileKVStore(path).ids(), np.sort(ids))


def test_sorted_input_ids_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    ids, vectors = _items(rng)
    order = np.argsort(ids)
    path = write_kv_file(tmp_path / "sorted.kv", ids[order], vectors[order], MODEL_HASH)
    np.testing.assert_array_equal(FileKVStore(path).get(ids).vectors, vectors)


def test_vectors_come_back_in_requested_order(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, ids, vectors = kv_path
    perm = np.random.default_rng(1).permutation(ids.size)
    np.testing.assert_array_equal(FileKVStore(path).get(ids[perm]).vectors, vectors[perm])


def test_repeated_requested_ids_are_each_returned(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, ids, vectors = kv_path
    result = FileKVStore(path).get([ids[3], ids[3], ids[0]])
    np.testing.assert_array_equal(result.vectors, vectors[[3, 3, 0]])


def test_missing_ids_are_reported_not_zero_filled(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, ids, vectors = kv_path
    absent = [np.iinfo(np.int64).min, 1, np.iinfo(np.int64).max]
    query = np.array([ids[5], absent[0], ids[7], absent[1], absent[2]], dtype=np.int64)
    result = FileKVStore(path).get(query)
    np.testing.assert_array_equal(result.found, [True, False, True, False, False])
    np.testing.assert_array_equal(result.missing, absent)
    np.testing.assert_array_equal(result.vectors, vectors[[5, 7]])


def test_get_strict_names_the_missing_ids(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, ids, _ = kv_path
    with pytest.raises(ServingError, match=r"2 of 3 requested ids are not in the KV store .*\[1, 3\]"):
        FileKVStore(path).get_strict([ids[0], 1, 3])


def test_get_strict_returns_all_vectors_when_present(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, ids, vectors = kv_path
    np.testing.assert_array_equal(FileKVStore(path).get_strict(ids[:10]), vectors[:10])


def test_empty_request_gives_empty_result(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    result = FileKVStore(kv_path[0]).get([])
    assert isinstance(result, KVResult)
    assert result.vectors.shape == (0, 8) and result.found.shape == (0,) and result.missing.size == 0


@pytest.mark.parametrize("index", ["hash", "bisect"])
def test_lookup_matches_a_dict_reference(tmp_path: Path, rng: np.random.Generator, index: str) -> None:
    n = 20_000
    ids = rng.choice(2**62, size=n, replace=False).astype(np.int64) - 2**61
    ids[:3] = [np.iinfo(np.int64).min, np.iinfo(np.int64).max, 0]
    vectors = rng.normal(size=(n, 4)).astype(np.float32)
    path = write_kv_file(tmp_path / "big.kv", ids, vectors, MODEL_HASH)
    query = np.concatenate([rng.choice(ids, 3000), rng.integers(-(2**62), 2**62, 1000)])
    result = FileKVStore(path, index=index).get(query)  # type: ignore[arg-type]
    reference = dict(zip(ids.tolist(), vectors, strict=True))
    expect_found = np.array([q in reference for q in query.tolist()])
    np.testing.assert_array_equal(result.found, expect_found)
    np.testing.assert_array_equal(result.missing, query[~expect_found])
    np.testing.assert_array_equal(
        result.vectors, np.array([reference[q] for q in query[expect_found].tolist()])
    )


def test_unknown_index_kind_is_rejected(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ConfigError, match="index must be 'hash' or 'bisect', got 'btree'"):
        FileKVStore(kv_path[0], index="btree")  # type: ignore[arg-type]


@pytest.mark.parametrize("query", [[[1, 2]], [1.5, 2.0], [True, False]])
def test_malformed_lookup_request_is_rejected(
    kv_path: tuple[Path, np.ndarray, np.ndarray], query: list
) -> None:
    with pytest.raises(ServingError, match="item ids to look up must be"):
        FileKVStore(kv_path[0]).get(query)


def test_closed_store_refuses_lookups(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    store = FileKVStore(kv_path[0])
    store.close()
    with pytest.raises(ServingError, match="is closed"):
        store.get([1])


def test_widen_float16_is_exact_for_every_half() -> None:
    halves = np.arange(2**16, dtype=np.uint32).astype(np.uint16).view(np.float16).reshape(256, 256)
    widened = widen_float16(halves)
    assert widened.dtype == np.float32 and widened.shape == (256, 256)
    np.testing.assert_array_equal(widened.view(np.uint32), halves.astype(np.float32).view(np.uint32))


# ---- the byte layout, read independently with struct --------------------------------------------


def test_layout_matches_the_documented_bytes(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, ids, vectors = kv_path
    raw = path.read_bytes()
    (magic, version, dtype_code, count, dim, flags, ids_off, vec_off, size, data_crc, hash_len) = (
        struct.unpack_from("<4sHHQIIQQQII", raw, 0)
    )
    assert (magic, version, dtype_code, count, dim, flags) == (b"CRKV", 1, 1, 200, 8, 0)
    assert ids_off == 128 and vec_off % 64 == 0 and vec_off == 128 + 64 * 25 and size == len(raw)
    assert raw[56 : 56 + hash_len].decode() == MODEL_HASH and hash_len == 64
    assert struct.unpack_from("<I", raw, 124)[0] == zlib.crc32(raw[:124])
    assert data_crc == zlib.crc32(raw[ids_off:])
    np.testing.assert_array_equal(np.frombuffer(raw, "<i8", count, ids_off), np.sort(ids))
    matrix = np.frombuffer(raw, "<f4", count * dim, vec_off).reshape(count, dim)
    np.testing.assert_array_equal(matrix, vectors[np.argsort(ids)])


RUN_ID = "9c1e" * 8


def test_a_file_with_a_run_id_is_version_2_with_the_ids_at_byte_192(tmp_path: Path, rng: np.random.Generator) -> None:
    ids, vectors = _items(rng)
    path = write_kv_file(tmp_path / "items.kv", ids, vectors, MODEL_HASH, run_id=RUN_ID)
    raw = path.read_bytes()
    version, ids_off, vec_off, size = struct.unpack_from("<H", raw, 4)[0], *struct.unpack_from("<QQQ", raw, 24)
    assert (version, ids_off, vec_off, size) == (2, 192, 192 + 64 * 25, len(raw))
    assert struct.unpack_from("<I", raw, 124)[0] == zlib.crc32(raw[:124])
    run_len = struct.unpack_from("<I", raw, 128)[0]
    assert raw[132 : 132 + run_len].decode() == RUN_ID and raw[132 + run_len : 188] == bytes(56 - run_len)
    assert struct.unpack_from("<I", raw, 188)[0] == zlib.crc32(raw[128:188])
    assert struct.unpack_from("<I", raw, 48)[0] == zlib.crc32(raw[192:])
    np.testing.assert_array_equal(np.frombuffer(raw, "<i8", 200, 192), np.sort(ids))


def test_run_id_round_trips_and_a_version_1_file_has_none(tmp_path: Path, rng: np.random.Generator,
                                                          kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    ids, vectors = _items(rng)
    path = write_kv_file(tmp_path / "v2.kv", ids, vectors, MODEL_HASH, dtype="float16", run_id=RUN_ID)
    with FileKVStore(path) as v2, FileKVStore(kv_path[0]) as v1:
        assert (v2.run_id, v2.format_version, v2.model_hash) == (RUN_ID, 2, MODEL_HASH)
        assert (v1.run_id, v1.format_version) == ("", 1)
        np.testing.assert_array_equal(v2.get(ids).vectors, vectors.astype(np.float16).astype(np.float32))


def test_corrupt_run_id_block_is_reported(tmp_path: Path, rng: np.random.Generator) -> None:
    path = write_kv_file(tmp_path / "items.kv", *_items(rng), MODEL_HASH, run_id=RUN_ID)
    _patch(path, 133, b"X")
    with pytest.raises(ArtifactError, match="run-id block checksum mismatch"):
        FileKVStore(path)


def test_run_id_longer_than_56_bytes_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="run_id must be 0 to 56 bytes of UTF-8 without NUL, got 57 bytes"):
        write_kv_file(tmp_path / "x.kv", [1], np.ones((1, 2)), MODEL_HASH, run_id="r" * 57)
    assert not (tmp_path / "x.kv").exists()


# ---- input validation ---------------------------------------------------------------------------


def test_duplicate_ids_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"1 item ids occur more than once, e.g. \[7\]"):
        write_kv_file(tmp_path / "x.kv", [7, 3, 7], np.zeros((3, 2)), MODEL_HASH)
    assert not (tmp_path / "x.kv").exists()


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_vectors_are_rejected(tmp_path: Path, bad: float) -> None:
    vectors = np.ones((3, 2), dtype=np.float32)
    vectors[1, 0] = bad
    with pytest.raises(DataError, match=r"1 item vectors contain NaN or infinity, e.g. for ids \[20\]"):
        write_kv_file(tmp_path / "x.kv", [10, 20, 30], vectors, MODEL_HASH)


def test_mismatched_lengths_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="3 item ids but 2 item vectors"):
        write_kv_file(tmp_path / "x.kv", [1, 2, 3], np.zeros((2, 4)), MODEL_HASH)


def test_non_integer_ids_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="item ids must be integers"):
        write_kv_file(tmp_path / "x.kv", np.array([1.0, 2.0]), np.zeros((2, 4)), MODEL_HASH)


def test_one_dimensional_vectors_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"must be a 2-D array \[n, dim\], got shape \(4,\)"):
        write_kv_file(tmp_path / "x.kv", [1, 2, 3, 4], np.zeros(4), MODEL_HASH)


def test_empty_catalogue_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no items to store"):
        write_kv_file(tmp_path / "x.kv", np.zeros(0, np.int64), np.zeros((0, 4)), MODEL_HASH)


def test_values_beyond_float16_range_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="beyond the float16 range"):
        write_kv_file(tmp_path / "x.kv", [1, 2], np.array([[1.0], [1e6]]), MODEL_HASH, dtype="float16")


def test_unknown_storage_dtype_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"dtype must be one of \['float32', 'float16'\], got 'int8'"):
        write_kv_file(tmp_path / "x.kv", [1], np.zeros((1, 2)), MODEL_HASH, dtype="int8")


def test_overlong_model_hash_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="model_hash must be 1 to 64 bytes"):
        write_kv_file(tmp_path / "x.kv", [1], np.zeros((1, 2)), "x" * 65)


# ---- corrupt and mismatched files ---------------------------------------------------------------


def test_wrong_magic_is_reported(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    _patch(kv_path[0], 0, b"PK\x03\x04")
    with pytest.raises(ArtifactError, match=r"items\.kv: wrong magic b'PK\\x03\\x04', expected b'CRKV'"):
        FileKVStore(kv_path[0])


def test_wrong_version_is_reported(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    _patch(kv_path[0], 4, struct.pack("<H", 9))
    with pytest.raises(ArtifactError, match="unsupported format version 9, this reader knows versions 1, 2"):
        FileKVStore(kv_path[0])


def test_corrupt_header_is_reported(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    _patch(kv_path[0], 16, struct.pack("<I", 9))  # the dim field
    with pytest.raises(ArtifactError, match="header checksum mismatch"):
        FileKVStore(kv_path[0])


def test_corrupt_payload_fails_the_checksum(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path = kv_path[0]
    _patch(path, path.stat().st_size - 3, b"\x7f")
    with pytest.raises(ArtifactError, match=r"items\.kv: data checksum mismatch \(stored 0x[0-9a-f]{8}"):
        FileKVStore(path)


def test_verify_false_defers_the_payload_checksum(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path = kv_path[0]
    _patch(path, path.stat().st_size - 3, b"\x7f")
    store = FileKVStore(path, verify=False)  # the documented trade-off: opening does not read the payload
    with pytest.raises(ArtifactError, match="data checksum mismatch"):
        store.verify()


@pytest.mark.parametrize("keep", [0, 60, 500])
def test_truncated_file_is_reported(kv_path: tuple[Path, np.ndarray, np.ndarray], keep: int) -> None:
    path = kv_path[0]
    with open(path, "r+b") as f:
        f.truncate(keep)
    with pytest.raises(ArtifactError, match=r"items\.kv: truncated: \d+ bytes"):
        FileKVStore(path)


def test_trailing_bytes_are_reported(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    with open(kv_path[0], "ab") as f:
        f.write(b"\x00" * 4)
    with pytest.raises(ArtifactError, match="4 unexpected trailing bytes"):
        FileKVStore(kv_path[0])


def test_missing_file_is_reported(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match=r"KV file .*nothing\.kv does not exist"):
        FileKVStore(tmp_path / "nothing.kv")


def test_dimension_mismatch_is_reported(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ArtifactError, match="dimension mismatch: the file holds dim 8, expected 16"):
        FileKVStore(kv_path[0], expected_dim=16)


def test_model_hash_mismatch_is_reported(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    with pytest.raises(ArtifactError, match="model hash mismatch: the file has 'a3f1"):
        FileKVStore(kv_path[0], expected_model_hash="0" * 64)


# ---- atomic publish -----------------------------------------------------------------------------


def test_failed_write_leaves_the_previous_file_intact(
    kv_path: tuple[Path, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, ids, vectors = kv_path
    before = path.read_bytes()

    def disk_full(f: BinaryIO, *args: object) -> int:
        f.write(b"\x01" * 1000)  # part of the payload reaches the temporary file
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(kv_file, "_write_payload", disk_full)
    with pytest.raises(
        ArtifactError, match=r"could not write KV file .*items\.kv: .*No space left on device"
    ):
        write_kv_file(path, ids, vectors * 2, "new-model")
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["items.kv"]  # no temporary file left behind
    np.testing.assert_array_equal(FileKVStore(path).get(ids).vectors, vectors)


def test_invalid_input_leaves_the_previous_file_intact(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    path, ids, vectors = kv_path
    before = path.read_bytes()
    bad = vectors.copy()
    bad[0, 0] = np.nan
    with pytest.raises(DataError, match="NaN or infinity"):
        write_kv_file(path, ids, bad, MODEL_HASH)
    assert path.read_bytes() == before


def test_published_file_is_readable_by_other_users_and_keeps_its_mode(
    kv_path: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    path, ids, vectors = kv_path
    assert path.stat().st_mode & 0o777 == 0o644  # not the 0600 of a temporary file
    path.chmod(0o640)
    write_kv_file(path, ids, vectors, MODEL_HASH)
    assert path.stat().st_mode & 0o777 == 0o640


def test_reader_keeps_its_snapshot_when_a_new_file_is_published(
    kv_path: tuple[Path, np.ndarray, np.ndarray],
) -> None:
    path, ids, vectors = kv_path
    old = FileKVStore(path)
    write_kv_file(path, ids, vectors + 1, "model-2")
    np.testing.assert_array_equal(old.get(ids).vectors, vectors)
    new = FileKVStore(path)
    assert new.model_hash == "model-2"
    np.testing.assert_array_equal(new.get(ids).vectors, vectors + 1)


# ---- open_store ---------------------------------------------------------------------------------


def test_open_store_opens_a_path_as_a_file_store(kv_path: tuple[Path, np.ndarray, np.ndarray]) -> None:
    store = open_store(kv_path[0], expected_dim=8)
    assert isinstance(store, FileKVStore) and store.count == 200
    assert isinstance(open_store(str(kv_path[0])), FileKVStore)


def test_open_store_rejects_an_unknown_scheme() -> None:
    with pytest.raises(ServingError, match="unknown KV store scheme 'http'"):
        open_store("http://:secret@127.0.0.1/items")


def test_header_size_and_magic_constants() -> None:
    assert HEADER_SIZE == 128 and MAGIC == b"CRKV"


def test_dense_ids_use_the_direct_index_and_agree_with_binary_search(tmp_path):
    from coarserank.serving.kv_file import _DirectIndex

    rng = np.random.default_rng(5)
    ids = np.sort(rng.choice(np.arange(10, 3_000), 1_000, replace=False)).astype(np.int64)
    vectors = rng.standard_normal((ids.size, 8)).astype(np.float32)
    path = write_kv_file(tmp_path / "dense.kv", ids, vectors, "m")
    direct, bisect = FileKVStore(path), FileKVStore(path, index="bisect")
    assert isinstance(direct._index, _DirectIndex)
    query = np.concatenate([rng.choice(ids, 300), np.array([-5, 0, 9, 3_000, 10**12]), rng.integers(0, 3_100, 300)])
    a, b = direct.get(query), bisect.get(query)
    np.testing.assert_array_equal(a.found, b.found)
    np.testing.assert_array_equal(a.vectors, b.vectors)
    np.testing.assert_array_equal(a.missing, b.missing)
