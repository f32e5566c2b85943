"""A busy scheduler is not a dead one: late heartbeats fail a cluster only when its
launcher no longer sees the scheduler's process alive (``ReportAlive``), or after
``busy_timeout``; against an in-memory SQLite store (no processes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from flotilla_common.identity import Identity
from flotilla_registry.clusters import ClusterService, ServiceSettings
from flotilla_registry.errors import InvalidRequest
from flotilla_registry.lifecycle import Lifecycle, cluster_overdue
from flotilla_registry.model import ClusterRecord, Observed, Target
from flotilla_registry.options import Options
from flotilla_registry.scheduler_api import SchedulerAPI
from flotilla_registry.store import SQLiteStore
from traitlets.config import Config

ALICE = Identity("alice")
S = 1000  # ms
T0 = 1_000_000


def running(**kw: Any) -> ClusterRecord:
    base: dict[str, Any] = dict(
        name="c1", owner="alice", backend="local", options="{}", config="{}", token="t",
        tls_cert="", tls_key="", start_time=T0, observed=Observed.RUNNING, last_heartbeat=T0,
    )  # fmt: skip
    base.update(kw)
    return ClusterRecord(**base)


BEAT = {
    "scheduler_address": "tls://127.0.0.1:1",
    "dashboard_address": "http://127.0.0.1:2",
    "api_address": "http://127.0.0.1:3",
    "count": 0,
    "active_workers": [],
    "closing_workers": [],
    "closed_workers": [],
}


def test_late_heartbeats_of_a_scheduler_seen_alive_do_not_fail_it() -> None:
    limits = Lifecycle(heartbeat_timeout=4, busy_timeout=60)
    c = running(seen_alive=T0 + 9 * S)
    assert cluster_overdue(c, limits, T0 + 10 * S, since=0) is None
    # Not seen alive within heartbeat_timeout: dead (stopped, hung in the kernel, gone).
    reason = cluster_overdue(c, limits, T0 + 14 * S, since=0)
    assert reason == (
        "Cluster's scheduler stopped sending heartbeats: none for 14 s (heartbeat_timeout 4 s)"
    )
    # Never seen alive: the plain heartbeat deadline.
    assert cluster_overdue(running(), limits, T0 + 5 * S, since=0) is not None


def test_busy_timeout_bounds_the_grace() -> None:
    limits = Lifecycle(heartbeat_timeout=4, busy_timeout=60)
    assert cluster_overdue(running(seen_alive=T0 + 59 * S), limits, T0 + 60 * S, 0) is None
    assert cluster_overdue(running(seen_alive=T0 + 60 * S), limits, T0 + 61 * S, 0) == (
        "Cluster's scheduler stopped sending heartbeats: none for 61 s while its process "
        "ran (busy_timeout 60 s)"
    )
    # 0: as long as the process lives; at most heartbeat_timeout: no grace at all.
    unbounded = Lifecycle(heartbeat_timeout=4, busy_timeout=0)
    assert cluster_overdue(running(seen_alive=T0 + 10**7), unbounded, T0 + 10**7, 0) is None
    none = Lifecycle(heartbeat_timeout=4, busy_timeout=4)
    assert cluster_overdue(running(seen_alive=T0 + 5 * S), none, T0 + 5 * S, 0) is not None


def test_lifecycle_reads_busy_timeout_from_the_config_json() -> None:
    assert Lifecycle.from_config_json('{"busy_timeout": 0}').busy_timeout == 0
    assert Lifecycle.from_config_json("{}").busy_timeout == 3600


@pytest.fixture
async def store() -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(":memory:")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def make_service(store: SQLiteStore, **cluster: Any) -> ClusterService:
    config = Config()
    for key, value in cluster.items():
        setattr(config.ClusterConfig, key, value)
    settings = ServiceSettings(
        options=Options(), cluster_config=config, api_url="http://gateway/api"
    )
    service = ClusterService(store, settings, SchedulerAPI())
    await service.start()
    service.started = 0
    return service


async def test_a_launcher_keeps_a_busy_cluster_running(store: SQLiteStore) -> None:
    service = await make_service(store, heartbeat_period=2, heartbeat_timeout=4)
    c = await service.create(ALICE, {})
    await service.heartbeat(Identity("alice", cluster=c.name), c.name, BEAT)
    last = (await service.get(ALICE, c.name)).last_heartbeat
    assert last is not None
    revision = (await service.get(ALICE, c.name)).revision
    # Heartbeats on time: the report changes nothing (no write per check).
    await service.report_alive("local", [c.name], now=last + 1 * S)
    assert (await service.get(ALICE, c.name)).revision == revision
    # Late: stored, and the deadline counts from it; another backend's word does not count.
    await service.report_alive("slurm", [c.name], now=last + 3 * S)
    assert (await service.get(ALICE, c.name)).seen_alive is None
    for t in (3, 6, 9):
        await service.report_alive("local", [c.name, "unknown"], now=last + t * S)
    stored = await store.get_cluster(c.name)
    assert stored is not None and stored.seen_alive == last + 9 * S  # replicas see it
    assert await service.check_timeouts(last + 12 * S) == 0
    assert (await service.get(ALICE, c.name)).target == Target.RUNNING
    # The launcher stops vouching (the process is stopped or gone): failed.
    assert await service.check_timeouts(last + 14 * S) == 1
    report = await service.get(ALICE, c.name)
    assert report.target == Target.FAILED
    assert report.reason.startswith("Cluster's scheduler stopped sending heartbeats")


@pytest.mark.parametrize("lag", [-1, True, "1", float("inf")])
async def test_a_malformed_loop_lag_is_refused(store: SQLiteStore, lag: Any) -> None:
    service = await make_service(store)
    c = await service.create(ALICE, {})
    with pytest.raises(InvalidRequest, match="loop_lag"):
        await service.heartbeat(
            Identity("alice", cluster=c.name), c.name, {**BEAT, "loop_lag": lag}
        )


async def test_a_heartbeat_with_loop_lag_is_logged(
    store: SQLiteStore, caplog: pytest.LogCaptureFixture
) -> None:
    service = await make_service(store)
    c = await service.create(ALICE, {})
    await service.heartbeat(Identity("alice", cluster=c.name), c.name, {**BEAT, "loop_lag": 7.5})
    assert "event loop is 7.5 s behind" in caplog.text
