"""Coarse ranking with the COLD student: one ONNX Runtime call on the candidates' raw rows.

A COLD student reads user x item cross fields, so it has no item vectors to precompute: it scores
one row per candidate. A request still carries the user and context features once (the same JSON
object as for the towers); :class:`ColdRanker` builds the rows itself, columnar:

- user and context inputs: one row of feeds (:class:`~coarserank.serving.ranker.UserFeeds`), which
  the graph broadcasts to every candidate (their request axis, ``docs/serving.md``);
- item inputs: gathered from feeds of the whole catalogue (``items.parquet``), built once at load;
  candidate ids not in the catalogue are dropped and counted (``RankResult.dropped``), never scored;
- product and match crosses: computed inside ``student.onnx`` from those raw inputs;
- history crosses among the student's fields: the key's smoothed positive rate on the candidate's
  values as of just after the last labelled row of the run (``history.parquet``, the labelled rows'
  key, value, time and label columns), through the same :class:`~coarserank.data.history.HistoryStats`
  the training data used; a feature store would serve these.

So ``rank`` equals the PyTorch student on the rows that
:func:`coarserank.serving.catalogue.teacher_frame` assembles for the same request (the export stage
checks it on every run, ``checks.export.rank_path``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import polars as pl

from coarserank.artifacts.bundle import SERVING_FILE, ColdBundle
from coarserank.config import DataConfig
from coarserank.data.encode import Encoder
from coarserank.data.history import NONE, HistoryStats, raw_values, row_means
from coarserank.data.prepare import feature_column, history_stats
from coarserank.errors import ArtifactError, ServingError
from coarserank.serving.catalogue import RowIndex, catalogue_ids, read_catalogue
from coarserank.serving.kv import as_query_ids
from coarserank.serving.onnx_export import read_metadata
from coarserank.serving.onnx_inputs import feeds_from_frame, input_specs, request_inputs
from coarserank.serving.ranker import CoarseRanker, Ranker, RankResult, UserFeeds, onnx_session, top_positions
from coarserank.serving.run_files import RunFiles

__all__ = ["ColdRanker", "HistoryLookup", "HISTORY_FILE", "history_columns", "open_ranker"]

HISTORY_FILE: Final[str] = "history.parquet"


def history_columns(cfg: DataConfig, names: list[str]) -> list[str]:
    """Columns of the labelled rows that the history crosses ``names`` are computed from."""
    by_name = {f.name: f for f in cfg.features}
    cols = ["_label", "_time"]
    for h in cfg.history_crosses:
        if h.name in names:
            for part in (h.key, h.over):
                col = feature_column(part, by_name[part].column)
                if col not in cols:
                    cols.append(col)
    return cols


@dataclass
class HistoryLookup:
    """One history cross for requests: its statistics and, for item-side operands, the catalogue's codes."""

    stats: HistoryStats
    key: str  # feature names of the operands
    over: str
    key_col: str
    over_col: str
    sep: str | None
    item_keys: np.ndarray | None  # [n_items] when the key is item-side
    item_values: np.ndarray | None  # [n_items, width] when ``over`` is item-side
    key_dtype: pl.DataType
    key_strings: np.ndarray  # the statistics' sorted key dictionary, for one-key lookups per request
    item_rates: np.ndarray | None  # [n_items] the whole cross when key and ``over`` are both item-side

    @classmethod
    def build(cls, cfg: DataConfig, name: str, history: pl.DataFrame, catalogue: pl.DataFrame,
              base_rate: float) -> HistoryLookup:
        h = next(h for h in cfg.history_crosses if h.name == name)
        by_name = {f.name: f for f in cfg.features}
        key_col = feature_column(h.key, by_name[h.key].column)
        over_col = feature_column(h.over, by_name[h.over].column)
        sep = by_name[h.over].sep if by_name[h.over].kind == "multi" else None
        stats = history_stats(history, h, key_col, over_col, sep, base_rate)
        item_keys = stats.key_codes(catalogue[key_col]) if by_name[h.key].side == "item" else None
        item_values = (stats.value_codes(raw_values(catalogue[over_col], sep))
                       if by_name[h.over].side == "item" else None)
        lookup = cls(stats, h.key, h.over, key_col, over_col, sep, item_keys, item_values, history[key_col].dtype,
                     stats.keys.to_numpy().astype(str), None)
        if item_keys is not None and item_values is not None:  # no request feature involved: once per catalogue
            lookup.item_rates = lookup._rates(np.broadcast_to(item_keys[:, None], item_values.shape), item_values)
        return lookup

    def _rates(self, keys: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The cross (float64 ``[n]``) from key and value codes ``[n, width]``, after every history row."""
        return row_means(self.stats.final_rates(keys, values), values != NONE, self.stats.base_rate)

    def _code(self, value: Any, dictionary: np.ndarray) -> int:
        """Code of one raw value in a sorted dictionary of strings (:data:`NONE` when absent)."""
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) \
                and self.key_dtype.is_integer():
            raw: str | None = str(int(value))  # what the cast below gives, without building a series
        elif isinstance(value, str) and self.key_dtype == pl.Utf8:
            raw = value
        else:
            raw = pl.Series(self.key_col, [value]).cast(self.key_dtype, strict=False).cast(pl.Utf8)[0]
        if raw is None or dictionary.size == 0:
            return NONE
        at = int(np.searchsorted(dictionary, raw))
        return at if at < dictionary.size and dictionary[at] == raw else NONE

    def _key_rates(self, key: int, values: np.ndarray) -> np.ndarray:
        """The cross for one key code on value codes ``[n, width]``: every value's rate for the key once,
        then a gather (a pair lookup per entry when the values outnumber the rows)."""
        if len(self.stats.values) > max(len(values), 1):
            return self._rates(np.full(values.shape, key, dtype=np.int64), values)
        every = np.arange(len(self.stats.values), dtype=np.int64)
        table = np.append(self.stats.final_rates(np.full(every.size, key, dtype=np.int64), every),
                          self.stats.base_rate)  # NONE (-1) reads the last slot
        if values.shape[1] == 1:  # the mean of one slot is its rate, of none the base rate
            return table[values[:, 0]]
        return row_means(table[values], values != NONE, self.stats.base_rate)

    def values(self, user: dict[str, Any], rows: np.ndarray) -> np.ndarray:
        """The cross for catalogue rows ``rows`` and the request's ``user`` (float64 ``[n]``)."""
        if self.item_rates is not None:  # key and values item-side
            return self.item_rates[rows]
        if self.item_values is not None:  # the request's key on each candidate's values
            return self._key_rates(self._code(user.get(self.key), self.key_strings), self.item_values[rows])
        n = len(rows)
        one = self.stats.value_codes(raw_values(pl.Series(self.over_col, [user.get(self.over)]).cast(pl.Utf8),
                                                self.sep))
        values = np.repeat(one, n, axis=0)
        if self.item_keys is not None:
            keys = self.item_keys[rows]
        else:
            keys = np.full(n, self._code(user.get(self.key), self.key_strings), dtype=np.int64)
        return self._rates(np.broadcast_to(keys[:, None], values.shape), values)


class ColdRanker:
    """Rank candidate items for one user with the exported COLD student (``student.onnx``).

    Examples
    --------
    >>> ranker = ColdRanker.from_run("runs/cold")                          # doctest: +SKIP
    >>> ranker.rank({"user_id": 12, "gender": "F", ...}, ids, 100).ids     # doctest: +SKIP
    """

    path = ("user dict + candidate ids -> rows (catalogue item feeds gathered, user feeds repeated, history "
            "crosses looked up) -> ONNX COLD student on every row -> top-n")

    def __init__(self, session: Any, encoder: Encoder, catalogue: pl.DataFrame, fields: list[str],
                 history: dict[str, HistoryLookup], files: RunFiles | None = None) -> None:
        self.session = session
        self.files = files
        self._output = [session.get_outputs()[0].name]
        cfg = encoder.cfg
        sides = {f.name: f.side for f in cfg.features}
        specs = input_specs(encoder, "cold", fields)
        user_names = [s.name for s in specs if s.kind != "history" and sides[s.name] != "item"]
        item_names = [s.name for s in specs if s.kind != "history" and sides[s.name] == "item"]
        self.user_feeds = UserFeeds(encoder, "cold", fields=user_names) if user_names else None
        self._once = request_inputs({i.name: i.shape[0] if i.shape else None for i in session.get_inputs()})
        self.items = feeds_from_frame(encoder, catalogue, "cold", item_names) if item_names else {}
        self.ids = catalogue_ids(catalogue, cfg)
        self._index = RowIndex(self.ids)
        self.history = history
        self.fields = fields

    @classmethod
    def from_run(cls, run_dir: Path | str, *, threads: int = 1) -> ColdRanker:
        """Load from a finished run of a COLD student: ``serving.json``, ``student.onnx``,
        ``items.parquet`` and ``history.parquet`` (when its fields hold history crosses), each verified."""
        files = RunFiles(run_dir)
        with files.reading():
            bundle = files.bundle()
            if not isinstance(bundle, ColdBundle):
                raise ArtifactError(f"run {files.path} serves a {bundle.family} student; use CoarseRanker (towers: "
                                    "user vector x KV item vectors)")
            encoder = files.encoder()
            path = files.verified(bundle.file("student"))
            session = onnx_session(path, threads=threads)
            fields = read_metadata(path)["fields"].split(",")
            catalogue = read_catalogue(files.verified(bundle.file("catalogue")), encoder.cfg)
            names = [s.name for s in input_specs(encoder, "cold", fields) if s.kind == "history"]
            frame = pl.read_parquet(files.verified(bundle.file("history"))) if names else None
        if frame is not None and bundle.history_base_rate is None:
            raise ArtifactError(f"run {files.path}: {SERVING_FILE} lacks history_base_rate, which the student's "
                                f"history crosses ({', '.join(names)}) need")
        history = {n: HistoryLookup.build(encoder.cfg, n, frame, catalogue, float(bundle.history_base_rate))
                   for n in names} if frame is not None and bundle.history_base_rate is not None else {}
        return cls(session, encoder, catalogue, fields, history, files)

    def rows(self, candidate_ids: npt.ArrayLike) -> tuple[np.ndarray, np.ndarray]:
        """``(catalogue rows, kept)``: the catalogue position of each known candidate and the mask of
        candidates found (unknown ids are dropped)."""
        rows, found = self._index.lookup(as_query_ids(candidate_ids))
        return (rows, found) if found.all() else (rows[found], found)

    def feeds(self, user: dict[str, Any], rows: np.ndarray) -> dict[str, np.ndarray]:
        """``student.onnx`` feeds for catalogue ``rows`` and the request's user/context features."""
        n = len(rows)
        feeds = {name: values[rows] for name, values in self.items.items()}
        if self.user_feeds is not None:
            for name, one in self.user_feeds(user).items():
                feeds[name] = one if name in self._once else np.repeat(one, n, axis=0)
        for name, lookup in self.history.items():
            feeds[name] = lookup.values(user, rows).astype(np.float32)
        return feeds

    def scores(self, user: dict[str, Any], rows: np.ndarray) -> np.ndarray:
        """The student's logits for catalogue ``rows`` (``float32 [n]``)."""
        if len(rows) == 0:
            return np.zeros(0, dtype=np.float32)
        return np.asarray(self.session.run(self._output, self.feeds(user, rows))[0], dtype=np.float32).reshape(-1)

    def rank(self, user: dict[str, Any], candidate_ids: npt.ArrayLike, top_n: int = 100) -> RankResult:
        """Score ``candidate_ids`` for ``user`` and keep the best ``top_n`` (unknown ids dropped, counted)."""
        if top_n < 1:
            raise ServingError(f"top-n must be >= 1, got {top_n}")
        ids = as_query_ids(candidate_ids)
        rows, found = self.rows(ids)
        scores = self.scores(user, rows)
        best = top_positions(scores, top_n)
        return RankResult(ids[found][best], scores[best], int((~found).sum()))


def open_ranker(run_dir: Path | str, *, store: str | None = None, namespace: str | None = None,
                threads: int = 1) -> Ranker:
    """The ranker a finished run serves: :class:`ColdRanker` for a COLD student, else
    :class:`~coarserank.serving.ranker.CoarseRanker` (``store`` and ``namespace`` select its KV store).

    Raises
    ------
    ArtifactError
        A missing or modified artifact, or ``store`` given for a COLD student (it has no item vectors).
    """
    if isinstance(RunFiles(run_dir).bundle(), ColdBundle):
        if store is not None:
            raise ArtifactError(f"run {run_dir} serves a COLD student, which scores candidate rows and has no "
                                "item vectors; --store does not apply")
        return ColdRanker.from_run(run_dir, threads=threads)
    return CoarseRanker.from_run(run_dir, store=store, namespace=namespace, threads=threads)
