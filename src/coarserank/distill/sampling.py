"""Candidate samplers for entire-space distillation: items a request was not shown.

For every exposure in a batch the sampler draws ``m`` catalogue items:

``uniform``
    every catalogue item equally likely;
``popularity``
    proportional to the item's train exposures + 1 (add-one, so never-shown items can be drawn),
    the distribution recall hands to a coarse ranker;
``in_batch``
    the items of other exposures of the same batch (popularity-weighted for free).

A drawn item that the same request (group) was shown in training is redrawn (``rounds`` times),
and any still left is marked invalid, so a sampled pair never duplicates one of the request's
exposures. Draws come from an explicit :class:`torch.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from coarserank.errors import ConfigError

__all__ = ["SAMPLERS", "SampledPairs", "CandidateSampler"]

SamplerKind = Literal["uniform", "popularity", "in_batch"]
SAMPLERS: tuple[str, ...] = ("uniform", "popularity", "in_batch")


@dataclass(frozen=True)
class SampledPairs:
    """``m`` draws per batch row, row-major: pair ``p`` belongs to batch row ``row[p] = p // m``."""

    row: torch.Tensor  # [B * m] int64
    item: torch.Tensor  # [B * m] int64 catalogue index
    valid: torch.Tensor  # [B * m] bool: False where every redraw hit one of the request's exposures
    m: int


class CandidateSampler:
    """Draws unexposed catalogue items for each row of a batch.

    Parameters
    ----------
    kind : {"uniform", "popularity", "in_batch"}
    m : int
        Items per exposure.
    train_rows : np.ndarray
        Train exposures per catalogue item (popularity weights and catalogue size).
    exposed_group, exposed_item : np.ndarray
        The (group code, catalogue index) of every train exposure: pairs that are never drawn.
    rounds : int
        Redraws of an item that hit an exposure of the same request.
    """

    def __init__(self, kind: SamplerKind, m: int, train_rows: np.ndarray, exposed_group: np.ndarray,
                 exposed_item: np.ndarray, rounds: int = 8) -> None:
        if kind not in SAMPLERS:
            raise ConfigError(f"distill.sampler must be one of {', '.join(SAMPLERS)}, got {kind!r}")
        self.kind = kind
        self.m = m
        self.rounds = rounds
        self.n_items = len(train_rows)
        self.weights = torch.as_tensor(np.asarray(train_rows, dtype=np.float64) + 1.0)
        keys = np.unique(np.asarray(exposed_group, dtype=np.int64) * self.n_items + np.asarray(exposed_item))
        self.exposed = torch.from_numpy(keys)

    def _is_exposed(self, group: torch.Tensor, item: torch.Tensor) -> torch.Tensor:
        if not len(self.exposed):
            return torch.zeros_like(item, dtype=torch.bool)
        key = group * self.n_items + item
        at = torch.searchsorted(self.exposed, key).clamp(max=len(self.exposed) - 1)
        return self.exposed[at] == key

    def _propose(self, own_item: torch.Tensor, row: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        n = len(row)
        if self.kind == "uniform":
            return torch.randint(self.n_items, (n,), generator=generator)
        if self.kind == "popularity":
            return torch.multinomial(self.weights, n, replacement=True, generator=generator)
        b = len(own_item)
        if b < 2:
            return own_item[row]  # a batch of one has no other rows: marked invalid by the exposure check
        other = (row + torch.randint(1, b, (n,), generator=generator)) % b
        return own_item[other]

    def draw(self, group: torch.Tensor, own_item: torch.Tensor, generator: torch.Generator) -> SampledPairs:
        """``m`` items for each batch row; ``group`` and ``own_item`` are the rows' group code and item index."""
        group, own_item = group.cpu(), own_item.cpu()
        row = torch.arange(len(group)).repeat_interleave(self.m)
        item = self._propose(own_item, row, generator)
        clash = self._is_exposed(group[row], item) | (item == own_item[row])
        for _ in range(self.rounds):
            if not bool(clash.any()):
                break
            at = clash.nonzero().squeeze(1)
            item[at] = self._propose(own_item, row[at], generator)
            clash[at] = self._is_exposed(group[row[at]], item[at]) | (item[at] == own_item[row[at]])
        return SampledPairs(row, item, ~clash, self.m)
