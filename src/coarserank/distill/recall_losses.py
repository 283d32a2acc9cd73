"""The recall objective: sampled softmax over in-batch items with the logQ correction.

For each positive row ``i`` of a batch (an exposure with label 1) the candidates are every item of
the batch (the other rows' items are its negatives) plus, optionally, ``M`` items drawn uniformly
from the catalogue (mixed negative sampling: in-batch negatives follow the exposure distribution and
under-sample the tail, uniform ones cover it; Yang et al., WWW 2020, after Yi et al., RecSys 2019).
The logit of candidate ``j`` is

    ``l_ij = <u_i, v_j> / tau - log Q_j``

with ``u``, ``v`` the towers' L2-normalised vectors (so ``<u, v>`` is the cosine), ``tau`` the
temperature, and ``Q_j`` the expected number of times item ``j`` is among a row's candidates:
``Q_j = B p_j + M / N`` for batch size ``B``, item frequency ``p_j`` (its share of the training
exposures, or the streaming estimate of Yi et al.'s Algorithm 2, :class:`StreamingFrequency`) and
catalogue size ``N``. Without the correction, popular items are negatives far more often than under
a full softmax and the model learns to push them down (Yi et al., 2019, section 3.3). The loss is
the cross-entropy of each positive row against its own column.

Masked candidates (never counted as a row's negatives): every *other* column holding the row's own
item (the same item repeated in the batch), and, when ``users`` are given, other positive rows of
the same user (items the user engaged with are not negatives for that user).

An optional distillation term mixes in the teacher's softmax over the same candidates:
``(1 - alpha) * CE + alpha * KL(softmax(z / T) || softmax(<u, v> / tau))`` over the unmasked
candidates, with ``z`` the teacher's logits for (row ``i``, candidate ``j``) pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from coarserank.errors import ConfigError, DataError

__all__ = ["Candidates", "candidate_log_q", "in_batch_mask", "sampled_softmax_loss", "StreamingFrequency",
           "frequencies_from_counts"]

_MASKED = float("-inf")


@dataclass
class Candidates:
    """The items a positive row is scored against: their vectors ``[C, dim]``, item ids ``[C]`` and
    ``log Q`` ``[C]`` (``None``: no correction)."""

    vectors: torch.Tensor
    ids: torch.Tensor
    log_q: torch.Tensor | None = None


def frequencies_from_counts(counts: np.ndarray) -> np.ndarray:
    """Per-item sampling frequency ``p_j = count_j / sum(counts)`` (float64)."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        raise DataError("item counts sum to zero: no training exposure to estimate item frequencies from")
    return c / total


def candidate_log_q(in_batch: torch.Tensor, extra: int = 0, n_items: int = 1) -> torch.Tensor:
    """``log(E_j + M / N)``: log of the expected number of times each candidate item appears among a
    row's candidates, given ``in_batch`` = its expected count among the batch's items (``B p_j`` from
    training frequencies, or :meth:`StreamingFrequency.probability`) and ``M`` uniform draws from
    ``N`` catalogue items."""
    expected = in_batch.to(torch.float64) + (extra / max(n_items, 1))
    return torch.log(expected.clamp(min=1e-30)).to(torch.float32)


def in_batch_mask(row_items: torch.Tensor, rows: torch.Tensor, cand_items: torch.Tensor,
                  users: torch.Tensor | None = None, positive: torch.Tensor | None = None) -> torch.Tensor:
    """``[P, C]`` True where candidate ``j`` must not be a negative of query row ``rows[p]``.

    The first ``B`` candidates are the batch rows themselves (column ``rows[p]`` is the row's own
    positive and stays unmasked); any other candidate with the row's item id is masked, and with
    ``users`` and ``positive`` (``[B]``) so are the same user's other positive rows.
    """
    own = row_items[rows]
    mask = cand_items[None, :] == own[:, None]
    if users is not None and positive is not None:
        batch = users.shape[0]
        same_user = (users[None, :] == users[rows][:, None]) & positive[None, :]
        mask[:, :batch] |= same_user
    mask[torch.arange(rows.shape[0], device=rows.device), rows] = False
    return mask


