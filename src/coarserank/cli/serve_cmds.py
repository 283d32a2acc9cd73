"""``distill rank``, ``bench``, ``index`` and ``recall``: serving from a finished run directory."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from coarserank.cli import distill
from coarserank.pipeline.export_stage import bench_run, rebuild_index
from coarserank import CoarseRanker, Recaller, has_recall_model, open_ranker, parse_user, publish_run, read_candidates
from coarserank.pipeline.rundir import RunDir
from coarserank.threads import resolve_threads

__all__ = ["rank_command", "bench_command", "index_command", "recall_command", "publish_command", "format_bench",
           "format_index"]

_RUN = click.option("--run", "run_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
                    help="A finished run directory (written by `distill run`).")
_USER = click.option("--user", "user_text", required=True, metavar="JSON",
                     help='The user and context features as a JSON object, e.g. '
                          '\'{"user_id": 12, "gender": "F", ...}\' (null = missing), '
                          'or @FILE to read it from a file.')


_NAMESPACE = click.option("--namespace", default=None, metavar="PREFIX",
                          help="Key prefix in a Redis store. Default: coarserank:items.")
SCORE_KIND = "logit"


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
@click.option("--store", help="Read item vectors from this KV store (a path, or a redis:// or rediss:// URL "
                              "whose password is never printed) instead of the run's items.kv.")
@_NAMESPACE
def rank_command(run_dir: Path, user_text: str, candidates_path: Path, top_n: int, store: str | None,
                 namespace: str | None) -> None:
    """Coarse-rank candidates for one user with the exported student: ONNX user tower, item vectors
    from the KV store, one matrix-vector product, top-n (a COLD student: one ONNX call on the
    candidates' rows, item columns from the catalogue). Prints JSON {ids, scores, score_kind,
    dropped, candidates}: scores are the student's logits (a * <u, v> + b, or the COLD student's
    logit; sigmoid gives a probability); ids the store (or catalogue) does not know are dropped and
    counted."""
    user = _user(user_text)
    if str(candidates_path) == "-":
        ids = read_candidates("-", sys.stdin.read())
    else:
        ids = read_candidates(candidates_path)
    result = open_ranker(run_dir, store=store, namespace=namespace).rank(user, ids, top_n)
    click.echo(json.dumps({**result.to_json(), "score_kind": SCORE_KIND, "candidates": int(ids.size)}))


@distill.command("publish")
@_RUN
@click.option("--store", required=True, metavar="URL",
              help="Redis store to publish to: redis://[[user]:password@]host[:port][/db], rediss://... (TLS; "
                   "redis-py query options such as ?ssl_ca_certs=PATH) or unix://PATH. The password is never "
                   "printed.")
@_NAMESPACE
@click.option("--keep-previous", type=click.IntRange(min=0), default=1, show_default=True,
              help="Earlier versions kept for readers pinned to them; older ones are deleted.")
def publish_command(run_dir: Path, store: str, namespace: str | None, keep_previous: int) -> None:
    """Publish a finished run's item vectors (its items.kv, verified) to a Redis KV store as a new
    version, made current once complete (layout in docs/kv-format.md)."""
    done = publish_run(run_dir, store, namespace=namespace, keep_previous=keep_previous)
    click.echo(f"published {done.items:,} item vectors (dim {done.dim}, {done.dtype}) of model "
               f"{done.model_hash[:12]} as version {done.version} to {done.store} namespace {done.namespace!r}")


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
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True,
              help="ONNX Runtime intra-op threads per session; 0 = auto, the run.threads policy (the CPUs this "
                   "process may use: affinity mask, cgroup quota, idle CPUs).")
def bench_command(run_dir: Path, sizes: str, json_path: Path | None, repeats: int, users: int,
                  threads: int) -> None:
    """Latency p50/p99 of the student path against teacher.onnx on the same candidates."""
    threads = resolve_threads(threads)
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
    with RunDir.writer(run_dir, require=("export",)):
        facts = rebuild_index(run_dir, kind, progress=lambda m: click.echo(m, err=True))
    click.echo(format_index(facts))


def format_index(facts: dict) -> str:
    """The table printed by ``distill index``."""
    tuned = " ".join(f"{k}={facts[k]}" for k in ("efSearch", "nprobe") if k in facts) or "-"
    head = f"{'index':<6} {'items':>10} {'recall@10':>9} {'recall@100':>10} {'queries/s':>10} {'exact q/s':>10} " \
           f"{'speedup':>7}  search"
    row = (f"{facts['kind']:<6} {facts['items']:>10,} {facts['recall@10']:>9.4f} {facts['recall@100']:>10.4f} "
           f"{facts['qps']:>10,.0f} {facts['exact_qps']:>10,.0f} {facts['speedup']:>6.1f}x  {tuned}")
    return head + "\n" + row


@distill.command("recall")
@_RUN
@_USER
@click.option("--k", type=click.IntRange(min=1), default=100, show_default=True,
              help="How many items to return.")
@click.option("--model", type=click.Choice(["auto", "recall", "student"]), default="auto", show_default=True,
              help="recall: the run's recall model (recall.enabled); student: the coarse student's index; "
                   "auto: recall when the run has one.")
def recall_command(run_dir: Path, user_text: str, k: int, model: str) -> None:
    """Recall the top-k catalogue items for one user from a Faiss index: the recall model's (one search per
    interest, merged by score) or the coarse student's. Prints JSON {ids, scores, score_kind, model}: the
    recall model's scores are inner products of its vectors (the maximum over interests), the student's
    its logits (a * <u, v> + b)."""
    use_recall = model == "recall" or (model == "auto" and has_recall_model(run_dir))
    ranker = Recaller.from_run(run_dir) if use_recall else CoarseRanker.from_run(run_dir)
    body = ranker.recall(_user(user_text), k).to_json()
    click.echo(json.dumps({"ids": body["ids"], "scores": body["scores"],
                           "score_kind": "inner_product" if use_recall else SCORE_KIND,
                           "model": "recall" if use_recall else "student"}))
