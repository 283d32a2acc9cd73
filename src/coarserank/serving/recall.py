"""Recall at serving time with the run's recall model: ONNX user tower -> K interest vectors ->
one Faiss search per interest, merged by score (``distill recall``).

A run trained with ``recall.enabled`` carries ``recall_user_tower.onnx`` (raw user and context
features, behaviour sequence included, in; ``[N, K, dim]`` out), ``recall_items.kv``,
``recall_items.faiss`` and ``recall.json`` (written by :mod:`coarserank.pipeline.recall_export`). An
item's score for a user is the maximum over the user's interests of ``<u_k, v>`` (a cosine of the
L2-normalised tower outputs, plus the match-cross terms when ``recall.match_channel`` appended them). :meth:`Recaller.recall` returns the top-k catalogue items by that score;
:meth:`Recaller.rank` scores given candidates by it (coarse ranking with several interests).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from coarserank.errors import ArtifactError, ServingError
from coarserank.serving.faiss_index import ItemIndex, search_interests, sidecar_path
from coarserank.serving.kv import KVStore, as_query_ids, open_store
from coarserank.serving.ranker import RankResult, UserFeeds, onnx_session, top_positions
from coarserank.serving.run_files import RunFiles

__all__ = ["RECALL_META", "RECALL_STAGE", "Recaller", "has_recall_model"]

RECALL_META: Final[str] = "recall.json"
RECALL_STAGE: Final[str] = "recall"


def has_recall_model(run_dir: Path | str) -> bool:
    """Whether the run directory holds a finished recall model's serving files."""
    try:
        files = RunFiles(run_dir, require=RECALL_STAGE)
    except ArtifactError:
        return False
    return files.manifest.file_hash(RECALL_META) is not None


class Recaller:
    """Top-k items for one user from the recall model's ONNX user tower and Faiss index.

    Examples
    --------
    >>> recaller = Recaller.from_run("runs/demo")                    # doctest: +SKIP
    >>> recaller.recall({"user_id": 12, "hist_item": "3|17"}, 100)    # doctest: +SKIP
    """

    def __init__(self, session: Any, feeds: UserFeeds, index: ItemIndex, store: KVStore | None = None) -> None:
        self.session = session
        self.feeds = feeds
        self.index = index
        self.store = store
        self._inputs = {i.name for i in session.get_inputs()}
        self._output = [session.get_outputs()[0].name]

    @classmethod
    def from_run(cls, run_dir: Path | str, *, threads: int = 1) -> Recaller:
        """Load ``recall.json``, ``recall_user_tower.onnx``, ``recall_items.faiss`` and ``recall_items.kv``
        of a finished run, each verified against the manifest.

        Raises
        ------
        ArtifactError
            The run has no recall model (``recall.enabled`` was off) or a file is missing or modified.
        """
        try:
            files = RunFiles(run_dir, require=RECALL_STAGE)
        except ArtifactError as exc:
            raise ArtifactError(f"{exc}; a run has a recall model when trained with recall.enabled = true") from None
        with files.reading():  # under the publish lock: files and manifest as one step
            meta = files.json(RECALL_META)
            session = onnx_session(files.verified(meta["files"]["user_tower"]), threads=threads)
            rel = meta["files"]["index"]
            index = ItemIndex.load(files.verified(rel), files.verified(sidecar_path(rel).as_posix()))
            store = open_store(files.verified(meta["files"]["kv"]), expected_dim=int(meta["dim"]))
            encoder = files.encoder()
        if store.model_hash != meta["model_hash"]:
            raise ArtifactError(f"{meta['files']['kv']} holds vectors of model {store.model_hash!r}, the recall "
                                f"model is {meta['model_hash']!r}")
        return cls(session, UserFeeds(encoder), index, store)

    def user_vectors(self, user: dict[str, Any]) -> np.ndarray:
        """The user's interest vectors ``float32 [K, dim]`` (``K = 1`` for a one-vector tower)."""
        feeds = {k: v for k, v in self.feeds(user).items() if k in self._inputs}
        out = np.asarray(self.session.run(self._output, feeds)[0][0], dtype=np.float32)
        return out[None, :] if out.ndim == 1 else out

    def recall(self, user: dict[str, Any], k: int = 100) -> RankResult:
        """Top-``k`` catalogue items by the maximum over the user's interests (one search per interest)."""
        if k < 1:
            raise ServingError(f"k must be >= 1, got {k}")
        scores, ids = search_interests(self.index, self.user_vectors(user)[None], k)
        keep = ids[0] != -1
        return RankResult(ids[0][keep], scores[0][keep].astype(np.float32), 0)

    def rank(self, user: dict[str, Any], candidate_ids: npt.ArrayLike, top_n: int = 100) -> RankResult:
        """Score candidates by the maximum over interests of ``<u_k, v>`` with the recall KV vectors;
        ids the store does not know are dropped and counted."""
        if self.store is None:
            raise ServingError("this recaller has no KV store of item vectors to rank candidates with")
        if top_n < 1:
            raise ServingError(f"top-n must be >= 1, got {top_n}")
        ids = as_query_ids(candidate_ids)
        found = self.store.get(ids)
        kept = ids if found.missing.size == 0 else ids[found.found]
        scores = (found.vectors @ self.user_vectors(user).T).max(axis=1)
        best = top_positions(scores, top_n)
        return RankResult(kept[best], scores[best].astype(np.float32), int(found.missing.size))
