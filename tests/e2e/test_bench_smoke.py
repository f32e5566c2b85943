"""``make bench`` in smoke mode: every scenario once, tiny, against both gateways.

CI does not run the benchmark itself (it takes minutes and wants a quiet machine);
this keeps every path of it working: both gateways start, every scenario produces
real (finite, positive) samples on both, the simulation fills and measures, and the
results are written as JSON and Markdown.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
REFERENCE = REPO / ".cache" / "bench-reference"

pytestmark = pytest.mark.timeout(900)


def _require(path: Path, what: str) -> None:
    if path.exists():
        return
    message = f"{what} not installed ({path}); `make test` installs it"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _real(values: list[Any]) -> bool:
    return bool(values) and all(
        isinstance(v, int | float) and math.isfinite(v) and v >= 0 for v in values
    )


def test_bench_smoke(tmp_path: Path) -> None:
    client = Path(
        os.environ.get("FLOTILLA_UPSTREAM_PYTHON", REPO / ".cache/upstream-client/bin/python")
    )
    _require(client, "the upstream dask-gateway client")
    _require(REFERENCE / "bin" / "dask-gateway-server", "the reference dask-gateway-server")
    proc = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "run.py"),
            "--smoke",
            "--out",
            str(tmp_path),
            "--client-python",
            str(client),
            "--reference-venv",
            str(REFERENCE),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=840,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["completed"] and data["meta"]["mode"] == "smoke"
    assert data["failures"] == [], data["failures"]

    # (The first/last tenth rows of the sequence need more than one cluster.)
    compared = {
        k: row
        for k, row in data["rows"].items()
        if k not in ("sequential_first", "sequential_last")
    }
    assert len(compared) >= 19, sorted(compared)
    for key, row in compared.items():
        for gateway in ("flotilla", "reference"):
            samples = row[gateway]["samples"]
            assert _real(samples), f"{key} on {gateway}: {samples}"
        assert math.isfinite(row["ratio_of_medians"]), key
    # Times are times: a cluster cannot be ready in no time at all.
    for key in ("new_cluster_s", "first_task_s", "scale_up_s"):
        assert min(compared[key]["flotilla"]["samples"]) > 0.01, key

    sizes = data["simulation"]["sizes"]
    assert sizes, "the simulation measured nothing"
    for size in sizes.values():
        assert _real(size["list_ms"]) and _real(size["propagation_ms"])
        assert size["rss_mib"]["envoy"] > 0 and size["rss_mib"]["registry"] > 0

    checks = {c["name"]: c for c in data["checks"]}
    assert "new_cluster() vs reference" in checks
    assert all(math.isfinite(c["value"]) for c in checks.values()), checks
    page = (tmp_path / "results.md").read_text()
    assert "| cold new_cluster() | s |" in page and "Acceptance (issue 5)" in page
