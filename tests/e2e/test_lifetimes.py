"""Acceptance (issue 12): a cluster ends STOPPED at its ``max_lifetime``, and once no Dask
client has been connected to it for its ``no_client_timeout`` (its owner is gone), but not
while one is; a cluster with dask-gateway's own preload, which reports no clients, is
never stopped for that.

The whole stack runs behind the real Envoy, with the registry's default
``check_timeouts_period`` (1 s). An options handler turns a ``scenario`` option into the
per-cluster settings, as an administrator's would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flotilla import BasicAuth, ClusterStatus, Gateway
from gateway_stack import Gateway as Stack
from gateway_stack import (
    cluster_pids,
    running_gateway,
    upstream_python,
)
from helpers import wait_for

pytestmark = pytest.mark.timeout(300)

USER = "olga"
LIFETIME = 5
GRACE = 3

SCENARIOS = """
from flotilla_registry.options import Options, Select

_UPSTREAM_BIN = {upstream_bin!r}

def _scenario(options):
    return {{
        "lifetime": {{"max_lifetime": {lifetime}}},
        "owner-gone": {{"no_client_timeout": {grace}}},
        "owner-gone-upstream": {{
            "no_client_timeout": {grace},
            "scheduler_cmd": [_UPSTREAM_BIN + "/dask", "scheduler"],
            "worker_cmd": [_UPSTREAM_BIN + "/dask", "worker"],
            "scheduler_preload": "dask_gateway.scheduler_preload",
        }},
    }}[options.scenario]

c.Registry.cluster_options = Options(
    Select("scenario", ["lifetime", "owner-gone", "owner-gone-upstream"], label="Scenario"),
    handler=_scenario,
)
c.ClusterConfig.heartbeat_period = 2
"""


def _upstream_bin() -> str:
    python = os.environ.get("FLOTILLA_UPSTREAM_PYTHON", "")
    return str(Path(python).parent) if python and Path(python).exists() else "/nonexistent"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    extra = SCENARIOS.format(upstream_bin=_upstream_bin(), lifetime=LIFETIME, grace=GRACE)
    with running_gateway(tmp_path_factory.mktemp("lifetimes"), extra) as gateway:
        yield gateway


@pytest.fixture
def gw(stack: Stack) -> Iterator[Gateway]:
    with Gateway(stack.address, auth=BasicAuth(USER)) as gateway:
        yield gateway


def status_of(gw: Gateway, name: str) -> ClusterStatus:
    return gw.get_cluster(name).status  # type: ignore[no-any-return]


def test_a_cluster_is_stopped_at_its_max_lifetime(stack: Stack, gw: Gateway) -> None:
    """Through the REST API the dask-gateway client uses: created, RUNNING, then STOPPED
    (not FAILED) 5 to 6.5 s after its start, with the reason naming the setting."""
    status, _, body = stack.request(
        "POST", "/api/v1/clusters/", USER, b'{"cluster_options": {"scenario": "lifetime"}}'
    )
    assert status == 201, body
    name = body["name"]
    status, _, report = stack.request("GET", f"/api/v1/clusters/{name}?wait", USER)
    assert (status, report["status"]) == (200, "RUNNING"), report
    stopped = wait_for(
        lambda: (
            (r := stack.request("GET", f"/api/v1/clusters/{name}", USER)[2])["status"]
            in ("STOPPED", "FAILED")
            and r
        ),
        30,
        "the cluster to reach its lifetime",
        interval=0.05,
    )
    lived = (stopped["stop_time"] - stopped["start_time"]) / 1000
    print(f"max_lifetime {LIFETIME} s: STOPPED {lived:.2f} s after its start")
    assert stopped["status"] == "STOPPED"
    assert LIFETIME <= lived <= LIFETIME + 1.5
    assert gw.get_cluster(name).reason == f"Cluster reached its max_lifetime of {LIFETIME} s"
    wait_for(lambda: cluster_pids(name) == [], 30, "the cluster's processes to exit")


def test_a_cluster_is_stopped_once_its_last_client_is_gone(gw: Gateway) -> None:
    watched = gw.new_cluster(scenario="owner-gone", shutdown_on_close=False)
    try:
        client = watched.get_client(set_as_default=False)
        assert client.scheduler_info()["type"] == "Scheduler"  # connected
        connected = time.monotonic()
        # A second cluster, nobody connected to it, is the clock: once the registry has
        # stopped it for want of clients, the watched one has had its client for longer
        # than the grace, through as many checks.
        control = gw.new_cluster(scenario="owner-gone", shutdown_on_close=False)
        control_running = time.monotonic()
        wait_for(
            lambda: status_of(gw, control.name) == ClusterStatus.STOPPED,
            30,
            "the client-less control cluster to stop",
        )
        control.close()
        control_report = gw.get_cluster(control.name)
        print(f"no client ever: STOPPED {time.monotonic() - control_running:.2f} s after RUNNING")
        assert control_report.reason.startswith("No client connected for ")
        assert control_report.reason.endswith(f" s (no_client_timeout {GRACE} s)")
        assert time.monotonic() - connected > GRACE
        assert status_of(gw, watched.name) == ClusterStatus.RUNNING

        client.close()
        left = time.monotonic()
        report = wait_for(
            lambda: (
                (r := gw.get_cluster(watched.name)).status
                in (ClusterStatus.STOPPED, ClusterStatus.FAILED)
                and r
            ),
            30,
            "the watched cluster to stop after its client left",
            interval=0.05,
        )
        after = time.monotonic() - left
        print(f"no_client_timeout {GRACE} s: STOPPED {after:.2f} s after the last client left")
        assert report.status is ClusterStatus.STOPPED
        assert GRACE <= after <= GRACE + 1.5
        assert report.reason.endswith(f" s (no_client_timeout {GRACE} s)"), report.reason
    finally:
        watched.close(shutdown=True)
    wait_for(lambda: cluster_pids(watched.name) == [], 30, "the cluster's processes to exit")


def test_dask_gateways_preload_reports_no_clients_so_the_grace_does_not_apply(
    gw: Gateway,
) -> None:
    """The upstream preload sends no client count: unknown, so never stopped for it."""
    upstream_python()  # skips without the upstream virtualenv
    upstream = gw.submit(scenario="owner-gone-upstream")
    try:
        gw.wait_for_start(upstream)
        control = gw.submit(scenario="owner-gone")  # RUNNING after the upstream one
        gw.wait_for_start(control)
        wait_for(
            lambda: status_of(gw, control) == ClusterStatus.STOPPED,
            30,
            "the client-less control cluster (our preload) to stop",
        )
        assert status_of(gw, upstream) == ClusterStatus.RUNNING
    finally:
        gw.stop_cluster(upstream)
    wait_for(lambda: status_of(gw, upstream) == ClusterStatus.STOPPED, 30, "the stop")
    assert gw.get_cluster(upstream).reason == f"Stopped by {USER}"
    scheduler_log = gw.get_cluster_logs(upstream)["scheduler"]
    assert "Run preload setup: dask_gateway.scheduler_preload" in scheduler_log
