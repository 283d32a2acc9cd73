"""How much of the topic match does the recall model capture on synthetic data? (issue 14, RESULTS 16.1)

Usage:
    python benchmarks/bench_match_headroom.py --seed 0 [--set recall.match_channel=false]

Runs ``distill run`` on the synthetic set with the recall model on (multi-interest over an added
``hist_item`` sequence, as ``bench_retrieval.py`` does; teacher and students cut to one epoch: the
recall model does not read them), then reports Recall@100 over the catalogue on the valid and test
splits for: the recall model, popularity (train positives), and a hand-made baseline that reads the
same two data columns the ``topic_match`` cross compares — ``log(1 + train positives) + gamma *
[user's fav_topic == item's topic]`` for a grid of gamma (to be chosen on valid). The baseline shows
what the match alone is worth; a recall model far below it has not learned the match.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_retrieval import recall_only_run  # noqa: E402

from coarserank.data.synthetic import generate  # noqa: E402
from coarserank.ranking_eval.retrieval import evaluate_retrieval  # noqa: E402

GAMMAS = (0.5, 1.0, 2.0, 4.0, 8.0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=None, help="run directory (default benchmarks/out/headroom-...)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()
    tag = "-".join(x.replace("=", "_") for x in args.sets) or "defaults"
    cfg, splits = recall_only_run(args.seed, args.out or Path(f"benchmarks/out/headroom-seed{args.seed}-{tag}"),
                                  args.sets)
    raw = generate(cfg.synthetic, args.seed)
    fav = dict(zip(raw.users["user_id"].to_list(), raw.users["fav_topic"].to_list()))
    topic = dict(zip(raw.items["item_id"].to_list(), raw.items["topic"].to_list()))
    result: dict[str, dict[str, float]] = {}
    for split, sv in splits.items():
        data = sv.data
        users = np.array([fav[x] for x in data.users.tolist()])
        items = np.array([topic[x] for x in data.item_ids.tolist()])
        user_hot = np.zeros((users.size, cfg.synthetic.topics), np.float32)
        user_hot[np.arange(users.size), users] = 1.0
        item_hot = np.zeros((items.size, cfg.synthetic.topics), np.float32)
        item_hot[np.arange(items.size), items] = 1.0
        prior = np.log1p(data.counts.astype(np.float64))[:, None].astype(np.float32)
        ones = np.ones((users.size, 1), np.float32)

        def recall(a: np.ndarray, b: np.ndarray) -> float:
            return round(evaluate_retrieval(a, b, data.heldout, data.known, (100,), data.counts).recall[100], 4)

        row = {"recall_model": recall(sv.users, sv.items), "popularity": recall(ones, prior)}
        for g in GAMMAS:
            row[f"popularity+{g}*match"] = recall(np.concatenate([ones, g * user_hot], 1),
                                                  np.concatenate([prior, item_hot], 1))
        result[split] = row
    print(json.dumps({"match_channel": cfg.recall.match_channel, **result}, indent=1))


if __name__ == "__main__":
    main()
