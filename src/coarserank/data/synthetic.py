"""Built-in synthetic exposure log with a known click probability (the oracle).

:func:`generate` draws users, items and an exposure log whose labels come from a documented
logistic model, and stores that model's probability in ``p_true`` so every trained model can be
compared with the oracle. It is deterministic by seed, fully vectorised, and builds the log in
chunks of whole users (10M rows: about 2.3 GiB peak RSS).

Sizes
    ``U = cfg.users or max(100, rows // 20)`` users (a derived count is capped at ``rows // 2``; a
    given one above it is an error), ``I = cfg.items or max(100, rows // 40)`` items, exactly
    ``cfg.rows`` exposures; 30 categories, 50 regions, 100 tags and ``cfg.topics`` topics, each
    topic nested in one category.
Popularity and activity (power laws)
    The item of popularity rank ``r`` (1-based, ranks shuffled over ids) has weight
    ``r ** (-1 / popularity_exponent)``, so exposure counts follow a power law with tail index
    ``popularity_exponent`` (smaller = heavier head). Users likewise with ``activity_exponent``;
    every user first gets ``min(5, rows // U)`` exposures, the rest are multinomial by weight.
Exposures
    A user's exposures form requests of 5-20 rows (the last may be shorter), spread uniformly over
    90 days with a diurnal hour profile; the rows of a request share timestamp, hour and device
    (the user's primary device with probability 0.85). With probability ``on_topic_share`` the item
    is drawn by popularity among the items of the user's ``fav_topic`` (itself the topic of a
    popularity-drawn item), else by global popularity.
Click model: ``p_true = sigmoid(logit)``, ``label ~ Bernoulli(p_true)``, with::

    logit = -2.3                                   base (mean logit about -1.56, CTR about 0.25)
          + age[bucket] + gender + region + e_u    user: age buckets (<25 .. >=55) .3 .15 0 -.15 -.3,
                                                   F +.1 / M -.1, region ~ N(0,.25), e_u ~ N(0,.4)
          + q_i - 0.2 * z(log price_i)             item: q_i = .4 (1 - 2 rank/(I-1)) + N(0,.55)
          + 0.8 <P_u, Q_i> / sqrt(8)               rank-8 affinity: P from region, age bucket and
                                                   gender, Q from category and tags
          + dev[d] + dev_cat[d, c]                 context: dev = ios .1, android 0, web -.2;
          + 0.2 cos(2 pi (hour - 21) / 24)         dev_cat ~ N(0,.2)
          + 1.2 [topic_i == fav_topic_u]           identity over cfg.topics values: not low-rank
          + a_uc ~ N(0, 0.7)                       per-(user, category) taste, seen only in history
          + N(0, cfg.noise)                        per-exposure noise, part of p_true

The user, item, affinity and context lines are what a two-tower model can represent; the topic
match (an identity interaction over more topics than the student's 64 dimensions) and the
per-(user, category) taste are what the teacher's crosses add. ``P`` and ``Q`` have unit-variance
entries. The noise is inside ``p_true``, so the oracle is an upper bound no model reaches. On the
default 200k rows (seed 0) the oracle AUC is about 0.82; the no-noise logit without the two cross
terms reaches a request-GAUC of about 0.70 and with them about 0.77.

Example
-------
>>> from coarserank.config import SyntheticConfig
>>> raw = generate(SyntheticConfig(rows=1000), seed=0)
>>> raw.exposures.height, raw.oracle_col
(1000, 'p_true')
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from coarserank.config import SyntheticConfig
from coarserank.data.tables import RawTables
from coarserank.errors import ConfigError, DataError

__all__ = ["generate", "oracle_probability"]

N_CATEGORIES = 30
N_REGIONS = 50
N_TAGS = 100
DAYS = 90
RANK = 8
AGE_BOUNDARIES = np.array([25, 35, 45, 55])
DEVICES = ("ios", "android", "web")

_CHUNK_ROWS = 1_000_000          # exposures are built in chunks of whole users of about this size
_MIN_PER_USER = 5
_REQUEST_SIZE = (5, 20)
_PRIMARY_DEVICE_P = 0.85

_BASE = -2.3
_AGE_EFFECT = np.array([0.30, 0.15, 0.0, -0.15, -0.30])
_GENDER_EFFECT = np.array([0.1, -0.1])  # F, M
_REGION_SD = 0.25
_USER_SD = 0.40
_QUALITY_POP = 0.4
_QUALITY_SD = 0.55
_PRICE_EFFECT = -0.2
_LOWRANK_SD = 0.8
_DEVICE_EFFECT = np.array([0.1, 0.0, -0.2])
_DEVICE_CATEGORY_SD = 0.2
_HOUR_AMPLITUDE = 0.2
_TOPIC_MATCH = 1.2
_USER_CATEGORY_SD = 0.7


@dataclass(frozen=True)
class _PopularitySampler:
    """Draw items by popularity, globally or within one topic, with one cumulative-weight array."""

    order: np.ndarray   # item ids sorted by topic
    cum: np.ndarray     # cumulative popularity along ``order``
    lo: np.ndarray      # (topics,) cumulative weight before the topic's block
    hi: np.ndarray      # (topics,) cumulative weight at the block's end
    start: np.ndarray   # (topics,) first index of the block in ``order``
    end: np.ndarray     # (topics,) one past the block's last index

    def draw(self, u: np.ndarray, topic: np.ndarray | None = None) -> np.ndarray:
        """Item ids for uniforms ``u``; within ``topic`` where it is >= 0, else global."""
        n = self.cum.size
        if topic is None:
            idx = np.searchsorted(self.cum, u * self.cum[-1], side="right")
            return self.order[np.minimum(idx, n - 1)]
        on = topic >= 0
        t = np.where(on, topic, 0)
        lo = np.where(on, self.lo[t], 0.0)
        width = np.where(on, self.hi[t] - self.lo[t], self.cum[-1])
        idx = np.searchsorted(self.cum, lo + u * width, side="right")
        first = np.where(on, self.start[t], 0)
        last = np.where(on, self.end[t], n) - 1
        return self.order[np.clip(idx, first, last)]


@dataclass(frozen=True)
class _World:
    """Per-user and per-item quantities the exposure chunks read (all indexed by id)."""

    user_effect: np.ndarray      # (U,) float64: age + gender + region + e_u
    user_latent: np.ndarray      # (U, RANK) float32, already scaled
    fav_topic: np.ndarray        # (U,) int64
    primary_device: np.ndarray   # (U,) int64
    user_category: np.ndarray    # (U, N_CATEGORIES) float32
    item_effect: np.ndarray      # (I,) float64: quality + price
    item_latent: np.ndarray      # (I, RANK) float32
    item_topic: np.ndarray       # (I,) int64
    item_category: np.ndarray    # (I,) int64
    device_category: np.ndarray  # (3, N_CATEGORIES) float64, device main effect included
    sampler: _PopularitySampler


def generate(cfg: SyntheticConfig, seed: int) -> RawTables:
    """Generate users, items and an exposure log with labels and the true click probability.

    Parameters
    ----------
    cfg
        Sizes and shape (see the module docstring for the generative model).
    seed
        Non-negative integer; the same ``cfg`` and ``seed`` give identical tables.

    Returns
    -------
    RawTables
        ``exposures`` (user_id, item_id, timestamp, request_id, device, hour, label, p_true),
        sorted by (timestamp, user_id), ties in request order; ``users``; ``items``; ``oracle_col="p_true"``.

    Raises
    ------
    ConfigError
        If a ``synthetic.*`` value is out of range or ``seed`` is not a non-negative integer.
    """
    n_users, n_items = _validate(cfg, seed)
    table_seq, exposure_seq = np.random.SeedSequence(int(seed)).spawn(2)
    rng = np.random.default_rng(table_seq)
    items, item_weight, item_parts = _make_items(rng, n_items, cfg)
    users, world = _make_users(rng, n_users, cfg, item_weight, item_parts)
    counts = _exposure_counts(rng, n_users, cfg)

    user_start = np.cumsum(counts) - counts
    splits = np.unique(np.searchsorted(user_start, np.arange(_CHUNK_ROWS, cfg.rows, _CHUNK_ROWS)))
    bounds = np.concatenate([[0], splits, [n_users]])
    chunk_seqs = exposure_seq.spawn(len(bounds) - 1)
    chunks: list[pl.DataFrame] = []
    request_offset = 0
    for k in range(len(bounds) - 1):
        frame, n_requests = _make_chunk(np.random.default_rng(chunk_seqs[k]), world, cfg,
                                        int(bounds[k]), counts[bounds[k]:bounds[k + 1]], request_offset)
        request_offset += n_requests
        chunks.append(frame)
    exposures = pl.concat(chunks, rechunk=False) if len(chunks) > 1 else chunks[0]
    del chunks
    # One int64 key (timestamp, user_id); the stable sort keeps each user's request order on ties.
    exposures = exposures.sort(pl.col("timestamp") * n_users + pl.col("user_id"), maintain_order=True)
    device = pl.Series("device", DEVICES, dtype=pl.String).gather(exposures["device"])
    exposures = exposures.with_columns(device)
    return RawTables(exposures=exposures, users=users, items=items, oracle_col="p_true")


def _validate(cfg: SyntheticConfig, seed: int) -> tuple[int, int]:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ConfigError(f"run.seed must be a non-negative integer, got {seed!r}")
    if cfg.rows < 100:
        raise ConfigError(f"synthetic.rows must be >= 100, got {cfg.rows}")
    if cfg.users < 0 or cfg.items < 0:
        raise ConfigError(f"synthetic.users and synthetic.items must be >= 0 (0 = derive from rows), "
                          f"got users={cfg.users}, items={cfg.items}")
    if cfg.topics < 2:
        raise ConfigError(f"synthetic.topics must be >= 2, got {cfg.topics}")
    if not 0.0 <= cfg.on_topic_share <= 1.0:
        raise ConfigError(f"synthetic.on_topic_share must lie in [0, 1], got {cfg.on_topic_share}")
    for key in ("popularity_exponent", "activity_exponent"):
        value = getattr(cfg, key)
        if not value > 0:
            raise ConfigError(f"synthetic.{key} must be > 0, got {value}")
    if not cfg.noise >= 0:
        raise ConfigError(f"synthetic.noise must be >= 0, got {cfg.noise}")
    n_users = cfg.users or min(max(100, cfg.rows // 20), cfg.rows // 2)
    n_items = cfg.items or max(100, cfg.rows // 40)
    if n_users > cfg.rows // 2:
        raise ConfigError(f"synthetic.users must be at most rows / 2 = {cfg.rows // 2} so every user has "
                          f"at least 2 exposures, got {n_users}")
    return n_users, n_items


def _power_weights(rng: np.random.Generator, n: int, tail_index: float) -> np.ndarray:
    """Weights ``rank ** (-1 / tail_index)`` with ranks shuffled over ids."""
    return (rng.permutation(n) + 1.0) ** (-1.0 / tail_index)


def _zscore(x: np.ndarray) -> np.ndarray:
    sd = x.std()
    return (x - x.mean()) / (sd if sd > 0 else 1.0)


def _names(prefix: str, n: int) -> pl.Series:
    return pl.Series([f"{prefix}{j:02d}" for j in range(n)], dtype=pl.String)


def _make_items(rng: np.random.Generator, n_items: int,
                cfg: SyntheticConfig) -> tuple[pl.DataFrame, np.ndarray, dict[str, np.ndarray]]:
    topics = cfg.topics
    topic_category = rng.permutation(np.arange(topics) % N_CATEGORIES)
    topic_tag = rng.integers(0, N_TAGS, topics)
    topic = rng.integers(0, topics, n_items)
    category = topic_category[topic]
    rank = rng.permutation(n_items)
    weight = (rank + 1.0) ** (-1.0 / cfg.popularity_exponent)

    category_price = rng.normal(3.2, 0.8, N_CATEGORIES)
    log_price = rng.normal(category_price[category], 0.6)
    price = np.round(np.exp(log_price), 2)

    # 1-4 distinct tags: the topic's home tag plus up to three more at increasing offsets (sum < 100).
    n_tags = rng.integers(1, 5, n_items)
    offsets = np.cumsum(rng.integers(1, 25, (n_items, 3)), axis=1)
    tag = np.concatenate([topic_tag[topic][:, None], (topic_tag[topic][:, None] + offsets) % N_TAGS], axis=1)
    used = np.arange(4)[None, :] < n_tags[:, None]
    tag = np.sort(np.where(used, tag, N_TAGS), axis=1)
    tag_names = pl.concat([_names("t", N_TAGS), pl.Series([None], dtype=pl.String)])
    tag_cols = [tag_names.gather(tag[:, j]).alias(f"_t{j}") for j in range(4)]
    tags = pl.DataFrame(tag_cols).select(
        pl.concat_str([f"_t{j}" for j in range(4)], separator="|", ignore_nulls=True)).to_series()

    tag_vec = rng.normal(size=(N_TAGS + 1, RANK))
    tag_vec[N_TAGS] = 0.0
    tag_mean = tag_vec[tag].sum(axis=1) / np.sqrt(n_tags)[:, None]
    item_latent = (rng.normal(size=(N_CATEGORIES, RANK))[category] + tag_mean) / np.sqrt(2.0)
    quality = _QUALITY_POP * (1.0 - 2.0 * rank / max(n_items - 1, 1)) + rng.normal(0.0, _QUALITY_SD, n_items)
    item_effect = quality + _PRICE_EFFECT * _zscore(log_price)

    items = pl.DataFrame({
        "item_id": np.arange(n_items, dtype=np.int64),
        "category": _names("c", N_CATEGORIES).gather(category),
        "topic": topic.astype(np.int64),
        "tags": tags,
        "price": price.astype(np.float64),
    })
    parts = {"topic": topic.astype(np.int64), "category": category.astype(np.int64),
             "latent": item_latent.astype(np.float32), "effect": item_effect}
    return items, weight, parts


def _make_sampler(topic: np.ndarray, weight: np.ndarray, topics: int) -> _PopularitySampler:
    order = np.argsort(topic, kind="stable")
    cum = np.cumsum(weight[order])
    count = np.bincount(topic, minlength=topics)
    end = np.cumsum(count)
    start = end - count
    padded = np.concatenate([[0.0], cum])
    return _PopularitySampler(order=order, cum=cum, lo=padded[start], hi=padded[end], start=start, end=end)


def _make_users(rng: np.random.Generator, n_users: int, cfg: SyntheticConfig, item_weight: np.ndarray,
                item: dict[str, np.ndarray]) -> tuple[pl.DataFrame, _World]:
    age = np.clip(np.rint(rng.normal(36.0, 12.0, n_users)), 18, 70).astype(np.int64)
    bucket = np.searchsorted(AGE_BOUNDARIES, age, side="right")
    gender = (rng.random(n_users) < 0.5).astype(np.int64)  # 0 = F, 1 = M
    region_p = np.arange(1, N_REGIONS + 1) ** -0.8
    region = rng.choice(N_REGIONS, n_users, p=region_p / region_p.sum())
    sampler = _make_sampler(item["topic"], item_weight, cfg.topics)
    fav_topic = item["topic"][sampler.draw(rng.random(n_users))]  # popular topics have more fans
    primary_device = rng.choice(len(DEVICES), n_users, p=[0.45, 0.40, 0.15])

    user_effect = (_AGE_EFFECT[bucket] + _GENDER_EFFECT[gender]
                   + rng.normal(0.0, _REGION_SD, N_REGIONS)[region] + rng.normal(0.0, _USER_SD, n_users))
    latent = (rng.normal(size=(N_REGIONS, RANK))[region] + rng.normal(size=(len(_AGE_EFFECT), RANK))[bucket]
              + rng.normal(size=(2, RANK))[gender]) / np.sqrt(3.0)
    user_latent = (latent * (_LOWRANK_SD / np.sqrt(RANK))).astype(np.float32)
    user_category = rng.normal(0.0, _USER_CATEGORY_SD, (n_users, N_CATEGORIES)).astype(np.float32)
    device_category = (_DEVICE_EFFECT[:, None]
                       + rng.normal(0.0, _DEVICE_CATEGORY_SD, (len(DEVICES), N_CATEGORIES)))

    users = pl.DataFrame({
        "user_id": np.arange(n_users, dtype=np.int64),
        "age": age,
        "gender": pl.Series(["F", "M"], dtype=pl.String).gather(gender),
        "region": _names("r", N_REGIONS).gather(region),
        "fav_topic": fav_topic.astype(np.int64),
    })
    world = _World(user_effect=user_effect, user_latent=user_latent, fav_topic=fav_topic.astype(np.int64),
                   primary_device=primary_device.astype(np.int64), user_category=user_category,
                   item_effect=item["effect"], item_latent=item["latent"], item_topic=item["topic"],
                   item_category=item["category"], device_category=device_category, sampler=sampler)
    return users, world


def _exposure_counts(rng: np.random.Generator, n_users: int, cfg: SyntheticConfig) -> np.ndarray:
    floor = min(_MIN_PER_USER, cfg.rows // n_users)
    weight = _power_weights(rng, n_users, cfg.activity_exponent)
    return floor + rng.multinomial(cfg.rows - floor * n_users, weight / weight.sum())


def _mean_logit(w: _World, user: np.ndarray, item: np.ndarray, device: np.ndarray,
                hour: np.ndarray) -> np.ndarray:
    """The click model's logit without the per-exposure noise (module docstring)."""
    category = w.item_category[item]
    return (_BASE + w.user_effect[user] + w.item_effect[item]
            + np.einsum("ij,ij->i", w.user_latent[user], w.item_latent[item], dtype=np.float64)
            + w.device_category[device, category]
            + _HOUR_AMPLITUDE * np.cos(2 * np.pi * (hour - 21) / 24)
            + _TOPIC_MATCH * (w.item_topic[item] == w.fav_topic[user])
            + w.user_category[user, category])


