"""A cluster's life through the unmodified dask-gateway client: create, scale 5 → 1,
reconnect, compute, shut down; adaptive scaling; what a stopped cluster answers."""

from __future__ import annotations

import time
from typing import Any

import pytest
from compat.harness import ALICE, BOB, CLUSTER_ERROR, RESPONSE_ERROR, CompatGateway, raised, step
from gateway_stack import cluster_pids

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def observed(compat: CompatGateway) -> dict[str, Any]:
    results = compat.upstream(
        step("versions", "versions"),
        {**step("lifecycle", "lifecycle"), "peer": BOB},
        step("adaptive", "adaptive"),
    )
    return {key: r.value for key, r in results.items()}


def test_versions(observed: dict[str, Any]) -> None:
    versions = observed["versions"]
    assert isinstance(versions["server"]["version"], str) and versions["server"]["version"]
    assert versions["client"]["version"] == "2026.3.0"


def test_new_cluster_is_running_with_a_gateway_address(
    compat: CompatGateway, observed: dict[str, Any]
) -> None:
    r = observed["lifecycle"]
    name = r["name"]
    assert len(name) == 32 and int(name, 16) >= 0  # uuid4().hex, as upstream
    assert name not in r["listed_before"]
    host_port = compat.address.split("://", 1)[1]
    # By default the client expects scheduler TLS on the API's host:port (one listener).
    assert r["cluster"]["scheduler_address"] == f"gateway://{host_port}/{name}"
    assert r["cluster"]["dashboard_link"] == f"{compat.address}/clusters/{name}/status"
    report = r["report"]
    assert report["status"] == "RUNNING"
    assert report["has_tls"] is True
    assert report["stop_time"] is None
    assert abs(report["start_time"] - time.time()) < 600
    assert report["dashboard_link"] == r["cluster"]["dashboard_link"]


def test_report_options_are_normalised_with_defaults(observed: dict[str, Any]) -> None:
    options = observed["lifecycle"]["report"]["options"]
    assert options == {
        "worker_cores": 1,
        "worker_memory_gib": 0.5,
        "label": "compat",
        "pin": False,
        "runtime": "flotilla",
        "environment": {},
        "max_workers": 6,
        "idle_timeout": 0.0,
    }
    # Float fields are floats even when declared with an int default (idle_timeout=0).
    assert isinstance(options["idle_timeout"], float)


def test_listed_for_the_owner_only(observed: dict[str, Any]) -> None:
    r = observed["lifecycle"]
    assert [c["name"] for c in r["listed"] if c["name"] == r["name"]] == [r["name"]]
    assert all(c["status"] in ("PENDING", "RUNNING") for c in r["listed"])
    assert r["name"] not in r["peer_listed"]
    exc_type, _, status = raised(r["peer_get"])
    # 403 reaches the upstream client as aiohttp's ClientResponseError (wire contract 1.1).
    assert (exc_type, status) == (RESPONSE_ERROR, 403)


def test_scaling_five_to_one(observed: dict[str, Any]) -> None:
    r = observed["lifecycle"]
    assert r["sum_with_5"] == sum(x * 2 for x in range(100))
    assert r["workers_after_scale_down"] == 1
    assert r["sum_with_1"] == 45
    print(f"scale to 5: {r['scale_up_seconds']:.1f}s, down to 1: {r['scale_down_seconds']:.1f}s")


def test_reconnect_by_name(observed: dict[str, Any]) -> None:
    r = observed["lifecycle"]
    assert r["reconnected"]["name"] == r["name"]
    assert r["reconnected"]["workers"] == 1
    assert r["reconnected_sum"] == 42


def test_shutdown_ends_stopped(compat: CompatGateway, observed: dict[str, Any]) -> None:
    r = observed["lifecycle"]
    assert r["stop_seconds"] < 15
    stopped = r["stopped_report"]
    assert stopped["status"] == "STOPPED"
    assert stopped["stop_time"] is not None and stopped["stop_time"] >= stopped["start_time"]
    assert stopped["has_tls"] is False  # credentials only while RUNNING
    assert r["name"] not in r["listed_after"]  # the default list: active clusters only
    assert r["name"] in r["listed_stopped"]
    assert r["name"] in r["listed_finished"]
    assert cluster_pids(r["name"]) == []


def test_a_stopped_cluster(observed: dict[str, Any]) -> None:
    r = observed["lifecycle"]
    name = r["name"]
    assert raised(r["connect_stopped"])[:2] == (
        CLUSTER_ERROR,
        f"Cluster '{name}' is already stopped",
    )
    # 409 on a cluster that is not running, as GatewayClusterError.
    assert raised(r["scale_stopped"])[:2] == (CLUSTER_ERROR, f"cluster {name} is not running")
    assert raised(r["adapt_stopped"])[:2] == (CLUSTER_ERROR, f"cluster {name} is not running")
    # Stopping again is a no-op.
    assert r["stop_again"] == {"value": None}


def test_adaptive_scaling(observed: dict[str, Any]) -> None:
    r = observed["adaptive"]
    assert r["adapt_warnings"] == []
    assert r["results"] == sum(range(1, 41))
    # More than the minimum under load, never more than the maximum.
    assert 2 <= r["most_workers_under_load"] <= 3
    assert r["after_scale_0_most"] == 0  # adaptive is off after an explicit scale
    print(
        f"adaptive: to minimum {r['to_minimum_seconds']:.1f}s, up {r['scale_up_seconds']:.1f}s,"
        f" down {r['scale_down_seconds']:.1f}s"
    )


def test_nothing_left_running(compat: CompatGateway, observed: dict[str, Any]) -> None:
    for key in ("lifecycle", "adaptive"):
        name = observed[key]["name"]
        assert compat.status_of(name, ALICE) == "STOPPED"
        assert cluster_pids(name) == []
