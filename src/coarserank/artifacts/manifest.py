"""``manifest.json``: the typed record of a run directory, and the only code that edits it.

The manifest says which stages ran (``stages``: status, outputs, facts, when they finished), the
sha256 of every file they wrote (``files``), the numerical checks of the exports (``checks``) and
what identifies the run (``run_id``, ``config_hash``, ``data_fingerprint``). Every other module
reads and changes it through :class:`Manifest`; nobody else touches the dictionary.

On disk it is format 1, as written since the first release; a stage's ``finished`` time was added
later and is optional when reading. The run id is derived, not stored (:attr:`Manifest.run_id`). A
stage whose files changed is marked ``stale``, with every stage downstream of it
(:data:`STAGE_INPUTS`), so that a resumed run rebuilds them (:meth:`Manifest.invalidate_changed`).
"""

from __future__ import annotations

import copy
import hashlib
import json
import platform
import time
from pathlib import Path
from typing import Any, Mapping

from coarserank.checksums import MANIFEST, sha256_file, verified_file
from coarserank.errors import ArtifactError

__all__ = ["FORMAT", "MANIFEST", "STAGE_INPUTS", "Manifest", "downstream", "rebuild_command", "sha256_file"]

FORMAT = 1
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "data": (), "teacher": ("data", "student_hard"), "logits": ("teacher",), "student": ("logits",),
    "student_hard": ("data",),
    "gbdt": ("data",), "recall": ("data", "teacher", "logits"),
    "metrics": ("teacher", "logits", "student", "student_hard", "gbdt", "recall"),
    "export": ("data", "teacher", "student"), "distill_grid": ("data", "teacher"),
    "report": ("metrics", "export", "distill_grid"),
}
"""stage -> the stages whose outputs it reads; a stage whose files changed is rebuilt with all
stages downstream of it."""


def downstream(stage: str) -> list[str]:
    """Every stage that reads ``stage``'s outputs, directly or not, in :data:`STAGE_INPUTS` order."""
    reached = {stage}
    for s, inputs in STAGE_INPUTS.items():  # the table lists each stage after its inputs
        if reached & set(inputs):
            reached.add(s)
    return [s for s in STAGE_INPUTS if s in reached and s != stage]


def rebuild_command(path: Path | str, *, overwrite: bool = False) -> str:
    """The command that rebuilds what run ``path`` misses (``overwrite``: all of it, from scratch)."""
    return f"`distill run --config {Path(path) / 'config.toml'} --out {path}{' --overwrite' if overwrite else ''}`"


def rebuild_message(path: Path | str, rel: str, problem: str, stage: str | None) -> str:
    """One line for a reader: which file of run ``path`` is wrong and the command that rebuilds it."""
    what = f"rebuilds stage {stage!r} and what depends on it" if stage else "rebuilds it"
    return f"run {path}: {rel} {problem}; {rebuild_command(path)} {what}"


def _versions() -> dict[str, str]:
    import numpy
    import polars
    import torch

    from coarserank import __version__

    return {"coarserank": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "polars": polars.__version__}


