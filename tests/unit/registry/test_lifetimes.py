"""Clusters that end normally on the registry's own decision: ``max_lifetime`` and
``no_client_timeout`` (the decisions, then the service that records heartbeats' client
counts), against an in-memory SQLite store (no processes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from flotilla_common.identity import Identity
from flotilla_registry.clusters import ClusterService, ServiceSettings
from flotilla_registry.errors import InvalidRequest
from flotilla_registry.lifecycle import Lifecycle, cluster_expired, cluster_overdue
from flotilla_registry.model import ClusterRecord, Observed, Status, Target
from flotilla_registry.options import Options
from flotilla_registry.scheduler_api import SchedulerAPI
from flotilla_registry.store import SQLiteStore
from traitlets.config import Config

ALICE = Identity("alice")
S = 1000  # ms
T0 = 1_000_000  # a cluster's start_time (ms)


def record(**kw: Any) -> ClusterRecord:
    base: dict[str, Any] = dict(
        name="c1", owner="alice", backend="local", options="{}", config="{}", token="t",
        tls_cert="", tls_key="", start_time=T0,
    )  # fmt: skip
    base.update(kw)
    return ClusterRecord(**base)


def beat(**extra: Any) -> dict[str, Any]:
    return {
        "scheduler_address": "tls://127.0.0.1:1",
        "dashboard_address": "http://127.0.0.1:2",
        "api_address": "http://127.0.0.1:3",
        "count": 0,
        "active_workers": [],
        "closing_workers": [],
        "closed_workers": [],
        **extra,
    }


# -- decisions (pure) ---------------------------------------------------------------------


def test_max_lifetime_counts_from_creation_whatever_the_state() -> None:
    limits = Lifecycle(max_lifetime=5)
    for observed in (Observed.CREATED, Observed.STARTING, Observed.RUNNING):
        c = record(observed=observed, last_heartbeat=T0 + 4 * S)
        assert cluster_expired(c, limits, T0 + 5 * S, since=0) is None
        assert cluster_expired(c, limits, T0 + 5 * S + 1, since=0) == (
            "Cluster reached its max_lifetime of 5 s"
        )


def test_max_lifetime_is_wall_clock_time_even_across_a_registry_restart() -> None:
    """Unlike the failure deadlines, a lifetime does not restart with the registry."""
    c = record(observed=Observed.RUNNING)
    since = T0 + 100 * S
    assert cluster_expired(c, Lifecycle(max_lifetime=5), since + 1, since) is not None


def test_max_lifetime_0_is_no_limit_and_stopping_clusters_have_none() -> None:
    c = record(observed=Observed.RUNNING)
    assert cluster_expired(c, Lifecycle(), T0 + 10**9, since=0) is None
    assert cluster_expired(c, Lifecycle(max_lifetime=0.5), T0 + 501, since=0) == (
        "Cluster reached its max_lifetime of 0.5 s"
    )
    stopping = record(observed=Observed.RUNNING, target=Target.STOPPED)
    assert cluster_expired(stopping, Lifecycle(max_lifetime=1), T0 + 10**9, since=0) is None


def test_lifecycle_reads_max_lifetime_from_the_config_json() -> None:
    assert Lifecycle.from_config_json('{"max_lifetime": 7.5}').max_lifetime == 7.5
    # Records written before the setting existed, and an explicit null: no limit.
    assert Lifecycle.from_config_json("{}").max_lifetime == 0
    assert Lifecycle.from_config_json('{"max_lifetime": null}').max_lifetime == 0


def test_no_client_timeout_counts_from_when_the_last_client_left() -> None:
    limits = Lifecycle(no_client_timeout=3)
    c = record(observed=Observed.RUNNING, clients=0, clients_gone_since=T0 + 10 * S)
    assert cluster_expired(c, limits, T0 + 13 * S, since=0) is None
    assert cluster_expired(c, limits, T0 + 13 * S + 200, since=0) == (
        "No client connected for 3.2 s (no_client_timeout 3 s)"
    )
    assert cluster_expired(c, Lifecycle(), T0 + 10**9, since=0) is None  # 0: never


def test_no_client_timeout_needs_a_known_count_of_none_on_a_running_cluster() -> None:
    limits = Lifecycle(no_client_timeout=3)
    late = T0 + 100 * S
    connected = record(observed=Observed.RUNNING, clients=1)
    unknown = record(observed=Observed.RUNNING)  # dask-gateway's preload sends no count
    pending = record(observed=Observed.STARTING, clients=0, clients_gone_since=T0)
    stopping = record(
        observed=Observed.RUNNING, target=Target.STOPPED, clients=0, clients_gone_since=T0
    )
    for c in (connected, unknown, pending, stopping):
        assert cluster_expired(c, limits, late, since=0) is None, c


def test_no_client_timeout_never_falls_before_the_registry_started_plus_it() -> None:
    limits = Lifecycle(no_client_timeout=3)
    c = record(observed=Observed.RUNNING, clients=0, clients_gone_since=T0)
    since = T0 + 100 * S  # down meanwhile: a client may have come without it hearing
    assert cluster_expired(c, limits, since + 3 * S, since) is None
    reason = cluster_expired(c, limits, since + 4 * S, since)
    assert reason == "No client connected for 104 s (no_client_timeout 3 s)"


def test_lifecycle_reads_no_client_timeout_from_the_config_json() -> None:
    assert Lifecycle.from_config_json('{"no_client_timeout": 3}').no_client_timeout == 3
    assert Lifecycle.from_config_json("{}").no_client_timeout == 0


# -- the service --------------------------------------------------------------------------


@pytest.fixture
async def store() -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(":memory:")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def make_service(store: SQLiteStore, options: Any = None, **cluster: Any) -> ClusterService:
    config = Config()
    for key, value in cluster.items():
        setattr(config.ClusterConfig, key, value)
    settings = ServiceSettings(
        options=options or Options(), cluster_config=config, api_url="http://gateway/api"
    )
    service = ClusterService(store, settings, SchedulerAPI())
    await service.start()
    return service


async def test_a_cluster_past_its_lifetime_is_stopped_not_failed(store: SQLiteStore) -> None:
    service = await make_service(store, max_lifetime=5)
    c = await service.create(ALICE, {})
    await service.heartbeat(Identity("alice", cluster=c.name), c.name, beat(count=2))
    running = await service.get(ALICE, c.name)
    assert running.status == Status.RUNNING and len(running.workers) == 2
    assert await service.check_timeouts(c.start_time + 5 * S) == 0
    assert await service.check_timeouts(c.start_time + 6 * S) == 1
    stopping = await service.get(ALICE, c.name)
    assert stopping.target == Target.STOPPED and stopping.status == Status.STOPPING
    assert stopping.reason == "Cluster reached its max_lifetime of 5 s"
    assert all(w.target == Target.STOPPED and w.close_expected for w in stopping.workers.values())
    # Decided once: the next check leaves it alone, and a late heartbeat does not revive it.
    assert await service.check_timeouts(c.start_time + 7 * S) == 0
    await service.heartbeat(Identity("alice", cluster=c.name), c.name, beat(count=2))
    assert (await service.get(ALICE, c.name)).target == Target.STOPPED
    await service.report_cluster(c.name, Observed.STOPPED, "", "")
    stored = await store.get_cluster(c.name)
    assert stored is not None and stored.status == Status.STOPPED
    assert stored.reason == "Cluster reached its max_lifetime of 5 s"


async def test_a_pending_cluster_past_its_lifetime_is_stopped_too(store: SQLiteStore) -> None:
    service = await make_service(store, max_lifetime=2, cluster_start_timeout=60)
    c = await service.create(ALICE, {})
    assert await service.check_timeouts(c.start_time + 3 * S) == 1
    report = await service.get(ALICE, c.name)
    assert (report.target, report.reason) == (
        Target.STOPPED,
        "Cluster reached its max_lifetime of 2 s",
    )


async def test_a_failure_deadline_wins_over_the_lifetime(store: SQLiteStore) -> None:
    """Both due in one check: the cluster did not work, which is what its owner must see."""
    service = await make_service(store, max_lifetime=4, cluster_start_timeout=4)
    c = await service.create(ALICE, {})
    limits = Lifecycle.from_config_json(c.config)
    assert cluster_overdue(c, limits, c.start_time + 5 * S, since=0) is not None
    assert await service.check_timeouts(c.start_time + 5 * S) == 1
    report = await service.get(ALICE, c.name)
    assert report.target == Target.FAILED
    assert "cluster_start_timeout" in report.reason


async def test_option_handlers_set_lifetimes_per_group(store: SQLiteStore) -> None:
    """The documented pattern (docs/internals.md): a handler picks a group's default."""

    def handler(options: Any, user: Any) -> dict[str, Any]:
        return {"max_lifetime": 8 * 3600 if "students" in user.groups else 0}

    service = await make_service(store, options=Options(handler=handler))
    student = Identity("sam", groups=frozenset({"students"}))
    sam = await service.create(student, {})
    alice = await service.create(ALICE, {})
    assert Lifecycle.from_config_json(sam.config).max_lifetime == 8 * 3600
    assert Lifecycle.from_config_json(alice.config).max_lifetime == 0
    later = sam.start_time + 8 * 3600 * S + 1
    service.started = later - S  # no start deadline is due: only the lifetime decides
    assert await service.check_timeouts(later) == 1
    assert (await service.get(student, sam.name)).target == Target.STOPPED
    assert (await service.get(ALICE, alice.name)).target == Target.RUNNING


