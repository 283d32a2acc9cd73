"""The teacher: DeepFM (default) or DCN-v2 over user, item, context, cross and sequence fields."""

from __future__ import annotations

from typing import Callable

from torch import nn

from coarserank.config import TeacherConfig
from coarserank.data.schema import Schema
from coarserank.teacher.dcn import DCNv2, build_dcn
from coarserank.teacher.deepfm import DeepFM, build_deepfm

__all__ = ["DeepFM", "DCNv2", "TEACHER_FAMILIES", "build_teacher"]

TEACHER_FAMILIES: dict[str, Callable[[Schema, TeacherConfig], nn.Module]] = {
    "deepfm": build_deepfm,
    "dcn": build_dcn,
}


def build_teacher(schema: Schema, cfg: TeacherConfig) -> nn.Module:
    """The teacher of family ``cfg.family`` over ``schema``."""
    return TEACHER_FAMILIES[cfg.family](schema, cfg)
