"""``distill sweep``: COLD-style feature-selection sweep of a finished run (see docs/sweep.md)."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path
from typing import Any

import click
import numpy as np

from coarserank.cli import distill
from coarserank.cli.run_cmd import _relaunch
from coarserank.cold.sweep import CandidateSets, parse_ks, resolve_ks, run_sweep, write_chosen_config
from coarserank.distill.distributed import broadcast_object, current, init_from_env, shutdown
from coarserank.distill.tensors import make_table
from coarserank.distill.train import predict
from coarserank.errors import ArtifactError, CoarseRankError
from coarserank.pipeline.rundir import RunDir
from coarserank.pipeline.run import load_context

__all__ = ["sweep_command", "format_sweep", "report_candidates"]

SWEEP_DEVICE = "cpu"  # load_context's device: the sweep trains on CPU (ONNX Runtime times on CPU too)


def report_candidates(ctx: Any, teacher: Any) -> CandidateSets:
    """The report's candidate sets (test exposures + ``report.sampled`` catalogue items per user), encoded."""
    from coarserank.pipeline.report_stage import candidate_sets  # the report's own builder

    sets = candidate_sets(ctx, None)
    idx = sets.exposed["_i"].to_numpy()
    sampled = ctx.encoder.transform(sets.sampled)
    n = sets.sampled.height
    z = predict(teacher, make_table(sampled, np.zeros(n), np.zeros(n, dtype=np.int64)), ctx.device)
    inputs = {k: np.concatenate([ctx.encoded["test"][k][idx], sampled[k]]) for k in ctx.schema.names}
    groups = np.concatenate([sets.exposed["_u"].to_numpy(), sets.sampled["_u"].to_numpy()])
    r = ctx.cfg.report
    return CandidateSets(inputs, groups, np.concatenate([ctx.logits["test"]["teacher"][idx], z]),
                         f"the report's candidate sets: each selected test user's test exposures plus {r.sampled} "
                         f"catalogue items sampled by {r.sampling} (max_users {r.max_users}, seed {ctx.cfg.run.seed})")


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
        raise SystemExit(_relaunch_sweep(nproc))
    info = init_from_env(os.environ, SWEEP_DEVICE)
    try:
        with RunDir.writer(run_dir) if info.is_main else contextlib.nullcontext():  # rank 0 alone writes
            _sweep(run_dir, family, k_list, budget_ms, rank_by, candidate_mode, write_config,
                   quiet or not info.is_main)
    finally:
        shutdown()


def _relaunch_sweep(nproc: int) -> int:
    """:func:`coarserank.cli.run_cmd._relaunch` with ``--run`` spelled ``--run-dir``: torchrun's
    argument parser takes ``--run`` anywhere on its command line for an ambiguous abbreviation of its
    own ``--run-path`` and refuses to start."""
    return _relaunch(nproc, ["--run-dir" if a == "--run" else "--run-dir=" + a[len("--run="):]
                             if a.startswith("--run=") else a for a in sys.argv[1:]])


def _sweep(run_dir: Path, family: str | None, k_list: list[int | None] | None, budget_ms: float | None,
           rank_by: str | None, candidate_mode: str, write_config: Path | None, quiet: bool) -> None:
    """The sweep on this process: every rank trains; rank 0 alone measures, writes and prints."""
    main = current().is_main
    echo = (lambda _m: None) if quiet else (lambda m: click.echo(m, err=True))
    if current().world > 1:
        _check_nothing_to_repair(run_dir, ("config", "data", "teacher", "logits"))
    ctx, models = load_context(run_dir, progress=echo, device=SWEEP_DEVICE, require=("teacher", "logits"))
    if not main:  # a read-only view: this rank never writes the run directory
        ctx.run = RunDir(ctx.run.path, ctx.run.manifest, writable=False)
    cold = ctx.cfg.cold
    budget = cold.budget_ms if budget_ms is None else budget_ms
    family = family or cold.family
    k_list = k_list if k_list is not None else parse_ks(list(cold.k))
    resolve_ks(k_list, ctx.schema, family)  # a bad k fails before the candidate sets are built
    candidates = None
    if main and candidate_mode == "report" and "teacher" in models:  # only rank 0 measures
        echo("sweep: building the report's candidate sets")
        candidates = report_candidates(ctx, models["teacher"])
    result = run_sweep(ctx, models, family, k_list, budget if budget else None, echo, rank_by=rank_by,
                       candidates=candidates)
    if not main:
        if result.budget_error:
            raise SystemExit(1)  # rank 0 prints the message
        return
    click.echo(format_sweep(result.body))
    click.echo(f"sweep: {result.path}  plot: {result.plot}")
    if result.budget_error:
        raise click.ClickException(result.budget_error)
    if write_config is not None:
        chosen = result.body["points"][result.body["chosen"]]
        path = write_chosen_config(ctx.cfg, chosen["features"], write_config, family=result.body["family"])
        click.echo(f"chosen config (k={chosen['k']}): {path}")


def _check_nothing_to_repair(run_dir: Path, stages: tuple[str, ...]) -> None:
    """Distributed sweeps: make sure :func:`load_context` will only read. It would redo (and write) a
    finished stage whose files no longer match their hashes; rank 0 checks, and every rank raises
    the same error when one would be redone."""
    error: CoarseRankError | None = None
    if current().is_main:
        try:
            run_ = RunDir.open(run_dir, require=stages)
            changed = [s for s in stages if not run_.is_done(s)]
            if changed:
                error = ArtifactError(
                    f"run {run_dir}: the files of stage {changed[0]!r} changed since it finished; a "
                    "distributed sweep only reads the run: resume it with `distill run` first (or sweep "
                    "with one process)")
        except CoarseRankError as exc:
            error = exc
    error = broadcast_object(error)
    if error is not None:
        raise error
