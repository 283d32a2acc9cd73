"""The encoded feature schema: what each model input field is, which side it belongs to, its size.

The schema is what the network layers see; it is derived from the data config by the
:class:`~coarserank.data.encode.Encoder` and written to ``schema.json`` in the run directory.
Categorical and multi-valued fields use index 0 for padding/missing and 1 for out-of-vocabulary;
known values start at 2.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Iterable

from coarserank.errors import ArtifactError

__all__ = ["PAD", "OOV", "FIRST_ID", "Field", "Schema", "SCHEMA_VERSION", "STUDENT_USER_SIDES", "STUDENT_ITEM_SIDES"]

PAD = 0
OOV = 1
FIRST_ID = 2
SCHEMA_VERSION = 1
STUDENT_USER_SIDES = ("user", "context")
STUDENT_ITEM_SIDES = ("item",)


@dataclass(frozen=True)
class Field:
    """One model input. ``side`` is user, item, context or cross (teacher-only);
    ``kind`` is categorical ([B] int64), multi ([B, max_len] int64), numeric ([B] float32) or
    sequence ([B, max_len] int64 codes in the vocabulary of the item-side field ``of``, most
    recent first: the user's behaviour history)."""

    name: str
    side: str
    kind: str
    size: int = 0
    max_len: int = 1
    of: str = ""


@dataclass(frozen=True)
class Schema:
    """An ordered set of fields; the order is the order of model inputs."""

    fields: tuple[Field, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ArtifactError(f"schema has repeated field names: {names}")

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def __getitem__(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def __len__(self) -> int:
        return len(self.fields)

    def select(self, sides: Iterable[str] | None = None, names: Iterable[str] | None = None) -> Schema:
        """Fields on the given sides and/or with the given names, in schema order."""
        keep_sides = set(sides) if sides is not None else None
        keep_names = set(names) if names is not None else None
        return Schema(tuple(f for f in self.fields
                            if (keep_sides is None or f.side in keep_sides)
                            and (keep_names is None or f.name in keep_names)))

    def to_json(self) -> dict[str, Any]:
        return {"version": SCHEMA_VERSION, "fields": [asdict(f) for f in self.fields]}

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Schema:
        if body.get("version") != SCHEMA_VERSION:
            raise ArtifactError(f"schema version {body.get('version')!r} is not supported (expected {SCHEMA_VERSION})")
        return cls(tuple(Field(**f) for f in body["fields"]))

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2)
