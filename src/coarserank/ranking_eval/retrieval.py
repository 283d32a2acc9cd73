"""Retrieval quality over the whole catalogue: Recall@K, NDCG@K, coverage and popularity skew.

A recall stage must find the items a user will engage with among *every* item, not among the
items the user was shown. So each evaluated user's score vector runs over the whole catalogue
(``n_items`` positions), the user's known items (``exclude``: what the user had before the test
period) are removed from the ranking, and the top ``K`` remaining positions are compared with the
user's held-out positives. Nothing here imports torch.

What is computed (for each ``K`` in ``ks``)
-------------------------------------------
Held-out set ``H_u``
    The user's held-out positives minus the user's excluded items (an excluded item can never be
    retrieved). Users with an empty ``H_u`` are skipped and counted (``users_skipped``).
Recall@K
    ``|top_K(u) ∩ H_u| / |H_u|``, averaged over the users used (unweighted).
NDCG@K
    Binary gains: ``DCG = sum over hits at rank r (1-based) of 1 / log2(r + 1)``, over the ideal
    ``IDCG = sum_{r=1..min(|H_u|, K)} 1 / log2(r + 1)``; averaged over the users used. Equal to
    scikit-learn's ``ndcg_score(k=K)`` over the non-excluded items when scores have no ties.
Coverage@K
    Share of the catalogue that appears in at least one used user's top K.
Popularity skew@K
    ``popularity_percentile``: mean, over every returned slot, of the item's train-popularity
    percentile (0 = least popular, 1 = most popular; tied counts share their mean rank), so
    0.5 is what popularity-blind retrieval gives and 1 is head-only retrieval.
    ``head_share``: share of returned slots that are head items, the most popular items that
    together hold :data:`HEAD_SHARE` of the train interactions. ``gini``: Gini coefficient of how
    often each catalogue item is returned (0 = every item equally often, near 1 = a few items
    for everyone).

Scores and ties
---------------
:func:`top_k` scores users against items by inner product; a user given ``[K, dim]`` vectors
(several interests) scores an item by the maximum over its interests. Chunks of users are scored
with one matrix product each and cut with ``argpartition``; equal scores are ordered by item
position (lower first). :func:`popularity_item_vectors` turns train counts into one-dimensional
"vectors" whose inner product with a user vector of ones ranks items by count (ties by position),
the popularity baseline.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from coarserank.errors import ConfigError, DataError

__all__ = [
    "HEAD_SHARE",
    "UserItems",
    "RetrievalResult",
    "top_k",
    "retrieval_metrics",
    "evaluate_retrieval",
    "popularity_item_vectors",
    "popularity_percentiles",
    "gini",
    "check_ks",
    "retrieval_summary",
]

HEAD_SHARE: Final[float] = 0.5
"""Head items: the most popular items holding this share of the train interactions."""
_CHUNK_CELLS: Final[int] = 1 << 23  # users x items x interests scored at once (32 MiB of float32)


def check_ks(ks: Sequence[int], where: str = "ks") -> tuple[int, ...]:
    """Sorted unique cut-offs; ``ConfigError`` naming ``where`` if any is below 1 or none is given."""
    values = [int(k) for k in ks]
    if not values:
        raise ConfigError(f"{where} must hold at least one cut-off K >= 1, got an empty list")
    bad = [k for k in values if k < 1]
    if bad:
        raise ConfigError(f"{where}: every cut-off K must be >= 1, got {bad[0]}")
    return tuple(sorted(set(values)))


@dataclass(frozen=True, eq=False)
class UserItems:
    """Item sets per user as CSR: user ``u``'s items (catalogue positions, sorted, unique) are
    ``indices[indptr[u]:indptr[u + 1]]``.

    Examples
    --------
    >>> s = UserItems.from_pairs(np.array([0, 0, 1]), np.array([3, 1, 3]), n_users=2, n_items=4)
    >>> s.row(0).tolist(), s.sizes.tolist()
    ([1, 3], [2, 1])
    """

    indptr: np.ndarray
    indices: np.ndarray
    n_items: int

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, n_users: int, n_items: int) -> UserItems:
        """Sets from (user position, item position) pairs; repeated pairs count once."""
        u, i = np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64)
        if u.shape != i.shape or u.ndim != 1:
            raise DataError(f"users and items must be 1-D arrays of one length, got {u.shape} and {i.shape}")
        if u.size and (u.min() < 0 or u.max() >= n_users):
            raise DataError(f"user positions must lie in [0, {n_users}), got {u.min()}..{u.max()}")
        if i.size and (i.min() < 0 or i.max() >= n_items):
            raise DataError(f"item positions must lie in [0, {n_items}), got {i.min()}..{i.max()}")
        keys = np.unique(u * n_items + i)
        rows = keys // n_items
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n_users), out=indptr[1:])
        return cls(indptr, (keys % n_items).astype(np.int64), int(n_items))

    @property
    def n_users(self) -> int:
        return int(self.indptr.size - 1)

    @property
    def sizes(self) -> np.ndarray:
        return np.diff(self.indptr)

    def row(self, u: int) -> np.ndarray:
        return self.indices[self.indptr[u]:self.indptr[u + 1]]

    def keys(self) -> np.ndarray:
        """Sorted ``user * n_items + item`` of every member."""
        return np.repeat(np.arange(self.n_users, dtype=np.int64), self.sizes) * self.n_items + self.indices

    def contains(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        """Membership of each (user, item) pair, vectorised; item -1 is never a member."""
        keys = self.keys()
        query = np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        pos = np.minimum(np.searchsorted(keys, query), max(keys.size - 1, 0))
        return (keys.size > 0) & (keys[pos] == query) & (np.asarray(items) >= 0)

    def minus(self, other: UserItems) -> UserItems:
        """Row-wise set difference ``self - other`` (same users and catalogue)."""
        if other.n_users != self.n_users or other.n_items != self.n_items:
            raise DataError(f"cannot subtract item sets of {other.n_users} users x {other.n_items} items from "
                            f"{self.n_users} users x {self.n_items} items")
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), self.sizes)
        keep = ~other.contains(users, self.indices)
        return UserItems.from_pairs(users[keep], self.indices[keep], self.n_users, self.n_items)

    def take(self, users: np.ndarray) -> UserItems:
        """The rows of ``users`` (positions), in that order."""
        users = np.asarray(users, dtype=np.int64)
        sizes = self.sizes[users]
        starts = np.repeat(self.indptr[users], sizes)
        offsets = np.arange(int(sizes.sum()), dtype=np.int64) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        indptr = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        return UserItems(indptr, self.indices[starts + offsets], self.n_items)


def _as_queries(user_vectors: np.ndarray, dim: int) -> np.ndarray:
    q = np.asarray(user_vectors, dtype=np.float32)
    if q.ndim == 2:
        q = q[:, None, :]
    if q.ndim != 3 or q.shape[2] != dim:
        raise DataError(f"user vectors must be [users, dim] or [users, interests, dim] with dim {dim}, "
                        f"got shape {np.shape(user_vectors)}")
    if q.shape[1] < 1:
        raise DataError("user vectors hold zero interests; a user needs at least one vector")
    if not np.isfinite(q).all():
        raise DataError("user vectors contain NaN or infinity")
    return q


def top_k(user_vectors: np.ndarray, item_vectors: np.ndarray, k: int,
          exclude: UserItems | None = None) -> np.ndarray:
    """The ``k`` best catalogue positions per user by inner product, best first.

    ``user_vectors`` is ``[U, dim]`` or ``[U, interests, dim]`` (an item's score is the maximum
    over interests); ``exclude`` (``U`` rows) removes each user's known items. Returns int64
    ``[U, k]``; -1 fills the tail when fewer than ``k`` items remain.
    """
    items = np.asarray(item_vectors, dtype=np.float32)
    if items.ndim != 2 or items.shape[0] == 0:
        raise DataError(f"item vectors must be a non-empty [items, dim] array, got shape {items.shape}")
    k = check_ks([k], "k")[0]
    q = _as_queries(user_vectors, items.shape[1])
    n_users, n_items = q.shape[0], items.shape[0]
    if exclude is not None and (exclude.n_users != n_users or exclude.n_items != n_items):
        raise DataError(f"exclude holds {exclude.n_users} users x {exclude.n_items} items; the vectors hold "
                        f"{n_users} users x {n_items} items")
    take = min(k, n_items)
    out = np.full((n_users, k), -1, dtype=np.int64)
    step = max(1, _CHUNK_CELLS // (n_items * q.shape[1]))
    item_t = np.ascontiguousarray(items.T)
    for lo in range(0, n_users, step):
        hi = min(lo + step, n_users)
        scores = (q[lo:hi] @ item_t).max(axis=1)  # [c, n_items]
        if exclude is not None:
            sub = exclude.take(np.arange(lo, hi))
            scores[np.repeat(np.arange(hi - lo), sub.sizes), sub.indices] = -np.inf
        if take < n_items:
            part = np.argpartition(-scores, take - 1, axis=1)[:, :take]
            # a tie at the cut may leave a lower position out: take every item scoring >= the k-th
            kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
            rows, cols = np.nonzero(scores >= kth)
            cand_scores = scores[rows, cols]
            order = np.lexsort((cols, -cand_scores, rows))
            rows, cols, cand_scores = rows[order], cols[order], cand_scores[order]
            first = np.searchsorted(rows, np.arange(hi - lo))
            rank = np.arange(rows.size) - first[rows]
            keep = rank < take
            block = np.full((hi - lo, take), -1, dtype=np.int64)
            block[rows[keep], rank[keep]] = cols[keep]
            block[np.isneginf(np.take_along_axis(scores, np.maximum(block, 0), axis=1))] = -1
        else:
            block = np.argsort(-scores, axis=1, kind="stable")
            block[np.isneginf(np.take_along_axis(scores, block, axis=1))] = -1
        out[lo:hi, :take] = block
    return out


def popularity_percentiles(counts: np.ndarray) -> np.ndarray:
    """Each item's popularity percentile in [0, 1] (ties share their mean rank; one item -> 0.5)."""
    c = np.asarray(counts, dtype=np.float64)
    n = c.size
    if n == 1:
        return np.array([0.5])
    _, inverse, tally = np.unique(c, return_inverse=True, return_counts=True)
    first = np.concatenate([[0], np.cumsum(tally)[:-1]])
    mean_rank = first + (tally - 1) / 2.0  # 0-based mean rank of each distinct value
    return mean_rank[inverse] / (n - 1)


