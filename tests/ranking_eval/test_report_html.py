"""report.html: one self-contained page with every section and every plot inline."""

from __future__ import annotations

import base64
import re
import struct

import numpy as np
import polars as pl
import pytest

from coarserank.ranking_eval.report import build_report
from coarserank.ranking_eval.report_html import render_html

from .test_report import make_scores, spec


@pytest.fixture(scope="module")
def page_and_report() -> tuple[str, dict]:
    scores = make_scores(np.random.default_rng(7), groups=12)
    report = build_report(scores, spec())
    return render_html(report, scores), report


def _png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def test_every_image_is_an_inline_png_with_pixels(page_and_report: tuple[str, dict]) -> None:
    page, _ = page_and_report
    sources = re.findall(r'<img [^>]*src="([^"]+)"', page)
    assert len(sources) >= 4  # gain, recall curves, densities, calibration
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        width, height = _png_size(base64.b64decode(src.split(",", 1)[1]))
        assert width > 100 and height > 100


def test_the_page_needs_no_network(page_and_report: tuple[str, dict]) -> None:
    page, _ = page_and_report
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:|//)", page)
    assert "<script" not in page and "<link" not in page and "@import" not in page


def test_the_page_has_every_section(page_and_report: tuple[str, dict]) -> None:
    page, _ = page_and_report
    for heading in ("Headline", "Distillation gain", "Recall@k-in-n against n", "Score densities",
                    "Calibration", "By candidate-set size", "Segments", "Against the oracle", "Definitions"):
        assert f"<h2>{heading}" in page, heading


def test_the_headline_table_shows_each_model_with_its_numbers(page_and_report: tuple[str, dict]) -> None:
    page, report = page_and_report
    headline = page.split("<h2>Headline</h2>", 1)[1].split("<h2>", 1)[0]
    for model in ("teacher (reference)", "student", "student_hard"):
        assert f"<td>{model}</td>" in headline
    assert f"{report['label_metrics']['student']['gauc']:.4f}" in headline
    assert f"{report['consistency']['student_hard']['recall@10_in_100']:.4f}" in headline


def test_the_gain_section_shows_the_interval(page_and_report: tuple[str, dict]) -> None:
    page, report = page_and_report
    gain = report["gain"]["student_vs_student_hard"]["metrics"]["gauc"]
    section = page.split("<h2>Distillation gain</h2>", 1)[1].split("<h2>", 1)[0]
    assert "95% CI low" in section
    for key in ("difference", "low", "high"):
        assert f"{gain[key]:.4f}" in section


def test_text_from_the_data_is_escaped() -> None:
    scores = make_scores(np.random.default_rng(1), groups=6).rename({"student": "<b>x</b>"})
    report = build_report(scores, spec(models=("<b>x</b>",), label_models=("teacher", "<b>x</b>"), gains=(),
                                       oracle=None))
    page = render_html(report, scores)
    assert "<b>x</b>" not in page and "&lt;b&gt;x&lt;/b&gt;" in page


def test_a_report_without_labels_still_renders() -> None:
    scores = make_scores(np.random.default_rng(2), groups=6)
    scores = scores.with_columns(pl.lit(None, dtype=pl.Int8).alias("label"))
    page = render_html(build_report(scores, spec()), scores)
    assert "No calibration" in page and "no labelled rows" in page
