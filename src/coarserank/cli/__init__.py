"""The ``distill`` command group. Thin: parse options, call a typed library function, print.

Errors raised on purpose (:class:`~coarserank.errors.CoarseRankError`) become one line on stderr
and a non-zero exit; ``distill --traceback ...`` shows the full traceback instead.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from coarserank import __version__
from coarserank.errors import CoarseRankError

__all__ = ["COMMANDS", "distill", "main"]


COMMANDS = {"run": "run_cmd", "report": "report_cmd", "rank": "serve_cmds", "bench": "serve_cmds",
            "index": "serve_cmds", "recall": "serve_cmds", "sweep": "sweep_cmd", "describe": "describe_cmd"}
"""Command -> the module of ``coarserank.cli`` that defines it, imported when the command is used
(so ``distill report`` does not load LightGBM, ONNX or Faiss)."""


class _Group(click.Group):
    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            importlib.import_module(f"coarserank.cli.{COMMANDS[cmd_name]}")
        return super().get_command(ctx, cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CoarseRankError as exc:
            if ctx.obj and ctx.obj.get("traceback"):
                raise
            raise click.ClickException(str(exc).splitlines()[0] if str(exc) else type(exc).__name__) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="distill")
@click.option("--traceback", is_flag=True, help="Show the full Python traceback on errors.")
@click.pass_context
def distill(ctx: click.Context, traceback: bool) -> None:
    """coarserank: distil a DeepFM fine ranker (with user x item cross features) into a fast
    two-tower coarse ranker, export it to ONNX, a KV store and Faiss, and report how well it agrees.

    Start with `distill run` (built-in synthetic data) or
    `distill run --dataset movielens-100k --data-dir PATH`.
    """
    ctx.ensure_object(dict)
    ctx.obj["traceback"] = traceback


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``distill``."""
    distill.main(args=argv if argv is not None else sys.argv[1:], prog_name="distill")
