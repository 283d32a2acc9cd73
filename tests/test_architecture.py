"""The design of docs/architecture.md, checked on every module: dependency arrows, the public API,
who may use click, torch, argv and the environment, and the size limits.

The arrows are the design's, not a picture of the code: an import the design forbids fails here
even where the code has it. :data:`KNOWN_VIOLATIONS` lists the few such imports that exist while
other work is under way, each with the work that removes it; an entry that no longer matches any
import fails too, so the list only ever shrinks.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "coarserank"
BASE = {"errors", "config", "config_models", "config_rules", "threads", "atomic", "checksums", "version"}
"""Modules every part may import (``version``: ``import coarserank`` / ``from coarserank import __version__``)."""

# part -> coarserank parts it may import (besides itself and BASE); "facade" is ``import coarserank``'s API
ALLOWED: dict[str, set[str]] = {
    "data": set(),
    "ranking_eval": set(),
    "layers": {"data"},
    "teacher": {"layers", "data"},
    "student": {"layers", "data"},
    "artifacts": {"teacher", "student", "data"},
    "distill": {"teacher", "student", "data", "ranking_eval"},
    "serving": {"student", "teacher", "data", "ranking_eval", "artifacts"},
    "cold": {"distill", "serving", "student", "data", "ranking_eval"},
    "pipeline": {"artifacts", "distill", "serving", "cold", "teacher", "student", "layers", "data", "ranking_eval"},
    "api": {"pipeline", "artifacts", "distill", "serving", "cold", "teacher", "student", "layers", "data",
            "ranking_eval"},
    "facade": {"api", "pipeline", "artifacts", "distill", "serving", "cold", "teacher", "student", "layers", "data",
               "ranking_eval"},
    "cli": {"facade", "pipeline"},
}

KNOWN_VIOLATIONS: dict[tuple[str, str], str] = {
    # (module, imported part): the work that removes it
    ("cold/cost.py", "layers"): "issue 11: costs read the model families through student/",
}

MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
OVERSIZED_MODULES: dict[str, str] = {}  # module: the work that splits it
LONG_FUNCTIONS: dict[tuple[str, str], str] = {}  # (module, function): the work that shortens it


@dataclass(frozen=True)
class Import:
    module: str  # the imported module's dotted name
    names: tuple[str, ...]  # for ``from m import a, b``: a, b
    line: int


def imports_of(source: str) -> list[Import]:
    """Every absolute import of ``source``, wherever it is (functions included)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [Import(a.name, (), node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(Import(node.module, tuple(a.name for a in node.names), node.lineno))
    return found


def part_of(rel: Path) -> str:
    """The design part a module belongs to: its subpackage, or its own name at the top level."""
    if rel.parts == ("__init__.py",):
        return "facade"
    return rel.parts[0] if len(rel.parts) > 1 else rel.parts[0].removesuffix(".py")


def target_of(imp: Import) -> str | None:
    """The design part an import reaches, or None outside coarserank."""
    parts = imp.module.split(".")
    if parts[0] != "coarserank":
        return None
    if len(parts) == 1:  # import coarserank / from coarserank import ...: the version, or the facade
        return "version" if not imp.names or set(imp.names) == {"__version__"} else "facade"
    return parts[1]


def violations(rel: Path, source: str) -> list[str]:
    """The imports of module ``rel`` (relative to the package) that the design forbids."""
    owner = part_of(rel)
    allowed = ALLOWED.get(owner, set()) | BASE | {owner}
    bad = []
    for imp in imports_of(source):
        target = target_of(imp)
        if target is not None and target not in allowed:
            bad.append(f"{rel.as_posix()}:{imp.line} imports {imp.module}: {owner} may not depend on {target}")
    return bad


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _rel(path: Path) -> Path:
    return path.relative_to(PACKAGE)


def _unexpected(path: Path) -> list[str]:
    rel = _rel(path)
    return [v for v in violations(rel, path.read_text())
            if (rel.as_posix(), v.rsplit(" on ", 1)[1]) not in KNOWN_VIOLATIONS]


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(_rel(p)))
def test_module_imports_follow_the_dependency_arrows(path: Path) -> None:
    assert _unexpected(path) == []


def test_every_known_violation_still_exists() -> None:
    """A removed violation must leave the list, so the design is enforced from then on."""
    present = {(_rel(p).as_posix(), v.rsplit(" on ", 1)[1]) for p in _modules()
               for v in violations(_rel(p), p.read_text())}
    gone = [f"{m} -> {t} ({why})" for (m, t), why in KNOWN_VIOLATIONS.items() if (m, t) not in present]
    assert gone == [], "remove these entries from KNOWN_VIOLATIONS: " + "; ".join(gone)


def test_the_checker_rejects_a_forbidden_import(tmp_path: Path) -> None:
    assert violations(Path("cli/extra.py"), "from coarserank.distill.train import fit\n") == [
        "cli/extra.py:1 imports coarserank.distill.train: cli may not depend on distill"]
    assert violations(Path("cold/extra.py"), "def f():\n    from coarserank.pipeline.run import RunContext\n")
    assert violations(Path("data/extra.py"), "import coarserank.teacher\n")
    assert violations(Path("serving/extra.py"), "from coarserank import Run\n")  # the facade: cli's only


def test_the_checker_accepts_what_the_design_allows() -> None:
    assert violations(Path("cli/extra.py"), "import coarserank as cr\nfrom coarserank.pipeline.run import run\n"
                                             "from coarserank.config import load_config\n") == []
    assert violations(Path("serving/extra.py"), "import coarserank\nfrom coarserank import __version__\n"
                                                 "from coarserank.artifacts import ServingBundle\n") == []


def test_a_forbidden_import_added_to_a_module_fails_the_architecture_test(tmp_path: Path) -> None:
    """Run this file's own test on a copy of a real cli module with one forbidden import added."""
    module = tmp_path / "coarserank" / "cli" / "report_cmd.py"
    module.parent.mkdir(parents=True)
    source = (PACKAGE / "cli" / "report_cmd.py").read_text()
    module.write_text(source + "\nfrom coarserank.cold.sweep import run_sweep  # forbidden: cli -> cold\n")
    rel = module.relative_to(tmp_path / "coarserank")
    assert violations(rel, source) == []
    assert [v.rsplit(" on ", 1)[1] for v in violations(rel, module.read_text())] == ["cold"]


@pytest.mark.parametrize("path", [p for p in _modules() if part_of(_rel(p)) not in ("pipeline", "api", "facade")],
                         ids=lambda p: str(_rel(p)))
def test_only_the_pipeline_knows_its_context(path: Path) -> None:
    """cold, serving and the rest take typed data as arguments, never the pipeline's context (the
    cli's ``ctx`` is click's context)."""
    names = r"RunContext|load_context" if part_of(_rel(path)) == "cli" else r"RunContext|load_context|ctx"
    assert not re.search(rf"\b({names})\b", path.read_text())


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(_rel(p)))
def test_no_untyped_context_parameter(path: Path) -> None:
    assert not re.search(r"\bctx\s*:\s*Any\b", path.read_text())


