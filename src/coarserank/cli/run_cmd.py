"""``distill run``: the whole pipeline into a run directory."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from coarserank.cli import distill
from coarserank.config import load_config
from coarserank.pipeline.launch import join, peer_failures_reported, relaunch, shutdown
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
        raise SystemExit(relaunch(nproc, sys.argv[1:]))
    info = join(os.environ, cfg.run.device)
    echo = (lambda _m: None) if quiet or not info.is_main else (lambda m: click.echo(m, err=True))
    with peer_failures_reported(info, default_run_dir(cfg)):
        try:
            result = run(cfg, default_run_dir(cfg), overwrite=overwrite, progress=echo)
        finally:
            shutdown()
    if info.is_main:
        click.echo(format_metrics(result.metrics))
        click.echo(f"run directory: {result.run_dir}  ({result.seconds:.0f}s)")
