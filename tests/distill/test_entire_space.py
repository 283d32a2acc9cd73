from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from coarserank.config import DistillConfig, StudentConfig, TeacherConfig, load_config
from coarserank.data.dataset import encode_splits
from coarserank.data.pairs import ROW_ITEM
from coarserank.data.prepare import prepare
from coarserank.data.sources import load_source
from coarserank.distill.api import distill, split_table, train_teacher
from coarserank.distill.entire_space import PairScorer, TeacherPairs
from coarserank.distill.losses import list_kl_loss, ranking_loss, sampled_pointwise_loss
from coarserank.distill.sampling import CandidateSampler
from coarserank.errors import ConfigError
from coarserank.student import build_student
from coarserank.teacher.blend import TeacherBlend

GROUP = torch.tensor([0, 0, 1, 1, 2, 3])
ITEM = torch.tensor([0, 1, 2, 0, 3, 4])


@pytest.mark.parametrize("kind", ["uniform", "popularity", "in_batch"])
def test_sampled_items_are_never_the_requests_exposures(kind):
    sampler = CandidateSampler(kind, 20, np.array([50, 1, 1, 1, 1, 1]), GROUP.numpy(), ITEM.numpy())
    drawn = sampler.draw(GROUP, ITEM, torch.Generator().manual_seed(0))
    exposed = {(int(g), int(i)) for g, i in zip(GROUP, ITEM)}
    pairs = {(int(GROUP[r]), int(i)) for r, i, ok in zip(drawn.row, drawn.item, drawn.valid) if ok}
    assert pairs and not pairs & exposed
    assert drawn.row.tolist() == [r for r in range(6) for _ in range(20)]


def test_in_batch_candidates_are_items_of_other_rows():
    sampler = CandidateSampler("in_batch", 5, np.ones(10), np.array([0]), np.array([9]))
    drawn = sampler.draw(torch.arange(4), torch.tensor([5, 6, 7, 8]), torch.Generator().manual_seed(1))
    for r, i in zip(drawn.row.tolist(), drawn.item.tolist()):
        assert i in {5, 6, 7, 8} - {5 + r}


def test_popularity_sampler_follows_train_exposures_plus_one():
    counts = np.array([99, 0, 0, 0, 0], dtype=np.int64)  # weights 100, 1, 1, 1, 1
    sampler = CandidateSampler("popularity", 2000, counts, np.array([]), np.array([]))
    drawn = sampler.draw(torch.tensor([0]), torch.tensor([4]), torch.Generator().manual_seed(2))
    share = (drawn.item == 0).float().mean().item()
    assert share == pytest.approx(100 / 103, abs=0.02)  # item 4 is the row's own: redrawn


def test_an_unknown_sampler_is_a_config_error():
    with pytest.raises(ConfigError, match="distill.sampler must be one of"):
        CandidateSampler("hard_negatives", 2, np.ones(3), np.array([]), np.array([]))  # type: ignore[arg-type]


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def test_sampled_pointwise_loss_ignores_invalid_pairs():
    s = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    z = torch.tensor([1.0, 5.0, -0.5], dtype=torch.float64)
    valid = torch.tensor([True, False, True])
    t = 2.0
    expected = sum(-(_sig(zz / t) * math.log(_sig(ss / t)) + (1 - _sig(zz / t)) * math.log(1 - _sig(ss / t)))
                   for ss, zz in ((0.3, 1.0), (2.0, -0.5))) / 2
    assert sampled_pointwise_loss(s, z, valid, t).item() == pytest.approx(expected, rel=1e-12)


def test_list_kl_is_the_mean_kl_over_the_valid_entries_of_each_list():
    s = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, 9.0]], dtype=torch.float64)
    z = torch.tensor([[1.0, 0.0, -2.0], [0.0, 3.0, -9.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, True], [True, True, False]])

    def kl(ss, zz):
        ps = [math.exp(x) / sum(math.exp(y) for y in ss) for x in ss]
        pt = [math.exp(x) / sum(math.exp(y) for y in zz) for x in zz]
        return sum(a * math.log(a / b) for a, b in zip(pt, ps))

    expected = (kl([0.5, -1.0, 2.0], [1.0, 0.0, -2.0]) + kl([1.0, 0.0], [0.0, 3.0])) / 2
    assert list_kl_loss(s, z, valid, 1.0).item() == pytest.approx(expected, rel=1e-12)


def test_ranking_loss_pulls_the_teachers_top_items_above_the_rest():
    s = torch.tensor([[0.0, 1.0, -1.0, 0.5]], dtype=torch.float64)
    z = torch.tensor([[3.0, 2.0, 1.0, 0.0]], dtype=torch.float64)
    valid = torch.tensor([[True, True, True, False]])
    weights, losses = [], []
    for i, w in ((0, 1 / math.log2(2)), (1, 1 / math.log2(3))):  # top 2 of the three valid items
        for j in range(i + 1, 3):
            weights.append(w)
            losses.append(w * math.log1p(math.exp(s[0, j].item() - s[0, i].item())))
    assert ranking_loss(s, z, valid, 2).item() == pytest.approx(sum(losses) / sum(weights), rel=1e-12)


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config(overrides=["synthetic.rows=3000", "teacher.epochs=1", "student.epochs=1"])
    data = encode_splits(prepare(load_source(cfg.data, cfg.synthetic, 0), cfg.data), cfg.data)
    teacher = train_teacher(data.train, data.valid, data.schema, cfg.teacher).model
    return cfg, data, teacher


