"""Every error path of the wire contract: status code and text on the wire, and what the
upstream client makes of it (ValueError for 404/422, GatewayClusterError for 409,
aiohttp's ClientResponseError for 401/403)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from compat.harness import (
    ALICE,
    BOB,
    CLUSTER_ERROR,
    RESPONSE_ERROR,
    VALUE_ERROR,
    CompatGateway,
    raised,
    step,
)
from helpers import wait_for

pytestmark = pytest.mark.timeout(600)

UNKNOWN = "0123456789abcdef0123456789abcdef"


@pytest.fixture(scope="module")
def alices(compat: CompatGateway) -> Iterator[str]:
    """A running cluster of alice's (no workers)."""
    name = compat.create(ALICE)
    _, _, report = compat.request("GET", f"/api/v1/clusters/{name}?wait", ALICE)
    assert report["status"] == "RUNNING", report
    yield name
    compat.request("DELETE", f"/api/v1/clusters/{name}", ALICE)


@pytest.fixture(scope="module")
def observed(compat: CompatGateway, alices: str) -> dict[str, Any]:
    results = compat.upstream(
        step("peer", "peer_access", BOB, name=alices),
        step("unknown", "unknown_cluster", ALICE, name=UNKNOWN),
        step("failing", "failing_cluster", ALICE, kwargs={"runtime": "broken"}),
        step("pending", "pending_cluster", ALICE, kwargs={"runtime": "hang"}),
        {**step("wrong_password", "authenticate", ALICE), "password": "not-the-password"},
        {**step("no_password", "authenticate", ALICE), "password": ""},
        step("right_password", "authenticate", ALICE),
    )
    return {key: r.value for key, r in results.items()}


# -- through the upstream client ------------------------------------------------------------


@pytest.mark.parametrize("call", ["get", "connect", "scale", "adapt", "stop"])
def test_another_users_cluster_is_forbidden(
    compat: CompatGateway, alices: str, observed: dict[str, Any], call: str
) -> None:
    exc_type, _, status = raised(observed["peer"][call])
    assert (exc_type, status) == (RESPONSE_ERROR, 403)
    assert observed["peer"]["listed"] is False
    assert compat.status_of(alices, ALICE) == "RUNNING"


@pytest.mark.parametrize("call", ["get", "connect", "scale", "adapt"])
def test_unknown_cluster_is_a_value_error(observed: dict[str, Any], call: str) -> None:
    assert raised(observed["unknown"][call]) == (
        VALUE_ERROR,
        f"Cluster {UNKNOWN} not found",
        None,
    )


def test_stopping_an_unknown_cluster_is_a_no_op(observed: dict[str, Any]) -> None:
    assert observed["unknown"]["stop"] == {"value": None}


def test_scheduler_that_cannot_start(compat: CompatGateway, observed: dict[str, Any]) -> None:
    r = observed["failing"]
    [failed] = r["new_failed"]
    assert failed["status"] == "FAILED"
    assert failed["stop_time"] is not None
    assert raised(r["new_cluster"]) == (
        CLUSTER_ERROR,
        f"Cluster '{failed['name']}' failed to start, see logs for more information",
        None,
    )


def test_pending_cluster_is_not_running(observed: dict[str, Any]) -> None:
    r = observed["pending"]
    name = r["name"]
    assert r["status"] == "PENDING"
    assert name in r["listed"]
    assert raised(r["scale"]) == (CLUSTER_ERROR, f"cluster {name} is not running", None)
    assert raised(r["adapt"]) == (CLUSTER_ERROR, f"cluster {name} is not running", None)
    assert r["stop"] == {"value": None}


def test_basic_auth_with_a_password(observed: dict[str, Any]) -> None:
    assert "value" in observed["right_password"]
    for key in ("wrong_password", "no_password"):
        exc_type, _, status = raised(observed[key])
        assert (exc_type, status) == (RESPONSE_ERROR, 401), key


# -- on the wire ----------------------------------------------------------------------------


