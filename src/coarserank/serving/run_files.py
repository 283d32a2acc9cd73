"""A finished run's serving files, each checked against ``manifest.json``, and publishing its
item vectors to a Redis KV store (``distill publish``).

Readers load under the shared side of the run's publish lock (``.coarserank.publish``), so a writer
that republishes files and the manifest together (``distill index``) is seen as one step.

Example
-------
>>> files = RunFiles("runs/demo")                                                  # doctest: +SKIP
>>> publish_run("runs/demo", "redis://127.0.0.1:6379/0").version                  # doctest: +SKIP
3
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from coarserank.artifacts.bundle import SERVING_FILE, Bundle, ColdBundle, read_bundle
from coarserank.artifacts.manifest import Manifest
from coarserank.atomic import file_lock
from coarserank.checksums import PUBLISH_LOCK
from coarserank.config import load_config
from coarserank.data.encode import Encoder
from coarserank.errors import ArtifactError, ServingError
from coarserank.serving.kv import redact_uri

__all__ = ["SERVING_FILE", "RunFiles", "Published", "publish_run"]

class RunFiles:
    """Files of a finished run, each checked against its sha256 in ``manifest.json`` before use.

    (The same rule as everywhere: :meth:`coarserank.artifacts.Manifest.verified`.)
    """

    def __init__(self, run_dir: Path | str, *, require: str = "export") -> None:
        self.path = Path(run_dir)
        self.require = require
        self.reload()

    def reload(self) -> None:
        """Read ``manifest.json`` again (after ``distill index`` republished files, say)."""
        self.manifest = Manifest.read(self.path)
        status = self.manifest.stage_status(self.require)
        if status != "done":
            raise ArtifactError(f"run {self.path}: stage {self.require!r} is {status or 'missing'}; the serving "
                                "artifacts come from it (`distill run` resumes the run)")

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        """Load files under the shared publish lock, with the manifest read inside it: a writer that
        republishes files (``distill index``) swaps them and the manifest as one step for us."""
        with file_lock(self.path / PUBLISH_LOCK, exclusive=False, wait=True, required=False):
            self.reload()
            yield

    def verified(self, rel: str) -> Path:
        """``run_dir/rel`` after checking it against the manifest."""
        return self.manifest.verified(self.path, rel)

    def json(self, rel: str) -> dict[str, Any]:
        return json.loads(self.verified(rel).read_text())

    def bundle(self) -> Bundle:
        """The run's ``serving.json``, verified and parsed (a COLD student's: :class:`ColdBundle`)."""
        return read_bundle(self.verified(SERVING_FILE))

    def encoder(self) -> Encoder:
        cfg = load_config(self.verified("config.toml"))
        return Encoder.from_json(cfg.data, self.json("encoder.json"))


@dataclass(frozen=True)
class Published:
    """What :func:`publish_run` wrote: the new current version and the store it lives in (its URL
    with the password redacted)."""

    version: int
    items: int
    dim: int
    dtype: str
    model_hash: str
    store: str
    namespace: str


def publish_run(run_dir: Path | str, url: str, *, namespace: str | None = None,
                keep_previous: int = 1) -> Published:
    """Publish a finished run's item vectors (its verified ``items.kv``) to the Redis store at ``url``
    as a new version, made current once complete; readers of the run's model switch to it.

    Raises
    ------
    ArtifactError
        The run has no verified export.
    ServingError
        ``url`` is not a Redis URL, or Redis fails (``current`` is then left as it was).
    """
    from coarserank.serving.kv_file import FileKVStore
    from coarserank.serving.kv_redis import RedisKVStore

    if "://" not in url or url.split("://", 1)[0].lower() not in ("redis", "rediss", "unix"):
        raise ServingError(f"--store {redact_uri(url)!r}: publish writes to a Redis store (redis://, rediss:// "
                           "or unix://); the run's items.kv already is its file store")
    files = RunFiles(run_dir)
    with files.reading():
        bundle = files.bundle()
        if isinstance(bundle, ColdBundle):
            raise ArtifactError(f"run {files.path} serves a COLD student, which has no item vectors to publish")
        with FileKVStore(files.verified(bundle.file("kv")), expected_model_hash=bundle.model_hash) as kv:
            ids = np.array(kv.ids())
            vectors = kv.get_strict(ids)
    store = RedisKVStore(url, **({"namespace": namespace} if namespace else {}))
    try:
        version = store.publish(ids, vectors, bundle.model_hash, bundle.kv_dtype, keep_previous=keep_previous,
                                run_id=bundle.run_id or "")
        return Published(version, int(ids.size), int(vectors.shape[1]), bundle.kv_dtype, bundle.model_hash,
                         redact_uri(url), store.namespace)
    finally:
        store.close()
