"""``report.html``: one self-contained page a person reads in a browser.

Everything is inline: CSS in a ``<style>`` element and every plot a matplotlib PNG embedded as
a ``data:`` URI, so the file opens from disk with no network and can be mailed as is. Figures
are drawn on :class:`matplotlib.figure.Figure` objects directly (no pyplot global state, no GUI
backend). Sections: the headline table, the distillation gain with its interval, Recall@k-in-n
against n, score densities, calibration curves, the per-size, segment and oracle tables and the
definitions.

Examples
--------
>>> page = render_html(report, scores)        # doctest: +SKIP
>>> Path("report.html").write_text(page)      # doctest: +SKIP
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from typing import Any

import numpy as np
import polars as pl
from matplotlib.figure import Figure

__all__ = ["render_html"]

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1100px;
color:#222;line-height:1.4;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
img{max-width:100%;height:auto;display:block;margin:.6em 0}
.note{color:#555;font-size:.9em}dt{font-weight:600}dd{margin:0 0 .5em 1.5em}
"""

_HEADLINE = ("auc", "gauc", "logloss")
_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")


def _fmt(x: Any, digits: int = 4) -> str:
    if x is None:
        return "&ndash;"
    if isinstance(x, bool):
        return str(x).lower()
    if isinstance(x, int):
        return f"{x:,}"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return html.escape(str(x))


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _png(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _consistency_keys(blocks: dict[str, Any]) -> list[str]:
    keys: list[str] = []
    for block in blocks.values():
        keys += [k for k, v in block.items() if isinstance(v, float | int) and k not in ("rows", "groups")
                 and k not in keys]
    return keys


def _consistency_table(blocks: dict[str, Any]) -> str:
    """Metrics as rows, models as columns (many metrics, few models), groups used beside each."""
    if not any(b.get("rows") for b in blocks.values()):
        return '<p class="note">No candidates here.</p>'
    models = list(blocks)
    rows = [[k, *(x for m in models for x in (blocks[m].get(k), None))] for k in ("rows", "groups")]
    rows += [[k, *(x for m in models for x in (blocks[m].get(k), blocks[m].get("groups_used", {}).get(k)))]
             for k in _consistency_keys(blocks)]
    header = ["metric"] + [f"{m}{suffix}" for m in models for suffix in ("", " groups used")]
    return _table(header, rows)


def _headline(report: dict[str, Any]) -> str:
    setup = report["setup"]
    models = list(dict.fromkeys([*setup["label_models"], setup["reference"], *setup["models"]]))
    cons_keys = [k for k in ("kendall_tau", "spearman", "recall@10_in_100", "recall@50_in_500", "ndcg@10")
                 if any(k in b for b in report["consistency"].values())]
    rows = []
    for m in models:
        lm = report["label_metrics"].get(m, {})
        cal = report["calibration"].get(m) or {}
        cons = report["consistency"].get(m, {})
        role = "reference" if m == setup["reference"] else ""
        rows.append([m + (f" ({role})" if role else ""), *(lm.get(k) for k in _HEADLINE), cal.get("ece"),
                     *(cons.get(k) for k in cons_keys), lm.get("rows")])
    return _table(["model", *_HEADLINE, "ece", *(f"{k} vs {setup['reference']}" for k in cons_keys),
                   "labelled rows"], rows)


def _gap_closed(entry: dict[str, Any], level: str) -> str:
    gap = entry.get("gap_closed")
    if not gap or gap.get("share") is None:
        return ""
    low, high = gap.get("low"), gap.get("high")
    interval = f" ({level} CI {low:.0%} to {high:.0%})" if low is not None and high is not None else ""
    return (f'<p>{html.escape(entry["model"])} closes <b>{gap["share"]:.0%}</b>{interval} of the '
            f'{html.escape(entry["baseline"])} &rarr; {html.escape(gap["reference"])} {gap["metric"].upper()} gap '
            f'({gap["groups"]} groups).</p>')


def _gain(report: dict[str, Any]) -> str:
    parts = []
    for entry in report["gain"].values():
        rows = [[name, g["difference"], g["low"], g["high"], g["groups"]]
                for name, g in entry["metrics"].items()]
        level = f"{entry['level']:.0%}"
        parts.append(f"<h3>{html.escape(entry['model'])} &minus; {html.escape(entry['baseline'])}</h3>"
                     + _gap_closed(entry, level)
                     + _table(["metric", "difference", f"{level} CI low", f"{level} CI high", "groups"],
                              rows))
        if rows:
            fig = Figure(figsize=(6.5, 0.45 * len(rows) + 1.2))
            ax = fig.add_subplot()
            y = np.arange(len(rows))
            d = np.array([r[1] for r in rows], dtype=float)
            err = np.abs(np.array([[r[1] - r[2], r[3] - r[1]] for r in rows], dtype=float).T)
            ax.errorbar(d, y, xerr=err, fmt="o", color=_COLOURS[0], capsize=3)
            ax.axvline(0.0, color="#888", lw=1)
            ax.set_yticks(y, [r[0] for r in rows])
            ax.invert_yaxis()
            ax.set_xlabel(f"{entry['model']} - {entry['baseline']} (per-group difference, {level} CI)")
            parts.append(_png(fig, f"gain of {entry['model']} over {entry['baseline']}"))
    return "".join(parts) or '<p class="note">No gain pairs configured.</p>'


def _recall_curves(report: dict[str, Any]) -> str:
    setup = report["setup"]
    fig = Figure(figsize=(7, 4))
    ax = fig.add_subplot()
    drawn = 0
    for i, (model, block) in enumerate(report["consistency"].items()):
        for j, k in enumerate(setup["ks"]):
            ns = [n for n in setup["ns"] if block.get(f"recall@{k}_in_{n}") is not None]
            if ns:
                ax.plot(ns, [block[f"recall@{k}_in_{n}"] for n in ns], marker="o", color=_COLOURS[i % 6],
                        ls=("-", "--", ":", "-.")[j % 4], label=f"{model}, k={k}")
                drawn += 1
    if not drawn:
        return '<p class="note">No Recall@k-in-n value is defined (groups smaller than every n).</p>'
    ax.set_xscale("log")
    ax.set_xticks(setup["ns"], [str(n) for n in setup["ns"]])
    ax.minorticks_off()
    ax.set_xlabel("n (student cut-off; groups with >= n candidates)")
    ax.set_ylabel(f"Recall@k-in-n vs {setup['reference']}")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _png(fig, "Recall@k-in-n against n")


def _densities(report: dict[str, Any], scores: pl.DataFrame) -> str:
    setup = report["setup"]
    ref, models = setup["reference"], setup["models"]
    kinds = setup["score_kind"]
    cols = [c for c in [ref, *models] if c in scores.columns]
    fig = Figure(figsize=(4.2 * (len(models) + 1), 3.8))
    ax = fig.add_subplot(1, len(models) + 1, 1)
    for i, c in enumerate(cols):
        x = scores[c].drop_nulls().cast(pl.Float64).to_numpy()
        ax.hist(x, bins=60, density=True, histtype="step", color=_COLOURS[i % 6], label=f"{c} ({kinds[c]})")
    ax.set_title("score density, all candidates", fontsize=9)
    ax.legend(fontsize=7)
    t = scores[ref].cast(pl.Float64).to_numpy()
    for i, m in enumerate(models):
        ax2 = fig.add_subplot(1, len(models) + 1, i + 2)
        s = scores[m].cast(pl.Float64).to_numpy()
        counts, xe, ye = np.histogram2d(t, s, bins=60)
        ax2.pcolormesh(xe, ye, np.ma.masked_equal(np.log1p(counts.T), 0.0), cmap="viridis")
        ax2.set_xlabel(ref)
        ax2.set_ylabel(m)
        ax2.set_title(f"joint density (log count), {ref} vs {m}", fontsize=9)
    fig.tight_layout()
    return _png(fig, f"score densities of {ref} and the models")


def _calibration(report: dict[str, Any]) -> str:
    blocks = {m: c for m, c in report["calibration"].items() if c}
    if not blocks:
        return '<p class="note">No calibration: no probability scores with labelled positives.</p>'
    fig = Figure(figsize=(5.5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="#888", lw=1, ls="--", label="perfect")
    for i, (m, c) in enumerate(blocks.items()):
        pred = np.array([np.nan if v is None else v for v in c["bins"]["predicted"]], dtype=float)
        obs = np.array([np.nan if v is None else v for v in c["bins"]["observed"]], dtype=float)
        ok = ~np.isnan(pred)
        ax.plot(pred[ok], obs[ok], marker="o", color=_COLOURS[i % 6], label=f"{m} (ECE {c['ece']:.3f})")
    ax.set_xlabel("mean predicted probability (bin)")
    ax.set_ylabel("observed positive rate (bin)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    rows = [[m, c["ece"], c["ratio"], c["rows"]] for m, c in blocks.items()]
    return _png(fig, "calibration curves") + _table(["model", "ece", "predicted / observed", "rows"], rows)


def _by_size(report: dict[str, Any]) -> str:
    parts = []
    for n, entry in report.get("by_size", {}).items():
        parts.append(f"<h3>candidate sets of size {html.escape(n)} ({entry['groups']:,} groups, "
                     f"{entry['rows']:,} candidates)</h3>")
        if not entry["groups"]:
            parts.append(f'<p class="note">No candidate set has {html.escape(n)} candidates.</p>')
            continue
        for part in ("all", "exposed", "sampled"):
            parts.append(f"<p>{part} candidates</p>" + _consistency_table(entry[part]))
    return "".join(parts) or '<p class="note">No per-size breakdown (no set_position column).</p>'


def _segments(report: dict[str, Any]) -> str:
    parts = []
    for name, seg in report["segments"].items():
        parts.append(f"<h3>{html.escape(name)}</h3><p class='note'>{html.escape(seg['definition'])}</p>")
        rows = []
        setup = report["setup"]
        for value, v in seg["values"].items():
            for m in dict.fromkeys([*setup["label_models"], *setup["models"]]):
                lm = v["label_metrics"].get(m, {})
                cons = v["consistency"].get(m, {})
                rows.append([value, m, v["rows"], v["groups"], v["labelled"], lm.get("auc"), lm.get("gauc"),
                             cons.get("kendall_tau"), cons.get("ndcg@10"), cons.get("recall@10_in_100")])
        parts.append(_table(["segment", "model", "rows", "groups", "labelled", "auc", "gauc", "kendall_tau",
                             "ndcg@10", "recall@10_in_100"], rows))
    return "".join(parts) or '<p class="note">No segment columns.</p>'


def _distill_grid(block: dict[str, Any]) -> str:
    """Validation GAUC and validation agreement per grid point, the chosen one marked."""
    points, chosen = block["points"], block["chosen"]
    names = [", ".join(f"{k}={v}" for k, v in p["settings"].items()) or "base" for p in points]
    x = np.arange(len(points))
    fig = Figure(figsize=(max(6.0, 0.6 * len(points) + 2), 5.5))
    top, bottom = fig.subplots(2, 1, sharex=True)
    top.plot(x, [p["valid_gauc"] for p in points], marker="o", color=_COLOURS[0])
    top.set_ylabel("valid GAUC")
    bottom.plot(x, [p["valid_recall_10_in_100"] for p in points], marker="o", color=_COLOURS[1],
                label="Recall@10-in-100")
    bottom.plot(x, [p["valid_kendall_tau"] for p in points], marker="s", color=_COLOURS[2], label="Kendall tau")
    bottom.set_ylabel("valid agreement with the teacher")
    bottom.legend(fontsize=8)
    for ax in (top, bottom):
        ax.axvline(chosen, color="#888", ls="--", lw=1)
        ax.grid(alpha=0.3)
    bottom.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    rows = [[("&#9654; " if i == chosen else "") + n, p["valid_gauc"], p["valid_recall_10_in_100"],
             p["valid_kendall_tau"], p["test_gauc"], p["best_epoch"], p["train_seconds"]]
            for i, (n, p) in enumerate(zip(names, points))]
    table = _table(["point", "valid GAUC", "valid Recall@10-in-100", "valid Kendall tau", "test GAUC (record only)",
                    "best epoch", "train s"], rows).replace("&amp;#9654; ", "&#9654; ")
    return (_png(fig, "validation GAUC and agreement over the distillation grid")
            + f"<p class='note'>chosen (&#9654;, dashed line) on {html.escape(block['chosen_on'])}; "
            f"test GAUC is shown for the record and was not used to choose.</p>" + table)


def render_html(report: dict[str, Any], scores: pl.DataFrame) -> str:
    """One self-contained HTML page for ``report`` (from :func:`build_report`) and its ``scores``.

    Parameters
    ----------
    report : dict[str, Any]
        The report dict.
    scores : pl.DataFrame
        The per-candidate scores the report was computed from (for the density plots).

    Returns
    -------
    str
        The page; every image is an inline PNG.
    """
    setup, counts = report["setup"], report["counts"]
    facts = [[k, v] for k, v in setup.items() if not isinstance(v, dict | list)]
    facts += [[k, ", ".join(map(str, v))] for k, v in setup.items() if isinstance(v, list)]
    sections = [
        f"<h1>Ranking-consistency report</h1><p class='note'>schema {html.escape(report['schema'])} "
        f"v{report['schema_version']} &middot; {counts['groups']:,} candidate sets &middot; "
        f"{counts['candidates']:,} candidates ({counts['exposed']:,} exposed, {counts['sampled']:,} sampled) "
        f"&middot; {counts['labelled']:,} labelled, {counts['positives']:,} positive</p>",
        "<h2>Headline</h2>" + _headline(report),
        "<h2>Distillation gain</h2>" + _gain(report),
        "<h2>Recall@k-in-n against n</h2>" + _recall_curves(report)
        + _consistency_table(report["consistency"]),
        "<h2>Score densities</h2>" + _densities(report, scores),
        "<h2>Calibration</h2>" + _calibration(report),
        "<h2>By candidate-set size</h2>" + _by_size(report),
        "<h2>Segments</h2>" + _segments(report),
    ]
    if "distill_grid" in report:
        sections.append("<h2>Distillation trade-off (grid)</h2>" + _distill_grid(report["distill_grid"]))
    if "oracle_consistency" in report:
        sections.append(f"<h2>Against the oracle ({html.escape(str(setup['oracle']))})</h2>"
                        + _consistency_table(report["oracle_consistency"]))
    if report.get("notes"):
        sections.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in report["notes"])
                        + "</ul>")
    sections.append("<h2>Setup</h2>" + _table(["setting", "value"], facts))
    terms = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>"
                    for k, v in report["definitions"].items())
    sections.append(f"<h2>Definitions</h2><dl>{terms}</dl>")
    return ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            "<meta name='viewport' content='width=device-width, initial-scale=1'>"
            f"<title>coarserank report</title><style>{_CSS}</style></head><body>"
            + "".join(sections) + "</body></html>\n")
