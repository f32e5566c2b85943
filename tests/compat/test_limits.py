"""Resource limits: scale and adapt beyond a cluster's worker limit are clamped, and the
upstream client shows the server's exact texts as GatewayWarning."""

from __future__ import annotations

from typing import Any

import pytest
from compat.harness import ALICE, CompatGateway, step

pytestmark = pytest.mark.timeout(600)

LIMIT = 2


def _warning(text: str) -> list[dict[str, str]]:
    return [{"category": "GatewayWarning", "message": text}]


@pytest.fixture(scope="module")
def observed(compat: CompatGateway) -> dict[str, Any]:
    result = compat.upstream(step("limits", "limits", ALICE, max_workers=LIMIT))["limits"]
    value: dict[str, Any] = result.value
    return value


def test_scale_beyond_the_limit_warns_and_clamps(observed: dict[str, Any]) -> None:
    assert observed["scale_5"] == _warning(
        "Scale request of 5 workers would exceed resource limit of 2 workers. Scaling to 2 instead."
    )
    # The cluster got the limit, and never more.
    assert observed["most_workers"] == LIMIT


def test_scale_within_the_limit_is_silent(observed: dict[str, Any]) -> None:
    assert observed["scale_within"] == []


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("adapt_10_1", "`maximum=10, minimum=1` ... `maximum=2, minimum=1`"),
        ("adapt_min_5", "`maximum=2, minimum=5` ... `maximum=2, minimum=2`"),
        ("adapt_max_10", "`maximum=10, minimum=0` ... `maximum=2, minimum=0`"),
    ],
)
def test_adapt_beyond_the_limit_warns(observed: dict[str, Any], key: str, expected: str) -> None:
    asked, used = expected.split(" ... ")
    assert observed[key] == _warning(
        f"Adapt with {asked} workers would exceed resource limit of 2 workers. "
        f"Using {used} instead."
    )


@pytest.mark.parametrize("key", ["adapt_default", "adapt_within", "adapt_off"])
def test_adapt_within_the_limit_is_silent(observed: dict[str, Any], key: str) -> None:
    assert observed[key] == []


def test_raw_replies(compat: CompatGateway) -> None:
    """The JSON the client turned into warnings, on a running cluster with a limit."""
    name = compat.create(ALICE, max_workers=1)
    try:
        status, _, report = compat.request("GET", f"/api/v1/clusters/{name}?wait", ALICE)
        assert (status, report["status"]) == (200, "RUNNING")
        assert compat.post_json(f"/api/v1/clusters/{name}/scale", {"count": 0}) == (
            200,
            {"ok": True, "msg": None},
        )
        assert compat.post_json(f"/api/v1/clusters/{name}/scale", {"count": 3}) == (
            200,
            {
                "ok": False,
                "msg": "Scale request of 3 workers would exceed resource limit of 1 workers. "
                "Scaling to 1 instead.",
            },
        )
        adapt = {"minimum": None, "maximum": None, "active": True}
        assert compat.post_json(f"/api/v1/clusters/{name}/adapt", adapt) == (
            200,
            {"ok": True, "msg": None},
        )
        adapt = {"minimum": 0, "maximum": 4, "active": True}
        assert compat.post_json(f"/api/v1/clusters/{name}/adapt", adapt) == (
            200,
            {
                "ok": False,
                "msg": "Adapt with `maximum=4, minimum=0` workers would exceed resource limit "
                "of 1 workers. Using `maximum=1, minimum=0` instead.",
            },
        )
    finally:
        assert compat.request("DELETE", f"/api/v1/clusters/{name}", ALICE)[0] == 204
