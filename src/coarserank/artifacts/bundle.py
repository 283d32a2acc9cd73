"""``serving.json``: what a ranker needs besides the files themselves, as one typed bundle.

The export writes it, every reader (``CoarseRanker.from_run``, ``Run.serving``, the Java and Node
rankers) reads it; :class:`ServingBundle` is the only code that builds or parses it.

Keys (format 1): ``format``, ``run_id`` (the id every artifact of the run carries), ``model_hash``
(sha256 of the student's checkpoint), ``dim``, ``items``, ``history_base_rate`` and
``history_crosses`` (the history crosses' statistics a client computes them with), ``kv_dtype``,
``score`` = ``{"a", "b", "formula"}`` and ``files`` (role -> file name: ``user_tower``,
``item_tower``, ``teacher``, ``catalogue``, ``kv``, ``index``, ``queries``, ``index_sidecar``).
``run_id`` and the history keys are absent from bundles exported before they existed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Mapping, Sequence

from coarserank.atomic import atomic_write_text
from coarserank.errors import ArtifactError

__all__ = ["SERVING_FILE", "BUNDLE_FORMAT", "SCORE_FORMULA", "ServingBundle"]

SERVING_FILE: Final[str] = "serving.json"
BUNDLE_FORMAT: Final[int] = 1
SCORE_FORMULA: Final[str] = "a * dot(user_vector, item_vector) + b"
_ROLES = ("user_tower", "item_tower", "teacher", "catalogue", "kv", "index", "queries")


@dataclass(frozen=True)
class ServingBundle:
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

    def file(self, role: str) -> str:
        """The file name of ``role`` (``user_tower``, ``kv``, ``index``, ...).

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
        if not isinstance(body, dict):
            raise ArtifactError(f"{where} must hold a JSON object")
        if body.get("format") != BUNDLE_FORMAT:
            raise ArtifactError(f"{where} has format {body.get('format')!r}; this coarserank reads format "
                                f"{BUNDLE_FORMAT}: export the run again with this version")
        score = body.get("score")
        try:
            bundle = cls(model_hash=str(body["model_hash"]), dim=int(body["dim"]), items=int(body["items"]),
                         kv_dtype=str(body["kv_dtype"]), a=float(score["a"]), b=float(score["b"]),
                         files={str(k): str(v) for k, v in dict(body["files"]).items()},
                         run_id=None if body.get("run_id") is None else str(body["run_id"]),
                         history_base_rate=(None if body.get("history_base_rate") is None
                                            else float(body["history_base_rate"])),
                         history_crosses=None if body.get("history_crosses") is None else list(body["history_crosses"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: key {exc} is missing or has the wrong type") from None
        missing = [r for r in _ROLES if r not in bundle.files]
        if missing:
            raise ArtifactError(f"{where}: files lacks {', '.join(missing)}")
        return bundle

    @classmethod
    def read(cls, path: Path | str) -> ServingBundle:
        """Read ``path`` (check it against the manifest first: :meth:`Manifest.verified`)."""
        try:
            body = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc
        return cls.from_json(body, str(path))

    def write(self, path: Path | str) -> Path:
        """Write the bundle atomically."""
        return atomic_write_text(Path(path), json.dumps(self.to_json(), indent=2))
