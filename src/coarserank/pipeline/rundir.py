"""The run directory being written: create, refuse, replace or resume it, and record what stages write.

A run directory is complete when every stage in ``manifest.json`` says ``done``; a stage that
failed or was interrupted says ``failed`` or ``running``, so nothing half-written passes for
complete. Every file written through :meth:`RunDir.record` gets its sha256 in the manifest and
is verified by :meth:`RunDir.verified_path` before use. The manifest itself is a
:class:`coarserank.artifacts.Manifest` (the one owner of its format and of the stage graph);
reading a finished run is :class:`coarserank.artifacts.Run`'s job.

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
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from coarserank.artifacts.manifest import MANIFEST, STAGE_INPUTS, Manifest, rebuild_message, sha256_file
from coarserank.artifacts.run import load_checkpoint
from coarserank.atomic import LockBusy, atomic_write_text, file_lock
from coarserank.checksums import PUBLISH_LOCK, WRITER_LOCK
from coarserank.errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    import torch

__all__ = ["RunDir", "sha256_file", "MANIFEST", "STAGE_INPUTS", "is_run_manifest"]


def is_run_manifest(body: Any) -> bool:
    """Whether ``body`` (a parsed ``manifest.json``) is a coarserank run's manifest."""
    return (isinstance(body, dict) and isinstance(body.get("stages"), dict) and isinstance(body.get("files"), dict)
            and isinstance(body.get("config_hash"), str))


def _existing_manifest(path: Path) -> Manifest | None:
    try:
        manifest = Manifest.read(path)
    except ArtifactError:
        return None
    return manifest if manifest.config_hash is not None else None


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


class RunDir:
    """A run directory and its manifest. Use :meth:`create` to start or resume a run and
    :meth:`open` or :meth:`writer` to reopen one for writing (reading: :class:`coarserank.artifacts.Run`)."""

    def __init__(self, path: Path | str, manifest: Manifest | Mapping[str, Any], *, writable: bool = True) -> None:
        self.path = Path(path)
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
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
            if existing.config_hash == config_hash and not overwrite:
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
        run = cls(path, Manifest.new(config_hash))
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
        run = cls(path, Manifest.read(path))
        for stage in require:
            status = run.stage_status(stage)
            if status != "done":
                raise ArtifactError(f"run {path}: stage {stage!r} is {status or 'missing'}; "
                                    "finish the run first (`distill run` resumes it)")
        return run

    def save(self) -> None:
        if not self.writable:
            return
        atomic_write_text(self.path / MANIFEST, self.manifest.dumps())

    # -- stages ------------------------------------------------------------------------------
    def stage_status(self, stage: str) -> str | None:
        return self.manifest.stage_status(stage)

    def is_done(self, stage: str) -> bool:
        """Done and every file it wrote still matches its recorded hash."""
        return self.manifest.intact(self.path, stage)

    def changed_file(self, stage: str) -> str | None:
        """The first output of ``stage`` that is missing or no longer matches its recorded hash."""
        return self.manifest.changed_file(self.path, stage)

    def invalidate_changed(self) -> list[str]:
        """Mark every finished stage whose files changed, and every stage downstream of it, ``stale``
        so that a resumed run rebuilds them (:meth:`Manifest.invalidate_changed`); one message per
        changed stage."""
        messages = self.manifest.invalidate_changed(self.path)
        if messages:
            self.save()
        return messages

    def check_intact(self) -> None:
        """For commands that only read a run: every finished stage's files match their hashes."""
        for stage in self.manifest.stage_names():
            rel = self.changed_file(stage) if self.stage_status(stage) == "done" else None
            if rel is not None:
                raise ArtifactError(rebuild_message(self.path, rel, str(self.manifest.file_problem(self.path, rel)),
                                                    stage))

    def load_state(self, rel: str, model: torch.nn.Module) -> torch.nn.Module:
        """Load the checkpoint ``rel`` (verified against the manifest) into ``model``: tensors only
        (``weights_only``), never code; a file that is not such a state dict, or one of another
        model, is a one-line :class:`ArtifactError`."""
        return load_checkpoint(self.verified_path(rel), model, f"run {self.path}: {rel}",
                               "delete it and resume with `distill run` to retrain it")

    def begin(self, stage: str) -> None:
        self.manifest.begin(stage)
        self.save()

    def finish(self, stage: str, **facts: Any) -> None:
        self.manifest.finish(stage, **facts)
        self.save()
        if stage == "data" and self.replaces is not None and self.writable:
            self._commit_replacement()

    def fail(self, stage: str, error: str) -> None:
        if self.replaces is not None and self.writable:
            self._abandon_replacement()
            return
        self.manifest.fail(stage, error)
        self.save()

    def update_stage(self, stage: str, **facts: Any) -> None:
        """Add facts to a stage already recorded (a section hash, a rebuilt index's kind)."""
        self.manifest.update_stage(stage, **facts)
        self.save()

    def set_data_fingerprint(self, fingerprint: str) -> None:
        self.manifest.set_data_fingerprint(fingerprint)
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
            self.manifest.record(stage, rel, sha256_file(Path(p)))
        self.save()

    def verified_path(self, rel: str) -> Path:
        """``path/rel`` after checking its sha256 against the manifest."""
        return self.manifest.verified(self.path, rel)

    def set_check(self, name: str, value: Any) -> None:
        self.manifest.set_check(name, value)
        self.save()
