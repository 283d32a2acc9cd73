"""sha256 of files and the one rule for using a run's file: it must match ``manifest.json``.

Used by the run directory (``pipeline``) and by the serving runtime, which may not import
``pipeline``; loading never trusts a file the manifest does not vouch for.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from coarserank.errors import ArtifactError

__all__ = ["MANIFEST", "WRITER_LOCK", "PUBLISH_LOCK", "sha256_file", "verified_file"]

MANIFEST = "manifest.json"
WRITER_LOCK = ".coarserank.lock"  # held exclusively by the one process writing a run directory
PUBLISH_LOCK = ".coarserank.publish"  # exclusive while files + manifest change, shared while a reader loads


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verified_file(run_path: Path, manifest: dict[str, Any], rel: str, hint: str = "") -> Path:
    """``run_path/rel`` after checking its sha256 against ``manifest["files"][rel]``; ``hint`` (how
    to rebuild the file) ends the error message."""
    p = run_path / rel
    expected = manifest.get("files", {}).get(rel)
    tail = f"; {hint}" if hint else ""
    if expected is None:
        raise ArtifactError(f"run {run_path}: {rel} is not listed in {MANIFEST}{tail}")
    if not p.is_file():
        raise ArtifactError(f"run {run_path}: {rel} is missing{tail}")
    if sha256_file(p) != expected:
        raise ArtifactError(f"run {run_path}: {rel} does not match its sha256 in {MANIFEST} (modified or "
                            f"corrupt){tail}")
    return p
