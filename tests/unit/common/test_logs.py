"""setup_logging: the text format, and one JSON object per line when asked."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import pytest
from flotilla_common.logs import setup_logging


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_name_the_service(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("FLOTILLA_LOG_JSON", "1")
    setup_logging("registry")
    logging.getLogger("flotilla_registry.clusters").warning("cluster %s: late", "c1")
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("x").exception("failed")
    first, second = (json.loads(line) for line in capsys.readouterr().err.splitlines())
    assert first["service"] == "registry" and first["level"] == "WARNING"
    assert first["logger"] == "flotilla_registry.clusters"
    assert first["message"] == "cluster c1: late"
    assert "ValueError: boom" in second["exc"]


def test_text_lines_by_default(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("FLOTILLA_LOG_JSON", raising=False)
    monkeypatch.setenv("FLOTILLA_LOG_LEVEL", "warning")
    setup_logging("auth")
    logging.getLogger("a").info("hidden")
    logging.getLogger("a").warning("shown")
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith(" auth WARNING a: shown")
