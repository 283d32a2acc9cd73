"""A server that reloads a run while `distill index` republishes its index sees the old pair
(index + manifest) or the new pair, never a mix."""

from __future__ import annotations

import shutil
import threading
from pathlib import Path

import pytest

from coarserank.errors import CoarseRankError
from coarserank.pipeline.export_stage import rebuild_index
from coarserank.pipeline.rundir import RunDir
from coarserank.serving.ranker import CoarseRanker

from .test_ranker import USER, served_run_dir


@pytest.fixture
def copied(tmp_path_factory: pytest.TempPathFactory, tiny_overrides: list[str], tmp_path: Path) -> Path:
    return Path(shutil.copytree(served_run_dir(tmp_path_factory, tiny_overrides), tmp_path / "run"))


def test_reloads_during_index_rebuilds_never_see_a_mixed_pair(copied: Path) -> None:
    errors: list[BaseException] = []
    failures: list[str] = []

    def rebuild() -> None:
        try:
            with RunDir.writer(copied, require=("export",)):
                for kind in ("hnsw", "flat", "ivf", "flat", "hnsw", "flat"):
                    rebuild_index(copied, kind)
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    writer = threading.Thread(target=rebuild)
    writer.start()
    loads = 0
    while writer.is_alive() or loads == 0:
        try:
            ranker = CoarseRanker.from_run(copied)
            ranker.recall(USER, 5)  # loads items.faiss + its sidecar, verified against the manifest
        except CoarseRankError as exc:
            failures.append(str(exc))
        loads += 1
    writer.join()
    assert not errors
    assert failures == [], f"{len(failures)} of {loads} loads failed, e.g. {failures[0]}"


def test_a_long_lived_ranker_loads_the_index_republished_after_it_started(copied: Path) -> None:
    ranker = CoarseRanker.from_run(copied)
    rebuild_index(copied, "hnsw")
    assert ranker.index().kind == "hnsw"
