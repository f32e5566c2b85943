"""Control-plane simulation (placeholder while the sim backend is built)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.report import Check


def run(workdir: Path, **kwargs: Any) -> dict[str, Any]:
    return {}


def checks(result: dict[str, Any]) -> list[Check]:
    return []


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, list[float]]]:
    return []