class Manifest:
    """A run's ``manifest.json`` in memory: typed reads, and the edits the pipeline makes.

    Examples
    --------
    >>> m = Manifest.new("c0ffee")                                    # doctest: +SKIP
    >>> m.begin("data"); m.record("data", "schema.json", "ab12..."); m.finish("data", rows=10)  # doctest: +SKIP
    >>> m.stage_status("data")                                        # doctest: +SKIP
    'done'
    """

    def __init__(self, body: Mapping[str, Any], *, source: str = MANIFEST) -> None:
        if not (isinstance(body, Mapping) and isinstance(body.get("stages"), dict)
                and isinstance(body.get("files"), dict)):
            raise ArtifactError(f"{source} is not a coarserank manifest (it needs 'stages' and 'files')")
        fmt = body.get("format", FORMAT)
        if fmt != FORMAT:
            raise ArtifactError(f"{source} has manifest format {fmt!r}; this coarserank reads format {FORMAT}: "
                                "re-run it with this version (`distill run --overwrite`)")
        self._body: dict[str, Any] = copy.deepcopy(dict(body))
        self._body.setdefault("checks", {})

    # -- creating and reading ------------------------------------------------------------------
    @classmethod
    def new(cls, config_hash: str) -> Manifest:
        """The manifest of a run that starts now."""
        return cls({"format": FORMAT, "config_hash": config_hash,
                    "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": _versions(),
                    "machine": platform.platform(), "stages": {}, "files": {}, "checks": {}})

    @classmethod
    def read(cls, run_path: Path | str) -> Manifest:
        """``run_path/manifest.json``, parsed and checked.

        Raises
        ------
        ArtifactError
            No manifest (not a run directory), unreadable JSON, or not a coarserank manifest.
        """
        path = Path(run_path) / MANIFEST
        if not path.is_file():
            raise ArtifactError(f"{run_path} is not a coarserank run directory (no {MANIFEST}); "
                                "create one with `distill run --out DIR`")
        try:
            body = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc
        return cls(body, source=str(path))

    def to_json(self) -> dict[str, Any]:
        """A copy of the dictionary, as written to ``manifest.json``."""
        return copy.deepcopy(self._body)

    def dumps(self) -> str:
        return json.dumps(self._body, indent=2, sort_keys=True)

    # -- identity ------------------------------------------------------------------------------
    @property
    def run_id(self) -> str:
        """The id every serving artifact of the run carries: 32 hex digits of the sha256 of the
        resolved config hash, the data fingerprint and the teacher's and student's checkpoint hashes
        (what the run was made from; no single file's hash equals it, and a resumed run keeps it)."""
        body = {"config": self.config_hash, "data": self.data_fingerprint, "teacher": self.file_hash("teacher.pt"),
                "student": self.file_hash("student.pt")}
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]

    @property
    def config_hash(self) -> str | None:
        return self._body.get("config_hash")

    @property
    def data_fingerprint(self) -> str | None:
        return self._body.get("data_fingerprint")

    def set_data_fingerprint(self, fingerprint: str) -> None:
        self._body["data_fingerprint"] = fingerprint

    def fingerprints(self) -> dict[str, str | None]:
        """What identifies the run's trained models: config, data and the teacher's file hash."""
        return {"config": self.config_hash, "data": self.data_fingerprint, "teacher": self.file_hash("teacher.pt")}

    # -- stages --------------------------------------------------------------------------------
    def stage_names(self) -> list[str]:
        return list(self._body["stages"])

    def stage_status(self, stage: str) -> str | None:
        return self._body["stages"].get(stage, {}).get("status")

    def stage_facts(self, stage: str) -> dict[str, Any]:
        """A copy of the stage's entry (status, outputs, seconds and what the stage recorded)."""
        return copy.deepcopy(self._body["stages"].get(stage, {}))

    def outputs(self, stage: str) -> tuple[str, ...]:
        return tuple(self._body["stages"].get(stage, {}).get("outputs", ()))

    def begin(self, stage: str) -> None:
        self._body["stages"][stage] = {"status": "running", "started": time.time(), "outputs": []}

    def finish(self, stage: str, **facts: Any) -> None:
        """Mark ``stage`` done with ``facts`` (and when it finished)."""
        entry = self._body["stages"][stage]
        now = time.time()
        entry.update(status="done", seconds=round(now - entry.pop("started", now), 3), finished=now, **facts)

    def fail(self, stage: str, error: str) -> None:
        entry = self._body["stages"].setdefault(stage, {"outputs": []})
        entry.pop("started", None)
        entry.update(status="failed", error=error)

    def update_stage(self, stage: str, **facts: Any) -> None:
        """Add or replace facts of a stage that exists (a rebuilt index, a section hash)."""
        if stage not in self._body["stages"]:
            raise ArtifactError(f"stage {stage!r} is not in the manifest")
        self._body["stages"][stage].update(**facts)

    # -- files ---------------------------------------------------------------------------------
    def file_hash(self, rel: str) -> str | None:
        return self._body["files"].get(rel)

    def files(self) -> dict[str, str]:
        return dict(self._body["files"])

    def record(self, stage: str, rel: str, sha256: str) -> None:
        """List ``rel`` (with its sha256) as an output of ``stage``."""
        self._body["files"][rel] = sha256
        outputs = self._body["stages"][stage].setdefault("outputs", [])
        if rel not in outputs:
            outputs.append(rel)

    def stage_of(self, rel: str) -> str | None:
        """The stage that wrote ``rel``."""
        return next((s for s, e in self._body["stages"].items() if rel in e.get("outputs", ())), None)

    def verified(self, run_path: Path | str, rel: str, hint: str = "") -> Path:
        """``run_path/rel`` after checking its sha256 (``hint``: how to rebuild it, for the error)."""
        return verified_file(Path(run_path), self._body, rel, hint)

    def intact(self, run_path: Path | str, stage: str) -> bool:
        """Whether ``stage`` is done and every file it wrote still matches its hash."""
        if self.stage_status(stage) != "done":
            return False
        root = Path(run_path)
        return all((root / rel).is_file() and sha256_file(root / rel) == self.file_hash(rel)
                   for rel in self.outputs(stage))

    # -- checks --------------------------------------------------------------------------------
    def check(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self._body["checks"].get(name, {}))

    def set_check(self, name: str, value: Any) -> None:
        self._body["checks"][name] = copy.deepcopy(value)

    # -- changed files and stale stages -------------------------------------------------------
    def file_problem(self, run_path: Path | str, rel: str) -> str | None:
        """What is wrong with ``run_path/rel`` (missing, modified), or None when it is as recorded."""
        p = Path(run_path) / rel
        expected = self.file_hash(rel)
        if expected is None:
            return f"is not listed in {MANIFEST}"
        if not p.is_file():
            return "is missing"
        if sha256_file(p) != expected:
            return f"does not match its sha256 in {MANIFEST} (modified or corrupt)"
        return None

    def changed_file(self, run_path: Path | str, stage: str) -> str | None:
        """The first output of ``stage`` that is missing or no longer matches its recorded hash."""
        return next((rel for rel in self.outputs(stage) if self.file_problem(run_path, rel) is not None), None)

    def invalidate_changed(self, run_path: Path | str) -> list[str]:
        """Mark every finished stage whose files changed, and every stage downstream of it
        (:data:`STAGE_INPUTS`), ``stale`` so that a resumed run rebuilds them; one message per
        changed stage says which file, why, and what is rebuilt."""
        stages = self._body["stages"]
        changed = {s: rel for s in STAGE_INPUTS if stages.get(s, {}).get("status") == "done"
                   for rel in [self.changed_file(run_path, s)] if rel is not None}
        messages = []
        for stage, rel in changed.items():
            later = [s for s in downstream(stage) if stages.get(s, {}).get("status") == "done"]
            for s in (stage, *later):
                stages[s]["status"] = "stale"
            what = self.file_problem(run_path, rel)
            then = f", then what depends on it: {', '.join(later)}" if later else ""
            messages.append(f"run {run_path}: {rel} {what}; rebuilding stage {stage!r}{then}")
        return messages
