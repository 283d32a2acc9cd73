"""The sampled-softmax recall loss against hand computations and explicit candidate lists."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose
from torch.nn import functional as F

from coarserank.distill.recall_losses import (
    Candidates,
    StreamingFrequency,
    candidate_log_q,
    frequencies_from_counts,
    in_batch_mask,
    sampled_softmax_loss,
)
from coarserank.errors import DataError


def _unit(rows: list[list[float]]) -> torch.Tensor:
    return F.normalize(torch.tensor(rows, dtype=torch.float32), dim=1)


def test_logq_corrected_loss_matches_a_hand_computation():
    # two items per axis; cosines are exact: u0 . v = [1, 0, 0.6], u1 . v = [0, 1, 0.8]
    u = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    v = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])
    ids = torch.tensor([10, 11, 12])
    freq = torch.tensor([0.5, 0.3, 0.2])  # share of training exposures
    log_q = candidate_log_q(freq * 3)  # B = 3: expected in-batch counts 1.5, 0.9, 0.6
    positive = torch.tensor([1, 1, 0])
    got = sampled_softmax_loss(u, v, ids, positive, temperature=0.5, log_q=log_q)
    # row 0: logits 1/0.5 - log 1.5, 0/0.5 - log 0.9, 0.6/0.5 - log 0.6; target column 0
    l0 = [2.0 - math.log(1.5), 0.0 - math.log(0.9), 1.2 - math.log(0.6)]
    l1 = [0.0 - math.log(1.5), 2.0 - math.log(0.9), 1.6 - math.log(0.6)]
    ce0 = -l0[0] + math.log(sum(math.exp(x) for x in l0))
    ce1 = -l1[1] + math.log(sum(math.exp(x) for x in l1))
    assert_allclose(float(got), (ce0 + ce1) / 2, rtol=1e-6)


def test_mixed_negatives_correct_by_expected_count_from_both_sources():
    freq = torch.tensor([0.1, 0.0])
    got = candidate_log_q(freq * 100, extra=50, n_items=1000)
    assert_allclose(got.numpy(), np.log([10 + 0.05, 0.05]), rtol=1e-6)


def test_a_repeated_item_is_never_its_own_rows_negative(rng):
    torch.manual_seed(0)
    u, v = _unit(rng.normal(size=(5, 4)).tolist()), _unit(rng.normal(size=(5, 4)).tolist())
    ids = torch.tensor([7, 3, 7, 9, 3])  # item 7 at rows 0 and 2, item 3 at rows 1 and 4
    positive = torch.tensor([1, 0, 1, 0, 1])
    got = sampled_softmax_loss(u, v, ids, positive, temperature=0.2)
    # by hand: each positive row against the columns whose item differs from its own, plus itself
    losses = []
    for i in (0, 2, 4):
        keep = [j for j in range(5) if j == i or ids[j] != ids[i]]
        logits = (u[i] @ v[keep].T) / 0.2
        losses.append(-F.log_softmax(logits, dim=0)[keep.index(i)])
    assert_allclose(float(got), float(torch.stack(losses).mean()), rtol=1e-6)


def test_the_mask_keeps_the_rows_own_column_and_drops_its_other_copies():
    ids = torch.tensor([5, 6, 5, 5])
    mask = in_batch_mask(ids, torch.tensor([0, 2]), ids)
    assert mask.tolist() == [[False, False, True, True], [True, False, False, True]]


def test_the_same_users_other_positives_are_masked_when_users_are_given():
    ids = torch.tensor([1, 2, 3, 4])
    users = torch.tensor([9, 9, 9, 8])
    positive = torch.tensor([True, True, False, True])
    mask = in_batch_mask(ids, torch.tensor([0, 1, 3]), ids, users, positive)
    assert mask.tolist() == [[False, True, False, False], [True, False, False, False],
                             [False, False, False, False]]


def test_extra_uniform_candidates_are_negatives_unless_they_are_the_rows_item(rng):
    u, v = _unit(rng.normal(size=(2, 3)).tolist()), _unit(rng.normal(size=(2, 3)).tolist())
    extra_v = _unit(rng.normal(size=(3, 3)).tolist())
    ids, extra_ids = torch.tensor([1, 2]), torch.tensor([2, 5, 1])
    got = sampled_softmax_loss(u, v, ids, torch.tensor([1, 0]), temperature=1.0,
                               extra=Candidates(extra_v, extra_ids))
    cands = torch.cat([v, extra_v[:2]])  # extra id 1 is row 0's own item: masked
    want = -F.log_softmax(u[0] @ cands.T, dim=0)[0]
    assert_allclose(float(got), float(want), rtol=1e-6)


def test_distillation_term_is_the_kl_from_the_teachers_softmax_over_the_same_candidates(rng):
    u, v = _unit(rng.normal(size=(3, 4)).tolist()), _unit(rng.normal(size=(3, 4)).tolist())
    ids = torch.tensor([1, 2, 3])
    teacher = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    got = sampled_softmax_loss(u, v, ids, torch.tensor([1, 0, 1]), temperature=0.5, teacher=teacher,
                               alpha=1.0, teacher_temperature=2.0)
    p = np.exp(teacher.numpy() / 2.0)
    p /= p.sum(axis=1, keepdims=True)
    s = (u[[0, 2]] @ v.T).numpy() / 0.5
    log_s = s - np.log(np.exp(s).sum(axis=1, keepdims=True))
    assert_allclose(float(got), float((p * (np.log(p) - log_s)).sum(axis=1).mean()), rtol=1e-5)


def test_a_batch_without_positives_gives_zero_loss_with_a_gradient():
    u = torch.randn(4, 3, requires_grad=True)
    loss = sampled_softmax_loss(u, torch.randn(4, 3), torch.arange(4), torch.zeros(4), temperature=0.1)
    loss.backward()
    assert float(loss.detach()) == 0.0 and u.grad is not None


def test_teacher_logits_of_the_wrong_shape_are_a_data_error():
    u = _unit([[1, 0], [0, 1]])
    with pytest.raises(DataError, match="teacher logits must be \\[1, 2\\]"):
        sampled_softmax_loss(u, u, torch.arange(2), torch.tensor([1, 0]), temperature=1.0,
                             teacher=torch.zeros(2, 2), alpha=0.5)


def test_streaming_frequency_converges_to_the_rate_an_item_appears_per_step():
    est = StreamingFrequency(buckets=8, lr=0.1)
    for step in range(400):
        ids = [1] + ([2] if step % 4 == 0 else [])
        est.update(torch.tensor(ids))
    assert_allclose(est.probability(torch.tensor([1, 2])).numpy(), [1.0, 0.25], rtol=1e-3)


def test_frequencies_from_counts_are_shares_and_zero_counts_are_a_data_error():
    assert_allclose(frequencies_from_counts(np.array([1, 3])), [0.25, 0.75])
    with pytest.raises(DataError, match="sum to zero"):
        frequencies_from_counts(np.zeros(3))
