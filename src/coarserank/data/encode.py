"""Fit vocabularies and numeric statistics on train rows; encode any frame into model inputs.

Encoding rules (the ONNX graphs in ``serving`` repeat them exactly):

- categorical: raw value (``boundaries`` first turn a number into its bucket id, the count of
  boundaries <= x) -> index ``2 + position`` in the sorted vocabulary of training values seen at
  least ``min_count`` times; unseen, rare or null -> ``OOV`` (1).
- multi: the string is split on ``sep``, blanks dropped, the first ``max_len`` values kept and
  encoded as above; unused slots hold ``PAD`` (0). Models mean-pool the non-padding slots.
- sequence: like multi, but looked up in the vocabulary of the item-side feature ``of`` (the history
  and the target item share codes, so the teacher's attention can compare them).
- numeric: ``(x - mean) / std`` with train mean and std (std 0 -> 1); null -> 0.
- product cross a x b: the pair code ``code_a * size_b + code_b`` looked up in the sorted
  vocabulary of training pair codes seen at least ``min_count`` times (unseen -> OOV, padding
  stays padding).
- match cross: 1.0 where the two raw values are equal, else 0.0, then normalised like a number.
- history cross: the column ``prepare`` computed, normalised like a number.

What these rules change without a word on the train rows (lists cut at ``max_len``, rare values and
pairs folded into OOV by ``min_count``, missing numbers) is counted by :meth:`Encoder.fit` and issued
as :class:`~coarserank.errors.DataWarning` messages with counts (also kept in ``Encoder.warnings_``).
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import polars as pl

from coarserank.config import CrossConfig, DataConfig, FeatureConfig
from coarserank.data.prepare import feature_column
from coarserank.data.schema import FIRST_ID, OOV, PAD, Field, Schema
from coarserank.errors import ArtifactError, DataWarning, SchemaError

__all__ = ["Vocab", "Encoder", "raw_categorical"]

_DENSE_GRID = 1 << 20  # product crosses over at most this many operand pairs use a direct lookup table


@dataclass
class Vocab:
    """Sorted known values of one categorical/multi feature (``dtype`` int64 or string)."""

    dtype: str
    values: list[Any]
    boundaries: list[float] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.values) + FIRST_ID

    def codes(self) -> tuple[pl.Series, pl.Series]:
        """(known values, their codes) as series, built once: encoding a partition at a time
        would otherwise rebuild them from Python lists for every batch."""
        if getattr(self, "_codes", None) is None or len(self._codes[0]) != len(self.values):
            dtype = pl.Int64 if self.dtype == "int64" else pl.Utf8
            self._codes = (pl.Series(self.values, dtype=dtype),
                           pl.Series(np.arange(FIRST_ID, self.size, dtype=np.int64)))
        return self._codes


def raw_categorical(frame: pl.DataFrame, f: FeatureConfig) -> pl.Series:
    """The raw values of a single-valued categorical feature, bucketed when it has boundaries."""
    col = feature_column(f.name, f.column)
    s = frame[col]
    if f.boundaries:
        if not s.dtype.is_numeric():
            raise SchemaError(f"feature {f.name!r}: boundaries need a numeric column, {col!r} is {s.dtype}")
        x = pl.col(col).cast(pl.Float64).fill_nan(None)  # NaN is missing, as in the ONNX graphs
        bucket = pl.sum_horizontal([(x >= b).cast(pl.Int64) for b in f.boundaries])
        return frame.select(pl.when(x.is_null()).then(None).otherwise(bucket).alias(f.name))[f.name]
    if s.dtype == pl.Boolean or s.dtype.is_integer():
        return s.cast(pl.Int64)
    if s.dtype.is_float():
        integral = s.drop_nulls()
        if (integral != integral.round()).any():
            raise SchemaError(f"feature {f.name!r}: column {col!r} holds fractional numbers; declare it "
                              "kind = \"numeric\" or give boundaries to bucket it")
        return s.cast(pl.Int64)
    return s.cast(pl.Utf8)


def _split_lists(frame: pl.DataFrame, f: FeatureConfig) -> pl.Series:
    """Every non-blank value of a multi-valued column, per row (before the ``max_len`` cut)."""
    col = feature_column(f.name, f.column)
    return frame.select(pl.col(col).cast(pl.Utf8).str.split(f.sep)
                        .list.eval(pl.element().str.strip_chars())
                        .list.eval(pl.element().filter(pl.element().is_not_null() & (pl.element() != "")))
                        .alias("v"))["v"]


def _multi_long(frame: pl.DataFrame, f: FeatureConfig, lists: pl.Series | None = None) -> pl.DataFrame:
    """(row, pos, value) for the first ``max_len`` non-blank values of a multi-valued column
    (``lists``: its :func:`_split_lists`, when already split)."""
    lists = (_split_lists(frame, f) if lists is None else lists).list.head(f.max_len)
    lengths = lists.list.len().fill_null(0).to_numpy().astype(np.int64)
    starts = np.cumsum(lengths) - lengths
    rows = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    return pl.DataFrame({"i": rows, "p": np.arange(len(rows), dtype=np.int64) - starts[rows],
                         "v": lists.explode().drop_nulls()})


def _numbers(frame: pl.DataFrame, col: str, name: str) -> np.ndarray:
    s = frame[col]
    if not s.dtype.is_numeric():
        raise SchemaError(f"numeric feature {name!r}: column {col!r} is {s.dtype}, not a number")
    return s.cast(pl.Float64).to_numpy()


class _Counts:
    """Value counts of one categorical column, merged batch by batch."""

    def __init__(self) -> None:
        self.table: pl.DataFrame | None = None

    def add(self, values: pl.Series) -> None:
        batch = values.drop_nulls().rename("v").value_counts(name="n").with_columns(pl.col("n").cast(pl.Int64))
        if self.table is not None and batch.schema != self.table.schema:
            if batch.height == 0:
                return
            if self.table.height:
                raise SchemaError(f"column {values.name!r} changes type between batches "
                                  f"({self.table['v'].dtype} then {batch['v'].dtype})")
        merged = batch if self.table is None or self.table.height == 0 else pl.concat([self.table, batch])
        self.table = merged.group_by("v").agg(pl.col("n").sum())

    def rare(self, min_count: int) -> tuple[int, int]:
        """(distinct values, occurrences) seen fewer than ``min_count`` times."""
        if self.table is None:
            return 0, 0
        rare = self.table.filter(pl.col("n") < min_count)
        return rare.height, int(rare["n"].sum())

    def vocab(self, min_count: int) -> Vocab:
        table = self.table if self.table is not None else pl.DataFrame({"v": pl.Series([], dtype=pl.Utf8), "n": []})
        kept = table.filter(pl.col("n") >= min_count)["v"].sort()
        return Vocab("int64" if kept.dtype == pl.Int64 else "string", kept.to_list())


class _CodeCounts:
    """Counts of int64 pair codes, merged batch by batch."""

    def __init__(self) -> None:
        self.codes = np.zeros(0, dtype=np.int64)
        self.counts = np.zeros(0, dtype=np.int64)

    def add(self, codes: np.ndarray) -> None:
        uniq, inverse = np.unique(np.concatenate([self.codes, codes.ravel()]), return_inverse=True)
        weights = np.concatenate([self.counts, np.ones(codes.size, dtype=np.int64)])
        self.codes, self.counts = uniq, np.bincount(inverse, weights=weights, minlength=len(uniq)).astype(np.int64)

    def kept(self, min_count: int) -> np.ndarray:
        return self.codes[self.counts >= min_count]

    def rare(self, min_count: int) -> tuple[int, int]:
        """(distinct pair codes, occurrences) seen fewer than ``min_count`` times."""
        low = self.counts < min_count
        return int(low.sum()), int(self.counts[low].sum())


class _Moments:
    """Count, mean and sum of squared deviations, merged batch by batch (Chan et al.); nulls and
    NaN are skipped."""

    def __init__(self) -> None:
        self.n, self.mean, self.m2 = 0, 0.0, 0.0

    def add(self, x: np.ndarray) -> None:
        x = x[~np.isnan(x)]
        if not len(x):
            return
        n, mean = len(x), float(x.mean())
        m2 = float(((x - mean) ** 2).sum())
        total = self.n + n
        delta = mean - self.mean
        self.mean += delta * n / total
        self.m2 += m2 + delta * delta * self.n * n / total
        self.n = total

    def mean_std(self) -> tuple[float, float]:
        if not self.n:
            return 0.0, 1.0
        std = float(np.sqrt(self.m2 / self.n))
        return self.mean, (std if std > 1e-12 else 1.0)


class _Losses:
    """What encoding the train rows changes without a word, counted batch by batch, and the
    :class:`~coarserank.errors.DataWarning` messages that say it with counts."""

    def __init__(self) -> None:
        self.rows = 0
        self.cut: dict[str, tuple[int, int]] = {}  # multi feature -> (rows over max_len, longest list)
        self.missing: dict[str, int] = {}  # numeric or bucketed feature -> rows with null or NaN

    def lists(self, f: FeatureConfig, lists: pl.Series) -> None:
        lengths = lists.list.len().fill_null(0)
        rows, longest = self.cut.get(f.name, (0, 0))
        self.cut[f.name] = (rows + int((lengths > f.max_len).sum()), max(longest, int(lengths.max() or 0)))

    def numbers(self, f: FeatureConfig, frame: pl.DataFrame) -> None:
        s = frame[feature_column(f.name, f.column)]
        nan = int(s.is_nan().sum()) if s.dtype.is_float() else 0
        self.missing[f.name] = self.missing.get(f.name, 0) + s.null_count() + nan

    def messages(self, cfg: DataConfig, counts: dict[str, _Counts], pairs: dict[str, _CodeCounts]) -> list[str]:
        out, n = [], f"{self.rows:,}"
        for f in cfg.features:
            cut, longest = self.cut.get(f.name, (0, 0))
            if cut:
                out.append(f"data.features {f.name!r}: {cut:,} of {n} train rows hold more than max_len = "
                           f"{f.max_len} values (up to {longest}); the values after the first {f.max_len} are "
                           "dropped (raise max_len to keep them)")
            missing = self.missing.get(f.name, 0)
            if missing and missing == self.rows and f.kind == "numeric":
                out.append(f"data.features {f.name!r}: every train row ({n}) has no value (null or NaN); the "
                           "feature is constant and carries no information")
            elif missing:
                goes = ("they take the out-of-vocabulary bucket (id 1), as unseen values do" if f.boundaries
                        else "they are encoded as the train mean (0 after normalisation)")
                out.append(f"data.features {f.name!r}: {missing:,} of {n} train rows have no value (null or NaN); "
                           f"{goes}")
            if f.name in counts and f.min_count > 1:
                out += _folded(f"data.features {f.name!r}", "values", counts[f.name].rare(f.min_count), f.min_count)
        for c in cfg.crosses:
            if c.name in pairs and c.min_count > 1:
                out += _folded(f"data.crosses {c.name!r}", "value pairs", pairs[c.name].rare(c.min_count),
                               c.min_count)
        return out


def _folded(where: str, what: str, rare: tuple[int, int], min_count: int) -> list[str]:
    values, rows = rare
    if not values:
        return []
    return [f"{where}: {values:,} distinct {what} seen fewer than min_count = {min_count} times in train "
            f"({rows:,} occurrences) are folded into the out-of-vocabulary bucket (id 1)"]


def _lookup(values: pl.Series, vocab: Vocab) -> np.ndarray:
    known, codes_of = vocab.codes()
    if values.dtype != known.dtype and len(known):
        values = values.cast(known.dtype, strict=False)
    codes = values.replace_strict(known, codes_of, default=OOV, return_dtype=pl.Int64)
    return codes.fill_null(OOV).to_numpy().astype(np.int64)


def _pair_codes(a: np.ndarray, b: np.ndarray, size_b: int) -> tuple[np.ndarray, np.ndarray]:
    """Pair codes of two code arrays (one may be [N, L]); returns (codes, padding mask)."""
    if a.ndim == 1 and b.ndim == 2:
        a = a[:, None]
    if b.ndim == 1 and a.ndim == 2:
        b = b[:, None]
    codes = a * size_b + b
    return codes, (a == PAD) | (b == PAD)


class Encoder:
    """Fits vocabularies and statistics on train rows (``fit``) and encodes frames (``transform``).

    Example
    -------
    >>> enc = Encoder(cfg.data).fit(frame.filter(pl.col("_split") == "train"))  # doctest: +SKIP
    >>> inputs = enc.transform(frame)  # {field name: numpy array}           # doctest: +SKIP
    """

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self._dense_cross: dict[str, np.ndarray] = {}  # product-cross lookup tables, built on first use

    # -- fitting -----------------------------------------------------------------------------
    def fit(self, train: pl.DataFrame) -> Encoder:
        """Fit on the train rows of one in-memory frame."""
        return self.fit_batches(lambda: iter([train]))

    def fit_batches(self, batches: Callable[[], Iterable[pl.DataFrame]]) -> Encoder:
        """Fit on train rows that arrive in batches (one parquet partition at a time, say), so the
        whole table is never in memory. ``batches()`` is called once, and a second time when a
        product cross needs the first pass's vocabularies. Same result as :meth:`fit` on the
        concatenated rows (up to floating-point rounding of the statistics)."""
        self._dense_cross = {}
        counts: dict[str, _Counts] = {}
        moments: dict[str, _Moments] = {}
        losses = _Losses()
        for f in self.cfg.features:
            if f.kind in ("categorical", "multi") and not f.boundaries:
                counts[f.name] = _Counts()
        for frame in batches():
            losses.rows += frame.height
            for f in self.cfg.features:
                if f.kind == "multi":
                    lists = _split_lists(frame, f)
                    losses.lists(f, lists)
                    counts[f.name].add(_multi_long(frame, f, lists)["v"])
                elif f.name in counts:
                    counts[f.name].add(raw_categorical(frame, f))
                elif f.kind == "numeric" or f.boundaries:
                    losses.numbers(f, frame)
                if f.kind == "numeric":
                    moments.setdefault(f.name, _Moments()).add(
                        _numbers(frame, feature_column(f.name, f.column), f.name))
            for c in self.cfg.crosses:
                if c.op == "match":
                    moments.setdefault(c.name, _Moments()).add(self._match(frame, c.a, c.b).to_numpy())
            for h in self.cfg.history_crosses:
                moments.setdefault(h.name, _Moments()).add(_numbers(frame, h.name, h.name))
        self.vocabs_: dict[str, Vocab] = {}
        for f in self.cfg.features:
            if f.boundaries:
                self.vocabs_[f.name] = Vocab("int64", list(range(len(f.boundaries) + 1)), list(f.boundaries))
            elif f.name in counts:
                self.vocabs_[f.name] = counts[f.name].vocab(f.min_count)
        self.stats_: dict[str, tuple[float, float]] = {k: m.mean_std() for k, m in moments.items()}
        for name in [f.name for f in self.cfg.features if f.kind == "numeric"] + [
                c.name for c in self.cfg.crosses if c.op == "match"] + [h.name for h in self.cfg.history_crosses]:
            self.stats_.setdefault(name, (0.0, 1.0))
        self.cross_values_: dict[str, np.ndarray] = {}
        products = [c for c in self.cfg.crosses if c.op == "product"]
        pair_counts = {c.name: _CodeCounts() for c in products}
        if products:
            for frame in batches():
                codes = {n: self._encode_feature(frame, self._feature(n)) for n in {x for c in products for x in (c.a, c.b)}}
                for c in products:
                    pairs, pad = _pair_codes(codes[c.a], codes[c.b], self.vocabs_[c.b].size)
                    pair_counts[c.name].add(pairs[~pad])
            self.cross_values_ = {c.name: pair_counts[c.name].kept(c.min_count) for c in products}
        self.schema_ = self._schema()
        self.warnings_ = losses.messages(self.cfg, counts, pair_counts)
        for message in self.warnings_:
            warnings.warn(message, DataWarning, stacklevel=2)
        return self

    def _feature(self, name: str) -> FeatureConfig:
        return next(f for f in self.cfg.features if f.name == name)

    def _match(self, frame: pl.DataFrame, a: str, b: str) -> pl.Series:
        ra, rb = raw_categorical(frame, self._feature(a)), raw_categorical(frame, self._feature(b))
        if ra.dtype != rb.dtype:
            ra, rb = ra.cast(pl.Utf8), rb.cast(pl.Utf8)
        return (ra == rb).fill_null(False).cast(pl.Float64)

    def _schema(self) -> Schema:
        fields: list[Field] = []
        for f in self.cfg.features:
            if f.kind == "sequence":
                fields.append(Field(f.name, f.side, f.kind, self.vocabs_[f.of].size, f.max_len, f.of))
                continue
            size = self.vocabs_[f.name].size if f.name in self.vocabs_ else 0
            fields.append(Field(f.name, f.side, f.kind, size, f.max_len if f.kind == "multi" else 1))
        for c in self.cfg.crosses:
            if c.op == "match":
                fields.append(Field(c.name, "cross", "numeric"))
                continue
            fa, fb = self._feature(c.a), self._feature(c.b)
            multi = fa if fa.kind == "multi" else fb if fb.kind == "multi" else None
            size = len(self.cross_values_[c.name]) + FIRST_ID
            fields.append(Field(c.name, "cross", "multi" if multi else "categorical", size,
                                multi.max_len if multi else 1))
        fields += [Field(h.name, "cross", "numeric") for h in self.cfg.history_crosses]
        return Schema(tuple(fields))

    # -- transforming ------------------------------------------------------------------------
    def _encode_feature(self, frame: pl.DataFrame, f: FeatureConfig) -> np.ndarray:
        if f.kind == "categorical":
            return _lookup(raw_categorical(frame, f), self.vocabs_[f.name])
        if f.kind in ("multi", "sequence"):
            long = _multi_long(frame, f)
            out = np.zeros((len(frame), f.max_len), dtype=np.int64)
            out[long["i"].to_numpy(), long["p"].to_numpy()] = _lookup(long["v"], self.vocabs_[f.of or f.name])
            return out
        mean, std = self.stats_[f.name]
        return self._normalise(frame[feature_column(f.name, f.column)], mean, std)

    def product_codes(self, c: CrossConfig, codes_a: np.ndarray, codes_b: np.ndarray) -> np.ndarray:
        """Codes of product cross ``c`` from its operands' codes (unseen pair -> OOV, padding stays)."""
        pairs, pad = _pair_codes(codes_a, codes_b, self.vocabs_[c.b].size)
        grid = self.vocabs_[c.a].size * self.vocabs_[c.b].size
        if grid <= _DENSE_GRID:  # small operand vocabularies: one direct table lookup
            table = self._dense_cross.get(c.name)
            if table is None:
                table = np.full(grid, OOV, dtype=np.int64)
                table[self.cross_values_[c.name]] = np.arange(FIRST_ID, FIRST_ID + len(self.cross_values_[c.name]))
                self._dense_cross[c.name] = table
            return np.where(pad, PAD, table[pairs]).astype(np.int64)
        known = self.cross_values_[c.name]
        pos = np.searchsorted(known, pairs).clip(max=max(len(known) - 1, 0))
        hit = (known[pos] == pairs) if len(known) else np.zeros(pairs.shape, dtype=bool)
        return np.where(pad, PAD, np.where(hit, pos + FIRST_ID, OOV)).astype(np.int64)

    def normalise(self, name: str, x: np.ndarray) -> np.ndarray:
        """A numeric field's raw values normalised with its train statistics (NaN -> 0)."""
        mean, std = self.stats_[name]
        return np.nan_to_num((np.asarray(x, dtype=np.float64) - mean) / std, nan=0.0).astype(np.float32)

    @staticmethod
    def _normalise(s: pl.Series, mean: float, std: float) -> np.ndarray:
        x = s.cast(pl.Float64).to_numpy()
        return np.nan_to_num((x - mean) / std, nan=0.0).astype(np.float32)

    def transform(self, frame: pl.DataFrame, fields: list[str] | None = None) -> dict[str, np.ndarray]:
        """Encode ``frame`` into ``{field name: array}`` for every schema field (or ``fields``)."""
        if not hasattr(self, "schema_"):
            raise ArtifactError("Encoder is not fitted: call fit(train) or Encoder.load(dir) first")
        wanted = set(fields) if fields is not None else set(self.schema_.names)
        needed_codes = {c for x in self.cfg.crosses if x.name in wanted and x.op == "product" for c in (x.a, x.b)}
        codes: dict[str, np.ndarray] = {}
        for f in self.cfg.features:
            if f.name in wanted or f.name in needed_codes:
                codes[f.name] = self._encode_feature(frame, f)
        out = {k: v for k, v in codes.items() if k in wanted}
        for c in self.cfg.crosses:
            if c.name not in wanted:
                continue
            if c.op == "match":
                out[c.name] = self._normalise(self._match(frame, c.a, c.b), *self.stats_[c.name])
                continue
            out[c.name] = self.product_codes(c, codes[c.a], codes[c.b])
        for h in self.cfg.history_crosses:
            if h.name in wanted:
                if h.name not in frame.columns:
                    raise SchemaError(f"history cross {h.name!r} is missing from the frame (prepare computes it)")
                out[h.name] = self._normalise(frame[h.name], *self.stats_[h.name])
        return {name: out[name] for name in self.schema_.names if name in out}

    # -- persistence -------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {
            "vocabs": {k: {"dtype": v.dtype, "values": v.values, "boundaries": v.boundaries}
                       for k, v in self.vocabs_.items()},
            "stats": {k: list(v) for k, v in self.stats_.items()},
            "cross_values": {k: v.tolist() for k, v in self.cross_values_.items()},
            "schema": self.schema_.to_json(),
        }

    @classmethod
    def from_json(cls, cfg: DataConfig, body: dict[str, Any]) -> Encoder:
        enc = cls(cfg)
        try:
            enc.vocabs_ = {k: Vocab(v["dtype"], v["values"], v["boundaries"]) for k, v in body["vocabs"].items()}
            enc.stats_ = {k: (float(v[0]), float(v[1])) for k, v in body["stats"].items()}
            enc.cross_values_ = {k: np.asarray(v, dtype=np.int64) for k, v in body["cross_values"].items()}
            enc.schema_ = Schema.from_json(body["schema"])
        except (KeyError, TypeError, IndexError) as exc:
            raise ArtifactError(f"encoder state is malformed: {exc!r}") from exc
        return enc

    def save(self, directory: Path) -> list[Path]:
        """Write ``encoder.json`` plus one plain ``vocab/<name>.txt`` per vocabulary (for inspection)."""
        from coarserank.atomic import atomic_write_text

        written = [atomic_write_text(directory / "encoder.json", json.dumps(self.to_json()))]
        for name, vocab in self.vocabs_.items():
            lines = [f"{i}\t{v}" for i, v in enumerate(vocab.values, start=FIRST_ID)]
            header = f"# {name}: dtype={vocab.dtype}; 0 = padding, 1 = out of vocabulary\n"
            written.append(atomic_write_text(directory / "vocab" / f"{name}.txt", header + "\n".join(lines) + "\n"))
        return written
