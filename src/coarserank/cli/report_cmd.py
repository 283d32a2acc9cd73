"""``distill report``: the ranking-consistency report of a run, or a comparison of two scorers' files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from coarserank.cli import distill
from coarserank.pipeline.report_stage import report_compare, report_run
from coarserank.pipeline.rundir import RunDir

__all__ = ["format_summary", "report_command"]


def format_summary(report: dict[str, Any]) -> str:
    """The short table printed after a report: label metrics and Recall@10-in-100 per scorer."""
    setup, counts = report["setup"], report["counts"]
    lines = [f"{counts['groups']:,} candidate sets, {counts['candidates']:,} candidates "
             f"({counts['labelled']:,} labelled); reference {setup['reference']}"]
    if setup.get("mode") == "run":
        lines.append(f"auc, gauc, logloss: the {counts['labelled']:,} labelled test exposures of these "
                     f"{counts['groups']:,} users (metrics.json scores every test row, hence other figures)")
    lines.append(f"{'model':<14} {'auc':>7} {'gauc':>7} {'logloss':>8} {'r@10in100':>10} {'kendall':>8}")

    def cell(x: float | None, width: int) -> str:
        return f"{x:>{width}.4f}" if isinstance(x, float) else f"{'-':>{width}}"

    for m in dict.fromkeys([*setup["label_models"], setup["reference"], *setup["models"]]):
        lm, cons = report["label_metrics"].get(m, {}), report["consistency"].get(m, {})
        lines.append(f"{m:<14} {cell(lm.get('auc'), 7)} {cell(lm.get('gauc'), 7)} "
                     f"{cell(lm.get('logloss'), 8)} "
                     f"{cell(cons.get('recall@10_in_100'), 10)} {cell(cons.get('kendall_tau'), 8)}")
    for entry in report["gain"].values():
        g = entry["metrics"].get("gauc")
        if g:
            lines.append(f"gain {entry['model']} - {entry['baseline']}: gauc {g['difference']:+.4f} "
                         f"[{g['low']:+.4f}, {g['high']:+.4f}] ({entry['level']:.0%} CI, "
                         f"{g['groups']:,} groups)")
    return "\n".join(lines)


@distill.command("report")
@click.option("--run", "run_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory: (re)build DIR/report from its models and data.")
@click.option("--scores", "score_files", multiple=True, metavar="FILE[:COLUMN]",
              help="Score file (parquet or CSV: group, item_id, score); repeat for each scorer. The first is "
                   "the reference. Name the score column with FILE:COLUMN when the file holds several.")
@click.option("--labels", type=click.Path(dir_okay=False),
              help="Labels file (group, item_id, label) for --scores.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory for --scores (report.json, report.html, scores.parquet).")
@click.option("--bootstrap", type=click.IntRange(min=1), default=200, show_default=True,
              help="Bootstrap replicates for --scores confidence intervals.")
@click.option("--seed", type=int, default=0, show_default=True, help="Bootstrap seed for --scores.")
@click.option("--force", is_flag=True, help="With --run: rebuild the report even when it is current.")
@click.option("-q", "--quiet", is_flag=True, help="Print only the summary.")
def report_command(run_dir: Path | None, score_files: tuple[str, ...], labels: str | None, out: Path | None,
                   bootstrap: int, seed: int, force: bool, quiet: bool) -> None:
    """Ranking-consistency report: report.json and a self-contained report.html.

    Label metrics, teacher-student consistency on production-like candidate sets, segments and
    the distillation gain with its confidence interval.

    Either --run DIR (also done at the end of `distill run`; reads the run, writes DIR/report only, and
    leaves a current report as it is unless --force), or --scores A --scores B [--labels L] --out DIR
    to compare any two scorers, e.g. a production ranker's logged scores against the student's.
    """
    echo = (lambda _m: None) if quiet else (lambda m: click.echo(m, err=True))
    if (run_dir is None) == (not score_files):
        raise click.UsageError("give either --run DIR or --scores FILE --scores FILE")
    if run_dir is not None:
        if out is not None or labels is not None:
            raise click.UsageError("--out and --labels apply to --scores; a run's report goes to DIR/report")
        with RunDir.writer(run_dir):  # one writer at a time; a read-only directory fails here, in one line
            result = report_run(run_dir, progress=echo, force=force)
    else:
        if force:
            raise click.UsageError("--force applies to --run: --scores always builds its report")
        if len(score_files) < 2:
            raise click.UsageError("--scores needs at least two files: the reference and a scorer to compare")
        if out is None:
            raise click.UsageError("--scores needs --out DIR for the report files")
        result = report_compare(list(score_files), out, labels=labels, n_boot=bootstrap, seed=seed,
                                progress=echo)
    click.echo(format_summary(result.report))
    if quiet or run_dir is None:  # otherwise the report's own progress line already said where and how long
        state = "" if result.rebuilt else ", current: not rebuilt"
        click.echo(f"report: {result.html}  ({result.seconds:.1f}s{state})")
