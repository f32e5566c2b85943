"""The whole gateway with its registry on PostgreSQL: the upstream client's lifecycle, and a
registry killed with SIGKILL while a cluster computes (restarted by the embedded runner,
with every record and token intact)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from flotilla_common.embedded import EmbeddedStack
from gateway_stack import Gateway as Stack
from gateway_stack import (
    cluster_pids,
    running_gateway,
    upstream_python,
)
from helpers import wait_for
from postgres import PostgresServer

SCENARIO = Path(__file__).parent / "scenarios" / "upstream_lifecycle.py"


@pytest.fixture
def pg_stack(tmp_path: Path, postgres: PostgresServer) -> Iterator[tuple[EmbeddedStack, str]]:
    """A gateway whose registry uses a fresh PostgreSQL database (key from the runner)."""
    extra = f"\nc.Registry.db_url = {postgres.new_database()!r}\n"
    with running_gateway(tmp_path, extra) as gateway:
        yield gateway.stack, gateway.address


def test_upstream_client_on_postgres(pg_stack: tuple[EmbeddedStack, str]) -> None:
    _, address = pg_stack
    proc = subprocess.run(
        [upstream_python(), str(SCENARIO), address],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "30s"},
    )
    assert proc.returncode == 0, f"scenario failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["sum"] == 16_000_000 and result["workers"] == 2
    assert result["final_status"] == "STOPPED"
    assert cluster_pids(result["name"]) == []


BEFORE_KILL = """
import json, sys
from dask_gateway import Gateway
from dask_gateway.auth import BasicAuth
gw = Gateway(sys.argv[1], auth=BasicAuth("ivan"))
finished = gw.new_cluster()
finished.shutdown()
cluster = gw.new_cluster(shutdown_on_close=False)
cluster.scale(1)
client = cluster.get_client()
client.wait_for_workers(1, timeout=120)
assert client.submit(sum, [1, 2, 3]).result(timeout=60) == 6
print(json.dumps({"finished": finished.name, "running": cluster.name}))
client.close()
cluster.close()
"""

AFTER_KILL = """
import sys
import dask.array as da
from dask_gateway import Gateway
from dask_gateway.auth import BasicAuth
gw = Gateway(sys.argv[1], auth=BasicAuth("ivan"))
cluster = gw.connect(sys.argv[2])
client = cluster.get_client()
assert da.ones((1000, 1000), chunks=250).sum().compute() == 1_000_000
cluster.scale(2)
client.wait_for_workers(2, timeout=120)
assert client.submit(sum, [4, 5]).result(timeout=60) == 9
client.close()
cluster.shutdown()
"""


def _run_upstream(script: str, *args: str) -> str:
    proc = subprocess.run(
        [upstream_python(), "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "30s"},
    )
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    return proc.stdout


def test_a_killed_registry_on_postgres_loses_nothing(
    pg_stack: tuple[EmbeddedStack, str], tmp_path: Path
) -> None:
    stack, address = pg_stack
    names = json.loads(_run_upstream(BEFORE_KILL, address).strip().splitlines()[-1])
    gateway = Stack(address, stack, tmp_path)

    def listed(status: str) -> set[str]:
        code, _, body = gateway.request("GET", f"/api/v1/clusters/?status={status}", user="ivan")
        assert code == 200, body
        return set(body)

    assert listed("running") == {names["running"]}
    assert listed("stopped") == {names["finished"]}

    old = stack.pid("registry")
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: stack.check_children() or stack.pid("registry") != old, 10, "a new registry")
    stack.wait_healthy(30)

    # Both records are back, and the running cluster still computes, scales and stops:
    # its scheduler's heartbeats carry a token the new registry decrypted and accepts.
    assert listed("running") == {names["running"]}
    assert listed("stopped") == {names["finished"]}
    _run_upstream(AFTER_KILL, address, names["running"])
    wait_for(
        lambda: listed("stopped") == {names["finished"], names["running"]},
        30,
        "both clusters STOPPED",
    )
    assert cluster_pids(names["running"]) == []
