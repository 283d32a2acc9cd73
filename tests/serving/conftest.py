"""Fixtures for the serving tests: a real redis-server on loopback at a random free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

_STARTUP_SECONDS = 10.0


def free_loopback_port() -> int:
    """Return a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Start ``redis-server`` on 127.0.0.1 (no persistence) and yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.fail(
            "redis-server is not on PATH; the Redis KV tests need a real server. "
            "Install it (Debian/Ubuntu: `apt-get install -y redis-server`, as CI does) and rerun.",
            pytrace=False,
        )
    workdir: Path = tmp_path_factory.mktemp("redis")
    port = free_loopback_port()
    log = open(workdir / "redis.log", "wb")  # noqa: SIM115 - closed in teardown
    process = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(workdir),
            "--protected-mode",
            "yes",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=workdir,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis(host="127.0.0.1", port=port, socket_connect_timeout=0.5)
    try:
        deadline = time.monotonic() + _STARTUP_SECONDS
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"redis-server exited with code {process.returncode} on port {port}: "
                    f"{(workdir / 'redis.log').read_text(errors='replace')[-2000:]}",
                    pytrace=False,
                )
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                if time.monotonic() > deadline:
                    pytest.fail(
                        f"redis-server did not answer PING on 127.0.0.1:{port} within "
                        f"{_STARTUP_SECONDS:.0f} s",
                        pytrace=False,
                    )
                time.sleep(0.05)
        yield url
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest.fixture
def redis_namespace() -> str:
    """Give each test a key namespace of its own, so tests never see each other's versions."""
    return f"test:{uuid.uuid4().hex[:12]}"


@pytest.fixture
def unused_loopback_port() -> int:
    """Return a loopback port with no server behind it (for the unreachable-Redis tests)."""
    return free_loopback_port()
