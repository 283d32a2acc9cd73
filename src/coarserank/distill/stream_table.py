"""Training rows streamed partition by partition: the training loop's source for logs that do not
fit in memory.

Each rank owns a fixed shard of the partitions (balanced by rows). Every epoch it visits its
partitions in a seeded random order, a background thread reads and encodes the next ones while
the model trains, ``shuffle_partitions`` of them are mixed in one buffer and shuffled, and
mini-batches of ``batch_size // world`` rows are drawn from it. Every rank takes the same number
of steps (the smallest shard decides; remainders are dropped), so DistributedDataParallel never
waits on a rank that ran out of rows.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

from coarserank.distill.tensors import TensorTable, batch_indices, concat_tables
from coarserank.errors import DataError

__all__ = ["StreamingTable", "shard_partitions", "prefetch"]

PartitionReader = Callable[[int], TensorTable]


def shard_partitions(rows: tuple[int, ...], world: int) -> list[list[int]]:
    """Partitions per rank: largest first, each to the rank with the fewest rows so far."""
    shards: list[list[int]] = [[] for _ in range(world)]
    load = [0] * world
    for i in sorted(range(len(rows)), key=lambda k: (-rows[k], k)):
        if rows[i] == 0:
            continue
        r = min(range(world), key=lambda k: (load[k], k))
        shards[r].append(i)
        load[r] += rows[i]
    return [sorted(s) for s in shards]


def prefetch(items: list[int], read: PartitionReader, depth: int) -> Iterator[TensorTable]:
    """``read(i)`` for each item, computed up to ``depth`` ahead in a background thread; an error
    in the thread is raised here, and closing the iterator stops the thread."""
    box: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[str, object]) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for i in items:
                if not put(("table", read(i))):
                    return
            put(("end", None))
        except BaseException as exc:  # handed to the consumer, raised there
            put(("error", exc))

    thread = threading.Thread(target=work, name="coarserank-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = box.get()
            if kind == "end":
                return
            if kind == "error":
                raise value  # type: ignore[misc]
            yield value  # type: ignore[misc]
    finally:
        stop.set()
        thread.join(timeout=10)


@dataclass
class StreamingTable:
    """Train rows of a partitioned log. ``read(i)`` gives partition ``i``'s encoded train rows
    (group ids as int64 ids shared across partitions, e.g. hashes); ``rows[i]`` is their count."""

    read: PartitionReader
    rows: tuple[int, ...]
    shuffle_partitions: int = 4
    prefetch_depth: int = 2

    def __len__(self) -> int:
        return sum(self.rows)

    def steps(self, batch_size: int, world: int) -> int:
        """Mini-batches per epoch on every rank."""
        local = batch_size // world
        shards = shard_partitions(self.rows, world)
        for r, shard in enumerate(shards):
            have = sum(self.rows[i] for i in shard)
            if have < max(local, 1):
                raise DataError(f"rank {r} of {world} gets {have} training row(s) from its shard of partitions "
                                f"{shard or '(none)'}; it needs at least one batch of {local}: use fewer processes, "
                                "more (or more even) partitions, or a smaller batch_size")
        return min(sum(self.rows[i] for i in shard) // local for shard in shards)

    def batches(self, batch_size: int, generator: torch.Generator, rank: int = 0, world: int = 1,
                grouped: bool = False) -> Iterator[TensorTable]:
        """One epoch of this rank's mini-batches (``batch_size // world`` rows each)."""
        if batch_size < world:
            raise DataError(f"batch_size {batch_size} is smaller than the {world} processes sharing each batch")
        local = batch_size // world
        todo = self.steps(batch_size, world)
        shard = shard_partitions(self.rows, world)[rank]
        order = [shard[k] for k in torch.randperm(len(shard), generator=generator).tolist()]
        carry: list[TensorTable] = []
        buffer: list[TensorTable] = []
        tables = prefetch(order, self.read, self.prefetch_depth)
        try:
            for table in tables:
                buffer.append(table)
                if len(buffer) < self.shuffle_partitions:
                    continue
                carry, todo = yield from self._drain(carry + buffer, local, generator, grouped, todo)
                buffer = []
                if todo == 0:
                    return
            if buffer or carry:
                yield from self._drain(carry + buffer, local, generator, grouped, todo, final=True)
        finally:
            tables.close()

    @staticmethod
    def _drain(parts: list[TensorTable], local: int, generator: torch.Generator, grouped: bool, todo: int,
               final: bool = False) -> Iterator[TensorTable]:
        table = concat_tables(parts)
        batches = batch_indices(len(table), local, generator, table.group if grouped else None)
        full = [idx for idx in batches if len(idx) == local]
        rest = [idx for idx in batches if len(idx) < local]
        for idx in full[:todo]:
            yield table.take(idx)
        todo -= min(todo, len(full))
        leftover = [] if final or not rest else [table.take(rest[0])]
        return leftover, todo
