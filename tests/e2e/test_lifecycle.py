"""Acceptance (issue 3, acceptance 3): clusters that cannot work end FAILED within their
configured timeouts, with a reason, and their scheduler and worker logs stay retrievable
after they are gone from ``list_clusters()``. Also: an idle cluster ends STOPPED.

The whole stack runs behind the real Envoy. An options handler (as an administrator would
write one) turns a ``scenario`` option into per-cluster commands and timeouts.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flotilla import BasicAuth, ClusterReport, ClusterStatus, Gateway, GatewayClusterError
from gateway_stack import Gateway as Stack
from gateway_stack import (
    cluster_pids,
    running_gateway,
)
from helpers import wait_for

pytestmark = pytest.mark.timeout(300)

USER = "lena"

SCENARIOS = """
import sys
from flotilla_registry.options import Options, Select

_SCHEDULER_FAILS = (
    "import sys; print('scheduler output before failing');"
    "print('boom: bad scheduler configuration', file=sys.stderr); sys.exit(3)"
)
_HANGS = "import time; print('{} hanging', flush=True); time.sleep(3600)"
_WORKER_FAILS = (
    "import sys; print('worker cannot start: no GPU here', file=sys.stderr); sys.exit(2)"
)

def _scenario(options):
    python = sys.executable
    return {
        "normal": {},
        "scheduler-fails": {"scheduler_cmd": [python, "-c", _SCHEDULER_FAILS]},
        "scheduler-hangs": {
            "scheduler_cmd": [python, "-c", _HANGS.format("scheduler")],
            "cluster_start_timeout": 4,
        },
        "workers-fail": {
            "worker_cmd": [python, "-c", _WORKER_FAILS],
            "worker_start_failure_limit": 3,
        },
        "workers-hang": {
            "worker_cmd": [python, "-c", _HANGS.format("worker")],
            "worker_start_timeout": 3,
            "worker_start_failure_limit": 2,
            "heartbeat_period": 1,
            "heartbeat_timeout": 30,
        },
        "heartbeat-lost": {"heartbeat_period": 1, "heartbeat_timeout": 4},
        "idle": {"idle_timeout": 2},
    }[options.scenario]

c.Registry.cluster_options = Options(
    Select(
        "scenario",
        ["normal", "scheduler-fails", "scheduler-hangs", "workers-fail", "workers-hang",
         "heartbeat-lost", "idle"],
        label="What goes wrong",
    ),
    handler=_scenario,
)
c.Registry.check_timeouts_period = 0.2
c.LocalBackend.sigint_timeout = 2.0
c.LocalBackend.sigterm_timeout = 2.0
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_gateway(tmp_path_factory.mktemp("lifecycle"), SCENARIOS) as gateway:
        yield gateway


@pytest.fixture
def gw(stack: Stack) -> Iterator[Gateway]:
    with Gateway(stack.address, auth=BasicAuth(USER)) as gateway:
        yield gateway


def wait_finished(gw: Gateway, name: str, timeout: float) -> ClusterReport:
    """Poll until ``name`` is STOPPED or FAILED; returns its report."""
    finished = (ClusterStatus.FAILED, ClusterStatus.STOPPED)
    return wait_for(  # type: ignore[no-any-return]
        lambda: (r := gw.get_cluster(name)).status in finished and r,
        timeout,
        f"cluster {name} to finish",
        interval=0.1,
    )


def assert_gone_with_logs(gw: Gateway, name: str) -> dict[str, str]:
    assert name not in [c.name for c in gw.list_clusters()]
    logs = gw.get_cluster_logs(name)
    assert isinstance(logs, dict) and "scheduler" in logs
    return logs  # type: ignore[no-any-return]


def test_a_scheduler_command_that_fails(stack: Stack, gw: Gateway) -> None:
    created = time.monotonic()
    name = gw.submit(scenario="scheduler-fails")
    with pytest.raises(GatewayClusterError, match="exited with code 3"):
        gw.wait_for_start(name)
    report = wait_finished(gw, name, 30)
    print(f"failing scheduler: FAILED {time.monotonic() - created:.1f}s after creation")
    assert report.status is ClusterStatus.FAILED
    assert "scheduler exited with code 3" in report.reason
    assert "boom" not in report.reason  # log text only through the logs API
    logs = assert_gone_with_logs(gw, name)
    assert "scheduler output before failing" in logs["scheduler"]
    assert "boom: bad scheduler configuration" in logs["scheduler"]

    # The same through REST, behind Envoy and the auth service.
    status, _, body = stack.request("GET", f"/api/v1/clusters/{name}/logs", user=USER)
    assert status == 200 and body == {"logs": logs}
    status, _, body = stack.request("GET", f"/api/v1/clusters/{name}/logs", user="mallory")
    assert (status, body) == (
        403,
        {"error": f"User mallory lacks permissions to view cluster {name}"},
    )
    status, _, body = stack.request("GET", "/api/v1/clusters/nope/logs", user=USER)
    assert (status, body) == (404, {"error": "Cluster nope not found"})
    status, _, body = stack.request("GET", f"/api/v1/clusters/{name}/logs", user=None)
    assert status == 401
    # dask-gateway's report of it keeps exactly the keys its client accepts.
    status, _, body = stack.request("GET", "/api/v1/clusters/?status=FAILED", user=USER)
    assert status == 200 and set(body[name]) == {
        "name", "dashboard_route", "status", "start_time", "stop_time", "options",
        "tls_cert", "tls_key",
    }  # fmt: skip


