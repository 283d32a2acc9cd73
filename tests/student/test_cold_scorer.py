"""The COLD model's serving form: the same logits as the trained model, from copies of its weights."""

from __future__ import annotations

import pytest
import torch

from coarserank.data.schema import Field, Schema
from coarserank.student.cold import build_cold_model
from coarserank.student.cold_scorer import ColdScorer

SCHEMA = Schema((
    Field("user_id", "user", "categorical", 50),
    Field("age", "user", "numeric"),
    Field("history", "user", "sequence", 40, 5, of="item_id"),
    Field("item_id", "item", "categorical", 40),
    Field("tags", "item", "multi", 12, 3),
    Field("price", "item", "numeric"),
    Field("u_x_i", "cross", "categorical", 30),
    Field("match", "cross", "numeric"),
))


def _batch(schema: Schema, n: int, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for f in schema.fields:
        if f.kind == "numeric":
            out[f.name] = torch.randn(n, generator=gen)
        elif f.kind == "categorical":
            out[f.name] = torch.randint(0, f.size, (n,), generator=gen)
        else:  # some slots padding, some rows all padding
            codes = torch.randint(0, 40 if f.of else f.size, (n, f.max_len), generator=gen)
            codes[::4] = 0
            out[f.name] = codes
    return out


def _scrambled(model: torch.nn.Module, seed: int = 5) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return model.eval()


@pytest.mark.parametrize("names", [
    SCHEMA.names,
    ["user_id", "item_id", "u_x_i"],  # categorical only
    ["age", "price", "match"],  # numeric only
    ["tags", "price"],  # pooled and numeric
], ids=["every_kind", "categorical", "numeric", "pooled_and_numeric"])
@pytest.mark.parametrize("hidden", [(16, 8), ()], ids=["mlp", "linear"])
def test_the_serving_form_gives_the_models_logits(names: list[str], hidden: tuple[int, ...]) -> None:
    schema = Schema(tuple(SCHEMA[n] for n in names))
    model = _scrambled(build_cold_model(schema, 4, hidden, dropout=0.2))
    batch = _batch(schema, 257, seed=1)
    with torch.no_grad():
        want, got = model(batch), model.for_serving()(batch)
    assert got.shape == (257,) and want.std() > 0.1
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_the_serving_form_keeps_copies_so_later_training_does_not_change_it() -> None:
    model = _scrambled(build_cold_model(SCHEMA, 4, (8,)))
    scorer = model.for_serving()
    batch = _batch(SCHEMA, 64, seed=2)
    with torch.no_grad():
        before = scorer(batch).clone()
        for p in model.parameters():
            p.add_(1.0)
        assert torch.equal(scorer(batch), before)
        assert not torch.allclose(model(batch), before)


def test_the_serving_form_has_one_table_for_every_categorical_field() -> None:
    scorer = ColdScorer(_scrambled(build_cold_model(SCHEMA, 4, (8,))))
    assert scorer.table.shape == (50 + 40 + 30, 4) and scorer.offsets == [0, 50, 90]
    assert scorer.first_weight.shape == ((3 + 2) * 4 + 3, 8)  # 3 categorical + 2 pooled fields, 3 numeric
