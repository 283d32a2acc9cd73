"""Typed data between stages: a prepared log split into train / valid / test and encoded.

:func:`encode_splits` fits the encoder on the train rows only, builds the item catalogue and the
:class:`~coarserank.data.pairs.PairEncoder` (for entire-space distillation), and encodes every
split. The result is frozen: the teacher, the students, the GBDT reference, the exports and the
report all read the same :class:`EncodedSplit` objects instead of a shared mutable context.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import polars as pl

from coarserank.config import DataConfig
from coarserank.data.catalogue import item_catalogue
from coarserank.data.encode import Encoder
from coarserank.data.pairs import PairEncoder
from coarserank.data.prepare import SPLITS
from coarserank.data.schema import Schema

__all__ = ["EncodedSplit", "PreparedData", "encode_splits"]


@dataclass(frozen=True)
class EncodedSplit:
    """One split: its prepared rows (raw columns plus ``_row``, ``_label``, ``_group``, ``_user``,
    ``_time``) and their encoded model inputs (schema fields plus the pairs' hidden ``_`` columns)."""

    name: str
    frame: pl.DataFrame
    inputs: dict[str, np.ndarray]

    def __len__(self) -> int:
        return self.frame.height

    @property
    def label(self) -> np.ndarray:
        return self.frame["_label"].to_numpy()

    @property
    def group(self) -> np.ndarray:
        return self.frame["_group"].to_numpy()

    def fields(self, schema: Schema) -> dict[str, np.ndarray]:
        """Only the schema's fields (what a model or an exported graph reads)."""
        return {name: self.inputs[name] for name in schema.names}


@dataclass(frozen=True)
class PreparedData:
    """A prepared log: the encoder fitted on train, the catalogue, the pair encoder and the splits."""

    cfg: DataConfig
    frame: pl.DataFrame
    encoder: Encoder
    catalogue: pl.DataFrame
    pairs: PairEncoder
    splits: dict[str, EncodedSplit]

    @property
    def schema(self) -> Schema:
        return self.encoder.schema_

    @property
    def train(self) -> EncodedSplit:
        return self.splits["train"]

    @property
    def valid(self) -> EncodedSplit:
        return self.splits["valid"]

    @property
    def test(self) -> EncodedSplit:
        return self.splits["test"]

    def fingerprint(self) -> str:
        """sha256 over every split's encoded schema fields and labels."""
        digest = hashlib.sha256()
        for split in SPLITS:
            part = self.splits[split]
            for name in self.schema.names:
                digest.update(np.ascontiguousarray(part.inputs[name]).tobytes())
            digest.update(part.label.tobytes())
        return digest.hexdigest()


def encode_splits(frame: pl.DataFrame, cfg: DataConfig, encoder: Encoder | None = None) -> PreparedData:
    """Fit the encoder on ``frame``'s train rows (or use the fitted ``encoder``, e.g. a finished
    run's) and encode every split (see the module doc)."""
    encoder = encoder if encoder is not None else Encoder(cfg).fit(frame.filter(pl.col("_split") == "train"))
    catalogue = item_catalogue(frame, cfg)
    pairs = PairEncoder(cfg, encoder).fit(frame, catalogue)
    splits = {}
    for split in SPLITS:
        part = frame.filter(pl.col("_split") == split)
        splits[split] = EncodedSplit(split, part, encoder.transform(part) | pairs.row_context(part))
    return PreparedData(cfg, frame, encoder, catalogue, pairs, splits)
