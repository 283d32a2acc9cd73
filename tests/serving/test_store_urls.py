"""Store URLs as users type them: credentials never shown, mistypes and bad databases named,
password-protected and TLS servers (real redis-server processes on loopback)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from coarserank.errors import ServingError
from coarserank.serving.kv import open_store, redact_uri
from coarserank.serving.kv_redis import RedisKVStore

from .conftest import running_redis

SECRET = "s3cret-pw"


@pytest.mark.parametrize("uri", [
    f"redis://:{SECRET}@127.0.0.1:6379/0",
    f"redis://kv:{SECRET}@127.0.0.1:6379/0",
    f"rediss://kv:{SECRET}@127.0.0.1:6379/0?ssl_ca_certs=/ca.pem",
    f"redis//:{SECRET}@127.0.0.1:6379/0",
    f"redis:/:{SECRET}@127.0.0.1",
    f"redis://127.0.0.1:6379/0?password={SECRET}",
    f"the store redis://:{SECRET}@127.0.0.1/0 failed",
])
def test_redact_uri_hides_every_form_of_password(uri: str) -> None:
    shown = redact_uri(uri)
    assert SECRET not in shown
    assert "***" in shown


def test_redact_uri_leaves_paths_and_plain_urls_alone() -> None:
    for text in ("runs/demo/items.kv", "redis://127.0.0.1:6379/0", "unix:///tmp/redis.sock"):
        assert redact_uri(text) == text


@pytest.mark.parametrize("typed", [f"redis//:{SECRET}@127.0.0.1:6379/0", f"redis:/:{SECRET}@127.0.0.1:6379",
                                   f"rediss:{SECRET}@127.0.0.1"])
def test_a_mistyped_redis_url_is_named_without_its_password(typed: str) -> None:
    with pytest.raises(ServingError, match="is not a valid URL: a redis+ URL starts with redis+://") as info:
        open_store(typed)
    assert SECRET not in str(info.value)


def test_a_url_path_that_is_not_a_database_number_is_refused(redis_server: str) -> None:
    with pytest.raises(ServingError, match=r"the path 'abc' is not a database number"):
        RedisKVStore(redis_server.rsplit("/", 1)[0] + "/abc")


@pytest.fixture(scope="module")
def password_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    with running_redis(tmp_path_factory.mktemp("redis-pw"), "--requirepass", SECRET) as port:
        yield port


def test_a_missing_password_says_the_server_requires_one(password_server: int) -> None:
    with pytest.raises(ServingError, match="connect failed: the server requires a password; give it in the URL"):
        RedisKVStore(f"redis://127.0.0.1:{password_server}/0")


def test_a_wrong_password_is_refused_without_being_shown(password_server: int) -> None:
    with pytest.raises(ServingError, match="AuthenticationError") as info:
        RedisKVStore(f"redis://:wrong-{SECRET}@127.0.0.1:{password_server}/0")
    assert SECRET not in str(info.value)


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, Path]]:
    """redis-server answering TLS only, with a self-signed certificate for 127.0.0.1."""
    workdir = tmp_path_factory.mktemp("redis-tls")
    cert, key = workdir / "cert.pem", workdir / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    from .conftest import free_loopback_port

    port = free_loopback_port()

    def tls_ping(p: int) -> bool:
        client = redis.Redis.from_url(f"rediss://127.0.0.1:{p}/0?ssl_ca_certs={cert}", socket_connect_timeout=0.5)
        try:
            return bool(client.ping())
        except redis.exceptions.ConnectionError:
            return False
        finally:
            client.close()

    with running_redis(workdir, "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key),
                       "--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no", ping=tls_ping):
        yield port, cert


def test_a_rediss_url_publishes_and_reads_over_tls(tls_server: tuple[int, Path]) -> None:
    port, cert = tls_server
    store = open_store(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={cert}", namespace="tls")
    assert isinstance(store, RedisKVStore)
    vectors = np.arange(12, dtype=np.float32).reshape(4, 3)
    store.publish(np.arange(4), vectors, "model-tls")
    np.testing.assert_array_equal(store.get([2, 0]).vectors, vectors[[2, 0]])


def test_a_plain_redis_url_to_a_tls_port_is_a_one_line_error(tls_server: tuple[int, Path]) -> None:
    port, _ = tls_server
    with pytest.raises(ServingError, match=rf"Redis KV store at 127\.0\.0\.1:{port}: connect failed"):
        RedisKVStore(f"redis://127.0.0.1:{port}/0", socket_timeout=2.0)