def oracle_probability(cfg: SyntheticConfig, seed: int, user_id: np.ndarray, item_id: np.ndarray,
                       device: np.ndarray, hour: np.ndarray) -> np.ndarray:
    """True click probability without the per-exposure noise, for any (user, item, context).

    Rebuilds the users and items that :func:`generate` draws for ``cfg`` and ``seed`` (the
    exposure log is not redrawn) and evaluates ``sigmoid(logit - noise)`` of the click model.
    Candidates that were never shown (sampled from the catalogue) get an oracle this way; for
    shown rows it differs from ``p_true`` only by the unobservable noise term.

    Parameters
    ----------
    cfg, seed
        The configuration and seed the data was generated with.
    user_id, item_id : np.ndarray
        Integer ids as in the generated tables.
    device : np.ndarray
        Device names (``ios``, ``android``, ``web``).
    hour : np.ndarray
        Hour of day, 0-23.

    Returns
    -------
    np.ndarray
        float64 probabilities, one per row.

    Raises
    ------
    DataError
        An id outside the generated range or an unknown device name.
    """
    n_users, n_items = _validate(cfg, seed)
    user, item = np.asarray(user_id, dtype=np.int64), np.asarray(item_id, dtype=np.int64)
    for name, ids, n in (("user_id", user, n_users), ("item_id", item, n_items)):
        if ids.size and (ids.min() < 0 or ids.max() >= n):
            raise DataError(f"oracle_probability: {name} must lie in [0, {n}) for this configuration, "
                            f"got values in [{ids.min()}, {ids.max()}]")
    names = np.asarray(device).astype(str)
    device_idx = np.full(names.shape, -1, dtype=np.int64)
    for code, name in enumerate(DEVICES):
        device_idx[names == name] = code
    if (device_idx < 0).any():
        bad = names[device_idx < 0][0]
        raise DataError(f"oracle_probability: unknown device {bad!r}; known: {', '.join(DEVICES)}")
    table_seq, _ = np.random.SeedSequence(int(seed)).spawn(2)
    rng = np.random.default_rng(table_seq)
    _, item_weight, item_parts = _make_items(rng, n_items, cfg)
    _, world = _make_users(rng, n_users, cfg, item_weight, item_parts)
    logit = _mean_logit(world, user, item, device_idx, np.asarray(hour, dtype=np.int64))
    return 1.0 / (1.0 + np.exp(-logit))


