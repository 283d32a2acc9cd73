"""Typed data the read-side stages take: :class:`RunData` and the model scores on a split.

The export, the report, the benchmark requests and the sweep's candidate sets read the same few
things from a finished run: its configuration, encoder, prepared rows and the models' logits on the
test split. :class:`RunData` carries them, frozen and explicit; it is built from a run directory
opened read-only (:meth:`RunData.from_run`) or from the training pipeline's in-memory state
(:meth:`RunData.from_context`), so a stage computes the same thing whichever way it is called.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import numpy as np
import polars as pl
import torch

from coarserank.artifacts import Run
from coarserank.config import RunConfig
from coarserank.data.encode import Encoder
from coarserank.distill.api import score_split

if TYPE_CHECKING:
    from coarserank.pipeline.run import RunContext

__all__ = ["RunData"]


@dataclass(frozen=True)
class RunData:
    """A finished run's data for the read-side stages.

    ``frame`` holds every prepared row the run kept in memory (the catalogue, history crosses and
    user samples come from it), ``test`` the prepared test rows, ``test_logits`` each model's logits
    on them (same order) and ``path`` the run directory the stages name in what they write.
    """

    cfg: RunConfig
    encoder: Encoder
    frame: pl.DataFrame
    test: pl.DataFrame
    test_logits: Mapping[str, np.ndarray]
    path: Path

    @classmethod
    def from_run(cls, run: Run, models: Mapping[str, torch.nn.Module],
                 device: torch.device | str = "cpu") -> RunData:
        """From a run opened read-only: the teacher's stored test logits, the other models scored on
        the encoded test split (nothing else of the log is encoded)."""
        logits: dict[str, np.ndarray] = {}
        for name, model in models.items():
            if name == "teacher" and run.has("logits"):
                logits[name] = run.teacher_logits("test")
            else:
                logits[name] = score_split(model, run.split("test"), device)
        return cls(run.config, run.encoder, run.frame(), run.split_frame("test"), logits, run.path)

    @classmethod
    def from_context(cls, ctx: RunContext) -> RunData:
        """From the pipeline's in-memory state once the metrics stage has scored the test split."""
        assert ctx.encoder is not None and ctx.frame is not None
        return cls(ctx.cfg, ctx.encoder, ctx.frame, ctx.frames["test"], dict(ctx.logits["test"]), ctx.run.path)
