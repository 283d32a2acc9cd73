"""Fixtures for ranking_eval tests: seeds come from here, never from a literal in a test."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(params=[0, 1], ids=lambda s: f"seed{s}")
def seed(request: pytest.FixtureRequest) -> int:
    """Seed for random test data; each data-driven test runs under every seed."""
    return int(request.param)


@pytest.fixture
def rng(seed: int) -> np.random.Generator:
    """A fresh generator seeded by :func:`seed`."""
    return np.random.default_rng(seed)