def gini(counts: np.ndarray) -> float:
    """Gini coefficient of non-negative counts: ``sum_i (2i - n - 1) c_(i) / (n sum c)``, ``c`` ascending."""
    c = np.sort(np.asarray(counts, dtype=np.float64))
    total = c.sum()
    if c.size == 0 or total <= 0:
        return 0.0
    i = np.arange(1, c.size + 1)
    return float(((2 * i - c.size - 1) * c).sum() / (c.size * total))


def _head_items(counts: np.ndarray) -> np.ndarray:
    """Boolean mask of head items: most popular first, until :data:`HEAD_SHARE` of the interactions."""
    c = np.asarray(counts, dtype=np.float64)
    order = np.lexsort((np.arange(c.size), -c))
    cum = np.cumsum(c[order])
    head = np.zeros(c.size, dtype=bool)
    if cum.size and cum[-1] > 0:
        n_head = int(np.searchsorted(cum, HEAD_SHARE * cum[-1]) + 1)
        head[order[:n_head]] = True
    return head


@dataclass(frozen=True, eq=False)
class RetrievalResult:
    """Retrieval metrics per cut-off; see the module docstring for the definitions.

    ``per_user_recall[K]`` holds each used user's Recall@K (users in input order), for intervals.
    """

    ks: tuple[int, ...]
    recall: dict[int, float]
    ndcg: dict[int, float]
    coverage: dict[int, float]
    popularity_percentile: dict[int, float]
    head_share: dict[int, float]
    gini: dict[int, float]
    users_used: int
    users_skipped: int
    n_items: int
    per_user_recall: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    def to_json(self, primary_k: int = 100) -> dict[str, Any]:
        """Flat ``{"recall@K", "ndcg@K", "coverage@K", ...}``; ``coverage`` alone is coverage at
        ``primary_k`` (or the largest K below it, else the smallest K)."""
        body: dict[str, Any] = {}
        for k in self.ks:
            body.update({f"recall@{k}": self.recall[k], f"ndcg@{k}": self.ndcg[k],
                         f"coverage@{k}": self.coverage[k], f"popularity_percentile@{k}":
                         self.popularity_percentile[k], f"head_share@{k}": self.head_share[k],
                         f"gini@{k}": self.gini[k]})
        below = [k for k in self.ks if k <= primary_k]
        body["coverage"] = self.coverage[below[-1] if below else self.ks[0]]
        body.update(users_used=self.users_used, users_skipped=self.users_skipped, items=self.n_items)
        return body


