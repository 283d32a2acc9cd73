"""Fixtures for the serving tests: a real redis-server on loopback at a random free port."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

_STARTUP_SECONDS = 10.0


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def running_redis(workdir: Path, *extra: str, ping: Callable[[int], bool] | None = None) -> Iterator[int]:
    """Run ``redis-server`` on 127.0.0.1 (no persistence, ``extra`` arguments) and yield its port.
    ``ping(port)`` says whether it answers (default: a plain PING on that port)."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH; the Redis KV tests need a real server. "
            "Install it (Debian/Ubuntu: `apt-get install -y redis-server`, as CI does) and rerun.",
            pytrace=False,
        )
    port = free_loopback_port()
    args = ["--port", str(port), *extra] if "--tls-port" not in extra else ["--port", "0", *extra]
    if "--tls-port" in extra:
        port = int(extra[extra.index("--tls-port") + 1])
    log = open(workdir / "redis.log", "wb")  # noqa: SIM115 - closed in teardown
    process = subprocess.Popen(
        [binary, *args, "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir),
         "--protected-mode", "yes"],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    answers = ping or _plain_ping
    try:
        deadline = time.monotonic() + _STARTUP_SECONDS
        while not answers(port):
            if process.poll() is not None:
                pytest.fail(
                    f"redis-server exited with code {process.returncode} on port {port}: "
                    f"{(workdir / 'redis.log').read_text(errors='replace')[-2000:]}",
                    pytrace=False,
                )
            if time.monotonic() > deadline:
                pytest.fail(f"redis-server did not answer on 127.0.0.1:{port} within {_STARTUP_SECONDS:.0f} s",
                            pytrace=False)
            time.sleep(0.05)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def _plain_ping(port: int) -> bool:
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        return bool(client.ping())
    except (redis.exceptions.AuthenticationError, redis.exceptions.ResponseError):
        return True  # a server that wants a password is up
    except redis.exceptions.ConnectionError:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``redis-server`` on 127.0.0.1 (no persistence) and yield its URL."""
    with running_redis(tmp_path_factory.mktemp("redis")) as port:
        yield f"redis://127.0.0.1:{port}/0"


@pytest.fixture
def redis_namespace() -> str:
    """Give each test a key namespace of its own, so tests never see each other's versions."""
    return f"test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unused_loopback_port() -> int:
    """Return a loopback port with no server behind it (for the unreachable-Redis tests)."""
    return free_loopback_port()
