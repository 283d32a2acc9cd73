"""The tower families: isolation of the two sides, one inner product, and each family's own rule."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from coarserank.config import DatOptions, ParallelOptions, ShortcutOptions, StudentConfig
from coarserank.data.schema import Field, Schema
from coarserank.distill.families import gate_means, mimic_loss, with_family_terms
from coarserank.distill.tensors import make_table
from coarserank.errors import ConfigError
from coarserank.student import ParallelTower, build_student, has_towers, served_dim

SCHEMA = Schema((
    Field("user_id", "user", "categorical", 50),
    Field("age", "user", "categorical", 7),
    Field("device", "context", "categorical", 5),
    Field("item_id", "item", "categorical", 40),
    Field("tags", "item", "multi", 12, 3),
    Field("price", "item", "numeric"),
    Field("u_x_i", "cross", "categorical", 30),
))
USER_FIELDS = ("user_id", "age", "device")
ITEM_FIELDS = ("item_id", "tags", "price")
BASE = StudentConfig(dim=8, embed_dim=4, hidden=(16,))
VARIANTS = {
    "two_tower": BASE,
    "senet": replace(BASE, family="senet"),
    "shortcut_top": replace(BASE, family="shortcut"),
    "shortcut_fields": replace(BASE, family="shortcut",
                               shortcut=ShortcutOptions(user_fields=("age",), item_fields=("item_id", "price"))),
    "parallel": replace(BASE, family="parallel"),
    "parallel_attention": replace(BASE, family="parallel", parallel=ParallelOptions(fusion="attention")),
    "dat": replace(BASE, family="dat"),
}


def _batch(n: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {
        "user_id": torch.randint(0, 50, (n,), generator=gen), "age": torch.randint(0, 7, (n,), generator=gen),
        "device": torch.randint(0, 5, (n,), generator=gen), "item_id": torch.randint(0, 40, (n,), generator=gen),
        "tags": torch.randint(0, 12, (n, 3), generator=gen), "price": torch.randn(n, generator=gen),
        "u_x_i": torch.randint(0, 30, (n,), generator=gen),
    }


def _scrambled(model: torch.nn.Module, seed: int = 7) -> torch.nn.Module:
    """Weights far from their near-zero initialisation, so every path carries signal."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