async def test_heartbeats_record_when_the_last_client_left(store: SQLiteStore) -> None:
    service = await make_service(store, no_client_timeout=3)
    c = await service.create(ALICE, {})
    scheduler = Identity("alice", cluster=c.name)

    async def report(clients: int | None) -> ClusterRecord:
        body = beat() if clients is None else beat(clients=clients)
        await service.heartbeat(scheduler, c.name, body)
        return await service.get(ALICE, c.name)

    # No client at the first heartbeat: counted from when the cluster became RUNNING.
    first = await report(0)
    assert first.status == Status.RUNNING
    assert (first.clients, first.clients_gone_since) == (0, first.last_heartbeat)
    again = await report(0)
    assert again.clients_gone_since == first.last_heartbeat  # still the same absence
    busy = await report(2)
    assert (busy.clients, busy.clients_gone_since) == (2, None)
    left = await report(0)
    assert left.last_heartbeat is not None and left.clients_gone_since == left.last_heartbeat
    assert left.clients_gone_since >= busy.last_heartbeat  # type: ignore[operator]
    unknown = await report(None)
    assert (unknown.clients, unknown.clients_gone_since) == (None, None)
    # Kept in the store, for a restarted registry or another replica.
    await report(0)
    stored = await store.get_cluster(c.name)
    assert stored is not None and stored.clients == 0
    assert stored.clients_gone_since == (await service.get(ALICE, c.name)).clients_gone_since


