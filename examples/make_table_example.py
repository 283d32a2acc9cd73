"""Write the built-in synthetic data set as plain files, to try the generic table source.

    python examples/make_table_example.py --out /tmp/shop --rows 50000
    distill run --config examples/table.toml --data-dir /tmp/shop

Produces exposures.parquet (one row per shown item), users.csv and items.parquet.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from coarserank.config import SyntheticConfig
from coarserank.data.synthetic import generate


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--rows", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    tables = generate(SyntheticConfig(rows=args.rows), args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    tables.exposures.drop("p_true").rename({"label": "clicked"}).write_parquet(args.out / "exposures.parquet")
    tables.users.write_csv(args.out / "users.csv")
    tables.items.write_parquet(args.out / "items.parquet")


if __name__ == "__main__":
    main()