def retrieval_metrics(top: np.ndarray, heldout: UserItems, ks: Sequence[int],
                      item_counts: np.ndarray) -> RetrievalResult:
    """Metrics of ranked lists ``top [U, >= max(ks)]`` (catalogue positions, -1 = nothing) against
    ``heldout`` (``U`` rows, already without the excluded items); ``item_counts`` are the train
    interactions per catalogue position (for the popularity skew)."""
    ks = check_ks(ks)
    top = np.asarray(top, dtype=np.int64)
    counts = np.asarray(item_counts, dtype=np.float64)
    if top.ndim != 2 or top.shape[0] != heldout.n_users or top.shape[1] < ks[-1]:
        raise DataError(f"ranked lists must be [{heldout.n_users} users, >= {ks[-1]}], got shape {top.shape}")
    if counts.shape != (heldout.n_items,):
        raise DataError(f"item_counts must hold one count per catalogue item ({heldout.n_items}), "
                        f"got shape {counts.shape}")
    sizes = heldout.sizes
    used = sizes > 0
    if not used.any():
        raise DataError("no evaluated user has a held-out positive outside its excluded items; "
                        "retrieval metrics need at least one")
    t, h = top[used], heldout.take(np.flatnonzero(used))
    n_used, depth = t.shape[0], ks[-1]
    t = t[:, :depth]
    hit = h.contains(np.repeat(np.arange(n_used), depth).reshape(n_used, depth), t)
    gains = hit / np.log2(np.arange(2, depth + 2))
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, depth + 2)))])
    pct, head = popularity_percentiles(counts), _head_items(counts)
    out: dict[str, dict[int, float]] = {m: {} for m in ("recall", "ndcg", "coverage", "pct", "head", "gini")}
    per_user: dict[int, np.ndarray] = {}
    for k in ks:
        per_user[k] = hit[:, :k].sum(axis=1) / h.sizes
        out["recall"][k] = float(per_user[k].mean())
        out["ndcg"][k] = float((gains[:, :k].sum(axis=1) / ideal[np.minimum(h.sizes, k)]).mean())
        returned = t[:, :k][t[:, :k] >= 0]
        freq = np.bincount(returned, minlength=heldout.n_items)
        out["coverage"][k] = float((freq > 0).mean())
        out["pct"][k] = float(pct[returned].mean()) if returned.size else float("nan")
        out["head"][k] = float(head[returned].mean()) if returned.size else float("nan")
        out["gini"][k] = gini(freq)
    return RetrievalResult(ks, out["recall"], out["ndcg"], out["coverage"], out["pct"], out["head"], out["gini"],
                           int(n_used), int((~used).sum()), int(heldout.n_items), per_user)


