"""The quick start of docs/index.md works as written, with the unmodified dask-gateway
client, against the whole gateway (only the address is changed, to the test's)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from gateway_stack import Gateway, upstream_python

INDEX = Path(__file__).resolve().parents[2] / "docs" / "index.md"
DOCUMENTED_ADDRESS = "http://127.0.0.1:8000"


def test_quick_start_runs_as_documented(gateway: Gateway) -> None:
    (example,) = re.findall(r"```python\n(.*?)```", INDEX.read_text(), flags=re.DOTALL)
    assert DOCUMENTED_ADDRESS in example
    proc = subprocess.run(
        [upstream_python(), "-c", example.replace(DOCUMENTED_ADDRESS, gateway.address)],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "30s"},
    )
    assert proc.returncode == 0, f"quick start failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    assert proc.stdout.strip().splitlines()[-1] == "6"  # sum([1, 2, 3]) on a worker
    assert gateway.request("GET", "/api/v1/clusters/", "root")[2] == {}  # shut down
