"""The run directory: layout, ``manifest.json`` (hashes, stage status, checks), open/refuse/resume.

A run directory is complete when every stage in ``manifest.json`` says ``done``; a stage that
failed or was interrupted says ``failed`` or ``running``, so nothing half-written passes for
complete. Every file written through :meth:`RunDir.record` gets its sha256 in the manifest and
is verified by :meth:`RunDir.verified_path` before use.

One writer at a time: :meth:`RunDir.create` and :meth:`RunDir.writer` hold an exclusive lock on
``.coarserank.lock`` until :meth:`RunDir.close`; a second writer is refused at once. A writer that
replaces files a server may be loading (``distill index``) does so inside :meth:`RunDir.publishing`,
and readers (``serving.ranker.RunFiles``) load under the shared side of that lock, so they see the
old files with the old manifest or the new with the new.

``--overwrite`` only ever replaces a directory whose ``manifest.json`` says it is a coarserank run,
and only once the new run's data has passed its checks: until the ``data`` stage finishes, the new
run is built in a hidden sibling directory and the old run stays as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import torch

from coarserank import __version__
from coarserank.atomic import LockBusy, atomic_write_text, file_lock
from coarserank.checksums import MANIFEST, PUBLISH_LOCK, WRITER_LOCK, sha256_file, verified_file
from coarserank.errors import ArtifactError, ConfigError

__all__ = ["RunDir", "sha256_file", "MANIFEST", "STAGE_INPUTS", "is_run_manifest"]


#: stage -> the stages whose outputs it reads; a stage whose files changed is rebuilt with all
#: stages downstream of it.
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "data": (), "teacher": ("data",), "logits": ("teacher",), "student": ("logits",), "student_hard": ("data",),
    "gbdt": ("data",), "metrics": ("teacher", "logits", "student", "student_hard", "gbdt"),
    "export": ("data", "teacher", "student"), "report": ("metrics", "export"),
}


def _downstream(stage: str) -> list[str]:
    """Every stage that reads ``stage``'s outputs, directly or not, in :data:`STAGE_INPUTS` order."""
    reached = {stage}
    for s, inputs in STAGE_INPUTS.items():  # the table lists each stage after its inputs
        if reached & set(inputs):
            reached.add(s)
    return [s for s in STAGE_INPUTS if s in reached and s != stage]


def _load_reason(exc: BaseException) -> str:
    """torch.load's failure in a few words, without its advice to load untrusted code."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        return text[text.index(marker):].splitlines()[0].strip()[:200]
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln), "")
    return f"{type(exc).__name__}: {first}"[:200] if first else type(exc).__name__


def is_run_manifest(body: Any) -> bool:
    """Whether ``body`` (a parsed ``manifest.json``) is a coarserank run's manifest."""
    return (isinstance(body, dict) and isinstance(body.get("stages"), dict) and isinstance(body.get("files"), dict)
            and isinstance(body.get("config_hash"), str))