def _student(variant: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return _scrambled(build_student(SCHEMA, VARIANTS[variant]))


def _swap(batch: dict[str, torch.Tensor], names: tuple[str, ...], seed: int) -> dict[str, torch.Tensor]:
    other = _batch(len(batch["user_id"]), seed)
    return {**batch, **{k: other[k] for k in (*names, "u_x_i")}}


@pytest.mark.parametrize("variant", VARIANTS)
def test_changing_item_features_never_changes_the_user_vector(variant):
    model, batch = _student(variant), _batch(64, 1)
    other = _swap(batch, ITEM_FIELDS, 2)
    torch.testing.assert_close(model.user_tower(batch), model.user_tower(other), rtol=0, atol=0)
    assert not torch.allclose(model.item_tower(batch), model.item_tower(other))


@pytest.mark.parametrize("variant", VARIANTS)
def test_changing_user_features_never_changes_the_item_vector(variant):
    model, batch = _student(variant), _batch(64, 3)
    other = _swap(batch, USER_FIELDS, 4)
    torch.testing.assert_close(model.item_tower(batch), model.item_tower(other), rtol=0, atol=0)
    assert not torch.allclose(model.user_tower(batch), model.user_tower(other))


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_tower_family_scores_a_times_one_inner_product_plus_b(variant):
    model, batch = _student(variant), _batch(32, 5)
    with torch.no_grad():
        u, v = model.user_tower(batch), model.item_tower(batch)
        expected = model.a * (u * v).sum(-1) + model.b
        got = model(batch)
    assert u.shape == v.shape == (32, served_dim(model)) and has_towers(model)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("variant", ["parallel", "parallel_attention"])
def test_parallel_score_is_the_weighted_sum_of_per_channel_inner_products(variant):
    model, batch = _student(variant), _batch(16, 6)
    with torch.no_grad():
        us, vs = model.user_tower.channel_vectors(batch), model.item_tower.channel_vectors(batch)
        scale = model.user_tower.channel_scale(us).numpy()
        got = model(batch).numpy()
    a, b = model.a.item(), model.b.item()
    for row in range(16):  # a naive loop: a * sum_c w_c <u_c, v_c> + b
        dots = [float(np.dot(u[row].numpy(), v[row].numpy())) for u, v in zip(us, vs)]
        expected = a * sum(w * d for w, d in zip(scale[row], dots)) + b
        assert got[row] == pytest.approx(expected, rel=1e-5, abs=1e-5)


def test_parallel_weights_are_the_learned_channel_weights_without_attention():
    model = _student("parallel")
    us = model.user_tower.channel_vectors(_batch(4, 7))
    scale = model.user_tower.channel_scale(us)
    torch.testing.assert_close(scale, model.user_tower.weights.expand(4, -1))
    assert model.item_tower.channel_scale(us) is None


def test_parallel_attention_weights_sum_to_the_channel_count_times_a_softmax():
    model = _student("parallel_attention")
    tower: ParallelTower = model.user_tower
    with torch.no_grad():
        us = tower.channel_vectors(_batch(8, 8))
        attention = tower.channel_scale(us) / tower.weights
    torch.testing.assert_close(attention.sum(dim=1), torch.full((8,), 3.0))


def test_parallel_served_vector_is_dim_wide_like_every_familys():
    model = build_student(SCHEMA, VARIANTS["parallel"])
    assert served_dim(model) == BASE.dim
    widths = [v.shape[1] for v in model.user_tower.channel_vectors(_batch(2, 3))]
    assert widths == [2, 2, BASE.embed_dim]  # mlp and cross split what fm's pooled embedding leaves


def test_parallel_widths_give_the_remainder_to_the_first_channel():
    assert ParallelOptions().widths(64, 16) == {"mlp": 24, "cross": 24, "fm": 16}
    assert ParallelOptions().widths(63, 16) == {"mlp": 24, "cross": 23, "fm": 16}
    assert ParallelOptions(channels=("cross", "mlp")).widths(9, 16) == {"cross": 5, "mlp": 4}


@pytest.mark.parametrize(("options", "dim", "message"), [
    (ParallelOptions(), 5, "raise dim above 5"),
    (ParallelOptions(channels=("fm",)), 8, "set dim = 4"),
])
def test_parallel_dim_too_small_for_its_channels_is_a_config_error(options, dim, message):
    with pytest.raises(ConfigError, match=message):
        build_student(SCHEMA, replace(BASE, family="parallel", dim=dim, parallel=options))


def test_senet_tower_feeds_the_gate_weighted_embeddings_to_the_mlp():
    tower = _student("senet").user_tower
    batch = _batch(8, 9)
    with torch.no_grad():
        e = tower.embedding(batch)
        z = e.mean(dim=-1)  # squeeze: one number per field
        s = torch.sigmoid(tower.gate.excite(torch.relu(tower.gate.squeeze(z))))
        expected = torch.nn.functional.normalize(tower.mlp((e * s.unsqueeze(-1)).flatten(1)), dim=-1)
        torch.testing.assert_close(tower(batch), expected)
        torch.testing.assert_close(tower.gates(batch), s)


def test_shortcut_top_k_joins_only_each_rows_k_highest_gated_fields():
    tower = _student("shortcut_top").user_tower
    batch = _batch(8, 10)
    with torch.no_grad():
        e = tower.embedding(batch).numpy()
        s = tower.gates(batch).numpy()
        g = e * s[:, :, None]
        kept = np.zeros_like(g)
        for row in range(8):  # the two largest gate weights of the row, by a sort
            for f in np.argsort(-s[row])[:2]:
                kept[row, f] = g[row, f]
        main = tower.mlp(torch.from_numpy(g.reshape(8, -1)))
        expected = torch.nn.functional.normalize(main + tower.shortcut(torch.from_numpy(kept.reshape(8, -1))), dim=-1)
        torch.testing.assert_close(tower(batch), expected)


def test_shortcut_fields_skip_the_mlp_through_a_linear_map_of_the_same_dimension():
    tower = _student("shortcut_fields").item_tower
    batch = _batch(8, 11)
    with torch.no_grad():
        e = tower.embedding(batch)
        expected = torch.nn.functional.normalize(tower.mlp(e.flatten(1)) + tower.shortcut(e[:, [0, 2]].flatten(1)),
                                                 dim=-1)
        got = tower(batch)
    torch.testing.assert_close(got, expected)
    assert got.shape == (8, BASE.dim)


def test_dat_mimic_loss_leaves_tower_weights_untouched():
    model = _student("dat").train()
    batch = _batch(64, 12)
    label = (torch.arange(64) % 3 == 0).float()
    mimic_loss(model, batch, label).backward()
    for side in ("user_tower", "item_tower"):
        tower = getattr(model, side)
        for name, p in tower.named_parameters():
            if name.startswith("augment."):
                assert p.grad is not None and p.grad.abs().sum() > 0, f"{side}.{name} learns nothing"
            else:
                assert p.grad is None or not p.grad.any(), f"{side}.{name} got a gradient from the mimic loss"
    assert model.a.grad is None and model.b.grad is None


def test_dat_mimic_loss_is_the_squared_distance_to_the_other_towers_output_on_positive_rows():
    model = _student("dat")
    batch = _batch(20, 13)
    label = torch.tensor([1.0, 0.0] * 10)
    with torch.no_grad():
        got = float(mimic_loss(model, batch, label))
        u, v = model.user_tower(batch).numpy(), model.item_tower(batch).numpy()
        a_u = model.user_tower.augment.weight[batch["user_id"]].numpy()
        a_v = model.item_tower.augment.weight[batch["item_id"]].numpy()
    pos = np.flatnonzero(label.numpy() == 1)
    expected = (np.mean([np.sum((a_u[i] - v[i]) ** 2) for i in pos])
                + np.mean([np.sum((a_v[i] - u[i]) ** 2) for i in pos]))
    assert got == pytest.approx(expected, rel=1e-5)


def test_dat_mimic_loss_without_positive_rows_is_zero():
    model = _student("dat")
    assert mimic_loss(model, _batch(8, 14), torch.zeros(8)).item() == 0.0


def test_only_the_dat_family_adds_the_mimic_term():
    def base(module, batch):
        return torch.zeros(())

    dat = VARIANTS["dat"]
    assert with_family_terms(base, _student("senet"), VARIANTS["senet"]) is base
    assert with_family_terms(base, _student("dat"), replace(dat, dat=DatOptions(mimic_weight=0.0))) is base
    assert with_family_terms(base, _student("dat"), dat) is not base


def test_gate_means_are_the_mean_gate_weight_per_field_over_rows():
    model = _student("senet")
    batch = _batch(50, 15)
    table = make_table({k: v.numpy() for k, v in batch.items()}, np.zeros(50), np.zeros(50, dtype=np.int64))
    means = gate_means(model, table, batch_size=7)  # batched sums equal the mean over all rows
    with torch.no_grad():
        expected = model.user_tower.gates(batch).mean(dim=0).numpy()
    assert list(means) == ["user", "item"] and list(means["user"]) == list(USER_FIELDS)
    np.testing.assert_allclose(list(means["user"].values()), expected, atol=1e-6)


def test_a_model_without_gates_reports_no_gate_means():
    table = make_table({k: v.numpy() for k, v in _batch(5, 16).items()}, np.zeros(5), np.zeros(5, dtype=np.int64))
    assert gate_means(_student("two_tower"), table) == {}


def test_cold_student_reads_its_feature_set_across_sides_and_has_no_towers():
    model = build_student(SCHEMA, replace(BASE, family="cold", cold=replace(BASE.cold, features=("u_x_i", "age"))))
    assert model.schema.names == ["age", "u_x_i"] and not has_towers(model) and served_dim(model) == 0
    assert model(_batch(6, 17)).shape == (6,)


def test_dat_on_a_schema_without_the_id_field_is_a_config_error():
    schema = SCHEMA.select(names=[n for n in SCHEMA.names if n != "user_id"])
    with pytest.raises(ConfigError, match="student.dat.user_field = 'user_id' is not a categorical field"):
        build_student(schema, VARIANTS["dat"])