def test_a_scheduler_that_hangs(gw: Gateway) -> None:
    created = time.monotonic()
    name = gw.submit(scenario="scheduler-hangs")
    report = wait_finished(gw, name, 60)
    elapsed = time.monotonic() - created
    print(f"hung scheduler: FAILED {elapsed:.1f}s after creation (cluster_start_timeout 4 s)")
    assert 4 <= elapsed < 4 + 20
    assert report.status is ClusterStatus.FAILED
    assert report.reason == (
        "Cluster failed to start within cluster_start_timeout (4 s): "
        "its scheduler started but never reported to the gateway"
    )
    logs = assert_gone_with_logs(gw, name)
    assert "scheduler hanging" in logs["scheduler"]
    assert cluster_pids(name) == []


def test_workers_that_keep_failing(gw: Gateway) -> None:
    name = gw.submit(scenario="workers-fail")
    gw.wait_for_start(name)
    scaled = time.monotonic()
    gw.scale_cluster(name, 1)
    report = wait_finished(gw, name, 60)
    elapsed = time.monotonic() - scaled
    print(f"failing workers: FAILED {elapsed:.1f}s after scale(1)")
    assert report.status is ClusterStatus.FAILED
    assert report.reason.startswith("3 consecutive workers failed to start (last: worker exited")
    assert "code 2" in report.reason
    logs = assert_gone_with_logs(gw, name)
    workers = [p for p in logs if p.startswith("worker-")]
    assert len(workers) >= 3
    assert all("no GPU here" in logs[w] for w in workers)
    assert "Scheduler at:" in logs["scheduler"]
    # Each failed worker, with its own reason, under the name its log has.
    listed = gw.list_workers(name)
    assert len(listed) >= 3
    assert all(w.status is ClusterStatus.FAILED for w in listed), listed
    assert all("exited with code 2" in (w.reason or "") for w in listed), [w.reason for w in listed]
    assert {f"worker-{w.name}" for w in listed} <= set(workers)


def test_workers_that_never_connect(gw: Gateway) -> None:
    name = gw.submit(scenario="workers-hang")
    gw.wait_for_start(name)
    scaled = time.monotonic()
    gw.scale_cluster(name, 1)
    report = wait_finished(gw, name, 90)
    elapsed = time.monotonic() - scaled
    print(f"hanging workers: FAILED {elapsed:.1f}s after scale(1) (2 x worker_start_timeout 3 s)")
    assert 2 * 3 <= elapsed < 2 * 3 + 30
    assert report.status is ClusterStatus.FAILED
    assert report.reason == (
        "2 consecutive workers failed to start "
        "(last: worker did not connect within worker_start_timeout (3 s))"
    )
    logs = assert_gone_with_logs(gw, name)
    workers = [p for p in logs if p.startswith("worker-")]
    assert len(workers) == 2 and all("worker hanging" in logs[w] for w in workers)
    assert cluster_pids(name) == []
    assert [(w.status, w.reason) for w in gw.list_workers(name)] == 2 * [
        (ClusterStatus.FAILED, "worker did not connect within worker_start_timeout (3 s)")
    ]


def scheduler_pid(name: str) -> int:
    [pid] = [
        p
        for p in cluster_pids(name)
        if b"DASK_GATEWAY_WORKER_NAME=" not in Path(f"/proc/{p}/environ").read_bytes()
    ]
    return pid


def test_a_scheduler_that_stops_heartbeating(gw: Gateway) -> None:
    name = gw.submit(scenario="heartbeat-lost")
    gw.wait_for_start(name)
    pid = scheduler_pid(name)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        failing = wait_for(
            lambda: (r := gw.get_cluster(name)).reason and r, 30, "the heartbeat timeout"
        )
        decided = time.monotonic() - stopped
        report = wait_finished(gw, name, 60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    elapsed = time.monotonic() - stopped
    print(
        f"silent scheduler: failing {decided:.1f}s, FAILED {elapsed:.1f}s after SIGSTOP "
        "(heartbeat_timeout 4 s; the stop escalates SIGINT, SIGTERM, SIGKILL 2 s apart)"
    )
    assert failing.status is ClusterStatus.STOPPING
    assert decided < 4 + 10
    assert elapsed < 4 + 30
    assert report.status is ClusterStatus.FAILED
    silence = re.fullmatch(
        r"Cluster's scheduler stopped sending heartbeats: none for ([\d.]+) s "
        r"\(heartbeat_timeout 4 s\)",
        report.reason,
    )
    assert silence is not None and float(silence.group(1)) >= 4, report.reason
    logs = assert_gone_with_logs(gw, name)
    assert "Scheduler at:" in logs["scheduler"]
    assert cluster_pids(name) == []


def test_an_idle_cluster_is_stopped_by_its_scheduler(gw: Gateway) -> None:
    cluster = gw.new_cluster(scenario="idle", shutdown_on_close=False)
    name = cluster.name
    running = time.monotonic()
    live = cluster.get_logs()
    assert "Scheduler at:" in live["scheduler"]  # an active cluster's current output
    report = wait_finished(gw, name, 60)
    waited = time.monotonic() - running
    print(f"idle cluster: STOPPED {waited:.1f}s after it was running (idle_timeout 2 s)")
    assert report.status is ClusterStatus.STOPPED
    assert report.reason == "Stopped by its scheduler"
    logs = assert_gone_with_logs(gw, name)
    assert "asking the gateway to stop it" in logs["scheduler"]
    cluster.close()
