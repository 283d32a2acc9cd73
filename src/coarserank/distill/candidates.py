"""Production-like candidate sets in encoded space, and teacher-student agreement on them.

A coarse ranker orders what recall returns, not only what the user was shown. For up to ``users``
users of a split, a candidate set is the user's exposures in that split plus ``sampled`` catalogue
items drawn without replacement (popularity or uniform, the user's exposures in the split excluded;
:func:`~coarserank.data.catalogue.sample_items`). A sampled candidate takes the context of the user's
first row in the split; its teacher inputs come from :class:`~coarserank.data.pairs.PairEncoder`.
Agreement (Recall@k-in-n, Kendall's tau) is then computed per set by
:mod:`coarserank.ranking_eval.consistency`; validation sets choose distillation settings, test sets
report them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import polars as pl
import torch
from torch import nn

from coarserank.data.catalogue import sample_items, sampling_weights
from coarserank.data.dataset import EncodedSplit
from coarserank.data.pairs import ROW_ITEM, PairEncoder
from coarserank.distill.tensors import make_table
from coarserank.distill.train import predict
from coarserank.ranking_eval.consistency import kendall_tau, recall_k_in_n

__all__ = ["CandidateSets", "candidate_sets", "score_candidates", "agreement"]


@dataclass(frozen=True)
class CandidateSets:
    """Candidates of every set, exposures first: set id, the split row whose user and context they
    take, the catalogue item, whether the user was shown it (and its label, -1 when not)."""

    group: np.ndarray
    row: np.ndarray
    item: np.ndarray
    exposed: np.ndarray
    label: np.ndarray

    def __len__(self) -> int:
        return len(self.group)


def candidate_sets(split: EncodedSplit, pairs: PairEncoder, *, users: int = 300, sampled: int = 1000,
                   sampling: Literal["uniform", "popularity"] = "popularity", seed: int = 0) -> CandidateSets:
    """Sets for up to ``users`` users of ``split`` (drawn with ``seed`` and the split's name, so the
    valid and test sets of one seed are different draws); see the module doc."""
    user = split.frame["_user"]
    distinct = user.unique().sort()
    stream = int.from_bytes(split.name.encode()[:8].ljust(8, b"\0"), "little")  # valid and test sets differ
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xCA4D, stream]))
    picked = distinct.gather(np.sort(rng.choice(len(distinct), min(users, len(distinct)), replace=False)))
    number = pl.DataFrame({"_user": picked, "_u": np.arange(len(picked))})
    rows = (split.frame.select("_user", "_time", "_row").with_row_index("_i")
            .join(number, on="_user").sort("_u", "_time", "_row"))
    u, at = rows["_u"].to_numpy(), rows["_i"].to_numpy().astype(np.int64)
    own = split.inputs[ROW_ITEM][at]
    first = at[np.r_[0, np.flatnonzero(np.diff(u)) + 1]] if len(u) else at
    weights = sampling_weights(pairs.item_train_rows_, sampling)
    keep = own >= 0
    su, si, _ = sample_items(weights, len(picked), u[keep], own[keep], sampled, int(rng.integers(1 << 31)))
    label = split.label[at].astype(np.int64)
    return CandidateSets(np.r_[u, su], np.r_[at, first[su]], np.r_[own, si],
                         np.r_[np.ones(len(u), bool), np.zeros(len(su), bool)],
                         np.r_[label, np.full(len(su), -1, dtype=np.int64)])


@torch.no_grad()
def score_candidates(model: nn.Module, split: EncodedSplit, pairs: PairEncoder, sets: CandidateSets,
                     device: torch.device | str = "cpu", chunk: int = 1 << 16) -> np.ndarray:
    """Logits of ``model`` (teacher or student: it reads the fields it needs) for every candidate."""
    out = []
    for lo in range(0, len(sets), chunk):
        idx = slice(lo, lo + chunk)
        rows = {k: v[sets.row[idx]] for k, v in split.inputs.items()}
        encoded = pairs.encode(rows, np.where(sets.exposed[idx], rows[ROW_ITEM], sets.item[idx]))
        exposed = sets.exposed[idx]
        for name in encoded:  # an exposure keeps its own encoding (its item may have changed since)
            mask = exposed.reshape(-1, *([1] * (encoded[name].ndim - 1)))
            encoded[name] = np.where(mask, rows[name], encoded[name])
        zeros = np.zeros(len(exposed), dtype=np.int64)
        out.append(predict(model, make_table(encoded, zeros, zeros, dense_groups=False), torch.device(device)))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.float32)


def agreement(teacher: np.ndarray, student: np.ndarray, sets: CandidateSets, *, k: int = 10,
              n: int = 100) -> dict[str, float]:
    """Recall@k-in-n (the teacher's top-k kept in the student's top-n) and Kendall's tau per set."""
    return {f"recall@{k}_in_{n}": recall_k_in_n(teacher, student, sets.group, k, n).value,
            "kendall_tau": kendall_tau(teacher, student, sets.group).value}
