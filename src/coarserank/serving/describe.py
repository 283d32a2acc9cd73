"""``distill describe``: the input contract of each ONNX file of a run, read from the files themselves.

Everything comes from the graphs' ``metadata_props`` (:mod:`coarserank.serving.onnx_contract`), not
from the run's configuration, so what is printed is what a client holding only the files can know:
per input its name, dtype, shape, missing value, separator and ``max_len`` (multi-valued and
sequence inputs), where the value comes from and how it is derived; the history crosses' formula,
prior and base rate; the output; and the run id that ties the files together.

Example
-------
>>> body = describe_run("runs/demo")            # doctest: +SKIP
>>> print(format_description(body))              # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from coarserank.errors import ArtifactError
from coarserank.serving.onnx_contract import read_contract
from coarserank.serving.ranker import RunFiles

__all__ = ["ONNX_FILES", "describe_file", "describe_run", "format_description"]

ONNX_FILES = ("user_tower.onnx", "item_tower.onnx", "teacher.onnx")
_COLUMNS = ("name", "dtype", "shape", "missing", "sep", "max_len", "source", "derivation")


def describe_file(path: Path | str) -> dict[str, Any]:
    """The contract of one ONNX file exported by coarserank (``read_contract`` of its metadata).

    Raises
    ------
    ArtifactError
        An unreadable file, or one without coarserank's metadata.
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises its own DecodeError
        raise ArtifactError(f"{path} is not a readable ONNX model: {str(exc).splitlines()[0]}") from exc
    body = read_contract({p.key: p.value for p in model.metadata_props}, str(path))
    return {"file": Path(path).name, **body}


def describe_run(run_dir: Path | str) -> dict[str, Any]:
    """The contract of every ONNX file of a finished run (those ``serving.json`` lists: the towers and the
    teacher, or a COLD student and the teacher), each checked against the manifest first."""
    files = RunFiles(run_dir)
    names = [n for n in files.bundle().files.values() if n.endswith(".onnx")] or list(ONNX_FILES)
    described = [describe_file(files.verified(name)) for name in names]
    ids = sorted({d["properties"].get("run_id", "") for d in described})
    return {"run": str(files.path), "run_id": ids[0] if len(ids) == 1 else None, "files": described}


def _cell(entry: dict[str, Any], column: str) -> str:
    value = entry.get(column)
    if value is None:
        return "-"
    if column == "shape":
        return "[" + ", ".join(str(d) for d in value) + "]"
    if column == "sep" or (column == "missing" and entry.get("dtype") == "string"):
        return repr(value)
    return str(value)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cells = [[_cell(r, c) for c in _COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) if cells else len(c)
              for i, c in enumerate(_COLUMNS[:-1])]
    lines = ["  " + "  ".join(f"{c:<{w}}" for c, w in zip(_COLUMNS[:-1], widths)) + "  derivation"]
    for row in cells:
        lines.append("  " + "  ".join(f"{v:<{w}}" for v, w in zip(row[:-1], widths)) + "  " + row[-1])
    return lines


def format_description(body: dict[str, Any]) -> str:
    """``describe_run``'s result as the text ``distill describe`` prints."""
    run_id = body["run_id"] if body["run_id"] is not None else "DIFFERS between files (they do not belong together)"
    lines = [f"run {body['run']}  run id {run_id or '(none: exported before run ids)'}"]
    for d in body["files"]:
        props = d["properties"]
        out = d["output"]
        shape = "[" + ", ".join(str(x) for x in out["shape"]) + "]" if out["shape"] else "?"
        lines += ["", f"{d['file']}: {d['model_kind']} model, output {out['name']} float32 {shape}"
                      + (f"; score = {props['score_formula']}" if "score_formula" in props else "")]
        if "score_a" in props:
            lines.append(f"  score_a = {props['score_a']}, score_b = {props['score_b']}")
        lines += _table(d["inputs"])
        for c in d["graph_crosses"]:
            what = "1 where the raw values are equal, else 0" if c["op"] == "match" else "pair id"
            lines.append(f"  computed in the graph: {c['name']} = {c['op']} cross of {c['a']} and {c['b']} ({what})")
        for h in d["history_crosses"]:
            lines.append(f"  history cross {h['name']}: key {h['key']} (column {h['key_column']!r}), over "
                         f"{h['over']} (column {h['over_column']!r}"
                         + (f", split on {h['over_sep']!r}" if h.get("over_sep") else "")
                         + f"), prior {h['prior']}, base rate {h['base_rate']}")
            lines.append(f"    {h['formula']}; in the graph {h['normalised_in_graph']}")
    return "\n".join(lines)
