"""The quick start of docs/index.md works as written, with the unmodified dask-gateway
client, against the whole gateway (only the address is changed, to the test's)."""

from __future__ import annotations

import ast
import os
import re
import subprocess
from pathlib import Path

from gateway_stack import Gateway, running_gateway, upstream_python

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


# The user guide's examples under `make run`'s own configuration (its options and
# limits), on the simulation backend: the registry's checks are the same, and the eight
# workers of the scale example cost no processes.
GUIDE = INDEX.parent / "user-guide.md"
EMBEDDED_CONFIG = INDEX.parents[1] / "deploy" / "embedded" / "flotilla_config.py"
GUIDE_EXAMPLES = """
import sys, time, warnings
from dask_gateway import Gateway

gateway = Gateway(sys.argv[1], auth="basic")
options = gateway.cluster_options()
try:
    options.worker_cores = 8
except ValueError as exc:
    print(f"{type(exc).__name__}: {exc}")
name = gateway.submit()
deadline = time.monotonic() + 60
while gateway.get_cluster(name).status.name != "RUNNING":
    assert time.monotonic() < deadline, "the cluster did not start"
    time.sleep(0.1)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    gateway.scale_cluster(name, 10)
for w in caught:
    print(f"{type(w.message).__name__}: {w.message}")
gateway.stop_cluster(name)
"""


def test_user_guide_messages_are_what_the_client_shows(tmp_path: Path) -> None:
    # The test's ports and directory stay: every c.Deployment statement goes, whole.
    text = EMBEDDED_CONFIG.read_text()
    dropped = {
        n
        for node in ast.parse(text).body
        if (ast.get_source_segment(text, node) or "").startswith("c.Deployment.")
        for n in range(node.lineno, (node.end_lineno or node.lineno) + 1)
    }
    embedded = "".join(
        line
        for number, line in enumerate(text.splitlines(keepends=True), start=1)
        if number not in dropped
    )
    sim = '\nc.Registry.backends = ["sim"]\nc.Registry.default_backend = "sim"\n'
    with running_gateway(tmp_path, embedded + sim) as gateway:
        proc = subprocess.run(
            [upstream_python(), "-c", GUIDE_EXAMPLES, gateway.address],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 0, f"examples failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    shown = proc.stdout.strip().splitlines()
    assert shown == [
        "ValueError: worker_cores must be <= 4.000000, got 8",
        "GatewayWarning: Scale request of 10 workers would exceed resource limit of 8 "
        "workers. Scaling to 8 instead.",
    ]
    guide = GUIDE.read_text()
    for message in shown:
        assert message in guide, message
