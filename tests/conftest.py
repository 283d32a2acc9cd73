"""Shared fixtures: seeds, the MovieLens-100K path, small configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
ML100K = REPO.parent / "shared" / "data" / "ml-100k"


@pytest.fixture
def seed() -> int:
    return 1234


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    if not (ML100K / "u.data").is_file():
        pytest.fail(f"MovieLens-100K test data not found at {ML100K} (the project reads it from ../shared/data)")
    return ML100K


TINY = [
    "synthetic.rows=4000",
    "teacher.epochs=2",
    "student.epochs=2",
    "teacher.hidden=[32]",
    "student.hidden=[32]",
    "student.dim=16",
    "teacher.batch_size=512",
    "student.batch_size=512",
    "gbdt.rounds=20",
    "run.device=\"cpu\"",
]


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """Overrides that make a full run take a few seconds."""
    return list(TINY)


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch):
    """``read_only(directory)``: every write under ``directory`` fails as on a read-only mount (EROFS),
    which root's tests cannot get from file modes."""
    import errno
    import os

    real_open = os.open
    frozen: list[str] = []

    def guarded(path, flags, *args):
        if any(str(path).startswith(d) for d in frozen) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", guarded)
    return lambda directory: frozen.append(str(directory))


API_FAST = ["synthetic.rows=1500", "teacher.epochs=1", "student.epochs=1", "teacher.hidden=[16]",
            "student.hidden=[16]", "student.dim=8", "gbdt.rounds=15", "gbdt.early_stopping=5"]


@pytest.fixture(scope="session")
def api_overrides(tiny_overrides: list[str]) -> list[str]:
    """The tiny run made smaller still, for the library calls' tests (1,500 rows, one epoch)."""
    return [*tiny_overrides, *API_FAST]


@pytest.fixture(scope="session")
def api_cfg(api_overrides: list[str]):
    from coarserank.config import load_config

    return load_config(overrides=api_overrides)


@pytest.fixture(scope="session")
def api_dataset(api_cfg):
    """``cr.Dataset`` of :func:`api_cfg`'s synthetic log."""
    from coarserank.data.dataset_builder import Dataset

    return Dataset.from_config(api_cfg)
