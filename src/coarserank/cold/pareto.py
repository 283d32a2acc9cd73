"""Pareto frontier of quality against latency, and the choice under a latency budget.

A point is *dominated* when another point is at least as good on both axes (GAUC no lower, p99
latency no higher) and strictly better on one. Points that tie exactly on both axes do not dominate
each other, so both stay on the frontier.

The choice under a budget is the point with the highest GAUC among those whose p99 latency is at
most the budget; ties in GAUC go to the lower p99, then to the earlier point. Without a budget the
highest-GAUC point overall is chosen. When no point meets the budget, :func:`choose_under_budget`
raises a :class:`~coarserank.errors.ConfigError` that names the fastest point and its latency.
:func:`write_chosen_config` turns the chosen point's features into a config for ``distill run``.

Example
-------
>>> pareto_flags([0.70, 0.72, 0.71], [1.0, 3.0, 4.0])
[True, True, False]
>>> choose_under_budget([0.70, 0.72, 0.71], [1.0, 3.0, 4.0], 3.5)
1
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Sequence

from coarserank.atomic import atomic_write_text
from coarserank.config import ColdStudentOptions, DataConfig, RunConfig, dump_config, load_config
from coarserank.errors import ConfigError, DataError

__all__ = ["pareto_flags", "choose_under_budget", "check_budget", "write_chosen_config"]


def _checked(quality: Sequence[float], latency: Sequence[float]) -> tuple[list[float], list[float]]:
    q, t = [float(x) for x in quality], [float(x) for x in latency]
    if len(q) != len(t):
        raise DataError(f"quality and latency must have one value per point, got {len(q)} and {len(t)}")
    bad = [i for i, (a, b) in enumerate(zip(q, t)) if not (math.isfinite(a) and math.isfinite(b))]
    if bad:
        raise DataError(f"sweep point(s) {bad} have a NaN/inf GAUC or latency; every point needs both measured")
    return q, t


def pareto_flags(quality: Sequence[float], latency: Sequence[float]) -> list[bool]:
    """``True`` for each point on the frontier (not dominated), ``False`` for dominated points.

    Parameters
    ----------
    quality : Sequence[float]
        Higher is better (GAUC).
    latency : Sequence[float]
        Lower is better (p99 ms).

    Raises
    ------
    DataError
        If the lengths differ or a value is not finite.
    """
    q, t = _checked(quality, latency)
    flags = []
    for i in range(len(q)):
        dominated = any(q[j] >= q[i] and t[j] <= t[i] and (q[j] > q[i] or t[j] < t[i]) for j in range(len(q)))
        flags.append(not dominated)
    return flags


def check_budget(budget_ms: float | None) -> float | None:
    """``None`` (no budget) or a positive, finite budget in milliseconds.

    Raises
    ------
    ConfigError
        If the budget is zero, negative or not finite.
    """
    if budget_ms is None:
        return None
    if not math.isfinite(budget_ms) or budget_ms <= 0:
        raise ConfigError(f"the latency budget must be a positive number of milliseconds, got {budget_ms}")
    return float(budget_ms)


def choose_under_budget(quality: Sequence[float], latency: Sequence[float], budget_ms: float | None) -> int:
    """Index of the highest-quality point whose latency is within ``budget_ms``.

    Parameters
    ----------
    quality, latency : Sequence[float]
        GAUC and p99 latency (ms) per point.
    budget_ms : float or None
        The p99 budget; ``None`` chooses among all points.

    Raises
    ------
    ConfigError
        If there are no points, the budget is not positive, or no point meets it (the message names
        the fastest point and its latency).
    """
    q, t = _checked(quality, latency)
    budget = check_budget(budget_ms)
    if not q:
        raise ConfigError("there are no sweep points to choose from")
    within = [i for i in range(len(q)) if budget is None or t[i] <= budget]
    if not within:
        fastest = min(range(len(t)), key=lambda i: (t[i], i))
        raise ConfigError(f"no sweep point meets the p99 latency budget of {budget:g} ms: the fastest point "
                          f"(#{fastest}) needs {t[fastest]:.3f} ms; raise the budget to at least that or "
                          "sweep smaller k")
    return min(within, key=lambda i: (-q[i], t[i], i))


def write_chosen_config(cfg: RunConfig, features: Sequence[str], path: Path | str, family: str = "two_tower") -> Path:
    """Write the run's configuration for the chosen point, for ``distill run --config``.

    ``cold``: the chosen COLD model becomes the run's student (``student.family = "cold"``,
    ``student.cold.features`` the chosen fields, its sizes and schedule those of ``[cold]``), so the
    run trains, distils and serves it; the data (and so the teacher) is unchanged.

    ``two_tower``: ``data`` is restricted to ``features``. Chosen crosses keep the features they are
    built from; a cross (or history cross) stays when it was chosen or when every feature it needs
    was chosen. ``run.out`` and ``run.name`` are cleared either way.

    Raises
    ------
    ConfigError
        If the chosen features cannot make a two-tower run (no user-side or no item-side feature).
    """
    if family == "cold":
        c = cfg.cold
        student = replace(cfg.student, family="cold", cold=ColdStudentOptions(features=tuple(features)),
                          embed_dim=c.embed_dim, hidden=c.hidden, dropout=0.0, lr=c.lr, weight_decay=0.0,
                          batch_size=c.batch_size, epochs=c.epochs, patience=c.patience)
        out = replace(cfg, student=student, run=replace(cfg.run, out="", name=""))
        what = "student.family = \"cold\" over the chosen point's fields"
    else:
        out = replace(cfg, data=_chosen_data(cfg.data, features), run=replace(cfg.run, out="", name=""))
        what = "data.features, data.crosses and data.history_crosses restricted to the chosen point"
    header = (f"# Written by `distill sweep --write-config`: the swept run's configuration with {what}:\n"
              f"# {', '.join(features)}.\n# Use it with `distill run --config THIS_FILE --out NEW_DIR`.\n\n")
    target = atomic_write_text(Path(path), header + dump_config(out))
    load_config(target)  # what `distill run --config` will do; raises if the overlay does not validate
    return target


def _chosen_data(d: DataConfig, features: Sequence[str]) -> DataConfig:
    chosen = set(features)
    crosses = tuple(c for c in d.crosses if c.name in chosen or {c.a, c.b} <= chosen)
    history = tuple(h for h in d.history_crosses if h.name in chosen or {h.key, h.over} <= chosen)
    needed = chosen | {p for c in crosses for p in (c.a, c.b)} | {p for h in history for p in (h.key, h.over)}
    kept = tuple(f for f in d.features if f.name in needed)
    if not {"user", "item"} <= {f.side for f in kept}:
        raise ConfigError(f"the chosen features ({', '.join(features)}) leave no user-side or no item-side "
                          "feature; `distill run` trains a two-tower student and needs both")
    return replace(d, features=kept, crosses=crosses, history_crosses=history)
