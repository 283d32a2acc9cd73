"""The teacher: DeepFM over user, item, context and cross features."""

from coarserank.teacher.deepfm import DeepFM, build_teacher

__all__ = ["DeepFM", "build_teacher"]
