from __future__ import annotations

import numpy as np
import pytest

from coarserank.config import load_config
from coarserank.data.dataset import encode_splits
from coarserank.data.pairs import ROW_ITEM
from coarserank.data.prepare import prepare
from coarserank.data.sources import load_source
from coarserank.distill.candidates import agreement, candidate_sets, score_candidates
from coarserank.ranking_eval.consistency import recall_k_in_n
from coarserank.student import build_student


@pytest.fixture(scope="module")
def data():
    cfg = load_config(overrides=["synthetic.rows=3000"])
    return cfg, encode_splits(prepare(load_source(cfg.data, cfg.synthetic, 0), cfg.data), cfg.data)


def test_a_set_is_the_users_exposures_then_sampled_items_it_was_not_shown(data):
    _, d = data
    sets = candidate_sets(d.test, d.pairs, users=20, sampled=30, seed=1)
    users = d.test.frame["_user"].to_numpy()
    for g in np.unique(sets.group):
        at = np.flatnonzero(sets.group == g)
        exposed = sets.exposed[at]
        assert exposed[: exposed.sum()].all() and not exposed[exposed.sum():].any()  # exposures first
        shown = set(d.test.inputs[ROW_ITEM][sets.row[at][exposed]].tolist())
        assert len(at) - exposed.sum() == 30 and not shown & set(sets.item[at][~exposed].tolist())
        assert len(set(users[sets.row[at]])) == 1  # one user per set
    assert (sets.label[~sets.exposed] == -1).all()


def test_valid_and_test_sets_of_one_seed_are_different_draws(data):
    _, d = data
    a = candidate_sets(d.valid, d.pairs, users=20, sampled=30, seed=1)
    b = candidate_sets(d.test, d.pairs, users=20, sampled=30, seed=1)
    assert not np.array_equal(a.item[~a.exposed], b.item[~b.exposed])


def test_exposures_keep_their_own_encoding_when_scored(data):
    cfg, d = data
    student = build_student(d.schema, cfg.student).eval()
    sets = candidate_sets(d.test, d.pairs, users=10, sampled=5, seed=0)
    scored = score_candidates(student, d.test, d.pairs, sets)
    from coarserank.distill.api import score_split

    own = score_split(student, d.test)
    np.testing.assert_allclose(scored[sets.exposed], own[sets.row[sets.exposed]], rtol=1e-5, atol=1e-6)


def test_agreement_is_recall_k_in_n_over_the_sets(data):
    _, d = data
    sets = candidate_sets(d.test, d.pairs, users=10, sampled=120, seed=0)
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=len(sets)), rng.normal(size=len(sets))
    got = agreement(t, s, sets)
    assert got["recall@10_in_100"] == recall_k_in_n(t, s, sets.group, 10, 100).value
