"""Does a popularity prior lift the recall model above popularity on synthetic data? (issue 14, RESULTS 16.1)

Usage:
    python benchmarks/bench_popularity_prior.py --seed 0 --out benchmarks/out/prior-seed0

Runs ``distill run`` on the synthetic set with the recall model on (multi-interest over an added
``hist_item`` sequence, as ``bench_retrieval.py`` does; teacher and students cut to one epoch: the
recall model does not read them), then scores the run's recall vectors with
``score + beta * log(1 + train positives)`` — one more vector coordinate, so still servable by inner
product — for a grid of beta, on the valid and the test split, next to popularity alone. Beta is to be
chosen on valid.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_retrieval import recall_only_run  # noqa: E402

from coarserank.ranking_eval.retrieval import evaluate_retrieval  # noqa: E402

BETAS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/prior-seed0"))
    args = ap.parse_args()
    _, splits = recall_only_run(args.seed, args.out)
    out: dict[str, dict[str, float]] = {}
    for split, sv in splits.items():
        data, u, v = sv.data, sv.users, sv.items
        prior = np.log1p(data.counts.astype(np.float64))[:, None]
        score = {f"beta={b}": evaluate_retrieval(
            np.concatenate([u, np.full(u.shape[:-1] + (1,), b)], axis=-1).astype(np.float32),
            np.concatenate([v, prior], axis=-1).astype(np.float32),
            data.heldout, data.known, (100,), data.counts).recall[100] for b in BETAS}
        score["popularity"] = evaluate_retrieval(np.ones((u.shape[0], 1)), prior, data.heldout, data.known, (100,),
                                                 data.counts).recall[100]
        out[split] = {k: round(x, 4) for k, x in score.items()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
