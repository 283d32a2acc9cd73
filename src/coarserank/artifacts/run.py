"""A finished run directory, read-only: :class:`Run`.

``Run.open(dir)`` checks ``manifest.json`` and gives typed access to what the run wrote: the
configuration, the encoder and schema, the prepared split frames and their encodings, the teacher's
logits, the models (state dicts loaded with ``weights_only=True`` into freshly built modules), the
metrics and the serving bundle. Every file is checked against its sha256 before it is used, and a
file of a stage that was built from older outputs than a stage it reads is refused as stale. It
never trains and never writes: a missing, stale or modified file is a one-line
:class:`~coarserank.errors.ArtifactError` naming the file and the command that rebuilds it.

The data stage stores the prepared rows the later commands need (:func:`write_prepared`):
``data/{train,valid,test}.parquet`` (the rows held in memory; a streaming run's train rows are its
sample) and, for a streaming run, ``data/other.parquet`` (catalogue rows outside the sample). A run
written before that is read by preparing its source again, checked against its data fingerprint.

Examples
--------
>>> run = Run.open("runs/movielens")                                        # doctest: +SKIP
>>> run.metrics()["test"]["student"]["gauc"]                                # doctest: +SKIP
>>> student = run.model("student"); test = run.split("test")                # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import json
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import polars as pl

from coarserank.artifacts.bundle import SERVING_FILE, Bundle, read_bundle
from coarserank.artifacts.manifest import Manifest, rebuild_command, rebuild_message
from coarserank.atomic import atomic_write_with
from coarserank.config import RunConfig, load_config
from coarserank.data.encode import Encoder
from coarserank.data.prepare import SPLITS
from coarserank.data.schema import Schema
from coarserank.data.dataset import EncodedSplit, PreparedData, encode_splits
from coarserank.data.splits import aligned
from coarserank.errors import ArtifactError, CoarseRankError

if TYPE_CHECKING:
    import torch

__all__ = ["Run", "MODEL_FILES", "build_run_teacher", "load_checkpoint", "prepared_file", "logits_file",
           "write_prepared"]

MODEL_FILES: dict[str, str] = {"teacher": "teacher.pt", "student": "student.pt", "student_hard": "student_hard.pt"}
_MODEL_STAGES = {"teacher": "teacher", "student": "student", "student_hard": "student_hard"}
_OTHER = "other"


def _load_reason(exc: BaseException) -> str:
    """torch.load's failure in a few words, without its advice to load untrusted code."""
    text = str(exc)
    marker = "WeightsUnpickler error:"
    if marker in text:
        return text[text.index(marker):].splitlines()[0].strip()[:200]
    first = next((ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln), "")
    return f"{type(exc).__name__}: {first}"[:200] if first else type(exc).__name__


def build_run_teacher(schema: Schema, cfg: RunConfig, manifest: Manifest) -> torch.nn.Module:
    """The untrained module a run's ``teacher.pt`` holds: the heavy model of ``teacher.family``, blended
    with the hard-label student when the ``teacher`` stage recorded a ``blend_weight`` above 0."""
    from coarserank.student import build_student
    from coarserank.teacher import build_teacher
    from coarserank.teacher.blend import TeacherBlend

    blend_weight = float(manifest.stage_facts("teacher").get("blend_weight", 0.0))
    heavy = build_teacher(schema, cfg.teacher)
    return TeacherBlend(heavy, build_student(schema, cfg.student), blend_weight) if blend_weight > 0 else heavy


def load_checkpoint(path: Path, module: torch.nn.Module, label: str, redo: str) -> torch.nn.Module:
    """Load the state dict at ``path`` into ``module``: tensors only (``weights_only``), never code.
    A file that is not such a state dict, or one of another model, is one :class:`ArtifactError`
    line naming ``label`` and what rebuilds it (``redo``)."""
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        raise ArtifactError(f"{label} is not a checkpoint of tensors coarserank can load ({_load_reason(exc)}); "
                            f"{redo}") from None
    if not isinstance(state, dict):
        raise ArtifactError(f"{label} holds a {type(state).__name__}, not a state dict; {redo}")
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError) as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        reason = (lines[1] if len(lines) > 1 else lines[0] if lines else type(exc).__name__)[:200]
        raise ArtifactError(f"{label} holds the weights of another model ({reason}); {redo}") from None
    return module


def prepared_file(part: str) -> str:
    """``data/<part>.parquet``: a split's prepared rows (``part`` = train, valid, test or other)."""
    return f"data/{part}.parquet"


def logits_file(split: str) -> str:
    return f"logits/{split}.parquet"


