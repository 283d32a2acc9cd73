"""The values a user-side field and an item-side field have in common, as shared codes.

A match cross (``op = "match"``) between a user/context field ``a`` and an item field ``b`` says
that equal raw values mean affinity (a user's favourite topic and an item's topic, a user's city
and a shop's city). Two towers cannot learn that identity over more values than their dimension
from their MLPs alone; with one embedding per shared value looked up by both towers
(:class:`coarserank.layers.MatchEmbedding`), the inner product scores it for every value at once.

:func:`match_pairs` turns each such cross into two code maps: ``user_codes[c]`` (``item_codes[c]``)
is the shared index of the raw value with field code ``c``, counted from 1 over the values both
vocabularies know; 0 where the code is padding, out of vocabulary or a value the other side never
had. Raw values are compared as the cross compares them (as strings when the dtypes differ).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from coarserank.data.encode import Encoder
from coarserank.data.schema import FIRST_ID, STUDENT_ITEM_SIDES, STUDENT_USER_SIDES

__all__ = ["MatchPair", "match_pairs"]


@dataclass(frozen=True, eq=False)
class MatchPair:
    """One match cross as shared codes (module doc): ``size`` shared indices including 0 (no match)."""

    name: str
    user_field: str
    item_field: str
    user_codes: np.ndarray
    item_codes: np.ndarray

    @property
    def size(self) -> int:
        return int(max(self.user_codes.max(initial=0), self.item_codes.max(initial=0))) + 1


def match_pairs(encoder: Encoder) -> tuple[MatchPair, ...]:
    """The match crosses of ``encoder.cfg`` between a user/context-side and an item-side categorical
    feature, in declaration order; other match crosses (both operands on one side) are left out."""
    sides = {f.name: f.side for f in encoder.cfg.features}
    out: list[MatchPair] = []
    for c in encoder.cfg.crosses:
        if c.op != "match":
            continue
        if sides[c.a] in STUDENT_USER_SIDES and sides[c.b] in STUDENT_ITEM_SIDES:
            user, item = c.a, c.b
        elif sides[c.b] in STUDENT_USER_SIDES and sides[c.a] in STUDENT_ITEM_SIDES:
            user, item = c.b, c.a
        else:
            continue
        vu, vi = encoder.vocabs_[user], encoder.vocabs_[item]
        as_text = vu.dtype != vi.dtype
        keys_u = [str(v) for v in vu.values] if as_text else list(vu.values)
        keys_i = [str(v) for v in vi.values] if as_text else list(vi.values)
        shared = {k: n + 1 for n, k in enumerate(sorted(set(keys_u) & set(keys_i)))}
        out.append(MatchPair(c.name, user, item, _codes(keys_u, shared), _codes(keys_i, shared)))
    return tuple(out)


def _codes(keys: list[Any], shared: dict[Any, int]) -> np.ndarray:
    """Field code -> shared index (0 for padding, OOV and values the other side lacks)."""
    codes = np.zeros(len(keys) + FIRST_ID, dtype=np.int64)
    codes[FIRST_ID:] = [shared.get(k, 0) for k in keys]
    return codes
