"""The dependency arrows of DESIGN.md, checked by walking every module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "coarserank"
BASE = {"errors", "config", "config_models", "config_rules", "threads", "atomic", "checksums", "__init__"}

# subpackage -> coarserank subpackages it may import (besides itself and BASE)
ALLOWED = {
    "data": set(),
    "ranking_eval": set(),
    "layers": {"data"},
    "teacher": {"layers", "data"},
    "student": {"layers", "data"},
    "distill": {"teacher", "student", "layers", "data", "ranking_eval"},
    "serving": {"student", "teacher", "layers", "data", "ranking_eval"},
    "cold": {"distill", "serving", "teacher", "student", "layers", "data", "ranking_eval"},
    "pipeline": {"distill", "serving", "cold", "teacher", "student", "layers", "data", "ranking_eval"},
    "cli": {"pipeline", "distill", "serving", "cold", "teacher", "student", "layers", "data", "ranking_eval"},
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py"))


def _owner(path: Path) -> str:
    rel = path.relative_to(PACKAGE).parts
    return rel[0] if len(rel) > 1 else rel[0].removesuffix(".py")


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_follow_the_dependency_arrows(path):
    owner = _owner(path)
    allowed = ALLOWED.get(owner, set()) | BASE | {owner}
    for name in _imports(path):
        if not name.startswith("coarserank"):
            continue
        parts = name.split(".")
        target = parts[1] if len(parts) > 1 else "__init__"
        assert target in allowed, f"{path.relative_to(PACKAGE)} imports {name}: {owner} may not depend on {target}"


@pytest.mark.parametrize("path", [p for p in _modules() if _owner(p) != "cli"], ids=lambda p: p.name)
def test_click_is_imported_only_by_the_cli(path):
    assert not any(n == "click" or n.startswith("click.") for n in _imports(path))


@pytest.mark.parametrize("path", [p for p in _modules() if _owner(p) == "ranking_eval"], ids=lambda p: p.name)
def test_ranking_eval_never_imports_torch(path):
    assert not any(n == "torch" or n.startswith("torch.") for n in _imports(path))


@pytest.mark.parametrize("path", [p for p in _modules() if _owner(p) in ("teacher", "student", "layers")],
                         ids=lambda p: p.name)
def test_models_hold_no_optimiser_or_loop(path):
    text = path.read_text()
    assert "torch.optim" not in text and ".backward(" not in text


@pytest.mark.parametrize("path", [p for p in _modules() if _owner(p) != "cli"], ids=lambda p: p.name)
def test_only_the_cli_reads_the_environment_or_argv(path):
    text = path.read_text()
    for needle in ("os.environ", "os.getenv", "sys.argv"):
        assert needle not in text, f"{path.name} uses {needle}"
