"""``distill sweep``: COLD-style feature-selection sweep of a finished run (see docs/sweep.md)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import click

from coarserank.cli import distill
from coarserank.pipeline.launch import barrier, current, join, relaunch, shutdown, sweep_relaunch_args
from coarserank.pipeline.rundir import RunDir
from coarserank.pipeline.sweep_stage import SWEEP_DEVICE, parse_ks, sweep_run

__all__ = ["sweep_command", "format_sweep"]


def format_sweep(body: dict[str, Any]) -> str:
    """The table printed after a sweep: one line per point, then each importance ranking."""
    lines = [f"{'':>6} {'valid':>7} {'test':>7} {'test':>7}",
             f"{'#':>2} {'k':>3} {'gauc':>7} {'gauc':>7} {'auc':>7} {'r@10in100':>9} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'params':>9} {'macs/cand':>10}  frontier (valid gauc vs p99)"]
    for i, p in enumerate(body["points"]):
        recall = f"{p['recall_10_in_100']:>9.4f}" if p["recall_10_in_100"] is not None else f"{'-':>9}"
        mark = ("pareto" if p["pareto"] else "dominated") + ("  <- chosen" if i == body["chosen"] else "")
        lines.append(f"{i:>2} {p['k']:>3} {p['valid_gauc']:>7.4f} {p['gauc']:>7.4f} {p['auc']:>7.4f} {recall} "
                     f"{p['p50_ms']:>8.3f} {p['p99_ms']:>8.3f} {p['params']:>9,} {p['macs_per_candidate']:>10,.0f}  "
                     f"{mark}")
    imp = body["importance"]
    for method, m in imp["methods"].items():
        lines.append(f"importance {method:<11} {' > '.join(m['ranking'])}")
    taus = ", ".join(f"{k} {v:+.2f}" if v is not None else f"{k} -" for k, v in imp["agreement_kendall_tau_b"].items())
    lines.append(f"rank agreement (Kendall tau-b): {taus}")
    return "\n".join(lines)


@distill.command("sweep")
@click.option("--run", "--run-dir", "run_dir", required=True,
              type=click.Path(file_okay=False, path_type=Path),
              help="A finished run directory (it needs its teacher and teacher logits). Under torchrun "
                   "spell it --run-dir: torchrun reads --run as an abbreviation of its own --run-path.")
@click.option("--family", type=click.Choice(["cold", "two_tower"]), default=None,
              help="Coarse-model family to sweep. Default: cold.family of the run's config.")
@click.option("--k", "ks", default=None, metavar="LIST",
              help="Feature counts, e.g. 4,8,12,all. Default: cold.k of the run's config (0 = all).")
@click.option("--budget-ms", type=float, default=None,
              help="p99 latency budget per request in ms (1 thread). Default: cold.budget_ms (0 = none).")
@click.option("--rank-by", type=click.Choice(["se", "gbdt", "permutation"]), default=None,
              help="Importance ranking that picks the top-k. Default: cold.rank_by.")
@click.option("--candidates", "candidate_mode", type=click.Choice(["report", "exposures"]), default="report",
              show_default=True, help="Candidate sets for Recall@10-in-100: the report's (exposures + sampled "
                                      "catalogue items) or each test group's exposures only.")
@click.option("--write-config", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the chosen point as a config for `distill run --config FILE` (family cold: the "
                   "chosen COLD model becomes the run's student, trained and served directly).")
@click.option("--nproc", type=click.IntRange(min=1), default=1, show_default=True,
              help="Train with N processes on this machine (torch.distributed, gloo: the sweep trains on "
                   "CPU); rank 0 alone measures latency and writes. Same as `torchrun --standalone "
                   "--nproc-per-node N -m coarserank.cli sweep --run-dir DIR ...`.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the final table.")
def sweep_command(run_dir: Path, family: str | None, ks: str | None, budget_ms: float | None, rank_by: str | None,
                  candidate_mode: str, write_config: Path | None, nproc: int, quiet: bool) -> None:
    """Rank features (SE gates, LightGBM gain, permutation), train the family's coarse model on the
    top-k for each k, measure GAUC and ONNX Runtime latency, mark the Pareto frontier and choose the
    best GAUC within the budget. Writes RUN/sweep/sweep.json and RUN/sweep/frontier.png; finished
    points are reused when the sweep is run again.
    """
    k_list = parse_ks(ks) if ks is not None else None  # a malformed --k fails before any relaunch
    if nproc > 1 and "WORLD_SIZE" not in os.environ:
        raise SystemExit(relaunch(nproc, sweep_relaunch_args(sys.argv[1:])))
    info = join(os.environ, SWEEP_DEVICE)
    try:
        with RunDir.writer(run_dir) if info.is_main else contextlib.nullcontext():  # rank 0 alone writes
            _sweep(run_dir, family, k_list, budget_ms, rank_by, candidate_mode, write_config,
                   quiet or not info.is_main)
        barrier()  # rank 0 writes and prints after the others finish: leave the process group together
    finally:
        shutdown()


def _sweep(run_dir: Path, family: str | None, k_list: list[int | None] | None, budget_ms: float | None,
           rank_by: str | None, candidate_mode: str, write_config: Path | None, quiet: bool) -> None:
    """The sweep on this process: every rank trains; rank 0 alone measures, writes and prints."""
    echo = (lambda _m: None) if quiet else (lambda m: click.echo(m, err=True))
    result = sweep_run(run_dir, family=family, ks=k_list, budget_ms=budget_ms, rank_by=rank_by,
                       candidates="report" if candidate_mode == "report" else "exposures",
                       write_config=write_config, progress=echo)
    if not current().is_main:
        if result.budget_error:
            raise SystemExit(1)  # rank 0 prints the message
        return
    click.echo(format_sweep(result.body))
    click.echo(f"sweep: {result.path}  plot: {result.plot}")
    if result.budget_error:
        raise click.ClickException(result.budget_error)
    if result.chosen_config is not None:
        click.echo(f"chosen config (k={result.body['points'][result.body['chosen']]['k']}): {result.chosen_config}")
