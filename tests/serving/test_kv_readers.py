"""The KV file is readable outside Python: the Node and Java readers must match Python bit for bit.

Nothing here is skipped: without ``node`` or a JDK (``javac`` and ``java``) the tests fail and say
what to install.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from coarserank.serving.kv_file import write_kv_file

HERE = Path(__file__).parent
JS_CHECK = HERE / "js" / "kv_reader_check.js"
JAVA_SOURCE = HERE / "java" / "KvReader.java"
MODEL_HASH = "c0ffee" * 10 + "abcd"
RUN_ID = "run-" + "7e" * 16
MISSING_IDS = [3, -(2**62), 2**53 + 2]
TIMEOUT = 120


def _require(tool: str, install_hint: str) -> str:
    path = shutil.which(tool)
    if path is None:
        pytest.fail(
            f"`{tool}` is not on PATH; the cross-language KV reader tests need it. {install_hint}",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="module")
def node() -> str:
    return _require("node", "Install Node.js >= 18 (Debian/Ubuntu: `apt-get install -y nodejs`).")


@pytest.fixture(scope="module")
def java_classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    hint = "Install a JDK >= 17 (Debian/Ubuntu: `apt-get install -y openjdk-17-jdk-headless`)."
    javac = _require("javac", hint)
    _require("java", hint)
    out = tmp_path_factory.mktemp("java")
    done = subprocess.run(
        [javac, "-Xlint:all", "-Werror", "-d", str(out), str(JAVA_SOURCE)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, f"javac failed:\n{done.stderr}"
    return out


def _items() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(99)
    ids = np.array(
        [np.iinfo(np.int64).min, np.iinfo(np.int64).max, -1, 0, 2**53 + 1, -(2**60) + 7], dtype=np.int64
    )
    ids = np.concatenate([ids, rng.choice(2**40, size=41, replace=False).astype(np.int64) + 10])
    vectors = rng.normal(scale=3.0, size=(ids.size, 7)).astype(np.float32)
    vectors[0] = [0.0, -0.0, 1e-6, -1e-7, 65504.0, -65504.0, 6.1e-5]  # zeros, float16 subnormals, extremes
    return ids, vectors


def _golden(ids: np.ndarray, vectors: np.ndarray, dtype: str, run_id: str) -> dict[str, object]:
    order = np.argsort(ids)
    stored = vectors[order].astype(dtype).astype(np.float32)
    return {
        "dim": int(vectors.shape[1]),
        "count": int(ids.size),
        "dtype": dtype,
        "model_hash": MODEL_HASH,
        "run_id": run_id,
        "ids": [str(i) for i in ids[order].tolist()],
        "vectors": stored.astype(np.float64).tolist(),  # float32 values, exact as JSON numbers
        "missing": [str(i) for i in MISSING_IDS],
    }


@pytest.fixture(params=[("float32", ""), ("float16", ""), ("float32", RUN_ID), ("float16", RUN_ID)],
                ids=["float32-v1", "float16-v1", "float32-v2", "float16-v2"])
def kv_file(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, dict[str, object], str]:
    dtype, run_id = request.param
    ids, vectors = _items()
    path = write_kv_file(tmp_path / "items.kv", ids, vectors, MODEL_HASH, dtype=dtype, run_id=run_id)
    golden = _golden(ids, vectors, dtype, run_id)
    return path, golden, dtype


def test_node_reader_matches_python(
    node: str, kv_file: tuple[Path, dict[str, object], str], tmp_path: Path
) -> None:
    path, golden, dtype = kv_file
    golden_path = tmp_path / "golden.json"
    golden_path.write_text(json.dumps(golden))
    done = subprocess.run(
        [node, str(JS_CHECK), str(path), str(golden_path)], capture_output=True, text=True, timeout=TIMEOUT
    )
    assert done.returncode == 0, f"node reader disagrees with Python:\n{done.stdout}{done.stderr}"
    assert done.stdout.startswith(f"OK 47 items, dim 7, {dtype}")


def test_java_reader_matches_python(java_classes: Path, kv_file: tuple[Path, dict[str, object], str]) -> None:
    path, golden, dtype = kv_file
    java = _require("java", "Install a JDK >= 17.")
    wanted = [*golden["ids"], *golden["missing"]]  # type: ignore[misc]
    done = subprocess.run(
        [java, "-cp", str(java_classes), "KvReader", str(path), *wanted],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, f"java reader failed:\n{done.stderr}"
    header, *rows = done.stdout.splitlines()
    assert header == f"dim=7 count=47 dtype={dtype} model_hash={MODEL_HASH} run_id={golden['run_id']}"
    expected_bits = np.array(golden["vectors"], dtype=np.float32).view(np.uint32)
    for i, (line, want_id) in enumerate(zip(rows, wanted, strict=True)):
        got_id, *fields = line.split()
        assert got_id == want_id
        if i < len(expected_bits):
            np.testing.assert_array_equal(
                np.array([int(f, 16) for f in fields], dtype=np.uint32), expected_bits[i]
            )
        else:
            assert fields == ["missing"]


def test_node_reader_rejects_a_wrong_magic(node: str, kv_file: tuple[Path, dict[str, object], str]) -> None:
    path = kv_file[0]
    with open(path, "r+b") as f:
        f.write(b"XXXX")
    done = subprocess.run(
        [node, str(JS_CHECK), str(path), "--expect-error", 'wrong magic "XXXX"'],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 0, done.stderr


def test_java_reader_rejects_a_corrupt_payload(
    java_classes: Path, kv_file: tuple[Path, dict[str, object], str]
) -> None:
    path = kv_file[0]
    with open(path, "r+b") as f:
        f.seek(-1, 2)
        last = f.read(1)
        f.seek(-1, 2)
        f.write(bytes([last[0] ^ 0xFF]))
    java = _require("java", "Install a JDK >= 17.")
    done = subprocess.run(
        [java, "-cp", str(java_classes), "KvReader", str(path)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert done.returncode == 2
    assert "data checksum mismatch" in done.stderr
