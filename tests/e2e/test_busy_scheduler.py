"""Acceptance (issue 12): a busy scheduler is not a dead one.

A scheduler whose event loop is held (a task run on it, its Bokeh dashboard being
rendered) keeps its cluster RUNNING past ``heartbeat_timeout``: its heartbeats leave from
a thread of their own while the loop is blocked, and while a task holds the GIL so that
no thread runs, its launcher still sees the process alive and says so. A stopped
scheduler still fails (tests/e2e/test_lifecycle.py), and so does one busy for longer
than ``busy_timeout``.

The whole stack runs behind the real Envoy, the registry checking timeouts every 0.2 s.
Every scenario has a heartbeat every second and a ``heartbeat_timeout`` of 3 s; each
scheduler is held for 8 s.
"""

from __future__ import annotations

import contextlib
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flotilla import BasicAuth, ClusterStatus, Gateway
from gateway_stack import Gateway as Stack
from gateway_stack import running_gateway
from helpers import wait_for

pytestmark = pytest.mark.timeout(300)

USER = "bea"
HELD = 8  # seconds each scheduler is kept busy: well past heartbeat_timeout

SCENARIOS = """
from flotilla_registry.options import Options, Select

_BEATS = {"heartbeat_period": 1, "heartbeat_timeout": 3}

def _scenario(options):
    return {
        # No grace for a scheduler seen alive: only heartbeats can keep it.
        "heartbeats-only": {**_BEATS, "busy_timeout": 3},
        "default": _BEATS,
        "short-grace": {**_BEATS, "busy_timeout": 5},
    }[options.scenario]

c.Registry.cluster_options = Options(
    Select("scenario", ["heartbeats-only", "default", "short-grace"], label="Scenario"),
    handler=_scenario,
)
c.Registry.check_timeouts_period = 0.2
c.LocalBackend.sigint_timeout = 1.0
c.LocalBackend.sigterm_timeout = 1.0
"""

#: Holds the GIL (a C call through ctypes.PyDLL does not release it): no thread of the
#: scheduler runs, heartbeats included.
HOLD_GIL = f"import ctypes; ctypes.PyDLL(None).sleep({HELD})"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_gateway(tmp_path_factory.mktemp("busy"), SCENARIOS) as gateway:
        yield gateway


@pytest.fixture
def gw(stack: Stack) -> Iterator[Gateway]:
    with Gateway(stack.address, auth=BasicAuth(USER)) as gateway:
        yield gateway


class StatusSampler:
    """Samples a cluster's status every 0.1 s from its own thread and gateway client."""

    def __init__(self, address: str, name: str) -> None:
        self.address, self.name = address, name
        self.seen: list[ClusterStatus] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with Gateway(self.address, auth=BasicAuth(USER)) as gw:
            while not self._stop.wait(0.1):
                self.seen.append(gw.get_cluster(self.name).status)

    def __enter__(self) -> StatusSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)


def held(run: Callable[[], Any]) -> float:
    start = time.monotonic()
    run()
    return time.monotonic() - start


def test_a_blocked_event_loop_keeps_sending_heartbeats(stack: Stack, gw: Gateway) -> None:
    """The loop blocked (GIL free): the preload's thread repeats the heartbeat, so the
    cluster lives even with no grace for a process seen alive."""
    with gw.new_cluster(scenario="heartbeats-only") as cluster:
        client = cluster.get_client(set_as_default=False)
        with StatusSampler(stack.address, cluster.name) as sampler:
            took = held(lambda: client.run_on_scheduler(time.sleep, HELD))
            time.sleep(1)  # and a moment after: a late decision would show here
        print(f"loop blocked {took:.1f} s; sampled {len(sampler.seen)} times")
        assert took >= HELD
        assert len(sampler.seen) > 5 * HELD
        assert set(sampler.seen) == {ClusterStatus.RUNNING}
        logs = gw.get_cluster_logs(cluster.name)["scheduler"]
        assert "behind; heartbeat sent from its thread" in logs
        client.close()


def test_a_task_holding_the_gil_does_not_fail_the_cluster(stack: Stack, gw: Gateway) -> None:
    """No thread runs, no heartbeat leaves; the launcher sees the process alive."""
    with gw.new_cluster(scenario="default") as cluster:
        client = cluster.get_client(set_as_default=False)
        with StatusSampler(stack.address, cluster.name) as sampler:
            took = held(lambda: client.run_on_scheduler(exec, HOLD_GIL))
            time.sleep(1)
        print(f"GIL held {took:.1f} s; sampled {len(sampler.seen)} times")
        assert took >= HELD
        assert set(sampler.seen) == {ClusterStatus.RUNNING}
        assert client.run_on_scheduler(sum, [1, 2]) == 3  # and it serves again
        client.close()


def test_busy_for_longer_than_busy_timeout_fails(stack: Stack, gw: Gateway) -> None:
    cluster = gw.new_cluster(scenario="short-grace", shutdown_on_close=False)
    client = cluster.get_client(set_as_default=False)
    thread = threading.Thread(
        target=lambda: _ignore_errors(lambda: client.run_on_scheduler(exec, HOLD_GIL)),
        daemon=True,
    )
    started = time.monotonic()
    thread.start()
    report = wait_for(
        lambda: (
            (r := gw.get_cluster(cluster.name)).status
            in (ClusterStatus.STOPPING, ClusterStatus.FAILED)
            and r
        ),
        30,
        "the cluster to fail",
    )
    decided = time.monotonic() - started
    print(f"busy_timeout 5 s: failing {decided:.1f} s after the GIL was taken")
    assert 5 <= decided < HELD + 3
    assert report.reason.startswith("Cluster's scheduler stopped sending heartbeats: none for ")
    assert report.reason.endswith(" s while its process ran (busy_timeout 5 s)")
    wait_for(lambda: gw.get_cluster(cluster.name).status == ClusterStatus.FAILED, 30, "FAILED")
    thread.join(30)
    client.close()
    cluster.close()


def _ignore_errors(run: Callable[[], Any]) -> None:
    with contextlib.suppress(Exception):  # the scheduler is killed under it
        run()


def test_a_dashboard_loaded_over_and_over_does_not_fail_the_cluster(
    stack: Stack, gw: Gateway
) -> None:
    """As browser tabs refreshing the status page do: 4 at a time, for 10 s."""
    with gw.new_cluster(scenario="default") as cluster:
        cluster.scale(2)
        client = cluster.get_client(set_as_default=False)
        client.wait_for_workers(2, timeout=120)
        link = cluster.dashboard_link
        deadline = time.monotonic() + 10

        def load() -> list[int]:
            codes = []
            while time.monotonic() < deadline:
                with urllib.request.urlopen(link, timeout=60) as resp:
                    resp.read()
                    codes.append(resp.status)
            return codes

        with StatusSampler(stack.address, cluster.name) as sampler, ThreadPoolExecutor(4) as pool:
            codes = [c for part in pool.map(lambda _: load(), range(4)) for c in part]
        print(f"dashboard loaded {len(codes)} times in 10 s")
        assert codes and set(codes) == {200}
        assert set(sampler.seen) == {ClusterStatus.RUNNING}
        assert client.submit(sum, [1, 2]).result(timeout=60) == 3
        client.close()