def _make_chunk(rng: np.random.Generator, w: _World, cfg: SyntheticConfig, first_user: int,
                counts: np.ndarray, request_offset: int) -> tuple[pl.DataFrame, int]:
    """Exposures of users ``first_user .. first_user + len(counts) - 1``; returns (frame, #requests)."""
    n_local = counts.size
    local = np.repeat(np.arange(n_local), counts)
    user = local + first_user
    row_offset = np.cumsum(counts) - counts

    # Requests: per user, consecutive blocks of 5-20 rows (segmented cumsum of random sizes).
    slots = -(-counts // _REQUEST_SIZE[0])
    slot_user = np.repeat(np.arange(n_local), slots)
    size = rng.integers(_REQUEST_SIZE[0], _REQUEST_SIZE[1] + 1, slot_user.size)
    cum = np.cumsum(size)
    first_slot = np.cumsum(slots) - slots
    has = slots > 0
    base = np.zeros(n_local, dtype=cum.dtype)
    base[has] = cum[first_slot[has]] - size[first_slot[has]]
    begin = cum - size - base[slot_user]
    keep = begin < counts[slot_user]
    req_user = slot_user[keep]
    n_requests = req_user.size
    is_start = np.zeros(user.size, dtype=bool)
    is_start[row_offset[req_user] + begin[keep]] = True
    req_of_row = np.cumsum(is_start) - 1

    # Request time (uniform day, diurnal hour), sorted within each user; device mostly the primary one.
    span = DAYS * 86_400
    hours = np.arange(24)
    hour_p = np.exp(0.8 * np.cos(2 * np.pi * (hours - 20) / 24))
    seconds = (rng.integers(0, DAYS, n_requests) * 86_400
               + rng.choice(24, n_requests, p=hour_p / hour_p.sum()) * 3_600
               + rng.integers(0, 3_600, n_requests))
    timestamp = np.sort(req_user.astype(np.int64) * span + seconds) - req_user.astype(np.int64) * span
    hour = (timestamp // 3_600) % 24
    switch = rng.random(n_requests) >= _PRIMARY_DEVICE_P
    device = (w.primary_device[req_user + first_user] + switch * rng.integers(1, 3, n_requests)) % 3

    # Items: on-topic (user's fav_topic) with probability on_topic_share, else global popularity.
    on_topic = rng.random(user.size) < cfg.on_topic_share
    item = w.sampler.draw(rng.random(user.size), np.where(on_topic, w.fav_topic[user], -1))

    row_device = device[req_of_row]
    row_hour = hour[req_of_row]
    logit = _mean_logit(w, user, item, row_device, row_hour) + rng.normal(0.0, cfg.noise, user.size)
    p_true = 1.0 / (1.0 + np.exp(-logit))
    label = (rng.random(user.size) < p_true).astype(np.int64)

    frame = pl.DataFrame({
        "user_id": user.astype(np.int64),
        "item_id": item.astype(np.int64),
        "timestamp": timestamp[req_of_row],
        "request_id": (req_of_row + request_offset).astype(np.int64),
        "device": row_device.astype(np.uint32),
        "hour": row_hour.astype(np.int64),
        "label": label,
        "p_true": p_true,
    })
    return frame, n_requests