def sampled_softmax_loss(user: torch.Tensor, item: torch.Tensor, item_ids: torch.Tensor, positive: torch.Tensor,
                         *, temperature: float, log_q: torch.Tensor | None = None,
                         extra: Candidates | None = None, users: torch.Tensor | None = None,
                         teacher: torch.Tensor | None = None, teacher_rows: torch.Tensor | None = None,
                         alpha: float = 0.0, teacher_temperature: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy of every positive row against its own item among all candidates.

    ``user`` ``[B, dim]``: each row's user vector (for several interests: the one attended to the
    row's item); ``item`` ``[B, dim]``, ``item_ids`` ``[B]``, ``log_q`` ``[B]`` (or ``None``) describe
    the in-batch candidates; ``extra`` adds uniformly sampled ones; ``teacher`` ``[R, C]`` holds the
    teacher's logits against the same ``C`` candidates for the positive rows ``teacher_rows`` (``R``
    positions among the ``P`` positive rows, in row order; ``None``: all ``P``).
    A batch without positive rows gives a zero loss that still backpropagates.
    """
    rows = torch.nonzero(positive.bool(), as_tuple=True)[0]
    if rows.numel() == 0:
        return (user.sum() + item.sum()) * 0.0
    vectors, ids = item, item_ids
    logq = log_q
    if extra is not None:
        vectors = torch.cat([item, extra.vectors])
        ids = torch.cat([item_ids, extra.ids])
        if logq is not None:
            if extra.log_q is None:
                raise DataError("extra candidates need log_q when the in-batch candidates have it")
            logq = torch.cat([logq, extra.log_q])
    cosine = user[rows] @ vectors.T  # [P, C]
    mask = in_batch_mask(item_ids, rows, ids, users, positive.bool())
    logits = cosine / temperature
    if logq is not None:
        logits = logits - logq[None, :]
    ce = F.cross_entropy(logits.masked_fill(mask, _MASKED), rows)
    if teacher is None or alpha == 0.0:
        return ce
    if teacher_rows is not None:
        cosine, mask = cosine[teacher_rows], mask[teacher_rows]
    if teacher.shape != cosine.shape:
        raise DataError(f"teacher logits must be [{cosine.shape[0]}, {cosine.shape[1]}] (positive rows x "
                        f"candidates), got {list(teacher.shape)}")
    target = F.softmax((teacher / teacher_temperature).masked_fill(mask, _MASKED), dim=1)
    log_student = F.log_softmax((cosine / temperature).masked_fill(mask, _MASKED), dim=1).masked_fill(mask, 0.0)
    kl = (target * (torch.log(target.clamp(min=1e-30)) - log_student)).sum(dim=1).mean()
    return (1.0 - alpha) * ce + alpha * kl


class StreamingFrequency(nn.Module):
    """Streaming estimate of how often each item is sampled (Yi et al., 2019, Algorithm 2).

    Per hash bucket ``h`` it keeps ``A[h]``, the last step the bucket's item was seen, and ``B[h]``,
    the estimated number of steps between two sightings: ``B <- (1 - lr) B + lr (t - A)``. The
    probability that the item is in a step's batch is ``1 / B`` (``B`` is clamped to >= 1). Item ids
    are dense codes here, so ``buckets >= vocabulary size`` means no collisions.
    """

    def __init__(self, buckets: int, lr: float = 0.05) -> None:
        super().__init__()
        if buckets < 1 or not 0.0 < lr <= 1.0:
            raise ConfigError(f"buckets must be >= 1 and lr in (0, 1], got {buckets}, {lr}")
        self.lr = lr
        self.register_buffer("last", torch.zeros(buckets, dtype=torch.float64))
        self.register_buffer("interval", torch.zeros(buckets, dtype=torch.float64))
        self.register_buffer("step", torch.zeros((), dtype=torch.float64))

    def update(self, ids: torch.Tensor) -> None:
        """Record one step's batch of item ids (repeats in the batch count once)."""
        self.step += 1
        h = torch.unique(ids.to(self.last.device)) % self.last.numel()
        self.interval[h] = (1 - self.lr) * self.interval[h] + self.lr * (self.step - self.last[h])
        self.last[h] = self.step

    def probability(self, ids: torch.Tensor) -> torch.Tensor:
        """``1 / B[h(id)]``: the estimated probability that the item is in a step's batch."""
        h = ids.to(self.last.device) % self.last.numel()
        return 1.0 / self.interval[h].clamp(min=1.0)
