"""Importance on synthetic data with planted informative and pure-noise features."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from coarserank.cold.importance import (
    Importance,
    gate_penalty,
    gbdt_importance,
    permutation_importance,
    rank_agreement,
    se_importance,
)
from coarserank.student.cold import build_cold_model
from coarserank.config import GbdtConfig
from coarserank.data.schema import Field, Schema
from coarserank.distill.losses import hard_loss
from coarserank.distill.tensors import make_table
from coarserank.distill.train import FitSettings, fit
from coarserank.errors import ConfigError

SCHEMA = Schema((
    Field("inf_user", "user", "categorical", 22),
    Field("noise_user", "user", "categorical", 52),
    Field("inf_item", "item", "categorical", 32),
    Field("noise_tags", "item", "multi", 22, 3),
    Field("inf_rate", "cross", "numeric"),
    Field("noise_num", "context", "numeric"),
    Field("inf_tags", "item", "multi", 12, 3),
    Field("noise_device", "context", "categorical", 6),
))
INFORMATIVE = {"inf_user", "inf_item", "inf_rate", "inf_tags"}
NOISE = set(SCHEMA.names) - INFORMATIVE


def _draw(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    return {"inf_user": rng.integers(2, 22, n), "noise_user": rng.integers(2, 52, n),
            "inf_item": rng.integers(2, 32, n), "noise_tags": rng.integers(0, 22, (n, 3)),
            "inf_rate": rng.normal(size=n).astype(np.float32), "noise_num": rng.normal(size=n).astype(np.float32),
            "inf_tags": rng.integers(2, 12, (n, 3)), "noise_device": rng.integers(2, 6, n)}


@pytest.fixture(scope="module")
def planted():
    """Labels from a logistic model of the four informative fields only."""
    rng = np.random.default_rng(7)
    user, item, tag = rng.normal(0, 1, 22), rng.normal(0, 1, 32), rng.normal(0, 1, 12)

    def split(n: int):
        x = _draw(rng, n)
        logit = user[x["inf_user"]] + item[x["inf_item"]] + x["inf_rate"] + tag[x["inf_tags"]].mean(axis=1)
        y = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.float32)
        return x, y, make_table(x, y, rng.integers(0, n // 30, n))

    return split(6000), split(2500)


@pytest.fixture(scope="module")
def se_model(planted):
    (_, _, train), (_, _, valid) = planted
    torch.manual_seed(0)
    model = build_cold_model(SCHEMA, 8, (32,))
    loss = gate_penalty(model, lambda m, b: hard_loss(m(b.inputs), b.label), 0.05)
    fit(model, loss, train, valid, FitSettings(5e-3, 256, 6, 2, 0.0, 0), torch.device("cpu"))
    return model


def _separates(imp: Importance) -> bool:
    return min(imp.scores[f] for f in INFORMATIVE) > max(imp.scores[f] for f in NOISE)


def test_se_gates_rank_every_informative_feature_above_every_noise_feature(planted, se_model):
    imp = se_importance(se_model, planted[1][2])
    assert _separates(imp), imp.ranking()


def test_lightgbm_gain_ranks_every_informative_feature_above_every_noise_feature(planted):
    (xt, yt, _), (xv, yv, _) = planted
    imp = gbdt_importance(SCHEMA, xt, yt, xv, yv, GbdtConfig(num_leaves=31, rounds=300, early_stopping=30),
                          seed=0, threads=1)
    assert _separates(imp), imp.ranking()


def test_permutation_ranks_every_informative_feature_above_every_noise_feature(planted, se_model):
    imp = permutation_importance(se_model, planted[1][2], SCHEMA.names, repeats=2, seed=0)
    assert _separates(imp), imp.ranking()


def test_gbdt_gain_shares_sum_to_one(planted):
    (xt, yt, _), (xv, yv, _) = planted
    imp = gbdt_importance(SCHEMA, xt, yt, xv, yv, GbdtConfig(rounds=20, early_stopping=5), threads=1)
    assert sum(imp.scores.values()) == pytest.approx(1.0)
    assert list(imp.scores) == SCHEMA.names


def test_se_importance_is_the_mean_gate_weight_over_rows(planted, se_model):
    valid = planted[1][2]
    with torch.no_grad():
        _, gates = se_model.eval().forward_with_gates(valid.inputs)
    imp = se_importance(se_model, valid, batch_size=1000)  # batched mean equals the mean
    assert np.allclose(list(imp.scores.values()), gates.double().mean(dim=0).numpy(), atol=1e-6)


def test_ranking_breaks_ties_by_schema_order():
    assert Importance("x", {"a": 0.1, "b": 0.5, "c": 0.1, "d": 0.5}).ranking() == ["b", "d", "a", "c"]


def test_rank_agreement_is_kendall_tau_b_over_common_fields():
    a = Importance("se", {"f1": 3.0, "f2": 2.0, "f3": 1.0, "only_a": 9.0})
    b = Importance("gbdt", {"f1": 1.0, "f2": 2.0, "f3": 3.0})
    c = Importance("permutation", {"f1": 0.3, "f2": 0.2, "f3": 0.1})
    assert rank_agreement([a, b, c]) == pytest.approx({"se~gbdt": -1.0, "se~permutation": 1.0,
                                                       "gbdt~permutation": -1.0})


def test_rank_agreement_is_none_when_a_ranking_is_constant():
    a = Importance("se", {"f1": 1.0, "f2": 1.0})
    b = Importance("gbdt", {"f1": 1.0, "f2": 2.0})
    assert rank_agreement([a, b]) == {"se~gbdt": None}


def test_negative_gate_penalty_is_refused(se_model):
    with pytest.raises(ConfigError, match="cold.gate_l1 must be >= 0"):
        gate_penalty(se_model, lambda s, b: s.sum(), -0.1)


def test_permutation_of_an_unknown_field_is_refused(planted, se_model):
    with pytest.raises(ConfigError, match=r"fields \['nope'\] are not inputs"):
        permutation_importance(se_model, planted[1][2], ["nope"])
