"""Acceptance: the unmodified dask-gateway client, in a virtualenv of its own, drives a
cluster's whole life through Envoy."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from gateway_stack import Gateway, cluster_pids, upstream_python

SCENARIO = Path(__file__).parent / "scenarios" / "upstream_lifecycle.py"


def test_upstream_client_lifecycle(gateway: Gateway) -> None:
    python = upstream_python()
    proc = subprocess.run(
        [python, str(SCENARIO), gateway.address],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "30s"},
    )
    assert proc.returncode == 0, f"scenario failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    print("upstream scenario:", result)
    assert result["sum"] == 16_000_000
    assert result["workers"] == 2
    assert result["dashboard_status"] == 200
    assert result["final_status"] == "STOPPED"
    assert result["stopped_after_seconds"] < 5
    # Nothing of the cluster is left running.
    assert cluster_pids(result["name"]) == []
