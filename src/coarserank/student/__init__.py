"""The students: tower families scored by one inner product, and the COLD model that scores rows."""

from coarserank.student.build import build_student, has_towers, served_dim
from coarserank.student.cold import ColdModel, build_cold_model
from coarserank.student.matched import MatchedTower, with_match_channel
from coarserank.student.towers import DATTower, ParallelTower, SENetTower, ShortcutTower
from coarserank.student.two_tower import Tower, TwoTower

__all__ = ["ColdModel", "DATTower", "MatchedTower", "ParallelTower", "SENetTower", "ShortcutTower", "Tower", "TwoTower",
           "build_cold_model", "build_student", "has_towers", "served_dim", "with_match_channel"]
