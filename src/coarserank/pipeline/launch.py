"""Processes of a command: relaunching under torchrun, joining a distributed run, and reporting a
process of that run that dies.

When one rank dies (crash, OOM kill, os._exit) the others learn it in one of two ways: a
collective they are in fails at once (gloo: "Connection reset/closed by peer", NCCL:
DistBackendError), or, when they are in no collective, the torchrun agent sends them SIGTERM
(then SIGKILL 30 s later), which by default kills them without a word and leaves the stage they
were in marked "running". :func:`peer_failures_reported` turns SIGTERM into an exception, so
``run()`` marks that stage failed like any other error, and turns either into one
:class:`~coarserank.errors.CoarseRankError` line ("rank 0 of 2: another process ...") instead of
a traceback.
"""

from __future__ import annotations

import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Iterator, Mapping, Sequence

import torch.distributed as dist

from coarserank.artifacts import Manifest
from coarserank.distill.distributed import DistInfo, barrier, current, init_from_env, shutdown
from coarserank.distill.train import resolve_device
from coarserank.errors import CoarseRankError
from coarserank.pipeline.run import run

__all__ = ["DistInfo", "barrier", "current", "join", "shutdown", "relaunch", "sweep_relaunch_args",
           "peer_failures_reported"]


def join(environ: Mapping[str, str], device: str = "cpu") -> DistInfo:
    """Join the distributed run ``environ`` describes (torchrun's variables; none: one process) on
    the backend of ``device`` (``auto``, ``cpu`` or ``cuda``)."""
    return init_from_env(environ, "cuda" if resolve_device(device).type == "cuda" else "cpu")


def relaunch(nproc: int, args: Sequence[str]) -> int:
    """Run ``distill ARGS`` under torchrun with ``nproc`` local processes (loopback rendezvous),
    without its ``--nproc`` option; returns torchrun's exit status."""
    args = list(args)
    if "--nproc" in args:
        i = args.index("--nproc")
        del args[i:i + 2]
    args = [a for a in args if not a.startswith("--nproc=")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "coarserank.cli", *args]
    return subprocess.call(cmd)


def sweep_relaunch_args(args: Sequence[str]) -> list[str]:
    """``distill sweep`` arguments with ``--run`` spelled ``--run-dir``: torchrun's argument parser
    takes ``--run`` anywhere on its command line for an ambiguous abbreviation of its own
    ``--run-path`` and refuses to start."""
    return ["--run-dir" if a == "--run" else "--run-dir=" + a[len("--run="):] if a.startswith("--run=") else a
            for a in args]


class _Terminated(BaseException):
    """SIGTERM, raised where the process was (a BaseException so that no ``except Exception``
    swallows it; ``run()`` records its message as the failed stage's error)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    if sys.exc_info()[0] is not None:
        return  # already failing (e.g. run() is marking the stage failed): let that finish
    raise _Terminated("stopped by SIGTERM, which torchrun sends to every process when one of them exits")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _is_peer_failure(exc: BaseException) -> bool:
    return isinstance(exc, (_Terminated, dist.DistError)) or (
        isinstance(exc, RuntimeError) and re.search(r"gloo|by peer", str(exc), re.IGNORECASE) is not None)


def _short_reason(exc: BaseException) -> str:
    """gloo's "[.../pair.cc:553] Connection closed by peer [127.0.0.1]:1234. This is ..." ->
    "Connection closed by peer [127.0.0.1]:1234"."""
    text = str(exc).strip()
    line = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else "")
    return (line.split(". ")[0].rstrip(".") or type(exc).__name__)[:160]


def stage_of(exc: BaseException) -> str | None:
    """The stage ``run()`` was in when ``exc`` went through it (its local ``stage``), if it did."""
    for link in _chain(exc):
        tb = link.__traceback__
        while tb is not None:
            stage = tb.tb_frame.f_locals.get("stage") if tb.tb_frame.f_code is run.__code__ else None
            if isinstance(stage, str):
                return stage
            tb = tb.tb_next
    return None


def _run_dir_state(info: DistInfo, run_dir: Path) -> str:
    """What ``manifest.json`` now says (rank 0 writes it, and may be the rank that died: the
    other ranks only point there)."""
    if not info.is_main:
        return f"only rank 0 writes {run_dir}; its manifest.json marks which stages finished"
    try:
        manifest = Manifest.read(run_dir)
    except CoarseRankError:
        return f"{run_dir} holds no readable manifest"
    open_ = [f"{name!r} {manifest.stage_status(name)}" for name in manifest.stage_names()
             if manifest.stage_status(name) != "done"]
    if not open_:
        return f"every stage in {run_dir} had finished"
    return f"the run directory {run_dir} is marked incomplete: stage {', '.join(open_)}"


@contextmanager
def peer_failures_reported(info: DistInfo, run_dir: Path) -> Iterator[None]:
    """On a distributed rank: SIGTERM raises, and a failure caused by another rank stopping
    becomes one clear :class:`CoarseRankError`; anything else propagates unchanged."""
    if info.world == 1:
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    except BaseException as exc:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the agent may signal again while we report
        cause = next((link for link in _chain(exc) if _is_peer_failure(link)), None)
        if cause is None:
            raise
        stage = stage_of(exc)
        where = f" while this one was in stage {stage!r}" if stage else ""
        raise CoarseRankError(
            f"rank {info.rank} of {info.world}: another process of this distributed run stopped{where} "
            f"({_short_reason(cause)}); {_run_dir_state(info, run_dir)}") from None
    if previous is not None:  # None: a handler installed outside Python, which cannot be restored
        signal.signal(signal.SIGTERM, previous)
