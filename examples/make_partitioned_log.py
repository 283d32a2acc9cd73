"""Write the built-in synthetic log as parquet partitions, for a streaming run.

    python examples/make_partitioned_log.py --out /tmp/plog --rows 2000000 --partitions 40
    distill run --config examples/streaming.toml --data-dir /tmp/plog

Writes ``exposures/part-NNNNN.parquet`` (time order, about rows/partitions rows each),
``users.parquet`` and ``items.parquet``. The generator holds the whole log while writing it
(about 2.3 GiB at 10M rows); the streaming run that reads it does not.
"""

from __future__ import annotations

import argparse

from coarserank.config import SyntheticConfig
from coarserank.data.partitions import write_partitions
from coarserank.data.synthetic import generate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, help="directory to write")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--partitions", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    raw = generate(SyntheticConfig(rows=args.rows), args.seed)
    per = -(-raw.exposures.height // args.partitions)
    files = write_partitions(raw, args.out, per)
    print(f"{raw.exposures.height:,} rows in {len(files) - 2} partitions under {args.out}")


if __name__ == "__main__":
    main()
