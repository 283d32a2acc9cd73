"""coarserank: distil a DeepFM teacher into a two-tower coarse ranker and ship it.

The public API, ``import coarserank as cr``: everything listed in ``__all__`` (documented in
``docs/api.md``). Names load on first use, so ``import coarserank`` (and the ``distill`` command)
stays fast and importing one submodule never drags in the others.

Examples
--------
>>> import coarserank as cr
>>> run = cr.Run.open("runs/movielens")                                      # doctest: +SKIP
>>> cr.evaluate(run.model("student"), run.split("test")).gauc                # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # reading and judging runs, shipping models
    "Run": "coarserank.artifacts",
    "ServingBundle": "coarserank.artifacts",
    "Evaluation": "coarserank.api",
    "evaluate": "coarserank.api",
    "consistency": "coarserank.api",
    "export": "coarserank.api",
    "prepare_data": "coarserank.api",
    "Dataset": "coarserank.data.dataset_builder",
    # training (distill's library calls)
    "train_teacher": "coarserank.distill.api",
    "blend_teacher": "coarserank.distill.api",
    "Blended": "coarserank.distill.api",
    "distill": "coarserank.distill",  # the subpackage, callable as coarserank.distill.api.distill (see there)
    "train_gbdt": "coarserank.distill.api",
    "GbdtReference": "coarserank.distill.gbdt",
    "DistilledRanker": "coarserank.distill.estimator",
    "score_split": "coarserank.distill.api",
    "Trained": "coarserank.distill.api",
    "ExportResult": "coarserank.pipeline.export_stage",
    # typed data
    "EncodedSplit": "coarserank.data.dataset",
    "PreparedData": "coarserank.data.dataset",
    "CandidateSets": "coarserank.data.splits",
    "RunData": "coarserank.pipeline.run_data",
    # configuration
    "RunConfig": "coarserank.config",
    "TeacherConfig": "coarserank.config",
    "StudentConfig": "coarserank.config",
    "DistillConfig": "coarserank.config",
    "GbdtConfig": "coarserank.config",
    "FeatureConfig": "coarserank.config",
    "load_config": "coarserank.config",
    # the pipeline as one call
    "run": "coarserank.pipeline.run",
    # serving from a run directory
    "CoarseRanker": "coarserank.serving.ranker",
    "ColdRanker": "coarserank.serving.cold_ranker",
    "open_ranker": "coarserank.serving.cold_ranker",
    "Recaller": "coarserank.serving.recall",
    "has_recall_model": "coarserank.serving.recall",
    "RankResult": "coarserank.serving.ranker",
    "parse_user": "coarserank.serving.ranker",
    "read_candidates": "coarserank.serving.ranker",
    "describe_run": "coarserank.serving.describe",
    "publish_run": "coarserank.serving.run_files",
    "format_description": "coarserank.serving.describe",
    # errors
    "CoarseRankError": "coarserank.errors",
    "ConfigError": "coarserank.errors",
    "SchemaError": "coarserank.errors",
    "DataError": "coarserank.errors",
    "ArtifactError": "coarserank.errors",
    "ServingError": "coarserank.errors",
    "NotFittedError": "coarserank.errors",
}

__all__ = [
    "__version__",
    "ArtifactError",
    "Blended",
    "CandidateSets",
    "CoarseRankError",
    "CoarseRanker",
    "ColdRanker",
    "ConfigError",
    "DataError",
    "Dataset",
    "DistillConfig",
    "DistilledRanker",
    "EncodedSplit",
    "Evaluation",
    "ExportResult",
    "FeatureConfig",
    "GbdtConfig",
    "GbdtReference",
    "NotFittedError",
    "PreparedData",
    "RankResult",
    "Recaller",
    "Run",
    "RunConfig",
    "RunData",
    "SchemaError",
    "ServingBundle",
    "ServingError",
    "StudentConfig",
    "TeacherConfig",
    "Trained",
    "consistency",
    "describe_run",
    "blend_teacher",
    "distill",
    "evaluate",
    "export",
    "format_description",
    "has_recall_model",
    "load_config",
    "open_ranker",
    "parse_user",
    "prepare_data",
    "publish_run",
    "read_candidates",
    "run",
    "score_split",
    "train_gbdt",
    "train_teacher",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time names load lazily below
    from coarserank.api import Evaluation, consistency, evaluate, export, prepare_data
    from coarserank.artifacts import Run, ServingBundle
    from coarserank.config import (
        DistillConfig,
        FeatureConfig,
        GbdtConfig,
        RunConfig,
        StudentConfig,
        TeacherConfig,
        load_config,
    )
    from coarserank.data.dataset import EncodedSplit, PreparedData
    from coarserank.data.dataset_builder import Dataset
    from coarserank.data.splits import CandidateSets
    from coarserank.distill.api import (
        Blended,
        Trained,
        blend_teacher,
        distill,
        score_split,
        train_gbdt,
        train_teacher,
    )
    from coarserank.distill.estimator import DistilledRanker
    from coarserank.distill.gbdt import GbdtReference
    from coarserank.errors import (
        ArtifactError,
        CoarseRankError,
        ConfigError,
        DataError,
        NotFittedError,
        SchemaError,
        ServingError,
    )
    from coarserank.pipeline.export_stage import ExportResult
    from coarserank.pipeline.run import run
    from coarserank.pipeline.run_data import RunData
    from coarserank.serving.cold_ranker import ColdRanker, open_ranker
    from coarserank.serving.describe import describe_run, format_description
    from coarserank.serving.ranker import CoarseRanker, RankResult, parse_user, read_candidates
    from coarserank.serving.recall import Recaller, has_recall_model
    from coarserank.serving.run_files import publish_run


def __getattr__(name: str) -> Any:
    """Load a public name from the module that defines it, once. A name that is itself a
    subpackage (``distill``: a callable module) is that module, whichever was imported first."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'coarserank' has no attribute {name!r}")
    loaded = importlib.import_module(module)
    value = loaded if module == f"{__name__}.{name}" else getattr(loaded, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
