"""The only exception types coarserank raises on purpose.

Every message is meant for a person: it names what was wrong, where (file, column, key) and what
would be right. The CLI prints ``str(error)`` on one line and exits non-zero.
"""

from __future__ import annotations

__all__ = [
    "CoarseRankError",
    "ConfigError",
    "SchemaError",
    "DataError",
    "ArtifactError",
    "ServingError",
    "NotFittedError",
    "CoarseRankWarning",
    "DataWarning",
    "ArtifactWarning",
]


class CoarseRankError(Exception):
    """Base class: anything the CLI reports as a one-line error."""


class ConfigError(CoarseRankError):
    """An unknown key, a wrong type or an invalid value in a configuration."""


class SchemaError(CoarseRankError):
    """A feature declaration that does not fit the data (missing column, wrong kind)."""


class DataError(CoarseRankError):
    """Bad data: nulls in a label, values outside a declared set, an empty split, unreadable files."""


class ArtifactError(CoarseRankError):
    """A run directory or artifact that is missing, corrupt, from another run or fails its checksum."""


class ServingError(CoarseRankError):
    """A serving-time failure: unreachable store, missing ids, malformed request."""


class NotFittedError(CoarseRankError, ValueError, AttributeError):
    """An estimator used before ``fit`` (a ``ValueError`` and ``AttributeError`` as in scikit-learn)."""


class CoarseRankWarning(UserWarning):
    """Base class of the warnings coarserank issues on purpose; the CLI prints each on one line."""


class DataWarning(CoarseRankWarning):
    """Values silently changed by encoding: lists cut at ``max_len``, rare values folded into OOV,
    missing numbers; each message says how many rows and what happens to them."""


class ArtifactWarning(CoarseRankWarning):
    """A run-directory file that will be rebuilt (it no longer matches its checksum), and why."""


class DistillWarning(CoarseRankWarning):
    """A run whose distillation cannot be expected to pay: the teacher is not stronger than the
    hard-label student on validation."""
