"""The thread policy: CPUs from the affinity mask, the cgroup quota and the idle CPUs, simulated."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from coarserank.threads import (
    CpuBudget,
    auto_threads,
    cgroup_quota,
    cpu_budget,
    explain_threads,
    idle_between,
    resolve_threads,
)

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def v2(tmp_path: Path) -> tuple[Path, Path]:
    """A cgroup v2 tree: no limit at the root, 2.5 CPUs on /kubepods/pod, none on its child."""
    root = tmp_path / "cgroup"
    _write(root / "cpu.max", "max 100000\n")
    _write(root / "kubepods" / "pod" / "cpu.max", "250000 100000\n")
    _write(root / "kubepods" / "pod" / "app" / "cpu.max", "max 100000\n")
    return root, _write(tmp_path / "self-cgroup", "0::/kubepods/pod/app\n")


def test_a_restricted_affinity_mask_caps_the_threads(tmp_path: Path) -> None:
    budget = cpu_budget(affinity={3}, cgroup_root=tmp_path / "none", self_cgroup=tmp_path / "none", stat=None)
    assert budget == CpuBudget(cpus=1, quota=None, idle=None)
    assert resolve_threads(0, budget) == 1


def test_the_tightest_cgroup_v2_quota_of_the_process_or_an_ancestor_applies(v2: tuple[Path, Path]) -> None:
    root, self_cgroup = v2
    assert cgroup_quota(root, self_cgroup) == 2.5
    budget = cpu_budget(affinity=set(range(8)), cgroup_root=root, self_cgroup=self_cgroup, stat=None)
    assert budget.usable == 2 and resolve_threads(0, budget) == 2


def test_a_cgroup_v1_cfs_quota_applies(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_quota_us", "150000\n")
    _write(root / "cpu,cpuacct" / "docker" / "abc" / "cpu.cfs_period_us", "100000\n")
    self_cgroup = _write(tmp_path / "self-cgroup", "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n")
    assert cgroup_quota(root, self_cgroup) == 1.5
    assert cpu_budget(affinity={0, 1, 2, 3}, cgroup_root=root, self_cgroup=self_cgroup, stat=None).usable == 1


@pytest.mark.parametrize(("name", "text"), [("cpu.max", "max 100000\n"), ("cpu.cfs_quota_us", "-1\n")])
def test_an_unlimited_quota_is_no_limit(tmp_path: Path, name: str, text: str) -> None:
    controller = "" if name == "cpu.max" else "cpu"
    _write(tmp_path / "cgroup" / controller / "x" / name, text)
    _write(tmp_path / "cgroup" / controller / "x" / "cpu.cfs_period_us", "100000\n")
    line = "0::/x\n" if name == "cpu.max" else "3:cpu:/x\n"
    assert cgroup_quota(tmp_path / "cgroup", _write(tmp_path / "self", line)) is None


def test_a_quota_below_one_cpu_still_runs_one_thread() -> None:
    assert CpuBudget(cpus=4, quota=0.5).usable == 1


def test_idle_cpus_are_counted_over_the_mask_between_two_snapshots() -> None:
    # cpu0 busy for the whole interval, cpu1 idle, cpu2 (outside the mask) busy
    before = "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 100 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 100 0 0 0 0 0 0\ncpu2 5 0 0 0\n"
    after = "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 200 0 0 0 0 0 0 0 0 0\ncpu1 0 0 0 200 0 0 0 0 0 0\ncpu2 105 0 0 0\n"
    assert idle_between(before, after, {0, 1}) == pytest.approx(1.0)
    assert idle_between(before, after, {0, 1, 2}) == pytest.approx(1.0)
    assert idle_between(before, before, {0, 1}) is None


@pytest.mark.parametrize(("budget", "threads"), [
    (CpuBudget(cpus=2, idle=1.95), 2),  # a quiet two-core machine
    (CpuBudget(cpus=2, idle=1.02), 1),  # one busy neighbour
    (CpuBudget(cpus=2, idle=0.1), 1),   # both cores busy: still one thread
    (CpuBudget(cpus=16, quota=4.0, idle=15.8), 4),
])
def test_auto_takes_no_more_threads_than_idle_cpus(budget: CpuBudget, threads: int) -> None:
    assert auto_threads(budget) == threads


def test_an_explicit_thread_count_wins_and_auto_is_shared_by_processes() -> None:
    assert resolve_threads(3, CpuBudget(cpus=1)) == 3
    assert resolve_threads(0, CpuBudget(cpus=8), processes=2) == 4
    assert resolve_threads(0, CpuBudget(cpus=2), processes=4) == 1


def test_the_explanation_says_where_the_count_comes_from() -> None:
    n, why = explain_threads(0, budget=CpuBudget(cpus=8, quota=2.5, idle=7.5))
    assert n == 2
    assert why == "2 thread(s) (run.threads = 0, auto: 8 CPU(s) in the affinity mask, cgroup quota 2.5 CPUs, 7.5 idle)"


def test_this_machines_budget_stays_within_its_affinity_mask() -> None:
    budget = cpu_budget(interval=0.05)
    assert 1 <= auto_threads(budget) <= budget.usable <= len(os.sched_getaffinity(0))


def test_the_cli_makes_openmp_threads_sleep_before_torch_loads() -> None:
    spy = ("import os, sys\n"
           "class Spy:\n"
           "    def find_spec(self, name, path=None, target=None):\n"
           "        if name == 'torch':\n"
           "            print('torch loads with OMP_WAIT_POLICY =', os.environ.get('OMP_WAIT_POLICY'))\n"
           "            sys.meta_path.remove(self)\n"
           "sys.meta_path.insert(0, Spy())\n"
           "import coarserank.cli\n"
           "import coarserank.cli.run_cmd\n")  # commands load on use: run's loads torch
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    env["PYTHONPATH"] = str(REPO / "src")
    out = subprocess.run([sys.executable, "-c", spy], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "torch loads with OMP_WAIT_POLICY = PASSIVE"
