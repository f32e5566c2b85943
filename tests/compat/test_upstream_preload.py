"""Acceptance 4: a cluster whose environment has only ``dask-gateway`` (the upstream
virtualenv: its ``dask scheduler``/``dask worker`` and ``dask_gateway.scheduler_preload``,
no Flotilla package) heartbeats, scales, adapts and idles out like one with ours.

The runtime option's ``upstream`` value points scheduler_cmd, worker_cmd and
scheduler_preload at that virtualenv (harness.OPTIONS); ``flotilla`` is the default.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from compat.harness import ALICE, CompatGateway, step
from flotilla import BasicAuth, Gateway
from gateway_stack import cluster_pids
from helpers import wait_for

pytestmark = pytest.mark.timeout(600)

RUNTIMES = ["flotilla", "upstream"]


@pytest.fixture(scope="module")
def observed(compat: CompatGateway) -> dict[str, Any]:
    # Our own preload goes through the same steps in test_lifecycle and test_tokens_and_idle.
    results = compat.upstream(
        step("upstream", "preload_cluster", ALICE, kwargs={"runtime": "upstream"}),
        step("idle", "idle_timeout", ALICE, kwargs={"runtime": "upstream", "idle_timeout": 2}),
    )
    return {key: r.value for key, r in results.items()}


@pytest.fixture(scope="module")
def registry_view(compat: CompatGateway) -> Iterator[Gateway]:
    """Our own client (gRPC): it shows what the registry learnt from heartbeats."""
    with Gateway(compat.address, auth=BasicAuth(ALICE, compat.password)) as gateway:
        yield gateway


def test_the_environment_has_only_dask_gateway(observed: dict[str, Any]) -> None:
    scheduler = observed["upstream"]["scheduler"]
    assert scheduler["prefix"].endswith("upstream-client")
    assert scheduler["flotilla_importable"] is False
    assert scheduler["preloads"] == ["dask_gateway.scheduler_preload"]
    for worker in observed["upstream"]["workers"]:
        assert worker == {"prefix": scheduler["prefix"], "flotilla_importable": False}


def test_scale_compute_adapt_stop(observed: dict[str, Any]) -> None:
    r = observed["upstream"]
    assert len(r["workers"]) == 2
    assert r["sum"] == sum(range(1, 51))
    assert r["adapt_warnings"] == []
    assert r["adapt_results"] == sum(range(1, 31))
    assert r["stopped_seconds"] < 15
    assert cluster_pids(r["name"]) == []
    print(
        f"upstream: scale(2) {r['scale_2_seconds']:.1f}s, scale(1) {r['scale_1_seconds']:.1f}s,"
        f" adapt up {r['adapt_up_seconds']:.1f}s, down {r['adapt_down_seconds']:.1f}s"
    )


def test_idle_timeout(compat: CompatGateway, observed: dict[str, Any]) -> None:
    r = observed["idle"]
    assert r["gone_after_seconds"] < 15
    assert compat.status_of(r["name"]) == "STOPPED"
    wait_for(lambda: cluster_pids(r["name"]) == [], 30, "the idle cluster's processes to exit")


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_periodic_heartbeats_report_workers(
    compat: CompatGateway, registry_view: Gateway, runtime: str
) -> None:
    """The registry learns that workers run only from heartbeats.

    After ``scale(2)`` the preload heartbeats once with the new count; the workers connect
    afterwards, and (as many workers as asked for) that triggers no heartbeat of its own.
    So the registry seeing two running workers proves the periodic heartbeat
    (``heartbeat_period = 2`` in this stack) carries the scheduler's worker list.
    """
    name = compat.create(ALICE, runtime=runtime)
    try:
        _, _, report = compat.request("GET", f"/api/v1/clusters/{name}?wait", ALICE)
        assert report["status"] == "RUNNING", report
        assert compat.post_json(f"/api/v1/clusters/{name}/scale", {"count": 2})[0] == 200
        t0 = time.monotonic()
        wait_for(
            lambda: registry_view.get_cluster(name).running_workers == 2,
            60,
            f"the registry to see 2 running workers of the {runtime} cluster",
        )
        seen = registry_view.get_cluster(name)
        assert seen.requested_workers == 2
        print(f"{runtime}: registry saw 2 running workers {time.monotonic() - t0:.1f}s after scale")
        assert compat.post_json(f"/api/v1/clusters/{name}/scale", {"count": 0})[0] == 200
        wait_for(
            lambda: registry_view.get_cluster(name).running_workers == 0,
            60,
            "the registry to see the workers retired",
        )
        assert registry_view.get_cluster(name).requested_workers == 0
    finally:
        assert compat.request("DELETE", f"/api/v1/clusters/{name}", ALICE)[0] == 204
    wait_for(lambda: compat.status_of(name) == "STOPPED", 30, "the cluster to stop")
