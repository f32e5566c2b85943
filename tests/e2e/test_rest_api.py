"""Acceptance: ownership between users, forged identities, and malformed input — through
Envoy, against the REST API the dask-gateway client speaks."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from gateway_stack import Gateway
from helpers import wait_for


@pytest.fixture(scope="module")
def alices_cluster(gateway: Gateway) -> Iterator[str]:
    status, _, body = gateway.request("POST", "/api/v1/clusters/", "alice", b"{}")
    assert status == 201, body
    name = body["name"]
    wait_for(
        lambda: (
            gateway.request("GET", f"/api/v1/clusters/{name}?wait", "alice")[2]["status"]
            == "RUNNING"
        ),
        60,
        "alice's cluster to run",
    )
    yield name
    gateway.request("DELETE", f"/api/v1/clusters/{name}", "alice")


def test_users_see_only_their_own_clusters(gateway: Gateway, alices_cluster: str) -> None:
    status, _, alices = gateway.request("GET", "/api/v1/clusters/", "alice")
    assert status == 200
    assert alices_cluster in alices
    report = alices[alices_cluster]
    # Exactly the keys the upstream client accepts: anything else crashes it.
    assert set(report) == {
        "name", "dashboard_route", "status", "start_time", "stop_time", "options",
        "tls_cert", "tls_key",
    }  # fmt: skip
    assert report["status"] == "RUNNING"
    assert report["tls_key"].startswith("-----BEGIN PRIVATE KEY-----")
    status, _, bobs = gateway.request("GET", "/api/v1/clusters/", "bob")
    assert status == 200
    assert alices_cluster not in bobs


@pytest.mark.parametrize(
    ("method", "suffix", "body", "verb"),
    [
        ("GET", "", None, "view"),
        ("POST", "/scale", b'{"count": 1}', "scale"),
        ("POST", "/adapt", b'{"minimum": 0, "maximum": 1, "active": true}', "adapt"),
        ("DELETE", "", None, "stop"),
    ],
)
def test_other_users_cluster_is_forbidden(
    gateway: Gateway, alices_cluster: str, method: str, suffix: str, body: bytes | None, verb: str
) -> None:
    path = f"/api/v1/clusters/{alices_cluster}{suffix}"
    status, _, reply = gateway.request(method, path, "bob", body)
    assert status == 403, reply
    assert reply == {"error": f"User bob lacks permissions to {verb} cluster {alices_cluster}"}
    # ... and alice's cluster is untouched.
    status, _, report = gateway.request("GET", f"/api/v1/clusters/{alices_cluster}", "alice")
    assert status == 200 and report["status"] == "RUNNING"


def test_forged_identity_headers_are_ignored(gateway: Gateway, alices_cluster: str) -> None:
    forged = {
        "X-Flotilla-Identity": "eyJ1IjoiYWxpY2UifQ.c2lnbmF0dXJl",
        "X-Flotilla-User": "alice",
        "X-Forwarded-User": "alice",
        "X-Remote-User": "alice",
    }
    status, _, bobs = gateway.request("GET", "/api/v1/clusters/", "bob", headers=forged)
    assert status == 200
    assert alices_cluster not in bobs
    status, _, reply = gateway.request(
        "GET", f"/api/v1/clusters/{alices_cluster}", "bob", headers=forged
    )
    assert status == 403
    assert "User bob lacks permissions" in reply["error"]
    # Without credentials a forged identity gets nowhere.
    status, headers, reply = gateway.request("GET", "/api/v1/clusters/", None, headers=forged)
    assert status == 401
    assert headers.get("www-authenticate", headers.get("WWW-Authenticate")) == "Basic"


@pytest.mark.parametrize(
    ("method", "path", "body", "headers", "expected"),
    [
        ("POST", "/api/v1/clusters/", b"{not json", None, 400),
        ("POST", "/api/v1/clusters/", b"[1, 2]", None, 422),
        ("POST", "/api/v1/clusters/", b'{"cluster_options": [1]}', None, 422),
        ("POST", "/api/v1/clusters/", b'{"cluster_options": {"foo": 1}}', None, 422),
        ("POST", "/api/v1/clusters/", b'{"cluster_options": {"worker_cores": "2"}}', None, 422),
        ("POST", "/api/v1/clusters/", b'{"cluster_options": {"worker_cores": 9}}', None, 422),
        ("POST", "/api/v1/clusters/", b'{"cluster_options": {"profile": "huge"}}', None, 422),
        ("POST", "/api/v1/clusters/", b"\xff\xfe\x00", None, 400),
        ("GET", "/api/v1/clusters/?status=bogus", None, None, 422),
        ("GET", "/api/v1/clusters/0123456789abcdef0123456789abcdef", None, None, 404),
        ("GET", "/api/v1/clusters/no%2Fsuch", None, None, 404),
        ("POST", "/api/v1/clusters/nope/scale", b'{"count": 1}', None, 404),
        ("POST", "/api/v1/clusters/nope/adapt", b"{}", None, 404),
        ("GET", "/api/v1/nothing-here", None, None, 404),
        ("GET", "/api/v1/clusters/", None, {"Authorization": "Basic"}, 401),
        ("GET", "/api/v1/clusters/", None, {"Authorization": "Basic !!!notbase64"}, 401),
        ("GET", "/api/v1/clusters/", None, {"Authorization": "Basic Og=="}, 401),
        ("GET", "/api/v1/clusters/", None, {"Authorization": "Bearer abc"}, 401),
        ("POST", "/api/v1/clusters/nope/heartbeat", b"{}", None, 401),
        ("POST", "/api/v1/clusters/nope/heartbeat", b"{}", {"Authorization": "token x"}, 401),
    ],
)
def test_malformed_requests_get_a_clear_4xx(
    gateway: Gateway,
    method: str,
    path: str,
    body: bytes | None,
    headers: dict[str, str] | None,
    expected: int,
) -> None:
    status, _, reply = gateway.request(method, path, "alice", body, headers)
    assert status == expected, reply
    assert isinstance(reply, dict) and isinstance(reply.get("error"), str), reply


def test_bad_scale_values(gateway: Gateway, alices_cluster: str) -> None:
    for bad in (b'{"count": -1}', b'{"count": 1.5}', b'{"count": "2"}', b"{}", b'{"count": true}'):
        status, _, reply = gateway.request(
            "POST", f"/api/v1/clusters/{alices_cluster}/scale", "alice", bad
        )
        assert status == 422, (bad, reply)
        assert reply["error"].startswith("Scale expects a non-negative integer"), reply


def test_option_errors_name_the_field(gateway: Gateway) -> None:
    body = json.dumps({"cluster_options": {"worker_cores": 10}}).encode()
    status, _, reply = gateway.request("POST", "/api/v1/clusters/", "alice", body)
    assert status == 422
    assert reply == {"error": "worker_cores must be <= 2.000000, got 10"}


def test_public_endpoints(gateway: Gateway) -> None:
    assert gateway.request("GET", "/api/health", None)[:3:2] == (200, {"status": "pass"})
    status, _, body = gateway.request("GET", "/api/version", None)
    assert status == 200 and isinstance(body["version"], str)
    status, _, body = gateway.request("GET", "/api/v1/options", "alice")
    assert status == 200
    assert [f["field"] for f in body["cluster_options"]] == [
        "worker_cores", "worker_memory", "label", "keep_alive", "profile", "environment",
    ]  # fmt: skip
