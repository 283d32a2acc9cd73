"""``distill rank``, ``bench``, ``index`` and ``recall``: serving from a finished run directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from coarserank.cli import distill
from coarserank.pipeline.export_stage import bench_run, rebuild_index
from coarserank import CoarseRanker, parse_user, read_candidates

__all__ = ["rank_command", "bench_command", "index_command", "recall_command", "format_bench"]

_RUN = click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
                    help="A finished run directory (written by `distill run`).")
_USER = click.option("--user", "user_text", required=True, metavar="JSON",
                     help='The user and context features as a JSON object, e.g. '
                          '\'{"user_id": 12, "gender": "F", ...}\' (null = missing), '
                          'or @FILE to read it from a file.')


def _user(text: str) -> dict:
    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text()
        except OSError as exc:
            raise click.BadParameter(f"cannot read {text[1:]}: {exc.strerror}", param_hint="--user") from None
    return parse_user(text)


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers such as 1000,5000, got {text!r}",
                                 param_hint="--candidates") from None
    if not sizes or min(sizes) < 1:
        raise click.BadParameter(f"candidate counts must be positive integers, got {text!r}",
                                 param_hint="--candidates")
    return sizes


def format_bench(result: dict) -> str:
    """The latency table printed by ``distill bench``."""
    head = ("candidates", "student p50", "p99", "teacher p50", "p99", "ratio p50")
    lines = [" ".join(f"{h:>{w}}" for h, w in zip(head, (10, 12, 8, 12, 8, 10)))]
    for size, r in result["candidates"].items():
        s, t = r["student"], r["teacher"]
        lines.append(f"{size:>10} {s['p50_ms']:>9.3f} ms {s['p99_ms']:>8.3f} {t['p50_ms']:>9.3f} ms "
                     f"{t['p99_ms']:>8.3f} {r['ratio_p50']:>9.1f}x")
    m = result["machine"]
    lines.append(f"{m['cpu']}, {m['cores_available']} cores available; onnxruntime {m['onnxruntime']}, "
                 f"{result['onnx_threads']} intra-op thread(s)")
    return "\n".join(lines)


@distill.command("rank")
@_RUN
@_USER
@click.option("--candidates", "candidates_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="Text file of candidate item ids, one integer per line ('-' = stdin).")
@click.option("--top-n", type=click.IntRange(min=1), default=100, show_default=True, help="How many to keep.")
@click.option("--store", help="Read item vectors from this KV store (a path or a redis:// URL) "
                              "instead of the run's items.kv.")
def rank_command(run_dir: Path, user_text: str, candidates_path: Path, top_n: int, store: str | None) -> None:
    """Coarse-rank candidates for one user with the exported student: ONNX user tower, item vectors
    from the KV store, one matrix-vector product, top-n. Prints JSON {ids, scores, dropped}; ids the
    store does not know are dropped and counted."""
    user = _user(user_text)
    if str(candidates_path) == "-":
        ids = read_candidates("-", sys.stdin.read())
    else:
        ids = read_candidates(candidates_path)
    result = CoarseRanker.from_run(run_dir, store=store).rank(user, ids, top_n)
    click.echo(json.dumps({**result.to_json(), "candidates": int(ids.size)}))


@distill.command("bench")
@_RUN
@click.option("--candidates", "sizes", default="1000,5000,10000", show_default=True,
              help="Comma-separated candidate counts.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the results here as JSON.")
@click.option("--repeats", type=click.IntRange(min=1), default=200, show_default=True,
              help="Timed calls per figure.")
@click.option("--users", type=click.IntRange(min=1), default=20, show_default=True,
              help="Requests (users of the test split) cycled through.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True,
              help="ONNX Runtime intra-op threads per session.")
def bench_command(run_dir: Path, sizes: str, json_path: Path | None, repeats: int, users: int,
                  threads: int) -> None:
    """Latency p50/p99 of the student path against teacher.onnx on the same candidates."""
    result = bench_run(run_dir, _sizes(sizes), users=users, repeats=repeats, threads=threads,
                       progress=lambda m: click.echo(m, err=True))
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2))
    click.echo(format_bench(result))


@distill.command("index")
@_RUN
@click.option("--kind", type=click.Choice(["auto", "flat", "hnsw", "ivf", "ivfpq"]), default="auto",
              show_default=True, help="Index kind; auto = flat under 50,000 items, else ivf.")
def index_command(run_dir: Path, kind: str) -> None:
    """Rebuild the run's Faiss index (items.faiss) over its KV item vectors; report recall@10/@100
    against exact search and queries per second."""
    facts = rebuild_index(run_dir, kind, progress=lambda m: click.echo(m, err=True))
    tuned = {k: facts[k] for k in ("efSearch", "nprobe") if k in facts}
    click.echo(f"{facts['kind']} index over {facts['items']:,} items {tuned or ''}".rstrip())
    click.echo(f"recall@10 {facts['recall@10']:.4f}  recall@100 {facts['recall@100']:.4f}  "
               f"{facts['qps']:,.0f} queries/s (exact {facts['exact_qps']:,.0f}, {facts['speedup']:.1f}x)")


@distill.command("recall")
@_RUN
@_USER
@click.option("--k", type=click.IntRange(min=1), default=100, show_default=True,
              help="How many items to return.")
def recall_command(run_dir: Path, user_text: str, k: int) -> None:
    """Recall the top-k catalogue items for one user from the Faiss index. Prints JSON {ids, scores}."""
    result = CoarseRanker.from_run(run_dir).recall(_user(user_text), k)
    body = result.to_json()
    click.echo(json.dumps({"ids": body["ids"], "scores": body["scores"]}))
