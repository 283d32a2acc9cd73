"""docs/config.md names every key with its default and its allowed values, as the code has them."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from coarserank.config import CrossConfig, FeatureConfig, HistoryCrossConfig, _toml_value, config_to_dict, load_config
from coarserank.config_rules import CONSTRAINTS

DOC = Path(__file__).resolve().parents[1] / "docs" / "config.md"
ARRAYS = {"data.features": FeatureConfig, "data.crosses": CrossConfig, "data.history_crosses": HistoryCrossConfig}


def _tables() -> dict[str, dict[str, tuple[str, str]]]:
    """section -> key -> (default cell, allowed cell), from the doc's `### [section]` tables."""
    tables: dict[str, dict[str, tuple[str, str]]] = {}
    section = None
    for line in DOC.read_text().splitlines():
        heading = re.match(r"^### `\[\[?([a-z_.]+)\]\]?`", line)
        if heading:
            section = heading.group(1)
            tables[section] = {}
        row = re.match(r"^\| `([a-z_0-9]+)` \| (.+?) \| (.+?) \| .+ \|$", line)
        if row and section:
            tables[section][row.group(1)] = (row.group(2), row.group(3))
    return tables


def _sections() -> list[tuple[str, str, object]]:
    cfg = load_config()
    out = []
    for section in dataclasses.fields(cfg):
        body = getattr(cfg, section.name)
        for f in dataclasses.fields(body):
            value = getattr(body, f.name)
            if dataclasses.is_dataclass(value):  # a sub-table such as [student.senet]
                out += [(f"{section.name}.{f.name}", g.name, getattr(value, g.name)) for g in dataclasses.fields(value)]
            else:
                out.append((section.name, f.name, value))
    for name, cls in ARRAYS.items():
        out += [(name, f.name, f.default) for f in dataclasses.fields(cls)]
    return out


@pytest.mark.parametrize(("section", "key", "default"), _sections(), ids=lambda x: str(x)[:30])
def test_every_key_is_documented_with_its_default_and_rule(section: str, key: str, default: object) -> None:
    documented = _tables().get(section, {})
    assert key in documented, f"docs/config.md lacks `{key}` in [{section}]"
    cell, allowed = documented[key]
    if default is dataclasses.MISSING:
        assert cell == "required"
    elif not (isinstance(default, tuple) and default and dataclasses.is_dataclass(default[0])):
        assert cell == f"`{_toml_value(config_to_dict(default))}`"
    rule = CONSTRAINTS.get(section, {}).get(key)
    if rule is not None:
        assert allowed == str(rule)


def test_the_split_rule_in_the_docs_is_the_one_the_code_applies() -> None:
    import polars as pl

    from coarserank.data.prepare import split_per_user

    text = DOC.read_text()
    assert "n_test = min(floor(n * test_frac + 0.5), n - 1)" in text
    for n, (test, valid) in {15: (2, 2), 4: (0, 0), 1: (0, 0), 25: (3, 3)}.items():
        frame = pl.DataFrame({"_row": range(n), "_user": [7] * n, "_time": [0] * n})
        split = split_per_user(frame, 0.1, 0.1).to_list()
        assert split.count("test") == test and split.count("valid") == valid
        assert split == ["train"] * (n - test - valid) + ["valid"] * valid + ["test"] * test  # equal times: log order
