"""The report's retrieval section: every model's row, head-only models called out on the page."""

from __future__ import annotations

import numpy as np

from coarserank.ranking_eval.report import build_report
from coarserank.ranking_eval.report_html import render_html
from coarserank.ranking_eval.retrieval import retrieval_summary

from .test_report import make_scores, spec


def _row(recall: float, percentile: float) -> dict:
    return {"recall@100": recall, "ndcg@100": recall / 2, "coverage@100": 0.3, "popularity_percentile@100": percentile,
            "head_share@100": 0.5, "gini@100": 0.4, "coverage": 0.3, "items": 1000}


def test_the_page_shows_retrieval_per_model_and_calls_out_head_only_recall() -> None:
    scores = make_scores(np.random.default_rng(3), groups=8)
    report = build_report(scores, spec())
    report["retrieval"] = retrieval_summary({"recall": _row(0.31, 0.7), "student": _row(0.12, 0.97),
                                             "popularity": _row(0.2, 0.96)})
    page = render_html(report, scores)
    assert "Retrieval over the whole catalogue" in page
    assert "<strong>Head-only recall:</strong> student returns" in page
    for model in ("recall", "student", "popularity"):
        assert f"<td>{model}</td>" in page
