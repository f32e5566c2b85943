"""Cluster tokens (what a scheduler may do with its own: stop its cluster, nothing else)
and the idle timeout, which the scheduler enforces by stopping itself with its token."""

from __future__ import annotations

from typing import Any

import pytest
from compat.harness import ALICE, CompatGateway, step
from gateway_stack import cluster_pids
from helpers import wait_for

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def observed(compat: CompatGateway) -> dict[str, Any]:
    results = compat.upstream(
        step("first", "running_cluster", ALICE, workers=1, kwargs={}),
        step("second", "running_cluster", ALICE, workers=0, kwargs={}),
        step("idle", "idle_timeout", ALICE, kwargs={"idle_timeout": 2}),
    )
    return {key: r.value for key, r in results.items()}


def _token(token: str) -> dict[str, str]:
    return {"Authorization": f"token {token}"}


def test_a_token_acts_only_on_its_own_cluster(
    compat: CompatGateway, observed: dict[str, Any]
) -> None:
    first, second = observed["first"], observed["second"]
    # dask_gateway.scheduler_preload reads a token containing "/" as a file path.
    assert "/" not in first["token"] and len(first["token"]) >= 32
    path = f"/api/v1/clusters/{first['name']}"
    # Another cluster's token, or a wrong one, is no credential at all: user auth follows,
    # and without user credentials that is a 401 asking for Basic.
    for token in (second["token"], "0" * 43, first["token"][:-1]):
        status, headers, reply = compat.request("DELETE", path, None, None, _token(token))
        assert status == 401, reply
        assert headers["www-authenticate"] == "Basic"
        assert reply == {"error": "Authentication required"}
    # A token is only good for its cluster's heartbeat and DELETE.
    for method, suffix, body in (
        ("GET", "", None),
        ("GET", "?wait", None),
        ("POST", "/scale", b'{"count": 3}'),
        ("POST", "/adapt", b'{"minimum": 0, "maximum": 3, "active": true}'),
    ):
        status, _, reply = compat.request(method, path + suffix, None, body, _token(first["token"]))
        assert status == 401, (method, suffix, reply)
    for method, path_ in (("GET", "/api/v1/clusters/"), ("GET", "/api/v1/options")):
        status, _, _ = compat.request(method, path_, None, None, _token(first["token"]))
        assert status == 401
    assert compat.status_of(first["name"]) == "RUNNING"


def test_delete_by_cluster_token_ends_stopped(
    compat: CompatGateway, observed: dict[str, Any]
) -> None:
    first, second = observed["first"], observed["second"]
    status, _, body = compat.request(
        "DELETE", f"/api/v1/clusters/{first['name']}", None, None, _token(first["token"])
    )
    assert (status, body) == (204, None)
    wait_for(lambda: compat.status_of(first["name"]) == "STOPPED", 30, "the token stop")
    wait_for(lambda: cluster_pids(first["name"]) == [], 30, "its processes to exit")
    # Its neighbour is untouched.
    assert compat.status_of(second["name"]) == "RUNNING"
    # Idempotent with the token too.
    status, _, _ = compat.request(
        "DELETE", f"/api/v1/clusters/{second['name']}", None, None, _token(second["token"])
    )
    assert status == 204
    wait_for(lambda: compat.status_of(second["name"]) == "STOPPED", 30, "the second stop")


def test_idle_timeout(compat: CompatGateway, observed: dict[str, Any]) -> None:
    r = observed["idle"]
    # idle_timeout=2: the scheduler checks every 0.5 s and stops itself with its token.
    assert r["gone_after_seconds"] < 15
    assert compat.status_of(r["name"]) == "STOPPED"
    wait_for(lambda: cluster_pids(r["name"]) == [], 30, "the idle cluster's processes to exit")
    print(f"idle cluster gone from the list {r['gone_after_seconds']:.1f}s after start")
