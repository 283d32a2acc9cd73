"""``distill sweep`` on a finished run: read it, build the candidate sets, run the COLD sweep.

The sweep itself (:func:`coarserank.cold.sweep.run_sweep`) takes typed data; this module reads a
finished run through :class:`~coarserank.artifacts.Run` (every file verified, nothing retrained,
nothing written but ``sweep/``) and builds that data: :func:`sweep_data` (the encoded splits, the
teacher's logits, the run's fingerprints) and :func:`report_candidates` (the report's candidate
sets, encoded and scored by the teacher). Under torch.distributed every rank calls
:func:`sweep_run`; each opens the run read-only and rank 0 alone builds the candidate sets.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Literal, Mapping

import numpy as np
import torch

from coarserank.artifacts import Run
from coarserank.cold.sweep import (
    CandidateSets,
    SweepData,
    SweepResult,
    parse_ks,
    resolve_ks,
    run_sweep,
    write_chosen_config,
)
from coarserank.data.prepare import SPLITS
from coarserank.data.dataset import EncodedSplit
from coarserank.distill.tensors import make_table
from coarserank.distill.train import predict
from coarserank.distill.distributed import current
from coarserank.pipeline.candidates import candidate_sets
from coarserank.pipeline.run_data import RunData

__all__ = ["SWEEP_DEVICE", "SWEEP_READS", "parse_ks", "report_candidates", "sweep_data", "sweep_run"]

SWEEP_DEVICE = "cpu"  # the sweep trains on CPU (ONNX Runtime times on CPU too)
SWEEP_READS = ("data", "teacher", "logits")
"""The stages whose files a sweep reads."""
CandidateMode = Literal["report", "exposures"]


def _quiet(_: str) -> None:
    return None


def sweep_data(run: Run, device: str = SWEEP_DEVICE) -> SweepData:
    """The run's encoded train, valid and test splits (a streaming run's train split is its sample)
    with the teacher's logits for each, its fingerprints, and ``sweep/`` as the output directory."""
    return SweepData(run.config, run.schema, run.encoder, run.split_frame("test"), {s: run.split(s) for s in SPLITS},
                     {s: run.teacher_logits(s) for s in SPLITS}, run.manifest.fingerprints(), run.path / "sweep",
                     torch.device(device), str(run.path))


def report_candidates(data: RunData, test: EncodedSplit, teacher: torch.nn.Module,
                      device: str = SWEEP_DEVICE) -> CandidateSets:
    """The report's candidate sets (test exposures + ``report.sampled`` catalogue items per user),
    encoded, with the teacher's logit per candidate (stored logits for exposures, scored for the rest)."""
    sets = candidate_sets(data.cfg, data.frame, data.test)
    idx = sets.exposed["_i"].to_numpy()
    n = sets.sampled.height
    sampled = data.encoder.transform(sets.sampled)
    z = predict(teacher, make_table(sampled, np.zeros(n), np.zeros(n, dtype=np.int64)), torch.device(device))
    inputs = {k: np.concatenate([v[idx], sampled[k]]) for k, v in test.fields(data.encoder.schema_).items()}
    groups = np.concatenate([sets.exposed["_u"].to_numpy(), sets.sampled["_u"].to_numpy()])
    r, seed = data.cfg.report, data.cfg.run.seed
    return CandidateSets(inputs, groups, np.concatenate([data.test_logits["teacher"][idx], z]),
                         f"the report's candidate sets: each selected test user's test exposures plus {r.sampled} "
                         f"catalogue items sampled by {r.sampling} (max_users {r.max_users}, seed {seed})")


def sweep_run(run_dir: Path | str, *, family: str | None = None, ks: list[int | None] | None = None,
              budget_ms: float | None = None, rank_by: str | None = None, candidates: CandidateMode = "report",
              write_config: Path | str | None = None, progress: Callable[[str], None] = _quiet) -> SweepResult:
    """Sweep a finished run (``distill sweep``); ``None`` settings come from the run's ``cold`` section.

    With ``write_config``, rank 0 also writes the chosen point as a config for ``distill run``
    (when a point met the budget): :attr:`SweepResult.chosen_config`.

    Raises
    ------
    ArtifactError
        The run lacks (or has a stale or modified) teacher, teacher logits or data.
    ConfigError
        A bad family, k, ranking or budget (before any candidate set is built).
    """
    run = Run.open(run_dir, require=SWEEP_READS)
    cold = run.config.cold
    budget = cold.budget_ms if budget_ms is None else budget_ms
    family = family or cold.family
    k_list = ks if ks is not None else parse_ks(list(cold.k))
    resolve_ks(k_list, run.schema, family)  # a bad k fails before the candidate sets are built
    models: Mapping[str, torch.nn.Module] = run.models(
        tuple(m for m in ("teacher", "student") if run.has(m)), SWEEP_DEVICE)
    data = sweep_data(run)
    sets = None
    if current().is_main and candidates == "report":  # only rank 0 measures
        progress("sweep: building the report's candidate sets")
        test = RunData(run.config, run.encoder, run.frame(), run.split_frame("test"),
                       {"teacher": data.teacher["test"]}, run.path)
        sets = report_candidates(test, data.splits["test"], models["teacher"])
    result = run_sweep(data, models, family, k_list, budget if budget else None, progress, rank_by=rank_by,
                       candidates=sets)
    if write_config is None or not current().is_main or result.budget_error:
        return result
    chosen = result.body["points"][result.body["chosen"]]
    return replace(result, chosen_config=write_chosen_config(run.config, chosen["features"], write_config,
                                                                 family=result.body["family"]))
