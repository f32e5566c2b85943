"""The client's public methods are typed per mode: values when synchronous, awaitables
when asynchronous (``typing_contract.py`` states what mypy must infer)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
CONTRACT = Path(__file__).with_name("typing_contract.py")
MISUSE = """
from flotilla import Gateway


async def misuse() -> None:
    await Gateway().list_clusters()
    Gateway(asynchronous=True).list_clusters()[0]
"""


def _mypy(*paths: Path) -> subprocess.CompletedProcess[str]:
    # The project's mypy settings (pyproject.toml); a file named here is checked even
    # under tests/, which the settings exclude from discovery.
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", *map(str, paths)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_typing_contract_holds() -> None:
    checked = _mypy(CONTRACT)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_mode_mistakes_are_type_errors(tmp_path: Path) -> None:
    misuse = tmp_path / "misuse.py"
    misuse.write_text(MISUSE)
    checked = _mypy(misuse)
    assert checked.returncode == 1, checked.stdout + checked.stderr
    assert 'Incompatible types in "await"' in checked.stdout
    assert "is not indexable" in checked.stdout