def _error(reply: Any) -> str:
    assert isinstance(reply, dict) and set(reply) == {"error"}, reply
    assert isinstance(reply["error"], str)
    return reply["error"]


@pytest.mark.parametrize(
    ("method", "suffix", "body", "verb"),
    [
        ("GET", "", None, "view"),
        ("GET", "?wait", None, "view"),
        ("DELETE", "", None, "stop"),
        ("POST", "/scale", {"count": 1}, "scale"),
        ("POST", "/adapt", {"minimum": 0, "maximum": 1, "active": True}, "adapt"),
    ],
)
def test_forbidden_texts(
    compat: CompatGateway, alices: str, method: str, suffix: str, body: Any, verb: str
) -> None:
    raw = None if body is None else json.dumps(body).encode()
    status, _, reply = compat.request(method, f"/api/v1/clusters/{alices}{suffix}", BOB, raw)
    assert status == 403
    assert _error(reply) == f"User bob lacks permissions to {verb} cluster {alices}"


@pytest.mark.parametrize(
    ("method", "suffix", "body"),
    [
        ("GET", "", None),
        ("GET", "?wait", None),
        ("POST", "/scale", {"count": 1}),
        ("POST", "/adapt", {"minimum": 0, "maximum": 1, "active": True}),
    ],
)
def test_not_found_texts(compat: CompatGateway, method: str, suffix: str, body: Any) -> None:
    raw = None if body is None else json.dumps(body).encode()
    status, _, reply = compat.request(method, f"/api/v1/clusters/{UNKNOWN}{suffix}", ALICE, raw)
    assert status == 404
    assert _error(reply) == f"Cluster {UNKNOWN} not found"


def test_names_may_hold_dots(compat: CompatGateway) -> None:
    """Kubernetes-style names ("<namespace>.<uuid>") reach the API, not a routing 404."""
    name = f"ns.{UNKNOWN}"
    status, _, reply = compat.request("GET", f"/api/v1/clusters/{name}", ALICE)
    assert (status, _error(reply)) == (404, f"Cluster {name} not found")


def test_delete_is_idempotent(compat: CompatGateway) -> None:
    status, _, body = compat.request("DELETE", f"/api/v1/clusters/{UNKNOWN}", ALICE)
    assert (status, body) == (204, None)


@pytest.mark.parametrize(
    ("payload", "shown"),
    [({"count": -1}, "-1"), ({"count": 1.5}, "1.5"), ({}, "None"), ({"count": "2"}, "2")],
)
def test_scale_needs_a_non_negative_integer(
    compat: CompatGateway, alices: str, payload: dict[str, Any], shown: str
) -> None:
    status, reply = compat.post_json(f"/api/v1/clusters/{alices}/scale", payload)
    assert status == 422
    assert _error(reply) == f"Scale expects a non-negative integer, got {shown}"


@pytest.mark.parametrize(
    "payload",
    [
        {"minimum": -1, "maximum": 2, "active": True},
        {"minimum": 0, "maximum": "2", "active": True},
        {"minimum": 3, "maximum": 2, "active": True},
        {"minimum": 0, "maximum": 2, "active": "yes"},
    ],
)
def test_adapt_needs_sane_bounds(
    compat: CompatGateway, alices: str, payload: dict[str, Any]
) -> None:
    status, reply = compat.post_json(f"/api/v1/clusters/{alices}/adapt", payload)
    assert status == 422
    assert _error(reply).startswith("Adapt expects")


def test_scale_and_adapt_reply_shapes(compat: CompatGateway, alices: str) -> None:
    assert compat.post_json(f"/api/v1/clusters/{alices}/scale", {"count": 0}) == (
        200,
        {"ok": True, "msg": None},
    )
    adapt = {"minimum": 0, "maximum": 1, "active": False}
    assert compat.post_json(f"/api/v1/clusters/{alices}/adapt", adapt) == (
        200,
        {"ok": True, "msg": None},
    )


