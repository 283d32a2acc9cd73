"""The data stage and the train-row readers of a streaming run (``data.streaming = true``).

Train rows are never all in memory: the encoder is fitted in streaming passes over the
partitions, the teacher and students train from a :class:`StreamingTable`, and the teacher's
train logits are written one parquet file per partition (``logits/train/part-NNNNN.parquet``, the
partition's train rows in file order). What the later stages need whole stays in memory and is
bounded by the config: the valid and test rows (the last ``valid_frac + test_frac`` of the log by
time), a uniform sample of at most ``data.sample_rows`` train rows (GBDT reference, sweeps,
report segments) and each item's latest train row (so the serving catalogue misses no item).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import numpy as np
import polars as pl
import torch

from coarserank.atomic import atomic_write_with
from coarserank.data.encode import Encoder
from coarserank.data.partitions import PartitionedLog
from coarserank.data.prepare import SPLITS, check_splits
from coarserank.distill.distributed import barrier, current, gather_objects
from coarserank.distill.stream_table import StreamingTable
from coarserank.distill.tensors import TensorTable, make_table
from coarserank.distill.train import predict
from coarserank.errors import DataError

if TYPE_CHECKING:
    from coarserank.pipeline.run import RunContext

__all__ = ["load_streaming_data", "train_logits_path", "streaming_train", "write_train_logits"]

_HASH_RANGE = 1 << 32


def _in_sample(seed: int, fraction: float) -> pl.Expr:
    """Uniform row sample by a seeded hash of the global row id (the same rows on every rank)."""
    return (pl.col("_row").hash(seed) % _HASH_RANGE) < int(fraction * _HASH_RANGE)


def train_logits_path(run_path: Path, partition: int) -> Path:
    return run_path / "logits" / "train" / f"part-{partition:05d}.parquet"


def load_streaming_data(ctx: RunContext) -> str:
    """Fill ``ctx`` (encoder, in-memory frames and tables, the streaming train source) from the
    partitioned log in two passes; returns the data fingerprint (sha256 over the partition files'
    bytes and the side tables)."""
    cfg = ctx.cfg
    log = PartitionedLog(cfg.data).open()
    check_splits(log.split_rows_, cfg.data)
    ctx.log = log
    ctx.progress(f"data: {len(log.partitions_)} parquet partitions, {log.rows:,} rows "
                 f"(train {log.split_rows_['train']:,}, valid {log.split_rows_['valid']:,}, "
                 f"test {log.split_rows_['test']:,})")
    fraction = min(1.0, cfg.data.sample_rows / max(log.split_rows_["train"], 1))
    sampled = _in_sample(cfg.run.seed, fraction)
    train = pl.col("_split") == "train"
    digest = hashlib.sha256()
    kept: list[pl.DataFrame] = []
    latest: list[pl.DataFrame] = []
    item_col = cfg.data.item_col
    passes = 0

    def batches() -> Iterator[pl.DataFrame]:
        nonlocal passes
        passes += 1
        first = passes == 1
        for i in range(len(log.partitions_)):
            frame = log.read(i, digest if first else None)
            if first:
                kept.append(frame.filter(~train | sampled))
                latest.append(frame.filter(train).sort("_time", "_row").unique(item_col, keep="last"))
                if len(latest) > 1:
                    latest[:] = [pl.concat(latest, how="vertical_relaxed").sort("_time", "_row")
                                 .unique(item_col, keep="last")]
                ctx.progress(f"data: pass {passes}, partition {i + 1}/{len(log.partitions_)}")
            yield frame.filter(train)

    encoder = Encoder(cfg.data).fit_batches(batches)
    ctx.encoder = encoder
    for side in (log.users_, log.items_):
        if side is not None:
            digest.update(side.hash_rows().to_numpy().tobytes())
    frame = (pl.concat([*kept, *latest], how="vertical_relaxed").unique("_row", keep="first").sort("_row"))
    ctx.frame = frame
    for split in SPLITS:
        part = frame.filter(pl.col("_split") == split)
        if split == "train":
            part = part.filter(sampled)
        ctx.frames[split] = part
        ctx.encoded[split] = encoder.transform(part)
        ctx.tables[split] = make_table(ctx.encoded[split], part["_label"].to_numpy(), part["_group"].to_numpy())
    ctx.stream = streaming_train(ctx)
    return digest.hexdigest()


def _train_rows(ctx: RunContext, partition: int) -> pl.DataFrame:
    return ctx.log.read(partition).filter(pl.col("_split") == "train")


def _encode(ctx: RunContext, frame: pl.DataFrame, teacher: np.ndarray | None) -> TensorTable:
    groups = frame["_group"].hash(0).reinterpret(signed=True).to_numpy()  # ids shared across partitions
    return make_table(ctx.encoder.transform(frame), frame["_label"].to_numpy(), groups, teacher, dense_groups=False)


def streaming_train(ctx: RunContext, with_teacher: bool = False) -> StreamingTable:
    """The train rows of ``ctx``'s partitioned log (with the teacher's logits attached from
    ``logits/train/`` when ``with_teacher``)."""

    def read(i: int) -> TensorTable:
        frame = _train_rows(ctx, i)
        teacher = None
        if with_teacher:
            path = train_logits_path(ctx.run.path, i)
            try:
                body = pl.read_parquet(path)
            except (pl.exceptions.PolarsError, OSError) as exc:
                raise DataError(f"teacher logits {path} cannot be read: {str(exc).splitlines()[0]}") from exc
            if not body["row"].equals(frame["_row"]):
                raise DataError(f"teacher logits {path} do not match the train rows of partition "
                                f"{ctx.log.partitions_[i].path}; start over with --overwrite")
            teacher = body["logit"].to_numpy()
        return _encode(ctx, frame, teacher)

    return StreamingTable(read, ctx.log.train_rows_, ctx.cfg.data.shuffle_partitions)


def write_train_logits(ctx: RunContext, teacher: torch.nn.Module) -> list[Path]:
    """Score every train row with the teacher, partition by partition; ranks share the partitions
    and rank 0 writes one parquet file per partition (``row``, ``logit``, ``soft`` = logit / T)."""
    info = current()
    temperature = ctx.cfg.distill.temperature
    todo = [i for i, n in enumerate(ctx.log.train_rows_) if n > 0]
    written: list[Path] = []
    for lo in range(0, len(todo), info.world):
        mine = todo[lo + info.rank] if lo + info.rank < len(todo) else None
        result = None
        if mine is not None:
            frame = _train_rows(ctx, mine)
            z = predict(teacher, _encode(ctx, frame, None), ctx.device)
            result = (mine, frame["_row"].to_numpy(), z)
        for item in gather_objects(result):
            if item is None or not ctx.run.writable:
                continue
            i, rows, z = item
            body = pl.DataFrame({"row": rows, "logit": z, "soft": z / temperature})
            written.append(atomic_write_with(train_logits_path(ctx.run.path, i), body.write_parquet, ".parquet"))
        done = min(lo + info.world, len(todo))
        ctx.progress(f"logits: train partition {done}/{len(todo)}")
    barrier()  # every rank reads these files when the students train
    return written
