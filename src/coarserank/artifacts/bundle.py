"""``serving.json``: what a ranker needs besides the files themselves, as one typed bundle.

The export writes it, every reader (``CoarseRanker.from_run``, ``Run.serving``, the Java and Node
rankers) reads it; :class:`ServingBundle` is the only code that builds or parses it.

Keys (format 1): ``format``, ``run_id`` (the id every artifact of the run carries), ``model_hash``
(sha256 of the student's checkpoint), ``dim``, ``items``, ``history_base_rate`` and
``history_crosses`` (the history crosses' statistics a client computes them with), ``kv_dtype``,
``score`` = ``{"a", "b", "formula"}`` and ``files`` (role -> file name: ``user_tower``,
``item_tower``, ``teacher``, ``catalogue``, ``kv``, ``index``, ``queries``, ``index_sidecar``).
``run_id`` and the history keys are absent from bundles exported before they existed.

A COLD student (``student.family = "cold"``) scores candidate rows and has no towers, vectors or
index: its bundle (:class:`ColdBundle`) holds ``format``, ``family = "cold"``, ``run_id``,
``model_hash``, ``fields`` (the student's inputs), ``items``, the history keys, ``score`` =
``{"formula"}`` and ``files`` (``student``, ``teacher``, ``catalogue`` and, when its fields hold
history crosses, ``history``). :func:`read_bundle` reads either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Final, Mapping, Sequence

from coarserank.atomic import atomic_write_text
from coarserank.errors import ArtifactError

__all__ = ["SERVING_FILE", "BUNDLE_FORMAT", "SCORE_FORMULA", "COLD_SCORE_FORMULA", "Bundle", "ColdBundle",
           "ServingBundle", "read_bundle"]

SERVING_FILE: Final[str] = "serving.json"
BUNDLE_FORMAT: Final[int] = 1
SCORE_FORMULA: Final[str] = "a * dot(user_vector, item_vector) + b"
COLD_SCORE_FORMULA: Final[str] = "logit of student.onnx on the candidate's raw row (user + context + item + crosses)"
_ROLES = ("user_tower", "item_tower", "teacher", "catalogue", "kv", "index", "queries")
_COLD_ROLES = ("student", "teacher", "catalogue")


class _Files:
    """What both bundles share: role -> file name, and reading and writing ``serving.json``."""

    files: Mapping[str, str]
    family: ClassVar[str]

    def file(self, role: str) -> str:
        """The file name of ``role`` (``user_tower``, ``kv``, ``student``, ...).

        Raises
        ------
        ArtifactError
            If the bundle names no such file.
        """
        try:
            return self.files[role]
        except KeyError:
            raise ArtifactError(f"{SERVING_FILE} names no {role!r} file; it names: "
                                f"{', '.join(self.files) or 'none'}") from None

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError

    def write(self, path: Path | str) -> Path:
        """Write the bundle atomically."""
        return atomic_write_text(Path(path), json.dumps(self.to_json(), indent=2))


def _body(path: Path | str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc


def _history(body: Mapping[str, Any]) -> dict[str, Any]:
    """The optional keys both bundles parse alike (run id, history crosses' statistics)."""
    return {"run_id": None if body.get("run_id") is None else str(body["run_id"]),
            "history_base_rate": None if body.get("history_base_rate") is None else float(body["history_base_rate"]),
            "history_crosses": None if body.get("history_crosses") is None else list(body["history_crosses"])}


def _check_format(body: Any, where: str) -> None:
    if not isinstance(body, dict):
        raise ArtifactError(f"{where} must hold a JSON object")
    if body.get("format") != BUNDLE_FORMAT:
        raise ArtifactError(f"{where} has format {body.get('format')!r}; this coarserank reads format "
                            f"{BUNDLE_FORMAT}: export the run again with this version")


@dataclass(frozen=True)
class ServingBundle(_Files):
    """The student's score ``a * <u, v> + b``, its vectors' shape and the files that serve it."""

    model_hash: str
    dim: int
    items: int
    kv_dtype: str
    a: float
    b: float
    files: Mapping[str, str] = field(default_factory=dict)
    run_id: str | None = None
    history_base_rate: float | None = None
    history_crosses: Sequence[Mapping[str, Any]] | None = None
    family: ClassVar[str] = "two_tower"

    def to_json(self) -> dict[str, Any]:
        body: dict[str, Any] = {"format": BUNDLE_FORMAT}
        if self.run_id is not None:
            body["run_id"] = self.run_id
        body.update(model_hash=self.model_hash, dim=self.dim, items=self.items)
        if self.history_crosses is not None:
            body.update(history_base_rate=self.history_base_rate, history_crosses=list(self.history_crosses))
        return {**body, "kv_dtype": self.kv_dtype, "score": {"a": self.a, "b": self.b, "formula": SCORE_FORMULA},
                "files": dict(self.files)}

    @classmethod
    def from_json(cls, body: Any, where: str = SERVING_FILE) -> ServingBundle:
        """Parse and check a ``serving.json`` body.

        Raises
        ------
        ArtifactError
            A newer format, or a missing or mistyped key (named).
        """
        _check_format(body, where)
        if body.get("family", "two_tower") == "cold":
            raise ArtifactError(f"{where} serves a COLD student: it scores candidate rows and has no user tower, "
                                "item vectors or Faiss index (`distill rank` and `distill bench` serve it)")
        score = body.get("score")
        try:
            bundle = cls(model_hash=str(body["model_hash"]), dim=int(body["dim"]), items=int(body["items"]),
                         kv_dtype=str(body["kv_dtype"]), a=float(score["a"]), b=float(score["b"]),
                         files={str(k): str(v) for k, v in dict(body["files"]).items()}, **_history(body))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: key {exc} is missing or has the wrong type") from None
        missing = [r for r in _ROLES if r not in bundle.files]
        if missing:
            raise ArtifactError(f"{where}: files lacks {', '.join(missing)}")
        return bundle

    @classmethod
    def read(cls, path: Path | str) -> ServingBundle:
        """Read ``path`` (check it against the manifest first: :meth:`Manifest.verified`)."""
        return cls.from_json(_body(path), str(path))


@dataclass(frozen=True)
class ColdBundle(_Files):
    """A COLD student's ``serving.json``: its fields, the catalogue's size and the files that serve it."""

    model_hash: str
    items: int
    fields: tuple[str, ...]
    files: Mapping[str, str] = field(default_factory=dict)
    run_id: str | None = None
    history_base_rate: float | None = None
    history_crosses: Sequence[Mapping[str, Any]] | None = None
    family: ClassVar[str] = "cold"

    def to_json(self) -> dict[str, Any]:
        return {"format": BUNDLE_FORMAT, "family": self.family, "run_id": self.run_id, "model_hash": self.model_hash,
                "fields": list(self.fields), "items": self.items, "history_base_rate": self.history_base_rate,
                "history_crosses": None if self.history_crosses is None else list(self.history_crosses),
                "score": {"formula": COLD_SCORE_FORMULA}, "files": dict(self.files)}

    @classmethod
    def from_json(cls, body: Any, where: str = SERVING_FILE) -> ColdBundle:
        """Parse and check a COLD student's ``serving.json`` body.

        Raises
        ------
        ArtifactError
            A newer format, another family, or a missing or mistyped key (named).
        """
        _check_format(body, where)
        if body.get("family") != cls.family:
            raise ArtifactError(f"{where} serves a {body.get('family', 'two_tower')} student, not a COLD one; "
                                "use CoarseRanker (towers: user vector x KV item vectors)")
        try:
            bundle = cls(model_hash=str(body["model_hash"]), items=int(body["items"]),
                         fields=tuple(str(f) for f in body["fields"]),
                         files={str(k): str(v) for k, v in dict(body["files"]).items()}, **_history(body))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: key {exc} is missing or has the wrong type") from None
        missing = [r for r in _COLD_ROLES if r not in bundle.files]
        if missing:
            raise ArtifactError(f"{where}: files lacks {', '.join(missing)}")
        return bundle


Bundle = ServingBundle | ColdBundle
"""Either student's serving bundle."""


def read_bundle(path: Path | str) -> Bundle:
    """The ``serving.json`` at ``path``, as the bundle of the family it names (towers or COLD)."""
    body = _body(path)
    if isinstance(body, dict) and body.get("family") == ColdBundle.family:
        return ColdBundle.from_json(body, str(path))
    return ServingBundle.from_json(body, str(path))
