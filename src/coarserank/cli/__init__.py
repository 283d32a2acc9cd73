"""The ``distill`` command group. Thin: parse options, call a typed library function, print.

Errors raised on purpose (:class:`~coarserank.errors.CoarseRankError`) become one line on stderr
and a non-zero exit; ``distill --traceback ...`` shows the full traceback instead.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import click

from coarserank import __version__
from coarserank.errors import CoarseRankError, CoarseRankWarning

__all__ = ["COMMANDS", "distill", "main"]


COMMANDS = {"run": "run_cmd", "report": "report_cmd", "rank": "serve_cmds", "bench": "serve_cmds",
            "index": "serve_cmds", "recall": "serve_cmds", "publish": "serve_cmds", "sweep": "sweep_cmd",
            "describe": "describe_cmd"}
"""Command -> the module of ``coarserank.cli`` that defines it, imported when the command is used
(so ``distill report`` does not load LightGBM, ONNX or Faiss)."""

# Before torch and LightGBM load their OpenMP runtimes: threads that finish a parallel region early
# sleep instead of spinning, which loses most on a shared or quota-limited machine (docs/config.md,
# run.threads). A value the user set wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


_UNWRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT)


def _one_line(exc: BaseException) -> str | None:
    """The one-line message of an error meant for the user, or None for a bug (a traceback)."""
    if isinstance(exc, CoarseRankError):
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    if isinstance(exc, OSError) and exc.errno in _UNWRITABLE:
        where = Path(exc.filename).parent if exc.filename else "the output directory"
        return f"cannot write into {where} ({exc.strerror}); this command writes there"
    return None


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
        except (CoarseRankError, OSError) as exc:
            message = _one_line(exc)
            if message is None or (ctx.obj and ctx.obj.get("traceback")):
                raise
            raise click.ClickException(message) from None


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
    warnings.simplefilter("always", CoarseRankWarning)
    warnings.showwarning = _show_warning


_PYTHON_SHOW_WARNING = warnings.showwarning


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: Any = None, line: str | None = None) -> None:
    """coarserank's own warnings as one line each on stderr (``warning: ...``); others as Python shows them."""
    if issubclass(category, CoarseRankWarning):
        click.echo(f"warning: {message}", err=True)
    else:
        _PYTHON_SHOW_WARNING(message, category, filename, lineno, file, line)


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``distill``."""
    distill.main(args=argv if argv is not None else sys.argv[1:], prog_name="distill")
