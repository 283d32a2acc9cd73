"""The run-directory contract, owned in one place.

- :mod:`~coarserank.artifacts.manifest`: :class:`Manifest`, the typed ``manifest.json`` (stages,
  files and their sha256, checks, fingerprints, run id); the only code that edits it.
- :mod:`~coarserank.artifacts.bundle`: :class:`ServingBundle`, the only code that reads or writes
  ``serving.json`` (:class:`ColdBundle` for a COLD student; :func:`read_bundle` reads either).
- :mod:`~coarserank.artifacts.run`: :class:`Run`, a finished run opened read-only.

``pipeline`` writes run directories through these types, ``serving`` reads the bundle and verifies
files through them; nothing else knows the file layout.
"""

from coarserank.artifacts.bundle import SERVING_FILE, Bundle, ColdBundle, ServingBundle, read_bundle
from coarserank.artifacts.manifest import MANIFEST, Manifest, rebuild_command, sha256_file
from coarserank.artifacts.run import (
    MODEL_FILES,
    Run,
    build_run_teacher,
    logits_file,
    prepared_file,
    write_prepared,
)

__all__ = ["MANIFEST", "MODEL_FILES", "SERVING_FILE", "Bundle", "ColdBundle", "Manifest", "Run", "ServingBundle",
           "build_run_teacher", "logits_file", "prepared_file", "read_bundle", "rebuild_command", "sha256_file",
           "write_prepared"]