def _existing_manifest(path: Path) -> dict[str, Any] | None:
    try:
        body = json.loads((path / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return body if is_run_manifest(body) else None


def _lock(directory: Path, name: str = WRITER_LOCK) -> contextlib.AbstractContextManager[bool]:
    return file_lock(directory / name, exclusive=True, wait=False)


def _held_writer_lock(directory: Path, stack: contextlib.ExitStack) -> None:
    """Take the exclusive writer lock of ``directory`` into ``stack``, or raise a one-line error."""
    try:
        stack.enter_context(_lock(directory))
    except LockBusy:
        raise ArtifactError(f"run directory {directory} is being written by another coarserank process "
                            "(`distill run`, `index`, `report` or `sweep`); wait for it to finish") from None
    except OSError as exc:
        raise ArtifactError(f"run directory {directory} is not writable ({exc.strerror}); "
                            "this command writes into it") from None


def _versions() -> dict[str, str]:
    import numpy
    import polars
    import torch

    return {"coarserank": __version__, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": numpy.__version__, "polars": polars.__version__}


class RunDir:
    """A run directory and its manifest. Use :meth:`create` to start or resume a run and
    :meth:`open` to read a finished one."""

    def __init__(self, path: Path | str, manifest: dict[str, Any], *, writable: bool = True) -> None:
        self.path = Path(path)
        self.manifest = manifest
        self.writable = writable  # False on distributed ranks other than 0: state is tracked, nothing written
        self.replaces: Path | None = None  # the run this one replaces once its data passed the checks
        self._locks = contextlib.ExitStack()

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path | str, config_hash: str, *, overwrite: bool = False) -> RunDir:
        """Start a run in ``path``; resume if it holds the same configuration, refuse if it holds a
        different run unless ``overwrite``, and always refuse a directory of other files. Holds the
        writer lock until :meth:`close`."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ConfigError(f"output directory {path} is a file; give --out a directory")
        if path.is_dir() and any(p.name not in (WRITER_LOCK, PUBLISH_LOCK) for p in path.iterdir()):
            existing = _existing_manifest(path)
            if existing is None:
                raise ConfigError(f"output directory {path} holds files that are not a coarserank run (no "
                                  f"readable {MANIFEST} of a run); coarserank never replaces such a directory: "
                                  "give --out a new or empty directory")
            stack = contextlib.ExitStack()
            _held_writer_lock(path, stack)
            if existing.get("config_hash") == config_hash and not overwrite:
                run = cls(path, existing)
                run._locks = stack
                return run
            if not overwrite:
                stack.close()
                raise ConfigError(f"output directory {path} already holds a different run (another "
                                  "configuration); use --overwrite to replace it or --out for another directory")
            run = cls._fresh(Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent)), config_hash)
            run._locks.enter_context(stack)
            run.replaces = path
            return run
        path.mkdir(parents=True, exist_ok=True)
        return cls._fresh(path, config_hash)

    @classmethod
    def _fresh(cls, path: Path, config_hash: str) -> RunDir:
        run = cls(path, {"format": 1, "config_hash": config_hash, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                         time.gmtime()), "versions": _versions(), "machine": platform.platform(),
                         "stages": {}, "files": {}, "checks": {}})
        _held_writer_lock(path, run._locks)
        run.save()
        return run

    @classmethod
    def writer(cls, path: Path | str, *, require: tuple[str, ...] = ()) -> RunDir:
        """:meth:`open` for a command that writes into a finished run: holds the writer lock until
        :meth:`close` (use it as a context manager)."""
        run = cls.open(path, require=require)
        _held_writer_lock(run.path, run._locks)
        return run

    def close(self) -> None:
        """Release the locks this run directory holds."""
        self._locks.close()

    def __enter__(self) -> RunDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def publishing(self) -> Iterator[None]:
        """Replace files and the manifest that vouches for them as one step for readers: they load
        under the shared side of this lock (see ``serving.ranker.RunFiles``)."""
        with file_lock(self.path / PUBLISH_LOCK, exclusive=True, wait=True):
            yield

    def _commit_replacement(self) -> None:
        """Move the new run (built beside it) into the place of the run it replaces."""
        target = self.replaces
        assert target is not None
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.replace(target, trash / target.name)
        os.replace(self.path, target)
        self.path, self.replaces = target, None
        shutil.rmtree(trash, ignore_errors=True)

    def _abandon_replacement(self) -> None:
        """The new run failed before its data passed: remove it; the old run stays untouched."""
        shutil.rmtree(self.path, ignore_errors=True)
        self.path, self.replaces = self.replaces, None  # type: ignore[assignment]
        self.writable = False

    @classmethod
    def open(cls, path: Path | str, *, require: tuple[str, ...] = ()) -> RunDir:
        """Open an existing run directory; ``require`` names stages that must be done."""
        path = Path(path)
        if not (path / MANIFEST).is_file():
            raise ArtifactError(f"{path} is not a coarserank run directory (no {MANIFEST}); "
                                "create one with `distill run --out DIR`")
        run = cls(path, cls._read_manifest(path / MANIFEST))
        for stage in require:
            status = run.stage_status(stage)
            if status != "done":
                raise ArtifactError(f"run {path}: stage {stage!r} is {status or 'missing'}; "
                                    "finish the run first (`distill run` resumes it)")
        return run

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        try:
            body = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ArtifactError(f"{path} is not readable JSON: {exc}") from exc
        if not isinstance(body, dict) or "stages" not in body or "files" not in body:
            raise ArtifactError(f"{path} is not a coarserank manifest")
        return body

    def save(self) -> None:
        if not self.writable:
            return
        atomic_write_text(self.path / MANIFEST, json.dumps(self.manifest, indent=2, sort_keys=True))

    # -- stages ------------------------------------------------------------------------------
    def stage_status(self, stage: str) -> str | None:
        return self.manifest["stages"].get(stage, {}).get("status")

    def is_done(self, stage: str) -> bool:
        """Done and every file it wrote still matches its recorded hash."""
        entry = self.manifest["stages"].get(stage, {})
        return entry.get("status") == "done" and self.changed_file(stage) is None

    def changed_file(self, stage: str) -> str | None:
        """The first output of ``stage`` that is missing or no longer matches its recorded hash."""
        for rel in self.manifest["stages"].get(stage, {}).get("outputs", []):
            p = self.path / rel
            if not p.is_file() or sha256_file(p) != self.manifest["files"].get(rel):
                return rel
        return None

    def invalidate_changed(self) -> list[str]:
        """Mark every finished stage whose files changed, and every stage downstream of it
        (:data:`STAGE_INPUTS`), ``stale`` so that a resumed run rebuilds them; one message per
        changed stage says which file, why, and what is rebuilt."""
        stages = self.manifest["stages"]
        changed = {s: rel for s in STAGE_INPUTS if stages.get(s, {}).get("status") == "done"
                   for rel in [self.changed_file(s)] if rel is not None}
        messages = []
        for stage, rel in changed.items():
            downstream = [s for s in _downstream(stage) if stages.get(s, {}).get("status") == "done"]
            for s in (stage, *downstream):
                stages[s]["status"] = "stale"
            what = "is missing" if not (self.path / rel).is_file() else f"does not match its sha256 in {MANIFEST}"
            then = f", then what depends on it: {', '.join(downstream)}" if downstream else ""
            messages.append(f"run {self.path}: {rel} {what} (modified or corrupt); rebuilding stage "
                            f"{stage!r}{then}")
        if changed:
            self.save()
        return messages

    def check_intact(self) -> None:
        """For commands that only read a run: every finished stage's files match their hashes."""
        for stage, entry in self.manifest["stages"].items():
            rel = self.changed_file(stage) if entry.get("status") == "done" else None
            if rel is not None:
                raise ArtifactError(f"run {self.path}: {rel} is missing or does not match its sha256 in {MANIFEST} "
                                    f"(modified or corrupt); `distill run --config {self.path / 'config.toml'} --out "
                                    f"{self.path}` rebuilds stage {stage!r} and what depends on it")

    def load_state(self, rel: str, model: torch.nn.Module) -> torch.nn.Module:
        """Load the checkpoint ``rel`` (verified against the manifest) into ``model``: tensors only
        (``weights_only``), never code; a file that is not such a state dict, or one of another
        model, is a one-line :class:`ArtifactError`."""
        path = self.verified_path(rel)
        redo = "delete it and resume with `distill run` to retrain it"
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
            raise ArtifactError(f"run {self.path}: {rel} is not a checkpoint of tensors coarserank can load "
                                f"({_load_reason(exc)}); {redo}") from None
        if not isinstance(state, dict):
            raise ArtifactError(f"run {self.path}: {rel} holds a {type(state).__name__}, not a state dict; {redo}")
        try:
            model.load_state_dict(state)
        except (RuntimeError, KeyError, TypeError) as exc:
            lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
            raise ArtifactError(f"run {self.path}: {rel} holds the weights of another model "
                                f"({(lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:200]})"
                                f"; {redo}") from None
        return model

    def begin(self, stage: str) -> None:
        self.manifest["stages"][stage] = {"status": "running", "started": time.time(), "outputs": []}
        self.save()

    def finish(self, stage: str, **facts: Any) -> None:
        entry = self.manifest["stages"][stage]
        entry.update(status="done", seconds=round(time.time() - entry.pop("started", time.time()), 3), **facts)
        self.save()
        if stage == "data" and self.replaces is not None and self.writable:
            self._commit_replacement()

    def fail(self, stage: str, error: str) -> None:
        if self.replaces is not None and self.writable:
            self._abandon_replacement()
            return
        entry = self.manifest["stages"].setdefault(stage, {"outputs": []})
        entry.pop("started", None)
        entry.update(status="failed", error=error)
        self.save()

    # -- files -------------------------------------------------------------------------------
    def file(self, rel: str) -> Path:
        return self.path / rel

    def record(self, stage: str, *paths: Path) -> None:
        """Hash files a stage wrote and list them as its outputs."""
        if not self.writable:
            return
        for p in paths:
            rel = Path(p).resolve().relative_to(self.path.resolve()).as_posix()
            self.manifest["files"][rel] = sha256_file(Path(p))
            outputs = self.manifest["stages"][stage].setdefault("outputs", [])
            if rel not in outputs:
                outputs.append(rel)
        self.save()

    def verified_path(self, rel: str) -> Path:
        """``path/rel`` after checking its sha256 against the manifest."""
        return verified_file(self.path, self.manifest, rel)

    def set_check(self, name: str, value: Any) -> None:
        self.manifest["checks"][name] = value
        self.save()
