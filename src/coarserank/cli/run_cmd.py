"""``distill run``: the whole pipeline into a run directory."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Iterator

import click
import torch.distributed as dist

from coarserank.cli import distill
from coarserank.config import load_config
from coarserank.distill.distributed import DistInfo, init_from_env, shutdown
from coarserank.distill.train import resolve_device
from coarserank.errors import CoarseRankError
from coarserank.pipeline.rundir import RunDir
from coarserank.pipeline.run import MODELS, default_run_dir, run

__all__ = ["run_command", "format_metrics"]


def format_metrics(metrics: dict) -> str:
    """The metrics table printed at the end of a run."""
    lines = [f"{'split':<6} {'model':<13} {'auc':>7} {'gauc':>7} {'logloss':>8}"]
    for split in ("valid", "test"):
        for model in (*MODELS, "oracle"):
            m = metrics.get(split, {}).get(model)
            if m:
                lines.append(f"{split:<6} {model:<13} {m['auc']:>7.4f} {m['gauc']:>7.4f} {m['logloss']:>8.4f}")
    return "\n".join(lines)


@distill.command("run")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="TOML config file: a partial overlay of the shipped defaults (see examples/).")
@click.option("--dataset", type=click.Choice(["synthetic", "movielens-100k"]), default=None,
              help="Built-in data set preset. Default: synthetic (or what --config says).")
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data directory (sets data.path), "
              "e.g. the MovieLens-100K folder holding u.data.")
@click.option("--rows", type=click.IntRange(min=100), help="Synthetic data set size in exposures (synthetic.rows).")
@click.option("--seed", type=int, help="Random seed for data generation, initialisation and shuffling (run.seed).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory to write. Default: runs/<source>-seed<seed>.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), help="Training device (run.device).")
@click.option("--overwrite", is_flag=True,
              help="Replace an output directory that holds another coarserank run (its manifest.json says so), "
                   "once the new run's data has passed its checks. A directory of other files is never replaced.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override any config key, e.g. --set distill.alpha=0.7 (repeatable; applied last).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train with N processes on this machine (torch.distributed: gloo on CPU, NCCL on CUDA). "
                   "Same as `torchrun --nproc-per-node N -m coarserank.cli run ...`.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the final table.")
def run_command(config_path: Path | None, dataset: str | None, data_dir: Path | None, rows: int | None,
                seed: int | None, out: Path | None, device: str | None, overwrite: bool,
                overrides: tuple[str, ...], nproc: int, quiet: bool) -> None:
    """Train the teacher, distil the two-tower student (plus a hard-label control and a LightGBM
    reference), write every artifact to the run directory and print the metrics table.

    Re-running the same configuration into the same directory resumes after the last finished stage.
    """
    sets = []
    if data_dir is not None:
        sets.append(f"data.path={str(data_dir)!r}".replace("'", '"'))
    for key, value in (("synthetic.rows", rows), ("run.seed", seed), ("run.device", device)):
        if value is not None:
            sets.append(f"{key}={value!r}".replace("'", '"'))
    if out is not None:
        sets.append(f"run.out={str(out)!r}".replace("'", '"'))
    preset = dataset if dataset not in (None, "synthetic") else None
    cfg = load_config(config_path, preset=preset, overrides=[*sets, *overrides])
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise SystemExit(_relaunch(nproc))
    info = init_from_env(os.environ, "cuda" if resolve_device(cfg.run.device).type == "cuda" else "cpu")
    echo = (lambda _m: None) if quiet or not info.is_main else (lambda m: click.echo(m, err=True))
    with _peer_failures_reported(info, default_run_dir(cfg)):
        try:
            result = run(cfg, default_run_dir(cfg), overwrite=overwrite, progress=echo)
        finally:
            shutdown()
    if info.is_main:
        click.echo(format_metrics(result.metrics))
        click.echo(f"run directory: {result.run_dir}  ({result.seconds:.0f}s)")


def _relaunch(nproc: int, argv: list[str] | None = None) -> int:
    """Re-run this command (``argv``, default ``sys.argv[1:]``) under torchrun with ``nproc`` local
    processes (loopback rendezvous)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if "--nproc" in args:
        i = args.index("--nproc")
        del args[i:i + 2]
    args = [a for a in args if not a.startswith("--nproc=")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", "coarserank.cli", *args]
    return subprocess.call(cmd)


# -- a process of a distributed run that dies --------------------------------------------------
#
# When one rank dies (crash, OOM kill, os._exit) the others learn it in one of two ways: a
# collective they are in fails at once (gloo: "Connection reset/closed by peer", NCCL:
# DistBackendError), or, when they are in no collective, the torchrun agent sends them SIGTERM
# (then SIGKILL 30 s later), which by default kills them without a word and leaves the stage they
# were in marked "running". :func:`_peer_failures_reported` turns SIGTERM into an exception, so
# ``run()`` marks that stage failed like any other error, and turns either into one line on
# stderr ("Error: rank 0 of 2: another process ...") and exit status 1 instead of a traceback.


class _Terminated(BaseException):
    """SIGTERM, raised where the process was (a BaseException so that no ``except Exception``
    swallows it; ``run()`` records its message as the failed stage's error)."""


def _raise_terminated(signum: int, frame: FrameType | None) -> None:
    if sys.exc_info()[0] is not None:
        return  # already failing (e.g. run() is marking the stage failed): let that finish
    raise _Terminated("stopped by SIGTERM, which torchrun sends to every process when one of them exits")


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def _is_peer_failure(exc: BaseException) -> bool:
    return isinstance(exc, (_Terminated, dist.DistError)) or (
        isinstance(exc, RuntimeError) and re.search(r"gloo|by peer", str(exc), re.IGNORECASE) is not None)


def _short_reason(exc: BaseException) -> str:
    """gloo's "[.../pair.cc:553] Connection closed by peer [127.0.0.1]:1234. This is ..." ->
    "Connection closed by peer [127.0.0.1]:1234"."""
    text = str(exc).strip()
    line = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else "")
    return (line.split(". ")[0].rstrip(".") or type(exc).__name__)[:160]


def _stage_of(exc: BaseException) -> str | None:
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
        stages = RunDir.open(run_dir).manifest["stages"]
    except CoarseRankError:
        return f"{run_dir} holds no readable manifest"
    open_ = [f"{name!r} {entry.get('status')}" for name, entry in stages.items()
             if entry.get("status") != "done"]
    if not open_:
        return f"every stage in {run_dir} had finished"
    return f"the run directory {run_dir} is marked incomplete: stage {', '.join(open_)}"


@contextmanager
def _peer_failures_reported(info: DistInfo, run_dir: Path) -> Iterator[None]:
    """On a distributed rank: SIGTERM raises, and a failure caused by another rank stopping
    becomes one clear error line (a ClickException); anything else propagates unchanged."""
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
        stage = _stage_of(exc)
        where = f" while this one was in stage {stage!r}" if stage else ""
        raise click.ClickException(
            f"rank {info.rank} of {info.world}: another process of this distributed run stopped{where} "
            f"({_short_reason(cause)}); {_run_dir_state(info, run_dir)}") from None
    if previous is not None:  # None: a handler installed outside Python, which cannot be restored
        signal.signal(signal.SIGTERM, previous)
