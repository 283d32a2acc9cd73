"""How many threads to run: the CPUs this process may use, and how many of them are free.

``run.threads = 0`` (the default) means "auto": the smallest of

- the CPUs in this process's affinity mask (``os.sched_getaffinity``: ``taskset``, ``docker --cpuset-cpus``);
- the cgroup CPU quota, rounded down (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``,
  the tightest over the process's cgroup and its ancestors: ``docker --cpus``, Kubernetes limits);
- the CPUs of the affinity mask that were idle over a short sample of ``/proc/stat`` (rounded to the
  nearest whole CPU), so a run that starts beside a busy neighbour does not split its work across a
  CPU it would share: a parallel region waits for its slowest thread, and the thread that shares a
  CPU runs at half speed or worse.

One count then drives every pool (:func:`apply_threads`): torch intra-op threads (inter-op: 1),
Faiss's OpenMP threads and the LightGBM reference (``num_threads``). The CLI also sets
``OMP_WAIT_POLICY=PASSIVE`` before torch loads, unless the user set it: threads that finish a
parallel region early sleep instead of spinning, which is what loses most under contention.

Every reader takes its sources as arguments (paths, an affinity set), so tests inject a restricted
mask or a cgroup quota without root.

Example
-------
>>> budget = CpuBudget(cpus=8, quota=2.5, idle=7.6)
>>> budget.usable, auto_threads(budget)
(2, 2)
>>> auto_threads(CpuBudget(cpus=2, quota=None, idle=1.1))
1
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CpuBudget", "affinity_cpus", "cgroup_quota", "idle_between", "idle_cpus", "cpu_budget", "auto_threads",
           "resolve_threads", "explain_threads", "apply_threads", "CGROUP_ROOT", "SELF_CGROUP", "PROC_STAT"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
SELF_CGROUP = Path("/proc/self/cgroup")
PROC_STAT = Path("/proc/stat")


@dataclass(frozen=True)
class CpuBudget:
    """CPUs in the affinity mask, the cgroup quota in CPUs (``None``: unlimited) and the idle CPUs
    of the mask measured over a short sample (``None``: not measured)."""

    cpus: int
    quota: float | None = None
    idle: float | None = None

    @property
    def usable(self) -> int:
        """CPUs this process may keep busy: the mask, capped by the quota (at least 1)."""
        limit = self.cpus if self.quota is None else min(self.cpus, math.floor(self.quota + 1e-9))
        return max(1, limit)

    def describe(self) -> str:
        quota = "no cgroup CPU quota" if self.quota is None else f"cgroup quota {self.quota:g} CPUs"
        idle = "" if self.idle is None else f", {self.idle:.1f} idle"
        return f"{self.cpus} CPU(s) in the affinity mask, {quota}{idle}"


def affinity_cpus(affinity: set[int] | None = None) -> set[int]:
    """The CPUs this process may run on (``affinity`` when given, for tests)."""
    if affinity is not None:
        return set(affinity)
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))


def _cgroup_paths(self_cgroup: Path) -> tuple[str | None, str | None]:
    """(v2 path, v1 cpu-controller path) of this process from ``/proc/self/cgroup``."""
    v2 = v1 = None
    try:
        lines = self_cgroup.read_text().splitlines()
    except OSError:
        return None, None
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            v2 = parts[2]
        elif "cpu" in parts[1].split(","):
            v1 = parts[2]
    return v2, v1


def _ancestors(root: Path, rel: str) -> list[Path]:
    """``root/rel`` and each directory above it up to ``root``."""
    parts = [p for p in rel.split("/") if p]
    return [root.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)]


def _v2_quota(directory: Path) -> float | None:
    try:
        fields = (directory / "cpu.max").read_text().split()
    except OSError:
        return None
    if len(fields) != 2 or fields[0] == "max":
        return None
    return int(fields[0]) / int(fields[1])


def _v1_quota(directory: Path) -> float | None:
    try:
        quota = int((directory / "cpu.cfs_quota_us").read_text())
        period = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def cgroup_quota(cgroup_root: Path = CGROUP_ROOT, self_cgroup: Path = SELF_CGROUP) -> float | None:
    """The tightest cgroup CPU quota over this process's cgroup and its ancestors, in CPUs
    (``None`` when there is none or it cannot be read)."""
    v2, v1 = _cgroup_paths(self_cgroup)
    quotas: list[float] = []
    if v2 is not None:
        quotas += [q for d in _ancestors(cgroup_root, v2) if (q := _v2_quota(d)) is not None]
    if v1 is not None:
        for controller in ("cpu,cpuacct", "cpu", "cpuacct,cpu"):
            base = cgroup_root / controller
            if base.is_dir():
                quotas += [q for d in _ancestors(base, v1) if (q := _v1_quota(d)) is not None]
                break
    return min(quotas) if quotas else None


def _cpu_times(text: str, cpus: set[int]) -> tuple[float, float]:
    """(idle, total) jiffies summed over ``cpus`` in the text of a ``/proc/stat`` snapshot."""
    idle = total = 0.0
    for line in text.splitlines():
        name, _, rest = line.partition(" ")
        if not (name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus):
            continue
        values = [float(v) for v in rest.split()]
        idle += values[3] + (values[4] if len(values) > 4 else 0.0)  # idle + iowait
        total += sum(values[:8])  # guest time is already counted in user and nice
    return idle, total


def idle_between(before: str, after: str, cpus: set[int]) -> float | None:
    """How many of ``cpus`` were idle between two ``/proc/stat`` snapshots (``None``: no time passed)."""
    idle0, total0 = _cpu_times(before, cpus)
    idle1, total1 = _cpu_times(after, cpus)
    if total1 <= total0:
        return None
    return len(cpus) * (idle1 - idle0) / (total1 - total0)


def idle_cpus(cpus: set[int], stat: Path = PROC_STAT, interval: float = 0.25) -> float | None:
    """How many of ``cpus`` were idle over ``interval`` seconds (two snapshots of ``stat``);
    ``None`` where it cannot be read."""
    try:
        before = stat.read_text()
        time.sleep(interval)
        after = stat.read_text()
    except OSError:
        return None
    return idle_between(before, after, cpus)


def cpu_budget(*, affinity: set[int] | None = None, cgroup_root: Path = CGROUP_ROOT,
               self_cgroup: Path = SELF_CGROUP, stat: Path | None = PROC_STAT,
               interval: float = 0.25) -> CpuBudget:
    """Measure the :class:`CpuBudget` (``stat=None`` skips the idle sample)."""
    cpus = affinity_cpus(affinity)
    idle = idle_cpus(cpus, stat, interval) if stat is not None else None
    return CpuBudget(len(cpus), cgroup_quota(cgroup_root, self_cgroup), idle)


def auto_threads(budget: CpuBudget) -> int:
    """The automatic thread count: usable CPUs, and no more than the idle ones (rounded)."""
    n = budget.usable
    if budget.idle is not None:
        n = min(n, max(1, math.floor(budget.idle + 0.5)))
    return n


def resolve_threads(requested: int, budget: CpuBudget | None = None, *, processes: int = 1) -> int:
    """``requested`` when positive, else :func:`auto_threads` shared among ``processes`` processes
    of this machine (a distributed run), at least 1."""
    if requested > 0:
        return requested
    return max(1, auto_threads(budget if budget is not None else cpu_budget()) // max(1, processes))


def explain_threads(requested: int, *, processes: int = 1, budget: CpuBudget | None = None) -> tuple[int, str]:
    """:func:`resolve_threads` and one line saying where the count comes from."""
    if requested > 0:
        return requested, f"{requested} thread(s) (run.threads)"
    budget = budget if budget is not None else cpu_budget()
    n = resolve_threads(0, budget, processes=processes)
    share = f", shared by {processes} processes" if processes > 1 else ""
    return n, f"{n} thread(s) (run.threads = 0, auto: {budget.describe()}{share})"


def apply_threads(threads: int) -> int:
    """Set torch intra-op threads (inter-op: 1, where torch still allows it) and Faiss's OpenMP
    threads to ``threads``; returns it. LightGBM takes it as ``num_threads`` from the caller."""
    import faiss
    import torch

    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # only settable before the first inter-op parallel work of the process
        pass
    faiss.omp_set_num_threads(threads)
    return threads