@pytest.mark.parametrize("clients", [-1, True, 1.5, "2"])
async def test_a_malformed_client_count_is_refused(store: SQLiteStore, clients: Any) -> None:
    service = await make_service(store)
    c = await service.create(ALICE, {})
    with pytest.raises(InvalidRequest, match="clients must be a non-negative integer"):
        await service.heartbeat(Identity("alice", cluster=c.name), c.name, beat(clients=clients))
    assert (await service.get(ALICE, c.name)).status == Status.PENDING  # changed nothing


async def test_a_cluster_without_clients_is_stopped_after_the_grace(store: SQLiteStore) -> None:
    service = await make_service(store, no_client_timeout=3, heartbeat_timeout=600)
    service.started -= 60 * S  # up for a while: only the grace decides
    c = await service.create(ALICE, {})
    scheduler = Identity("alice", cluster=c.name)
    await service.heartbeat(scheduler, c.name, beat(clients=1))
    connected = await service.get(ALICE, c.name)
    assert connected.last_heartbeat is not None
    # A client connected: however long, the cluster runs on.
    assert await service.check_timeouts(connected.last_heartbeat + 300 * S) == 0
    await service.heartbeat(scheduler, c.name, beat(clients=0))
    gone = (await service.get(ALICE, c.name)).clients_gone_since
    assert gone is not None
    assert await service.check_timeouts(gone + 3 * S) == 0
    assert await service.check_timeouts(gone + 3 * S + 500) == 1
    report = await service.get(ALICE, c.name)
    assert (report.target, report.status) == (Target.STOPPED, Status.STOPPING)
    assert report.reason == "No client connected for 3.5 s (no_client_timeout 3 s)"


async def test_a_scheduler_that_reports_no_clients_is_never_stopped_for_it(
    store: SQLiteStore,
) -> None:
    """dask-gateway's preload sends no ``clients``: unknown is not zero."""
    service = await make_service(store, no_client_timeout=3, heartbeat_timeout=600)
    service.started -= 60 * S
    c = await service.create(ALICE, {})
    await service.heartbeat(Identity("alice", cluster=c.name), c.name, beat())
    running = await service.get(ALICE, c.name)
    assert running.clients is None and running.last_heartbeat is not None
    assert await service.check_timeouts(running.last_heartbeat + 500 * S) == 0
    assert (await service.get(ALICE, c.name)).target == Target.RUNNING


async def test_the_absence_of_clients_survives_a_registry_restart(store: SQLiteStore) -> None:
    service = await make_service(store, no_client_timeout=3, heartbeat_timeout=600)
    c = await service.create(ALICE, {})
    await service.heartbeat(Identity("alice", cluster=c.name), c.name, beat(clients=0))
    gone = (await service.get(ALICE, c.name)).clients_gone_since
    assert gone is not None
    restarted = await make_service(store, no_client_timeout=3, heartbeat_timeout=600)
    loaded = await restarted.get(ALICE, c.name)
    assert (loaded.clients, loaded.clients_gone_since) == (0, gone)
    # Not before the new registry's start plus the grace; then stopped.
    assert await restarted.check_timeouts(restarted.started + 2 * S) == 0
    assert await restarted.check_timeouts(restarted.started + 4 * S) == 1
    assert (await restarted.get(ALICE, c.name)).target == Target.STOPPED


async def test_a_huge_client_count_is_stored_as_the_most_a_column_holds(
    store: SQLiteStore,
) -> None:
    service = await make_service(store)
    c = await service.create(ALICE, {})
    await service.heartbeat(Identity("alice", cluster=c.name), c.name, beat(clients=10**13))
    assert (await store.load_cluster(c.name)).clients == 2**31 - 1  # type: ignore[union-attr]
