"""Distillation losses: ``(1 - alpha) * hard + alpha * T^2 * soft``.

- hard: binary cross-entropy of the student logit ``s`` against the 0/1 label.
- pointwise soft: ``BCE(sigmoid(s / T), sigmoid(z / T))`` with the teacher logit ``z``.
- listwise soft: within each group (user or request) of the batch, ``KL(p_teacher || p_student)``
  with ``p = softmax(logits / T)`` over the group's rows; averaged over groups with >= 2 rows.

The ``T^2`` factor keeps the soft gradients' scale independent of ``T`` (Hinton et al., 2015).

Entire-space terms (items the request was not shown, scored by the teacher; no hard label exists):

- sampled pointwise: the pointwise soft loss over the valid sampled pairs.
- list KL: each exposure and its ``m`` sampled items form a list ``[B, 1 + m]``;
  ``KL(softmax(z / T) || softmax(s / T))`` per list over its valid entries, averaged over lists.
- ranking (Tang & Wang, KDD 2018, pairwise form): in each list, every item of the teacher's top
  ``k`` should score above every item the teacher ranks below it: ``softplus(s_j - s_i)``
  weighted by ``1 / log2(2 + rank_i)``, averaged over the weighted pairs.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["hard_loss", "pointwise_soft_loss", "listwise_soft_loss", "distill_loss", "sampled_pointwise_loss",
           "list_kl_loss", "ranking_loss"]


def hard_loss(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(s, y)


def pointwise_soft_loss(s: torch.Tensor, z: torch.Tensor, temperature: float) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(s / temperature, torch.sigmoid(z / temperature))


def _group_log_softmax(x: torch.Tensor, g: torch.Tensor, n_groups: int) -> torch.Tensor:
    gmax = torch.full((n_groups,), float("-inf"), dtype=x.dtype, device=x.device)
    gmax = gmax.scatter_reduce(0, g, x.detach(), reduce="amax", include_self=True)
    shifted = x - gmax[g]
    sums = torch.zeros(n_groups, dtype=x.dtype, device=x.device).index_add(0, g, shifted.exp())
    return shifted - sums.log()[g]


def listwise_soft_loss(s: torch.Tensor, z: torch.Tensor, groups: torch.Tensor, temperature: float) -> torch.Tensor:
    _, g, counts = torch.unique(groups, return_inverse=True, return_counts=True)
    n = counts.numel()
    log_ps = _group_log_softmax(s / temperature, g, n)
    log_pt = _group_log_softmax(z / temperature, g, n)
    kl_rows = log_pt.exp() * (log_pt - log_ps)
    kl = torch.zeros(n, dtype=s.dtype, device=s.device).index_add(0, g, kl_rows)
    used = counts >= 2
    if not bool(used.any()):
        return s.sum() * 0.0
    return kl[used].mean()


def distill_loss(s: torch.Tensor, y: torch.Tensor, z: torch.Tensor | None, groups: torch.Tensor, *,
                 alpha: float, temperature: float, soft: str) -> torch.Tensor:
    """The student's loss; ``alpha == 0`` is the hard-label-only control (``z`` may be ``None``)."""
    hard = hard_loss(s, y)
    if alpha == 0.0 or z is None:
        return hard
    if soft == "pointwise":
        soft_value = pointwise_soft_loss(s, z, temperature)
    else:
        soft_value = listwise_soft_loss(s, z, groups, temperature)
    return (1.0 - alpha) * hard + alpha * temperature**2 * soft_value


def sampled_pointwise_loss(s: torch.Tensor, z: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """Pointwise soft loss over the valid entries only (zero when there are none)."""
    per_row = F.binary_cross_entropy_with_logits(s / temperature, torch.sigmoid(z / temperature), reduction="none")
    weight = valid.to(per_row.dtype)
    return (per_row * weight).sum() / weight.sum().clamp(min=1.0)


def list_kl_loss(s: torch.Tensor, z: torch.Tensor, valid: torch.Tensor, temperature: float) -> torch.Tensor:
    """Mean over lists (rows of ``[B, L]``) with >= 2 valid entries of KL(teacher || student)."""
    neg = torch.finfo(s.dtype).min
    log_ps = torch.log_softmax((s / temperature).masked_fill(~valid, neg), dim=1)
    log_pt = torch.log_softmax((z / temperature).masked_fill(~valid, neg), dim=1)
    kl = (log_pt.exp() * (log_pt - log_ps)).masked_fill(~valid, 0.0).sum(dim=1)
    used = (valid.sum(dim=1) >= 2).to(s.dtype)
    return (kl * used).sum() / used.sum().clamp(min=1.0)


def ranking_loss(s: torch.Tensor, z: torch.Tensor, valid: torch.Tensor, top: int) -> torch.Tensor:
    """Pairwise ranking distillation over lists ``[B, L]``: the teacher's top ``top`` above the rest."""
    neg = torch.finfo(z.dtype).min
    zt = z.masked_fill(~valid, neg)
    rank = zt.argsort(dim=1, descending=True).argsort(dim=1)  # 0 = the teacher's first
    above = (zt.unsqueeze(2) > zt.unsqueeze(1)) & valid.unsqueeze(2) & valid.unsqueeze(1)
    pairs = above & (rank < top).unsqueeze(2)  # [B, i, j]: i in the top, teacher ranks i above j
    weight = pairs.to(s.dtype) / torch.log2(2.0 + rank.to(s.dtype)).unsqueeze(2)
    loss = F.softplus(s.unsqueeze(1) - s.unsqueeze(2))  # [B, i, j] = softplus(s_j - s_i)
    return (loss * weight).sum() / weight.sum().clamp(min=1e-12)
