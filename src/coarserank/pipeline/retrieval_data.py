"""What retrieval over the whole catalogue is measured on, built from a run's prepared splits.

- Catalogue: every item of the data (test items included, so a held-out positive is always
  retrievable), with its item-side fields encoded from its latest row.
- Evaluated users: test users with at least one test positive outside their known items, at most
  ``max_users`` of them (a seeded choice), each represented by its first test row (user, context and
  behaviour-sequence fields as of the start of its test period: nothing from the test period leaks
  into the query).
- Known items (excluded from the ranking): every item the user was exposed to in train or valid.
- Held-out positives: the user's test rows with label 1.
- Popularity: train positives per catalogue item (the popularity baseline ranks by it; the
  popularity skew of :mod:`coarserank.ranking_eval.retrieval` is measured against it).

:func:`tower_vectors` runs a model's two towers over these inputs (``[U, dim]`` or ``[U, K, dim]``
user vectors and ``[N, dim]`` item vectors); :func:`retrieval_table` evaluates every model given.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import polars as pl
import torch
from torch import nn

from coarserank.config import DataConfig
from coarserank.data.encode import Encoder
from coarserank.data.prepare import SPLITS
from coarserank.data.schema import STUDENT_ITEM_SIDES, STUDENT_USER_SIDES
from coarserank.errors import DataError
from coarserank.ranking_eval.retrieval import UserItems, evaluate_retrieval, popularity_item_vectors
from coarserank.serving.catalogue import build_catalogue, catalogue_ids

__all__ = ["RetrievalData", "retrieval_data", "tower_vectors", "retrieval_table", "POPULARITY"]

POPULARITY = "popularity"
_CHUNK = 16_384


@dataclass(frozen=True)
class RetrievalData:
    """Encoded queries and catalogue plus the item sets they are measured against (see module doc)."""

    item_ids: np.ndarray
    item_inputs: dict[str, np.ndarray]
    users: np.ndarray
    user_inputs: dict[str, np.ndarray]
    heldout: UserItems
    known: UserItems
    counts: np.ndarray


def _positions(ids: np.ndarray, catalogue: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(catalogue, ids)
    if pos.size and (pos.max() >= catalogue.size or not np.array_equal(catalogue[pos], ids)):
        raise DataError("an item of the splits is missing from the catalogue")  # pragma: no cover
    return pos


def retrieval_data(frames: dict[str, pl.DataFrame], frame: pl.DataFrame, encoder: Encoder, cfg: DataConfig, *,
                   max_users: int = 0, seed: int = 0, split: str = "test") -> RetrievalData:
    """Build :class:`RetrievalData` from the prepared ``frames`` per split and the whole ``frame``;
    ``split = "valid"`` measures on the valid split instead (known items: the train exposures).

    Raises
    ------
    DataError
        No user of ``split`` has a positive there outside the items it already knew.
    """
    catalogue = build_catalogue(frame, cfg)
    item_ids = catalogue_ids(catalogue, cfg)
    item_fields = encoder.schema_.select(STUDENT_ITEM_SIDES).names
    test = frames[split].with_row_index("_pos").sort("_time", "_row")
    positives = test.filter(pl.col("_label") == 1)
    users = np.unique(positives["_user"].to_numpy())
    if users.size == 0:
        raise DataError(f"the {split} split has no positive rows; retrieval metrics need held-out positives")
    earlier = SPLITS[:SPLITS.index(split)]
    before = pl.concat([frames[s].select("_user", cfg.item_col) for s in earlier])
    known_all = _pairs(before, users, item_ids, cfg)
    held_all = _pairs(positives, users, item_ids, cfg)
    usable = np.flatnonzero(held_all.minus(known_all).sizes > 0)
    if usable.size == 0:
        raise DataError(f"no {split} user has a {split} positive outside the items it was exposed to before; "
                        "retrieval over the catalogue has nothing to find")
    if 0 < max_users < usable.size:
        usable = np.sort(np.random.default_rng(seed).choice(usable, max_users, replace=False))
    users = users[usable]
    first = test.unique(subset="_user", keep="first", maintain_order=True)
    first = first.filter(pl.col("_user").is_in(users.tolist())).sort("_user")
    rows = first["_pos"].to_numpy()
    user_fields = encoder.schema_.select(STUDENT_USER_SIDES).names
    user_inputs = encoder.transform(frames[split][rows], fields=user_fields)
    train_pos = frames["train"].filter(pl.col("_label") == 1)[cfg.item_col].cast(pl.Int64).to_numpy()
    counts = np.bincount(_positions(train_pos, item_ids), minlength=item_ids.size).astype(np.float64)
    return RetrievalData(item_ids, encoder.transform(catalogue, fields=item_fields), users, user_inputs,
                         held_all.take(usable), known_all.take(usable), counts)


def _pairs(rows: pl.DataFrame, users: np.ndarray, item_ids: np.ndarray, cfg: DataConfig) -> UserItems:
    """(user, item) sets of ``rows`` for ``users`` (sorted unique ids), by catalogue position."""
    u = rows["_user"].to_numpy()
    keep = np.isin(u, users)
    items = rows[cfg.item_col].cast(pl.Int64).to_numpy()[keep]
    return UserItems.from_pairs(np.searchsorted(users, u[keep]), _positions(items, item_ids), users.size,
                                item_ids.size)


@torch.no_grad()
def _run(tower: nn.Module, inputs: dict[str, np.ndarray], device: torch.device) -> np.ndarray:
    n = len(next(iter(inputs.values())))
    parts = []
    for start in range(0, n, _CHUNK):
        batch = {k: torch.from_numpy(np.ascontiguousarray(v[start:start + _CHUNK])).to(device)
                 for k, v in inputs.items()}
        parts.append(tower(batch).float().cpu().numpy())
    return np.concatenate(parts)


def tower_vectors(model: nn.Module, data: RetrievalData, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """``(user vectors, item vectors)`` of a two-tower or multi-interest model over ``data``."""
    was_training = model.training
    model.eval()
    try:
        return _run(model.user_tower, data.user_inputs, device), _run(model.item_tower, data.item_inputs, device)
    finally:
        model.train(was_training)


def retrieval_table(data: RetrievalData, vectors: dict[str, tuple[np.ndarray, np.ndarray]],
                    ks: Sequence[int], primary_k: int = 100) -> dict[str, dict[str, Any]]:
    """``{model: metrics}`` for each ``(user vectors, item vectors)`` given, plus the popularity baseline."""
    every = {**vectors, POPULARITY: (np.ones((data.users.size, 1), dtype=np.float32),
                                     popularity_item_vectors(data.counts))}
    return {name: evaluate_retrieval(u, v, data.heldout, data.known, ks, data.counts).to_json(primary_k)
            for name, (u, v) in every.items()}
