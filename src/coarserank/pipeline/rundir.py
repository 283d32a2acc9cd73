"""The run directory being written: create, refuse or resume it, and record what stages write.

A run directory is complete when every stage in ``manifest.json`` says ``done``; a stage that
failed or was interrupted says ``failed`` or ``running``, so nothing half-written passes for
complete. Every file written through :meth:`RunDir.record` gets its sha256 in the manifest and
is verified by :meth:`RunDir.verified_path` before use. The manifest itself is a
:class:`coarserank.artifacts.Manifest` (the one owner of its format); reading a finished run is
:class:`coarserank.artifacts.Run`'s job.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Mapping

from coarserank.artifacts.manifest import MANIFEST, Manifest, sha256_file
from coarserank.atomic import atomic_write_text
from coarserank.errors import ArtifactError, ConfigError

__all__ = ["RunDir", "sha256_file", "MANIFEST"]


class RunDir:
    """A run directory and its manifest. Use :meth:`create` to start or resume a run and
    :meth:`open` to reopen one for writing (reading: :class:`coarserank.artifacts.Run`)."""

    def __init__(self, path: Path | str, manifest: Manifest | Mapping[str, Any], *, writable: bool = True) -> None:
        self.path = Path(path)
        self.manifest = manifest if isinstance(manifest, Manifest) else Manifest(manifest)
        self.writable = writable  # False on distributed ranks other than 0: state is tracked, nothing written

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path | str, config_hash: str, *, overwrite: bool = False) -> RunDir:
        """Start a run in ``path``; resume if it holds the same configuration, refuse if it holds a
        different run (or other files) unless ``overwrite``."""
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            existing = Manifest.read(path) if (path / MANIFEST).is_file() else None
            same = existing is not None and existing.config_hash == config_hash
            if not same and not overwrite:
                what = "a different run (another configuration)" if existing else "files that are not a run"
                raise ConfigError(f"output directory {path} already holds {what}; "
                                  "use --overwrite to replace it or --out for another directory")
            if same and not overwrite:
                return cls(path, existing)  # type: ignore[arg-type]
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, Manifest.new(config_hash))
        run.save()
        return run

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
        """Done, every file it wrote still matches its recorded hash, and the stages it reads have
        not been redone since (a resumed run redoes a stage whose inputs changed)."""
        return self.manifest.intact(self.path, stage) and self.manifest.stale_stage(stage) is None

    def begin(self, stage: str) -> None:
        self.manifest.begin(stage)
        self.save()

    def finish(self, stage: str, **facts: Any) -> None:
        self.manifest.finish(stage, **facts)
        self.save()

    def fail(self, stage: str, error: str) -> None:
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