@pytest.mark.parametrize("path", [p for p in _modules() if part_of(_rel(p)) != "cli"], ids=lambda p: str(_rel(p)))
def test_click_is_imported_only_by_the_cli(path: Path) -> None:
    assert not any(i.module == "click" or i.module.startswith("click.") for i in imports_of(path.read_text()))


@pytest.mark.parametrize("path", [p for p in _modules() if part_of(_rel(p)) == "ranking_eval"], ids=lambda p: p.name)
def test_ranking_eval_never_imports_torch(path: Path) -> None:
    assert not any(i.module == "torch" or i.module.startswith("torch.") for i in imports_of(path.read_text()))


@pytest.mark.parametrize("path", [p for p in _modules() if part_of(_rel(p)) in ("teacher", "student", "layers")],
                         ids=lambda p: p.name)
def test_models_hold_no_optimiser_or_loop(path: Path) -> None:
    text = path.read_text()
    assert "torch.optim" not in text and ".backward(" not in text


@pytest.mark.parametrize("path", [p for p in _modules() if part_of(_rel(p)) != "cli"], ids=lambda p: str(_rel(p)))
def test_only_the_cli_reads_the_environment_or_argv(path: Path) -> None:
    text = path.read_text()
    for needle in ("os.environ", "os.getenv", "sys.argv"):
        assert needle not in text, f"{path.name} uses {needle}"


def test_the_facade_lists_every_public_name_and_each_loads() -> None:
    import coarserank

    assert set(coarserank.__all__) == {"__version__", *coarserank._EXPORTS}
    for name in coarserank.__all__:
        assert getattr(coarserank, name) is not None, name


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(_rel(p)))
def test_modules_stay_under_the_line_limit(path: Path) -> None:
    rel = _rel(path).as_posix()
    lines = len(path.read_text().splitlines())
    if rel in OVERSIZED_MODULES:
        assert lines > MAX_MODULE_LINES, f"{rel} is back under {MAX_MODULE_LINES} lines: drop it from OVERSIZED_MODULES"
        return
    assert lines <= MAX_MODULE_LINES, f"{rel} has {lines} lines; split it by responsibility"


def _long_functions(source: str) -> list[str]:
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = (node.end_lineno or node.lineno) - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append(f"{node.name} ({length} lines)")
    return out


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(_rel(p)))
def test_functions_stay_under_the_line_limit(path: Path) -> None:
    rel = _rel(path).as_posix()
    known = {name for (module, name) in LONG_FUNCTIONS if module == rel}
    long = _long_functions(path.read_text())
    assert [f for f in long if f.split(" ")[0] not in known] == []
    assert {f.split(" ")[0] for f in long} >= known, f"drop the functions of {rel} now short from LONG_FUNCTIONS"
