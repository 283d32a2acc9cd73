"""``cr.DistilledRanker``: the teacher and its distilled student behind scikit-learn's estimator contract.

The constructor only stores its parameters (so ``sklearn.base.clone`` gives an unfitted copy with
equal parameters); :meth:`DistilledRanker.fit` does the work with the same library calls as
``distill run`` (:func:`~coarserank.distill.api.train_teacher`, then
:func:`~coarserank.distill.api.distill`), so the same seed gives the same student.

Example
-------
>>> ranker = DistilledRanker(student=StudentConfig(epochs=2), seed=3)             # doctest: +SKIP
>>> ranker.fit(dataset).predict(dataset.prepared.test)                              # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from coarserank.config import DistillConfig, RunConfig, StudentConfig, TeacherConfig, validate
from coarserank.data.dataset import EncodedSplit
from coarserank.data.dataset_builder import Dataset
from coarserank.data.pairs import PairEncoder
from coarserank.data.schema import Schema
from coarserank.distill.api import blend_teacher, check_sampling, score_split, train_teacher
from coarserank.distill.api import distill as distill_student
from coarserank.distill.train import EpochInfo, FitResult
from coarserank.errors import ConfigError, NotFittedError

__all__ = ["DistilledRanker"]

_SECTIONS = {"teacher": TeacherConfig, "student": StudentConfig, "distill": DistillConfig}


class DistilledRanker:
    """A DeepFM teacher and the two-tower student distilled from it, fitted together.

    Parameters are the config sections of the same names (``distill``: the loss mixing hard
    labels with the teacher) plus the ``seed`` every initialisation and shuffle derives from and
    the torch ``device``. Nested parameters (``student__epochs=3``) replace one key of a section,
    as in a scikit-learn grid search. After :meth:`fit`: ``teacher_`` and ``student_`` (torch
    modules, eval mode), ``history_`` (``{"teacher": FitResult, "student": FitResult}``) and
    ``schema_``.
    """

    def __init__(self, teacher: TeacherConfig = TeacherConfig(), student: StudentConfig = StudentConfig(),
                 distill: DistillConfig = DistillConfig(), seed: int = 0, device: str = "cpu") -> None:
        self.teacher = teacher
        self.student = student
        self.distill = distill
        self.seed = seed
        self.device = device

    # -- scikit-learn's parameter contract --------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor's parameters; with ``deep`` also every section key as ``section__key``."""
        params = {name: getattr(self, name) for name in self._param_names()}
        if deep:
            for name in _SECTIONS:
                section = params[name]
                params.update({f"{name}__{f.name}": getattr(section, f.name) for f in dataclasses.fields(section)})
        return params

    def set_params(self, **params: Any) -> DistilledRanker:
        """Set parameters (``seed=1``) or one key of a section (``teacher__epochs=2``); returns self."""
        names = self._param_names()
        nested: dict[str, dict[str, Any]] = {}
        for key, value in params.items():
            name, _, sub = key.partition("__")
            if name not in names or (sub and name not in _SECTIONS):
                raise ConfigError(f"DistilledRanker has no parameter {key!r}; parameters: {', '.join(names)} "
                                  f"(and section keys such as student__epochs)")
            if sub:
                nested.setdefault(name, {})[sub] = value
            else:
                setattr(self, name, value)
        for name, keys in nested.items():
            section = getattr(self, name)
            known = {f.name for f in dataclasses.fields(section)}
            unknown = sorted(set(keys) - known)
            if unknown:
                raise ConfigError(f"DistilledRanker: {name} has no key {unknown[0]!r}")
            setattr(self, name, dataclasses.replace(section, **keys))
        return self

    def __repr__(self) -> str:
        defaults = {n: p.default for n, p in inspect.signature(type(self).__init__).parameters.items() if n != "self"}
        changed = [f"{n}={v!r}" for n, v in self.get_params(deep=False).items() if v != defaults[n]]
        return f"{type(self).__name__}({', '.join(changed)})"

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "student_")

    # -- fitting and predicting ---------------------------------------------------------------

    def _checked(self) -> None:
        """Each section has its type and valid values (before any training)."""
        for name, kind in _SECTIONS.items():
            if not isinstance(getattr(self, name), kind):
                raise ConfigError(f"DistilledRanker: {name} must be a {kind.__name__}, "
                                  f"got {type(getattr(self, name)).__name__}")
        validate(RunConfig(teacher=self.teacher, student=self.student, distill=self.distill))

    def fit(self, X: EncodedSplit | Dataset, eval_set: EncodedSplit | None = None, *, schema: Schema | None = None,
            pairs: PairEncoder | None = None, progress: Callable[[EpochInfo], None] | None = None
            ) -> DistilledRanker:
        """Train the teacher on ``X`` (early-stopped on ``eval_set``; blended with a hard-label student
        as ``teacher.blend`` says, like ``distill run``), then distil the student from it. ``X`` is a
        :class:`Dataset` (its train and valid splits, schema and pairs) or the train
        :class:`EncodedSplit` with ``eval_set`` and ``schema`` (and ``pairs`` when
        ``distill.sampled > 0``). Bad parameters or missing inputs fail before any training."""
        self._checked()
        if isinstance(X, Dataset):
            train, valid, _ = X.splits()
            eval_set, schema, pairs = eval_set or valid, schema or X.schema, pairs or X.pairs
        else:
            train = X
        if not isinstance(train, EncodedSplit) or not isinstance(eval_set, EncodedSplit) or schema is None:
            raise ConfigError("DistilledRanker.fit takes a cr.Dataset, or the train EncodedSplit with "
                              "eval_set=<valid EncodedSplit> and schema=")
        entire = self.distill.alpha > 0 and self.distill.sampled > 0
        if entire and pairs is None:
            raise ConfigError("DistilledRanker: distill.sampled > 0 needs pairs= (a cr.Dataset gives them), "
                              "or set distill__sampled=0")
        if entire and pairs is not None:
            check_sampling(self.distill, pairs)
        history: dict[str, FitResult] = {}
        control = None
        if self.distill.alpha > 0 and any(w > 0 for w in self.teacher.blend):  # as `distill run`: teacher.blend
            hard = distill_student(None, train, eval_set, schema, self.student,
                                   dataclasses.replace(self.distill, alpha=0.0), seed=self.seed, device=self.device,
                                   progress=progress)
            control, history["student_hard"] = hard.model.eval(), hard.history
        teacher = train_teacher(train, eval_set, schema, self.teacher, seed=self.seed, device=self.device,
                                progress=progress)
        blended = blend_teacher(teacher.model, control, eval_set, self.teacher.blend, self.device)
        student = distill_student(blended.model if self.distill.alpha > 0 else None, train, eval_set, schema,
                                  self.student, self.distill, pairs=pairs, seed=self.seed, device=self.device,
                                  progress=progress)
        self.teacher_: nn.Module = blended.model.eval()
        self.student_: nn.Module = student.model.eval()
        self.blend_weight_ = blended.weight
        self.history_: dict[str, FitResult] = {"teacher": teacher.history, "student": student.history, **history}
        self.schema_ = schema
        return self

    def _fitted(self) -> nn.Module:
        if not self.__sklearn_is_fitted__():
            raise NotFittedError(f"this {type(self).__name__} is not fitted yet: call fit(...) before predicting")
        return self.student_

    def predict(self, X: EncodedSplit) -> np.ndarray:
        """The student's logits for every row of ``X``, in row order."""
        return score_split(self._fitted(), X, torch.device(self.device))

    def predict_proba(self, X: EncodedSplit) -> np.ndarray:
        """``[P(label 0), P(label 1)]`` per row (the sigmoid of :meth:`predict`), as scikit-learn's
        classifiers give them."""
        p = 1.0 / (1.0 + np.exp(-np.asarray(self.predict(X), dtype=np.float64)))
        return np.column_stack([1.0 - p, p])
