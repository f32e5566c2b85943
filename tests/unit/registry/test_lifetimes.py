"""Clusters that end normally on the registry's own decision: ``max_lifetime`` (and the
decisions behind it), against an in-memory SQLite store (no processes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from flotilla_common.identity import Identity
from flotilla_registry.clusters import ClusterService, ServiceSettings
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
