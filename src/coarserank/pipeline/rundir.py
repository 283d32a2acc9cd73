"""The run directory: layout, ``manifest.json`` (hashes, stage status, checks), open/refuse/resume.

A run directory is complete when every stage in ``manifest.json`` says ``done``; a stage that
failed or was interrupted says ``failed`` or ``running``, so nothing half-written passes for
complete. Every file written through :meth:`RunDir.record` gets its sha256 in the manifest and
is verified by :meth:`RunDir.verified_path` before use.
"""

from __future__ import annotations

import json
import platform
import shutil
import time
from pathlib import Path
from typing import Any

from coarserank import __version__
from coarserank.atomic import atomic_write_text
from coarserank.checksums import MANIFEST, sha256_file, verified_file
from coarserank.errors import ArtifactError, ConfigError

__all__ = ["RunDir", "sha256_file", "MANIFEST"]



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

    # -- opening -----------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path | str, config_hash: str, *, overwrite: bool = False) -> RunDir:
        """Start a run in ``path``; resume if it holds the same configuration, refuse if it holds a
        different run (or other files) unless ``overwrite``."""
        path = Path(path)
        manifest_path = path / MANIFEST
        if path.exists() and any(path.iterdir()):
            existing = cls._read_manifest(manifest_path) if manifest_path.is_file() else None
            same = existing is not None and existing.get("config_hash") == config_hash
            if not same and not overwrite:
                what = "a different run (another configuration)" if existing else "files that are not a run"
                raise ConfigError(f"output directory {path} already holds {what}; "
                                  "use --overwrite to replace it or --out for another directory")
            if same and not overwrite:
                return cls(path, existing)  # type: ignore[arg-type]
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path, {"format": 1, "config_hash": config_hash, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                         time.gmtime()), "versions": _versions(), "machine": platform.platform(),
                         "stages": {}, "files": {}, "checks": {}})
        run.save()
        return run

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
        if entry.get("status") != "done":
            return False
        return all((self.path / rel).is_file() and sha256_file(self.path / rel) == self.manifest["files"].get(rel)
                   for rel in entry.get("outputs", []))

    def begin(self, stage: str) -> None:
        self.manifest["stages"][stage] = {"status": "running", "started": time.time(), "outputs": []}
        self.save()

    def finish(self, stage: str, **facts: Any) -> None:
        entry = self.manifest["stages"][stage]
        entry.update(status="done", seconds=round(time.time() - entry.pop("started", time.time()), 3), **facts)
        self.save()

    def fail(self, stage: str, error: str) -> None:
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