def test_pair_scorer_scores_pairs_like_the_student_on_the_pair_rows(tiny):
    cfg, data, _ = tiny
    student = build_student(data.schema, cfg.student).eval()
    batch = split_table(data.valid).take(torch.arange(8))
    row, item = torch.arange(8).repeat_interleave(3), torch.arange(24) % data.pairs.n_items
    unique, local = torch.unique(item, return_inverse=True)
    items = {k: torch.from_numpy(v) for k, v in data.pairs.item_inputs(unique.numpy()).items()}
    with torch.no_grad():
        _, scored = PairScorer(student)(batch.inputs, items, row, local)
        rows = {k: v.numpy()[row.numpy()] for k, v in batch.inputs.items()}
        direct = student({k: torch.from_numpy(v) for k, v in data.pairs.encode(rows, item.numpy()).items()})
    torch.testing.assert_close(scored, direct)


@pytest.mark.parametrize("chunk", [65_536, 7])  # 7: the catalogue is encoded in several item-tower calls
def test_a_blended_teacher_scores_pairs_as_it_scores_the_pair_rows(tiny, chunk, monkeypatch):
    monkeypatch.setattr("coarserank.distill.entire_space._CHUNK", chunk)
    cfg, data, teacher = tiny
    blend = TeacherBlend(teacher, build_student(data.schema, cfg.student), 0.25).eval()
    batch = split_table(data.valid).take(torch.arange(8))
    row, item = torch.arange(8).repeat_interleave(3), torch.arange(24) % data.pairs.n_items
    catalogue = {k: torch.from_numpy(v) for k, v in data.pairs.item_inputs(np.arange(data.pairs.n_items)).items()
                 if data.schema[k].side == "item"}
    rows = {k: v.numpy()[row.numpy()] for k, v in batch.inputs.items()}
    encoded = {k: torch.from_numpy(v) for k, v in data.pairs.encode(rows, item.numpy()).items()}
    with torch.no_grad():
        fast = TeacherPairs(blend, catalogue)(encoded, batch.inputs, row, item)
        direct = blend(encoded)
    torch.testing.assert_close(fast, direct)


def test_the_deepfm_teacher_alone_scores_pairs_as_it_scores_the_pair_rows(tiny):
    _, data, teacher = tiny
    batch = split_table(data.valid).take(torch.arange(8))
    row, item = torch.arange(8).repeat_interleave(3), (torch.arange(24) * 7) % data.pairs.n_items
    catalogue = {k: torch.from_numpy(v) for k, v in data.pairs.item_inputs(np.arange(data.pairs.n_items)).items()}
    rows = {k: v.numpy()[row.numpy()] for k, v in batch.inputs.items()}
    encoded = {k: torch.from_numpy(v) for k, v in data.pairs.encode(rows, item.numpy()).items()}
    with torch.no_grad():
        for per_row in (None, 3):  # the sampler's pairs are row-major, three to a row here
            torch.testing.assert_close(TeacherPairs(teacher.eval(), catalogue)(encoded, batch.inputs, row, item,
                                                                               per_row=per_row), teacher(encoded))


@pytest.mark.parametrize("bf16", [False, True])  # bf16: the teacher's pair path under autocast too
def test_entire_space_distillation_trains_and_counts_its_sampled_rows(tiny, bf16):
    cfg, data, teacher = tiny
    trained = distill(teacher, data.train, data.valid, data.schema, StudentConfig(epochs=1),
                      DistillConfig(sampled=3), pairs=data.pairs, bf16=bf16)
    assert 0.9 * 3 * len(data.train) <= trained.sampled_rows <= 3 * len(data.train)
    assert trained.history.best_valid_gauc > 0.5


def test_entire_space_needs_the_teacher_module(tiny):
    cfg, data, teacher = tiny
    logits = np.zeros(len(data.train), dtype=np.float32)
    with pytest.raises(ConfigError, match="needs the teacher module"):
        distill(logits, data.train, data.valid, data.schema, StudentConfig(epochs=1), DistillConfig(sampled=2),
                pairs=data.pairs)


def test_same_seed_trains_the_same_student_without_touching_the_global_rng(tiny):
    cfg, data, teacher = tiny
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = distill(teacher, data.train, data.valid, data.schema, StudentConfig(epochs=1), DistillConfig(sampled=2),
                pairs=data.pairs, seed=5).model
    after = torch.rand(1)
    b = distill(teacher, data.train, data.valid, data.schema, StudentConfig(epochs=1), DistillConfig(sampled=2),
                pairs=data.pairs, seed=5).model
    assert torch.equal(before, after)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(x, y), name


def test_teacher_config_families_build():
    from coarserank.teacher import DCNv2, DeepFM, build_teacher

    cfg, data, _ = (None, None, None)
    del cfg, data
    schema = encode_splits(prepare(*_tiny_movie()), _tiny_movie()[1]).schema
    assert isinstance(build_teacher(schema, TeacherConfig()), DeepFM)
    assert isinstance(build_teacher(schema, TeacherConfig(family="dcn")), DCNv2)


def _tiny_movie():
    cfg = load_config(overrides=["synthetic.rows=500"])
    return load_source(cfg.data, cfg.synthetic, 0), cfg.data


def test_each_distributed_rank_draws_its_own_sampled_items(monkeypatch):
    from coarserank.distill import api
    from coarserank.distill.distributed import DistInfo

    draws = []
    for rank in (0, 1):
        monkeypatch.setattr(api, "current", lambda rank=rank: DistInfo(rank, 2))
        draws.append(torch.randint(1000, (8,), generator=api.sampling_generator(0)))
    assert not torch.equal(draws[0], draws[1])
