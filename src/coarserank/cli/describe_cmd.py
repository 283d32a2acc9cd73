"""``distill describe``: the input contract of a run's ONNX files, from the files' own metadata."""

from __future__ import annotations

import json
from pathlib import Path

import click

from coarserank.cli import distill
from coarserank import describe_run, format_description

__all__ = ["describe_command"]


@distill.command("describe")
@click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="A finished run directory (written by `distill run`).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def describe_command(run_dir: Path, as_json: bool) -> None:
    """Print what a client must send to each ONNX file of a run (user tower, item tower, teacher):
    every input's name, dtype, shape, missing value, separator, max_len, source column and
    derivation, the history crosses' formula and statistics, the output and the run id. Read from
    the files' own metadata, so it is what a C++ or Java ranker holding only the files can know."""
    body = describe_run(run_dir)
    click.echo(json.dumps(body, indent=2) if as_json else format_description(body))