def test_not_running_text(compat: CompatGateway) -> None:
    name = compat.create(ALICE, runtime="hang")
    try:
        assert compat.status_of(name) == "PENDING"
        for suffix, payload in (("scale", {"count": 1}), ("adapt", {"active": True})):
            status, reply = compat.post_json(f"/api/v1/clusters/{name}/{suffix}", payload)
            assert status == 409
            assert _error(reply) == f"cluster {name} is not running"
    finally:
        assert compat.request("DELETE", f"/api/v1/clusters/{name}", ALICE)[0] == 204
    wait_for(lambda: compat.status_of(name) == "STOPPED", 30, "the pending cluster to stop")


@pytest.mark.parametrize(
    ("headers", "password"),
    [
        ({}, None),  # Basic credentials of a user: not a cluster token
        ({"Authorization": "token not-the-token"}, None),
        ({"Authorization": "token"}, None),
    ],
)
def test_heartbeat_needs_the_cluster_token(
    compat: CompatGateway, alices: str, headers: dict[str, str], password: str | None
) -> None:
    user = None if headers else ALICE
    status, rheaders, reply = compat.request(
        "POST", f"/api/v1/clusters/{alices}/heartbeat", user, b"{}", headers
    )
    assert status == 401
    assert rheaders["www-authenticate"] == "token"
    assert reply == {"error": "Unauthorized"}


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Basic",  # upstream answers this with a 500
        "Basic !!!",
        "Basic Og==",  # ":" — no user name
        "Bearer abc",
        "token abc",
        "jupyterhub abc",
    ],
)
def test_missing_or_malformed_credentials(compat: CompatGateway, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    status, rheaders, reply = compat.request("GET", "/api/v1/clusters/", None, None, headers)
    assert status == 401
    assert rheaders["www-authenticate"] == "Basic"
    assert reply == {"error": "Authentication required"}


def test_wrong_password(compat: CompatGateway) -> None:
    status, rheaders, reply = compat.request("GET", "/api/v1/clusters/", ALICE, password="wrong")
    assert (status, rheaders["www-authenticate"], reply) == (
        401,
        "Basic",
        {"error": "Authentication required"},
    )
    assert "set-cookie" not in rheaders


def test_status_filter_must_name_statuses(compat: CompatGateway) -> None:
    for query, bad in (("bogus", "bogus"), ("running,bogus", "bogus"), ("RUNNING,Nope", "Nope")):
        status, _, reply = compat.request("GET", f"/api/v1/clusters/?status={query}", ALICE)
        assert status == 422
        assert _error(reply) == f"{bad!r} is not a valid ClusterStatus"


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("GET", "/api/v1/clusters", None, 404),  # no trailing slash: no such route
        ("GET", "/api/v1/nothing-here", None, 404),
        ("PUT", "/api/v1/clusters/", b"{}", 405),
        ("POST", "/api/v1/clusters/", b"{not json", 400),
        ("POST", "/api/v1/clusters/", b"\xff\xfe", 400),
        ("POST", "/api/v1/clusters/", b"[1, 2]", 422),
        ("POST", f"/api/v1/clusters/{UNKNOWN}/scale", b"nope", 400),
        ("POST", "/api/v1/clusters/", b"[" * 100_000, 400),  # deeper than the parser goes
        # Refused by Envoy before any service: still JSON errors.
        ("GET", "/api/v1/clusters/%00", None, 400),
        ("GET", "/api/v1/clusters/" + "a" * 70_000, None, 431),
        ("GET", "/not-an-api-path", None, 404),
    ],
)
def test_malformed_requests_are_json_4xx(
    compat: CompatGateway, method: str, path: str, body: bytes | None, expected: int
) -> None:
    status, headers, reply = compat.request(method, path, ALICE, body)
    assert status == expected, reply
    assert headers["content-type"].startswith("application/json")
    _error(reply)


def test_public_endpoints(compat: CompatGateway) -> None:
    status, _, body = compat.request("GET", "/api/health", None)
    assert (status, body) == (200, {"status": "pass"})
    status, _, body = compat.request("GET", "/api/version", None)
    assert status == 200 and set(body) == {"version"} and isinstance(body["version"], str)
