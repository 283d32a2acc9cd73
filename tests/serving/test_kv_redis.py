"""Tests for the Redis KV store against a real redis-server on loopback (see conftest.py)."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest
import redis

from coarserank.errors import DataError, ServingError
from coarserank.serving.kv import open_store
from coarserank.serving.kv_redis import RedisKVStore

MODEL_HASH = "b7e2" * 16


@pytest.fixture
def items(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    ids = rng.choice(2**41, size=300, replace=False).astype(np.int64) - 2**40
    return ids, rng.normal(size=(300, 6)).astype(np.float32)


@pytest.fixture
def store(redis_server: str, redis_namespace: str) -> RedisKVStore:
    return RedisKVStore(redis_server, namespace=redis_namespace)


@pytest.fixture
def raw(redis_server: str) -> redis.Redis:
    return redis.Redis.from_url(redis_server)


def _namespace_keys(raw: redis.Redis, namespace: str) -> set[str]:
    return {k.decode() for k in raw.scan_iter(match=f"{namespace}:*", count=1000)}


# ---- round trips ------------------------------------------------------------------------------


def test_round_trip_float32_is_exact(store: RedisKVStore, items: tuple[np.ndarray, np.ndarray]) -> None:
    ids, vectors = items
    store.publish(ids, vectors, MODEL_HASH)
    result = store.get(ids)
    assert result.vectors.dtype == np.float32 and result.found.all()
    np.testing.assert_array_equal(result.vectors, vectors)


def test_round_trip_float16_matches_float16_rounding(
    store: RedisKVStore, items: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, vectors = items
    store.publish(ids, vectors, MODEL_HASH, dtype="float16")
    assert store.dtype == "float16"
    np.testing.assert_array_equal(store.get(ids).vectors, vectors.astype(np.float16).astype(np.float32))


def test_metadata_and_ids_of_the_current_version(
    store: RedisKVStore, items: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, vectors = items
    version = store.publish(ids, vectors, MODEL_HASH)
    assert (store.version, store.dim, store.count, store.model_hash) == (version, 6, 300, MODEL_HASH)
    np.testing.assert_array_equal(store.ids(), np.sort(ids))


def test_run_id_is_kept_in_the_version_meta_and_absent_without_one(
    store: RedisKVStore, items: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, vectors = items
    store.publish(ids, vectors, "model-1")
    assert store.run_id == ""
    store.publish(ids, vectors, "model-1", run_id="run-42")
    store.refresh()
    assert store.run_id == "run-42"


def test_vectors_are_raw_little_endian_bytes_under_versioned_keys(
    store: RedisKVStore, raw: redis.Redis, redis_namespace: str, items: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, vectors = items
    version = store.publish(ids, vectors, MODEL_HASH)
    assert raw.get(f"{redis_namespace}:current") == str(version).encode()
    assert raw.get(f"{redis_namespace}:v{version}:{ids[4]}") == vectors[4].astype("<f4").tobytes()
    meta = raw.hgetall(f"{redis_namespace}:v{version}:meta")
    assert meta == {
        b"dim": b"6",
        b"dtype": b"float32",
        b"count": b"300",
        b"model_hash": MODEL_HASH.encode(),
        b"format_version": b"1",
    }


def test_vectors_come_back_in_requested_order(
    store: RedisKVStore, items: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, vectors = items
    store.publish(ids, vectors, MODEL_HASH)
    perm = np.random.default_rng(3).permutation(ids.size)
    np.testing.assert_array_equal(store.get(ids[perm]).vectors, vectors[perm])


def test_missing_ids_are_reported_not_zero_filled(
    store: RedisKVStore, items: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, vectors = items
    store.publish(ids, vectors, MODEL_HASH)
    result = store.get([ids[2], 2**50, ids[9], -(2**50)])
    np.testing.assert_array_equal(result.found, [True, False, True, False])
    np.testing.assert_array_equal(result.missing, [2**50, -(2**50)])
    np.testing.assert_array_equal(result.vectors, vectors[[2, 9]])


def test_get_strict_names_the_missing_ids(store: RedisKVStore, items: tuple[np.ndarray, np.ndarray]) -> None:
    ids, vectors = items
    store.publish(ids, vectors, MODEL_HASH)
    with pytest.raises(ServingError, match=r"1 of 2 requested ids are not in the KV store .*\[12345\]"):
        store.get_strict([ids[0], 12345])


def test_empty_request_gives_empty_result(store: RedisKVStore, items: tuple[np.ndarray, np.ndarray]) -> None:
    store.publish(*items, MODEL_HASH)
    result = store.get(np.zeros(0, dtype=np.int64))
    assert result.vectors.shape == (0, 6) and result.missing.size == 0


def test_reading_before_anything_is_published_is_reported(store: RedisKVStore) -> None:
    with pytest.raises(ServingError, match="nothing is published yet"):
        store.get([1])


def test_invalid_input_publishes_nothing(
    store: RedisKVStore, raw: redis.Redis, redis_namespace: str, items: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, vectors = items
    with pytest.raises(DataError, match="occur more than once"):
        store.publish(np.concatenate([ids, ids[:1]]), np.vstack([vectors, vectors[:1]]), MODEL_HASH)
    assert _namespace_keys(raw, redis_namespace) == set()


def test_expected_dimension_mismatch_is_reported(
    redis_server: str, store: RedisKVStore, redis_namespace: str, items: tuple[np.ndarray, np.ndarray]
) -> None:
    store.publish(*items, MODEL_HASH)
    with pytest.raises(ServingError, match="dimension mismatch: version 1 holds dim 6, expected 32"):
        RedisKVStore(redis_server, namespace=redis_namespace, version="current", expected_dim=32)


def test_value_of_the_wrong_size_is_reported(
    store: RedisKVStore, raw: redis.Redis, redis_namespace: str, items: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, vectors = items
    version = store.publish(ids, vectors, MODEL_HASH)
    raw.set(f"{redis_namespace}:v{version}:{ids[0]}", b"\x00" * 5)
    with pytest.raises(ServingError, match=r"holds values of \[5, 24\] bytes, expected 24"):
        store.get(ids[:2])


# ---- versions -----------------------------------------------------------------------------------


def test_following_reader_switches_to_the_new_version(
    redis_server: str, store: RedisKVStore, redis_namespace: str, items: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, vectors = items
    store.publish(ids, vectors, "model-1")
    reader = RedisKVStore(redis_server, namespace=redis_namespace)
    np.testing.assert_array_equal(reader.get(ids).vectors, vectors)
    store.publish(ids, vectors + 1, "model-2")
    np.testing.assert_array_equal(reader.get(ids).vectors, vectors + 1)
    assert reader.model_hash == "model-2"


def test_pinned_reader_keeps_the_old_version_after_a_switch(
    redis_server: str, store: RedisKVStore, redis_namespace: str, items: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, vectors = items
    old = store.publish(ids, vectors, "model-1")
    pinned = RedisKVStore(redis_server, namespace=redis_namespace, version="current")
    store.publish(ids[:100], vectors[:100] + 1, "model-2", keep_previous=1)
    result = pinned.get(ids)
    assert pinned.version == old and pinned.model_hash == "model-1"
    assert result.found.all()
    np.testing.assert_array_equal(result.vectors, vectors)


def test_pinned_reader_fails_clearly_once_its_version_is_deleted(
    redis_server: str, store: RedisKVStore, redis_namespace: str, items: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, vectors = items
    first = store.publish(ids, vectors, "model-1")
    pinned = RedisKVStore(redis_server, namespace=redis_namespace, version=first)
    store.publish(ids, vectors, "model-2", keep_previous=0)
    with pytest.raises(ServingError, match=f"pinned version {first} was deleted"):
        pinned.get(ids[:3])


def test_versions_beyond_keep_previous_are_deleted(
    store: RedisKVStore, raw: redis.Redis, redis_namespace: str, items: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, vectors = items
    versions = [store.publish(ids, vectors + k, f"model-{k}", keep_previous=1) for k in range(3)]
    assert store.versions() == versions[1:]
    keys = _namespace_keys(raw, redis_namespace)
    assert not any(k.startswith(f"{redis_namespace}:v{versions[0]}:") for k in keys)
    assert len(keys) == 3 + 2 * (300 + 2)  # next_version, current, versions + two versions' items, ids, meta


def test_concurrent_reader_never_sees_a_mix_of_versions(
    redis_server: str, redis_namespace: str, items: tuple[np.ndarray, np.ndarray]
) -> None:
    ids, _ = items
    base = np.arange(ids.size, dtype=np.float32)[:, None] * np.ones((1, 6), dtype=np.float32)
    publisher = RedisKVStore(redis_server, namespace=redis_namespace)
    publisher.publish(ids, base, "model-0", chunk_size=50)
    reader = RedisKVStore(redis_server, namespace=redis_namespace)
    errors: list[BaseException] = []

    def publish_many() -> None:
        try:
            for k in range(1, 16):
                publisher.publish(ids, base + 1000 * k, f"model-{k}", keep_previous=1, chunk_size=50)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    thread = threading.Thread(target=publish_many)
    thread.start()
    seen: set[int] = set()
    while thread.is_alive() or not seen:
        result = reader.get(ids)
        assert result.found.all(), "a half-written or half-deleted version was visible"
        generation = (result.vectors - base) / 1000
        assert np.unique(generation).size == 1, "one lookup mixed vectors from two versions"
        seen.add(int(generation[0, 0]))
    thread.join()
    assert not errors
    assert len(seen) > 1, "the reader never overlapped with a publish"  # the test exercised a switch
    assert reader.get(ids[:1]).vectors[0, 0] == 15 * 1000


def test_failed_publish_leaves_the_current_version_intact(
    store: RedisKVStore,
    raw: redis.Redis,
    redis_namespace: str,
    items: tuple[np.ndarray, np.ndarray],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ids, vectors = items
    good = store.publish(ids, vectors, "model-1")
    keys_before = _namespace_keys(raw, redis_namespace) - {f"{redis_namespace}:next_version"}
    real_mset = store._client.mset
    calls = {"n": 0}

    def mset_then_drop(mapping: dict) -> object:
        calls["n"] += 1
        if calls["n"] > 2:
            raise redis.exceptions.ConnectionError("Connection reset by peer")
        return real_mset(mapping)

    monkeypatch.setattr(store._client, "mset", mset_then_drop)
    with pytest.raises(
        ServingError, match=r"at 127\.0\.0\.1:\d+: writing version 2 failed \(ConnectionError"
    ):
        store.publish(ids, vectors + 1, "model-2", chunk_size=50)
    assert raw.get(f"{redis_namespace}:current") == str(good).encode()
    assert _namespace_keys(raw, redis_namespace) - {f"{redis_namespace}:next_version"} == keys_before
    np.testing.assert_array_equal(store.get(ids).vectors, vectors)


# ---- connection errors and secrets ----------------------------------------------------------------


def test_unreachable_redis_is_reported_with_its_address(unused_loopback_port: int) -> None:
    url = f"redis://:s3cret-pw@127.0.0.1:{unused_loopback_port}/0"
    with pytest.raises(
        ServingError, match=rf"Redis KV store at 127\.0\.0\.1:{unused_loopback_port}: connect failed"
    ) as info:
        RedisKVStore(url)
    assert "s3cret-pw" not in str(info.value)


@pytest.fixture
def acl_user(raw: redis.Redis, redis_namespace: str) -> Iterator[str]:
    """Create a Redis ACL user ``kvtest`` whose password is ``right-pw``."""
    raw.acl_setuser("kvtest", enabled=True, passwords=["+right-pw"], keys=["*"], commands=["+@all"])
    yield "kvtest"
    raw.acl_deluser("kvtest")


def test_wrong_password_is_reported_without_the_password(
    redis_server: str, redis_namespace: str, acl_user: str
) -> None:
    url = redis_server.replace("redis://", f"redis://{acl_user}:s3cret-pw@")
    with pytest.raises(
        ServingError, match=r"at 127\.0\.0\.1:\d+: connect failed \(AuthenticationError"
    ) as info:
        RedisKVStore(url, namespace=redis_namespace)
    assert "s3cret-pw" not in str(info.value)


def test_password_from_the_url_is_used_and_never_shown(
    redis_server: str, redis_namespace: str, acl_user: str, items: tuple[np.ndarray, np.ndarray]
) -> None:
    url = redis_server.replace("redis://", f"redis://{acl_user}:right-pw@")
    store = RedisKVStore(url, namespace=redis_namespace)
    store.publish(*items, MODEL_HASH)
    assert store.get(items[0][:3]).found.all()
    assert "right-pw" not in repr(store)
    with pytest.raises(
        ServingError, match=r"1 of 1 requested ids are not in the KV store RedisKVStore"
    ) as info:
        store.get_strict([1])
    assert "right-pw" not in str(info.value)


def test_malformed_url_is_reported_without_its_contents() -> None:
    with pytest.raises(ServingError, match=r"not a valid Redis URL \(scheme 'redis'\)") as info:
        RedisKVStore("redis://:pw-in-url@127.0.0.1:6379/0?socket_timeout=notanumber")
    assert "pw-in-url" not in str(info.value)


def test_open_store_opens_a_redis_url(
    redis_server: str, store: RedisKVStore, redis_namespace: str, items: tuple[np.ndarray, np.ndarray]
) -> None:
    store.publish(*items, MODEL_HASH)
    opened = open_store(redis_server, expected_dim=6)
    assert isinstance(opened, RedisKVStore)
    with pytest.raises(ServingError, match="nothing is published yet"):
        opened.get([1])  # the default namespace is empty: this test published under its own
