"""The .proto files lint clean and the checked-in generated code matches them."""

from __future__ import annotations

import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_buf_lint() -> None:
    buf = Path(sys.executable).parent / "buf"
    result = subprocess.run([str(buf), "lint"], cwd=ROOT / "protos", capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_generated_code_is_up_to_date(tmp_path: Path) -> None:
    subprocess.run(
        [str(ROOT / "scripts" / "gen_protos.sh"), str(tmp_path)],
        check=True,
        env={**os.environ, "PYTHON": sys.executable},
    )
    fresh = tmp_path / "flotilla"
    checked_in = ROOT / "protos" / "gen" / "flotilla"
    mismatches: list[str] = []

    def compare(cmp: filecmp.dircmp[str]) -> None:
        mismatches.extend(cmp.left_only + cmp.right_only + cmp.diff_files)
        for sub in cmp.subdirs.values():
            compare(sub)

    compare(filecmp.dircmp(str(fresh), str(checked_in), ignore=["__pycache__"]))
    assert not mismatches, f"protos/gen is stale, run `make protos`: {mismatches}"
