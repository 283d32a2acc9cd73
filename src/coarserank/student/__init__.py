"""The two-tower student."""

from coarserank.student.two_tower import Tower, TwoTower, build_student

__all__ = ["Tower", "TwoTower", "build_student"]