def evaluate_retrieval(user_vectors: np.ndarray, item_vectors: np.ndarray, heldout: UserItems,
                       exclude: UserItems | None, ks: Sequence[int], item_counts: np.ndarray) -> RetrievalResult:
    """Rank the whole catalogue for each user (``top_k`` with ``exclude`` removed) and measure it
    against ``heldout`` minus ``exclude``; users without held-out positives are never scored."""
    ks = check_ks(ks)
    target = heldout.minus(exclude) if exclude is not None else heldout
    users = np.flatnonzero(target.sizes > 0)
    if users.size == 0:
        raise DataError("no evaluated user has a held-out positive outside its excluded items; "
                        "retrieval metrics need at least one")
    vectors = np.asarray(user_vectors)
    if vectors.shape[0] != heldout.n_users:
        raise DataError(f"{vectors.shape[0]} user vectors for {heldout.n_users} users with held-out items")
    top = top_k(vectors[users], item_vectors, ks[-1], exclude.take(users) if exclude is not None else None)
    result = retrieval_metrics(top, target.take(users), ks, item_counts)
    return RetrievalResult(result.ks, result.recall, result.ndcg, result.coverage, result.popularity_percentile,
                           result.head_share, result.gini, result.users_used, int(heldout.n_users - users.size),
                           result.n_items, result.per_user_recall)


def popularity_item_vectors(counts: np.ndarray) -> np.ndarray:
    """``[n_items, 1]`` scores for the popularity baseline: more train interactions rank higher,
    equal counts by catalogue position; pair with user vectors ``np.ones((U, 1))``."""
    c = np.asarray(counts, dtype=np.float64)
    if c.ndim != 1 or c.size == 0:
        raise DataError(f"popularity counts must be a non-empty 1-D array, got shape {c.shape}")
    order = np.lexsort((np.arange(c.size), -c))
    score = np.empty(c.size, dtype=np.float32)
    score[order] = np.arange(c.size, 0, -1, dtype=np.float32)  # exact in float32 below 2**24 items
    return score[:, None]


def retrieval_summary(table: dict[str, dict[str, Any]], k: int = 100) -> dict[str, Any]:
    """The report's view of ``metrics["test"]["retrieval"]``: one row per model at cut-off ``k`` (or the
    largest cut-off below it) and the models whose top-K is head-only: a mean popularity percentile of
    at least ``1 - K / items``, as concentrated on popular items as a list drawn from the ``2K`` most
    popular ones (popularity's own top-K sits near ``1 - K / (2 items)``). The popularity baseline is
    head-only by construction and is not listed."""
    rows, flagged = [], []
    for model, m in table.items():
        cuts = sorted(int(key.split("@")[1]) for key in m if key.startswith("recall@"))
        at = max([c for c in cuts if c <= k] or cuts[:1])
        row = {"model": model, "k": at, **{name: m[f"{name}@{at}"] for name in
                                           ("recall", "ndcg", "coverage", "popularity_percentile", "head_share")}}
        row["head_only"] = bool(row["popularity_percentile"] >= 1.0 - at / max(int(m["items"]), 1))
        rows.append(row)
        if row["head_only"] and model != "popularity":
            flagged.append(model)
    return {"rows": rows, "head_only": flagged,
            "head_only_rule": "mean popularity percentile of the top K >= 1 - K / catalogue items"}
