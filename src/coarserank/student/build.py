"""``build_student``: the student of ``student.family``, built from the schema and its options.

Tower families (``two_tower``, ``senet``, ``shortcut``, ``parallel``, ``dat``) give a
:class:`~coarserank.student.two_tower.TwoTower` (user tower on user + context fields, item tower on
item fields, ``s = a * <u, v> + b``); ``cold`` gives a :class:`~coarserank.student.cold.ColdModel`
over ``student.cold.features``, which scores full candidate rows and has no towers.

Example
-------
>>> student = build_student(schema, StudentConfig(family="senet"))   # doctest: +SKIP
>>> has_towers(student)                                               # doctest: +SKIP
True
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from coarserank.config import StudentConfig
from coarserank.data.schema import PAD, STUDENT_ITEM_SIDES, STUDENT_USER_SIDES, Schema
from coarserank.errors import ConfigError
from coarserank.layers import MLP, FeatureEmbedding, FieldExcitation
from coarserank.student.cold import build_cold_model
from coarserank.student.towers import DATTower, ParallelTower, SENetTower, ShortcutTower, channel
from coarserank.student.two_tower import Tower, TwoTower

__all__ = ["build_student", "has_towers", "served_dim"]

Side = str  # "user" or "item"


def has_towers(model: nn.Module) -> bool:
    """Whether ``model`` exposes ``user_tower``, ``item_tower`` and ``score(u, v)`` (every tower family)."""
    return all(hasattr(model, a) for a in ("user_tower", "item_tower", "score"))


def served_dim(model: nn.Module) -> int:
    """Length of the served vector per side (0 for a model without towers, which serves rows)."""
    if not has_towers(model):
        return 0
    schema = model.user_tower.schema
    probe = {f.name: torch.zeros((1,) if f.kind in ("categorical", "numeric") else (1, f.max_len),
                                 dtype=torch.float32 if f.kind == "numeric" else torch.int64)
             for f in schema.fields}
    with torch.no_grad():
        was = model.training
        model.eval()
        dim = int(model.user_tower(probe).shape[-1])
        model.train(was)
    return dim


def _plain(schema: Schema, cfg: StudentConfig, side: Side) -> nn.Module:
    return Tower(FeatureEmbedding(schema, cfg.embed_dim),
                 MLP(len(schema) * cfg.embed_dim, cfg.hidden, cfg.dropout, out_dim=cfg.dim))


def _senet(schema: Schema, cfg: StudentConfig, side: Side) -> nn.Module:
    return SENetTower(FeatureEmbedding(schema, cfg.embed_dim), FieldExcitation(len(schema), cfg.senet.reduction),
                      MLP(len(schema) * cfg.embed_dim, cfg.hidden, cfg.dropout, out_dim=cfg.dim))


def _shortcut(schema: Schema, cfg: StudentConfig, side: Side) -> nn.Module:
    names = cfg.shortcut.user_fields if side == "user" else cfg.shortcut.item_fields
    d, n = cfg.embed_dim, len(schema)
    mlp = MLP(n * d, cfg.hidden, cfg.dropout, out_dim=cfg.dim)
    if names:
        missing = [x for x in names if x not in schema.names]
        if missing:
            raise ConfigError(f"student.shortcut.{side}_fields: {missing[0]!r} is not a field of the {side} tower; "
                              f"it reads: {', '.join(schema.names)}")
        at = tuple(schema.names.index(x) for x in names)
        return ShortcutTower(FeatureEmbedding(schema, d), mlp, nn.Linear(len(at) * d, cfg.dim), fields=at)
    return ShortcutTower(FeatureEmbedding(schema, d), mlp, nn.Linear(n * d, cfg.dim),
                         gate=FieldExcitation(n, cfg.senet.reduction), top=min(cfg.shortcut.top, n))


def _parallel(schema: Schema, cfg: StudentConfig, side: Side) -> nn.Module:
    p = cfg.parallel
    channels = {c: channel(c, len(schema), cfg.embed_dim, cfg.hidden, cfg.dropout, w, p.cross_layers)
                for c, w in p.widths(cfg.dim, cfg.embed_dim).items()}
    attention = nn.Linear(cfg.dim, len(channels)) if side == "user" and p.fusion == "attention" else None
    return ParallelTower(FeatureEmbedding(schema, cfg.embed_dim), channels, weighted=side == "user",
                         attention=attention)


def _dat(schema: Schema, cfg: StudentConfig, side: Side) -> nn.Module:
    name = cfg.dat.user_field if side == "user" else cfg.dat.item_field
    if name not in schema.names or schema[name].kind != "categorical":
        raise ConfigError(f"student.dat.{side}_field = {name!r} is not a categorical field of the {side} tower "
                          f"({', '.join(schema.names)}); DAT needs the {side} ids")
    augment = nn.Embedding(schema[name].size, cfg.dim, padding_idx=PAD)
    nn.init.normal_(augment.weight, std=0.01)
    with torch.no_grad():
        augment.weight[PAD].zero_()
    mlp = MLP(len(schema) * cfg.embed_dim + cfg.dim, cfg.hidden, cfg.dropout, out_dim=cfg.dim)
    return DATTower(FeatureEmbedding(schema, cfg.embed_dim), augment, name, mlp)


_TOWERS: dict[str, Callable[[Schema, StudentConfig, Side], nn.Module]] = {
    "two_tower": _plain, "senet": _senet, "shortcut": _shortcut, "parallel": _parallel, "dat": _dat}


def build_student(schema: Schema, cfg: StudentConfig) -> nn.Module:
    """The student of ``cfg.family`` over ``schema`` (the run's full schema; each part selects its fields).

    Raises
    ------
    ConfigError
        A family option that names fields the schema does not hold.
    """
    if cfg.family == "cold":
        missing = [n for n in cfg.cold.features if n not in schema.names]
        if missing or not cfg.cold.features:
            raise ConfigError(f"student.cold.features must name fields of the data ({', '.join(schema.names)}); "
                              f"got {list(cfg.cold.features)}")
        return build_cold_model(schema.select(names=cfg.cold.features), cfg.embed_dim, cfg.hidden, cfg.dropout)
    if cfg.family not in _TOWERS:
        raise ConfigError(f"student.family must be one of {', '.join([*_TOWERS, 'cold'])}, got {cfg.family!r}")
    make = _TOWERS[cfg.family]
    return TwoTower(make(schema.select(STUDENT_USER_SIDES), cfg, "user"),
                    make(schema.select(STUDENT_ITEM_SIDES), cfg, "item"))
