"""Pipeline stage 'report' (being written)."""

from __future__ import annotations

from typing import Any

__all__ = ["run_stage"]


def run_stage(ctx: Any, models: dict[str, Any]) -> None:
    """Placeholder until the stage lands: records nothing, so the stage is re-run once it exists."""
    return None
