"""Loss terms and facts that belong to one student family rather than to distillation as a whole.

- DAT's **mimic loss** (Yu et al., 2021): on positive rows the user's augmentation vector ``a_u``
  is pulled toward the item tower's output ``v`` and the item's ``a_v`` toward the user tower's
  ``u``: ``mean ||a_u - sg(v)||^2 + mean ||a_v - sg(u)||^2``. ``sg`` is a stop-gradient: the tower
  outputs are computed without gradients, so only the augmentation vectors learn from this term
  (they also feed the towers, and learn from the distillation loss through them).
- **Gate means**: the mean SE weight per field over a table's rows, for every tower (or COLD model)
  with an SE gate; the run records them as an importance signal (manifest and metrics).

Example
-------
>>> loss = with_family_terms(base_loss, student, cfg.student)        # doctest: +SKIP
>>> gate_means(student, valid_table, device)["user"]["user_id"]      # doctest: +SKIP
0.61
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from coarserank.config import StudentConfig
from coarserank.distill.tensors import TensorTable

__all__ = ["mimic_loss", "with_family_terms", "gate_means"]

LossFn = Callable[[nn.Module, TensorTable], torch.Tensor]


def mimic_loss(student: nn.Module, inputs: dict[str, torch.Tensor], label: torch.Tensor) -> torch.Tensor:
    """DAT's mimic loss over the positive rows of a batch (0, still attached to the graph, without any)."""
    user, item = student.user_tower, student.item_tower
    positive = label > 0.5
    rows = {k: v[positive] for k, v in inputs.items()}
    a_u, a_v = user.augmentation(rows), item.augmentation(rows)
    if not bool(positive.any()):
        return (a_u.sum() + a_v.sum()) * 0.0
    with torch.no_grad():  # the stop-gradient: tower outputs are targets, never trained by this term
        u, v = user(rows), item(rows)
    return (a_u - v).pow(2).sum(-1).mean() + (a_v - u).pow(2).sum(-1).mean()


def with_family_terms(loss: LossFn, student: nn.Module, cfg: StudentConfig) -> LossFn:
    """``loss`` plus the family's own terms: ``dat`` adds ``mimic_weight * mimic_loss``; others none.

    ``student`` is the unwrapped model (its parameters are the ones ``fit`` steps, possibly inside a
    wrapper such as :class:`~coarserank.distill.entire_space.PairScorer` or DDP).
    """
    if cfg.family != "dat" or cfg.dat.mimic_weight == 0:
        return loss
    weight = cfg.dat.mimic_weight

    def total(module: nn.Module, batch: TensorTable) -> torch.Tensor:
        return loss(module, batch) + weight * mimic_loss(student, batch.inputs, batch.label)

    return total


def _gated(model: nn.Module) -> dict[str, tuple[nn.Module, Callable[[dict[str, torch.Tensor]], torch.Tensor]]]:
    """``{part: (module with a schema, gate function)}`` of the parts of ``model`` that have an SE gate."""
    out = {}
    for side in ("user", "item"):
        tower = getattr(model, f"{side}_tower", None)
        if tower is not None and getattr(tower, "gate", None) is not None:
            out[side] = (tower, tower.gates)
    if hasattr(model, "forward_with_gates"):
        out["rows"] = (model, lambda inputs: model.forward_with_gates(inputs)[1])
    return out


@torch.no_grad()
def gate_means(model: nn.Module, table: TensorTable, device: torch.device | str = "cpu",
               batch_size: int = 32768) -> dict[str, dict[str, float]]:
    """Mean SE gate weight per field over ``table``'s rows: ``{"user"|"item"|"rows": {field: w}}``.

    Empty for a model without gates. ``rows`` is the COLD model's gate over its candidate rows.
    """
    parts = _gated(model)
    if not parts:
        return {}
    was = model.training
    model.eval()
    sums = {part: torch.zeros(len(module.schema), dtype=torch.float64) for part, (module, _) in parts.items()}
    for idx in torch.split(torch.arange(len(table)), batch_size):
        inputs = table.take(idx).to(device).inputs
        for part, (_, gates) in parts.items():
            sums[part] += gates(inputs).double().sum(dim=0).cpu()
    model.train(was)
    n = max(len(table), 1)
    return {part: {name: round(float(w) / n, 6) for name, w in zip(parts[part][0].schema.names, sums[part])}
            for part in parts}
