from __future__ import annotations

import math

import pytest
import torch

from coarserank.distill.losses import distill_loss, hard_loss, listwise_soft_loss, pointwise_soft_loss


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _bce(p: float, t: float) -> float:
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


S = torch.tensor([0.5, -1.0, 2.0, 0.0], dtype=torch.float64)
Z = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
Y = torch.tensor([1.0, 0.0, 1.0, 0.0], dtype=torch.float64)
G = torch.tensor([7, 7, 9, 9])


def test_pointwise_soft_is_bce_of_tempered_sigmoids():
    t = 2.0
    expected = sum(_bce(_sig(s / t), _sig(z / t)) for s, z in zip(S.tolist(), Z.tolist())) / 4
    assert pointwise_soft_loss(S, Z, t).item() == pytest.approx(expected, rel=1e-12)


def test_listwise_soft_is_mean_kl_over_groups():
    t = 1.5

    def softmax(xs):
        m = [math.exp(x / t) for x in xs]
        return [v / sum(m) for v in m]

    kls = []
    for idx in ([0, 1], [2, 3]):
        pt, ps = softmax([Z[i].item() for i in idx]), softmax([S[i].item() for i in idx])
        kls.append(sum(a * math.log(a / b) for a, b in zip(pt, ps)))
    assert listwise_soft_loss(S, Z, G, t).item() == pytest.approx(sum(kls) / 2, rel=1e-12)


def test_listwise_skips_groups_with_a_single_row():
    groups = torch.tensor([1, 2, 2, 3])
    full = listwise_soft_loss(S, Z, groups, 1.0)
    only_pair = listwise_soft_loss(S[1:3], Z[1:3], groups[1:3], 1.0)
    assert full.item() == pytest.approx(only_pair.item(), rel=1e-12)


def test_listwise_is_zero_when_student_equals_teacher_up_to_a_shift():
    assert listwise_soft_loss(Z + 3.0, Z, G, 2.0).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("soft", ["pointwise", "listwise"])
def test_distill_loss_mixes_hard_and_t_squared_soft(soft):
    alpha, t = 0.3, 3.0
    soft_value = pointwise_soft_loss(S, Z, t) if soft == "pointwise" else listwise_soft_loss(S, Z, G, t)
    expected = (1 - alpha) * hard_loss(S, Y) + alpha * t**2 * soft_value
    got = distill_loss(S, Y, Z, G, alpha=alpha, temperature=t, soft=soft)
    assert got.item() == pytest.approx(expected.item(), rel=1e-12)


def test_soft_gradient_scale_is_kept_by_t_squared():
    # d(T^2 * soft)/ds shrinks like 1/T without the factor; with it the magnitude stays comparable.
    grads = []
    for t in (1.0, 4.0):
        s = S.clone().requires_grad_(True)
        distill_loss(s, Y, Z, G, alpha=1.0, temperature=t, soft="pointwise").backward()
        grads.append(s.grad.abs().sum().item())
    unscaled = []
    for t in (1.0, 4.0):
        s = S.clone().requires_grad_(True)
        pointwise_soft_loss(s, Z, t).backward()
        unscaled.append(s.grad.abs().sum().item())
    assert unscaled[1] / unscaled[0] < 0.2
    assert 0.3 < grads[1] / grads[0] < 3.0


def test_alpha_zero_is_the_hard_label_loss():
    assert distill_loss(S, Y, Z, G, alpha=0.0, temperature=2.0, soft="pointwise").item() == hard_loss(S, Y).item()
