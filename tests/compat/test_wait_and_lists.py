"""``GET /api/v1/clusters/{name}?wait`` (held up to 20 s, released when the cluster stops
being PENDING) and the list filters, on the wire and through the upstream client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from compat.harness import ALICE, BOB, CompatGateway, step
from helpers import wait_for

pytestmark = pytest.mark.timeout(600)

REPORT_KEYS = {
    "name", "dashboard_route", "status", "start_time", "stop_time", "options", "tls_cert",
    "tls_key",
}  # fmt: skip


class Timed(threading.Thread):
    """A request in a thread: its reply and when it came back."""

    def __init__(self, call: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self._call = call
        self.started_at = 0.0
        self.seconds = -1.0
        self.reply: Any = None

    def run(self) -> None:
        self.started_at = time.monotonic()
        self.reply = self._call()
        self.seconds = time.monotonic() - self.started_at


def _get(compat: CompatGateway, name: str, query: str = "") -> Any:
    status, _, report = compat.request("GET", f"/api/v1/clusters/{name}{query}", ALICE)
    assert status == 200, report
    return report


def _stop(compat: CompatGateway, name: str, user: str = ALICE) -> None:
    assert compat.request("DELETE", f"/api/v1/clusters/{name}", user)[0] == 204


def test_wait_holds_until_running(compat: CompatGateway) -> None:
    name = compat.create(ALICE)
    try:
        t0 = time.monotonic()
        report = _get(compat, name, "?wait")
        # One request, no polling: the scheduler takes a good half second to start, so a
        # server that did not hold would have answered PENDING.
        assert report["status"] == "RUNNING"
        assert set(report) == REPORT_KEYS
        print(f"?wait returned RUNNING after {time.monotonic() - t0:.2f}s")
        # A ready cluster is answered at once.
        t0 = time.monotonic()
        assert _get(compat, name, "?wait=1")["status"] == "RUNNING"
        assert time.monotonic() - t0 < 2
    finally:
        _stop(compat, name)
    wait_for(lambda: _get(compat, name)["status"] == "STOPPED", 30, "the cluster to stop")
    t0 = time.monotonic()
    assert _get(compat, name, "?wait")["status"] == "STOPPED"
    assert time.monotonic() - t0 < 2


def test_wait_on_a_pending_cluster(compat: CompatGateway) -> None:
    """Held for 20 s while nothing happens; released at once when the cluster stops."""
    idle, stopped = compat.create(ALICE, runtime="hang"), compat.create(ALICE, runtime="hang")
    try:
        for query in ("", "?wait=0", "?wait=abc", "?wait=false"):
            t0 = time.monotonic()
            assert _get(compat, idle, query)["status"] == "PENDING", query
            assert time.monotonic() - t0 < 2, f"{query!r} must not hold"

        full_hold = Timed(lambda: _get(compat, idle, "?wait"))
        released = Timed(lambda: _get(compat, stopped, "?wait=1"))
        full_hold.start()
        released.start()
        # Let the second request be held a while before the state changes under it.
        time.sleep(1.5)
        stop_at = time.monotonic()
        _stop(compat, stopped)
        released.join(10)
        assert released.reply is not None, "?wait was not released by the stop"
        assert released.reply["status"] in ("STOPPING", "STOPPED")
        answered_at = released.started_at + released.seconds
        # Asked well before the stop, answered only after it, and promptly.
        assert released.started_at < stop_at - 1.0
        assert stop_at <= answered_at < stop_at + 3

        full_hold.join(30)
        assert full_hold.reply is not None
        assert full_hold.reply["status"] == "PENDING"
        assert 19 <= full_hold.seconds <= 25, full_hold.seconds
    finally:
        _stop(compat, idle)
        _stop(compat, stopped)
    for name in (idle, stopped):
        wait_for(lambda n=name: _get(compat, n)["status"] == "STOPPED", 30, f"{name} to stop")


@pytest.fixture(scope="module")
def population(compat: CompatGateway) -> Iterator[dict[str, str]]:
    """Alice's clusters in each state, and one of bob's."""
    names = {
        "running": compat.create(ALICE),
        "pending": compat.create(ALICE, runtime="hang"),
        "stopped": compat.create(ALICE, runtime="hang"),
        "failed": compat.create(ALICE, runtime="broken"),
        "bobs": compat.create(BOB),
    }
    _stop(compat, names["stopped"])
    wait_for(lambda: _get(compat, names["stopped"])["status"] == "STOPPED", 30, "a stop")
    wait_for(lambda: _get(compat, names["failed"])["status"] == "FAILED", 30, "a failure")
    assert _get(compat, names["running"], "?wait")["status"] == "RUNNING"
    _, _, report = compat.request("GET", f"/api/v1/clusters/{names['bobs']}?wait", BOB)
    assert report["status"] == "RUNNING"
    yield names
    for key in ("running", "pending"):
        _stop(compat, names[key])
    _stop(compat, names["bobs"], BOB)


def _listed(compat: CompatGateway, query: str, user: str = ALICE) -> dict[str, Any]:
    status, _, body = compat.request("GET", f"/api/v1/clusters/{query}", user)
    assert status == 200, body
    assert isinstance(body, dict)
    for name, report in body.items():
        assert report["name"] == name
        assert set(report) == REPORT_KEYS
        assert isinstance(report["status"], str)
    return body


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("", {"running", "pending"}),
        ("?status=", {"running", "pending"}),
        ("?status=running", {"running"}),
        ("?status=RUNNING", {"running"}),
        ("?status=Pending", {"pending"}),
        ("?status=PENDING,RUNNING", {"running", "pending"}),
        ("?status=stopped", {"stopped"}),
        ("?status=failed", {"failed"}),
        ("?status=STOPPED,STOPPING,FAILED", {"stopped", "failed"}),
        (
            "?status=running,pending,stopping,stopped,failed",
            {"running", "pending", "stopped", "failed"},
        ),
        ("?status=stopping", set()),
    ],
)
def test_list_filters(
    compat: CompatGateway, population: dict[str, str], query: str, expected: set[str]
) -> None:
    listed = set(_listed(compat, query))
    ours = {key for key, name in population.items() if name in listed}
    assert ours == expected
    assert population["bobs"] not in listed


def test_reports_by_status(compat: CompatGateway, population: dict[str, str]) -> None:
    every = _listed(compat, "?status=running,pending,stopped,failed")
    running = every[population["running"]]
    assert running["tls_cert"].startswith("-----BEGIN CERTIFICATE-----")
    assert running["tls_key"].startswith("-----BEGIN PRIVATE KEY-----")
    assert running["dashboard_route"] == f"/clusters/{population['running']}/status"
    assert running["stop_time"] is None
    for key in ("pending", "stopped", "failed"):
        report = every[population[key]]
        assert report["status"] == key.upper()
        assert report["tls_cert"] is None and report["tls_key"] is None
        assert report["dashboard_route"] is None
        assert isinstance(report["start_time"], int)
    assert isinstance(every[population["stopped"]]["stop_time"], int)


def test_other_users_lists(compat: CompatGateway, population: dict[str, str]) -> None:
    bobs = _listed(compat, "?status=running,pending,stopped,failed", BOB)
    assert population["bobs"] in bobs
    assert not {population[k] for k in ("running", "pending", "stopped", "failed")} & set(bobs)


def test_list_filters_through_the_upstream_client(
    compat: CompatGateway, population: dict[str, str]
) -> None:
    results = compat.upstream(
        step("default", "list_names", ALICE),
        step("running", "list_names", ALICE, status="running"),
        step("finished", "list_names", ALICE, status=["STOPPED", "FAILED"]),
        step("pending", "list_names", ALICE, status="PENDING"),
    )

    def ours(key: str) -> set[str]:
        names = set(results[key].value)
        return {k for k, n in population.items() if n in names}

    assert ours("default") == {"running", "pending"}
    assert ours("running") == {"running"}
    assert ours("finished") == {"stopped", "failed"}
    assert ours("pending") == {"pending"}