def write_prepared(run_path: Path, frames: Mapping[str, pl.DataFrame], frame: pl.DataFrame) -> list[Path]:
    """Write the prepared rows the read commands need (module docstring); returns the files written.

    ``frames`` are the split frames held in memory, ``frame`` all rows held in memory (their union,
    plus, for a streaming run, catalogue rows outside the train sample).
    """
    written = [atomic_write_with(run_path / prepared_file(s), frames[s].write_parquet, ".parquet") for s in SPLITS]
    kept = pl.concat([frames[s].select("_row") for s in SPLITS])
    other = frame.join(kept, on="_row", how="anti")
    if other.height:
        written.append(atomic_write_with(run_path / prepared_file(_OTHER), other.write_parquet, ".parquet"))
    return written


class Run:
    """A finished run directory, opened read-only (see the module docstring)."""

    def __init__(self, path: Path, manifest: Manifest, config: RunConfig) -> None:
        self.path = path
        self.manifest = manifest
        self.config = config
        self._frames: dict[str, pl.DataFrame] = {}
        self._splits: dict[str, EncodedSplit] = {}
        self._dataset: PreparedData | None = None

    # -- opening -------------------------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str, *, require: tuple[str, ...] = ("data",)) -> Run:
        """Open run ``path``: its manifest, its configuration, and every file of the ``require``d
        stages checked (done, not stale, sha256 as recorded).

        Raises
        ------
        ArtifactError
            Not a run directory, or a required stage or file that is missing, stale or modified.
        """
        root = Path(path)
        manifest = Manifest.read(root)
        if manifest.stage_status("config") != "done":
            raise ArtifactError(f"run {root}: stage 'config' is {manifest.stage_status('config') or 'missing'}; "
                                "start the run again with `distill run`")
        problem = manifest.file_problem(root, "config.toml")
        if problem is not None:
            raise ArtifactError(f"run {root}: config.toml {problem}; start the run again from your own config with "
                                f"`distill run --config FILE --out {root} --overwrite`")
        config = load_config(root / "config.toml")
        run = cls(root, manifest, config)
        for stage in require:
            run.require(stage)
            for rel in manifest.outputs(stage):
                run.verified(rel)
        return run

    @property
    def rebuild(self) -> str:
        """The command that rebuilds a missing or stale file of this run."""
        return rebuild_command(self.path)

    def has(self, stage: str) -> bool:
        """Whether ``stage`` finished (its files are checked when they are read)."""
        return self.manifest.stage_status(stage) == "done"

    def require(self, stage: str) -> None:
        """Raise unless ``stage`` is done (not failed, running, missing, or stale because a stage it
        reads changed)."""
        status = self.manifest.stage_status(stage)
        if status != "done":
            raise ArtifactError(f"run {self.path}: stage {stage!r} is {status or 'missing'}; "
                                f"{self.rebuild} rebuilds it")

    def verified(self, rel: str) -> Path:
        """``dir/rel`` after checking that its stage is done and its sha256 matches the manifest."""
        stage = self.manifest.stage_of(rel)
        if stage is not None:
            self.require(stage)
        problem = self.manifest.file_problem(self.path, rel)
        if problem is not None:
            raise ArtifactError(rebuild_message(self.path, rel, problem, stage))
        return self.path / rel

    def json(self, rel: str) -> Any:
        return json.loads(self.verified(rel).read_text())

    # -- data ----------------------------------------------------------------------------------
    @cached_property
    def encoder(self) -> Encoder:
        return Encoder.from_json(self.config.data, self.json("encoder.json"))

    @property
    def schema(self) -> Schema:
        return self.encoder.schema_

    def split_frame(self, split: str) -> pl.DataFrame:
        """The prepared rows of ``split`` (train, valid or test) that the run held in memory."""
        if split not in SPLITS:
            raise ArtifactError(f"unknown split {split!r}; splits are {', '.join(SPLITS)}")
        if split not in self._frames:
            self._load_frames()
        return self._frames[split]

    def frame(self) -> pl.DataFrame:
        """Every prepared row the run held in memory, in ``_row`` order."""
        if "all" not in self._frames:
            parts = [self.split_frame(s) for s in SPLITS]
            if self.manifest.file_hash(prepared_file(_OTHER)) is not None:
                parts.append(pl.read_parquet(self.verified(prepared_file(_OTHER))))
            self._frames["all"] = pl.concat(parts, how="vertical_relaxed").sort("_row")
        return self._frames["all"]

    def split(self, split: str) -> EncodedSplit:
        """``split``'s rows and their schema fields encoded with the run's encoder (once, on first
        use; only this split is encoded)."""
        if split not in self._splits:
            frame = self.split_frame(split)
            self._splits[split] = EncodedSplit(split, frame, self.encoder.transform(frame))
        return self._splits[split]

    def dataset(self) -> PreparedData:
        """Every split the run held in memory with the catalogue and the pair encoder, as the data
        stage prepared them (the run's encoder, not refitted): what the training calls take."""
        if self._dataset is None:
            frame = pl.concat([self.split_frame(s) for s in SPLITS], how="vertical_relaxed").sort("_row")
            self._dataset = encode_splits(frame, self.config.data, self.encoder)
        return self._dataset

    def teacher_logits(self, split: str) -> np.ndarray:
        """The teacher's logits for the rows of :meth:`split_frame`, in the same order."""
        rows = self.split_frame(split)["_row"].to_numpy()
        where = f"run {self.path}: {logits_file(split)}"
        if self.manifest.file_hash(logits_file(split)) is not None:
            body = pl.read_parquet(self.verified(logits_file(split)), columns=["row", "logit"])
            return aligned(body["logit"].to_numpy(), body["row"].to_numpy(), rows, where)
        parts = sorted(p for p in self.manifest.outputs("logits") if p.startswith(f"logits/{split}/"))
        if not parts:
            raise ArtifactError(f"{where} is not listed in its manifest; {self.rebuild} rebuilds it")
        body = pl.concat([pl.read_parquet(self.verified(p), columns=["row", "logit"]) for p in parts])
        picked = pl.DataFrame({"row": rows}).join(body, on="row", how="left")
        if picked["logit"].null_count():
            raise ArtifactError(f"{where}: {picked['logit'].null_count()} row(s) have no teacher logit; rebuild "
                                f"the run with {rebuild_command(self.path, overwrite=True)}")
        return picked["logit"].to_numpy()

    def _load_frames(self) -> None:
        if self.manifest.file_hash(prepared_file("test")) is None:
            self._frames.update(self._prepare_again())
            return
        for s in SPLITS:
            self._frames[s] = pl.read_parquet(self.verified(prepared_file(s)))

    def _prepare_again(self) -> dict[str, pl.DataFrame]:
        """A run written before the data stage stored its rows: prepare the source again and check it
        against the recorded data fingerprint (read-only; slow on big logs)."""
        from coarserank.data.prepare import prepare
        from coarserank.data.sources import load_source

        cfg = self.config
        if cfg.data.streaming:
            raise ArtifactError(f"run {self.path} was written before runs stored their prepared rows "
                                f"({prepared_file('test')}); {rebuild_command(self.path, overwrite=True)} "
                                "rebuilds it")
        try:
            frame = prepare(load_source(cfg.data, cfg.synthetic, cfg.run.seed), cfg.data)
        except CoarseRankError as exc:
            raise ArtifactError(f"run {self.path} stores no prepared rows and its source cannot be read again "
                                f"({str(exc).splitlines()[0]})") from exc
        frames = {s: frame.filter(pl.col("_split") == s) for s in SPLITS}
        digest = hashlib.sha256()
        for s in SPLITS:
            enc = self.encoder.transform(frames[s])
            for name in self.schema.names:
                digest.update(np.ascontiguousarray(enc[name]).tobytes())
            digest.update(frames[s]["_label"].to_numpy().tobytes())
        if digest.hexdigest() != self.manifest.data_fingerprint:
            raise ArtifactError(f"run {self.path}: its source data changed since the run (data fingerprint "
                                f"differs); {rebuild_command(self.path, overwrite=True)} rebuilds it")
        return frames

    # -- models and results --------------------------------------------------------------------
    def model(self, name: str, device: str | torch.device = "cpu") -> torch.nn.Module:
        """The trained ``teacher``, ``student`` or ``student_hard``, in eval mode on ``device``."""
        if name not in MODEL_FILES:
            raise ArtifactError(f"unknown model {name!r}; a run holds {', '.join(MODEL_FILES)}")
        self.require(_MODEL_STAGES[name])
        module = load_checkpoint(self.verified(MODEL_FILES[name]), self._build(name),
                                 f"run {self.path}: {MODEL_FILES[name]}", f"{self.rebuild} rebuilds it")
        return module.to(device).eval()

    def _build(self, name: str) -> torch.nn.Module:
        if name == "teacher":
            return build_run_teacher(self.schema, self.config, self.manifest)
        from coarserank.student import build_student

        return build_student(self.schema, self.config.student)

    def models(self, names: tuple[str, ...] = tuple(MODEL_FILES), device: str | torch.device = "cpu"
               ) -> dict[str, torch.nn.Module]:
        return {n: self.model(n, device) for n in names}

    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: per split and model, auc, gauc, logloss and their definitions."""
        self.require("metrics")
        return self.json("metrics.json")

    def serving(self) -> Bundle:
        """The serving bundle the export wrote (``serving.json``: a :class:`ServingBundle`, or a
        :class:`ColdBundle` for a COLD student), checked against ``student.pt``."""
        self.require("export")
        bundle = read_bundle(self.verified(SERVING_FILE))
        if bundle.model_hash != self.manifest.file_hash(MODEL_FILES["student"]):
            raise ArtifactError(f"run {self.path}: {SERVING_FILE} serves another student than student.pt (stale "
                                f"export); {self.rebuild} rebuilds it")
        return bundle
