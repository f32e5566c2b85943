"""Timeouts, the worker start-failure limit, retention and logs of the registry's domain
service, against an in-memory SQLite store and a scripted launcher (no processes)."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest
from flotilla_common.identity import Identity
from flotilla_registry import clusters
from flotilla_registry.clusters import ClusterService, ServiceSettings
from flotilla_registry.errors import ClusterNotFound, InvalidRequest, PermissionDenied
from flotilla_registry.lifecycle import Housekeeping, Lifecycle, cluster_overdue, late_workers
from flotilla_registry.model import ClusterRecord, Observed, Status, Target, WorkerRecord
from flotilla_registry.options import Options
from flotilla_registry.scheduler_api import SchedulerAPI
from flotilla_registry.store import SQLiteStore
from traitlets.config import Config

ALICE = Identity("alice")
BOB = Identity("bob")
ADMIN = Identity("root", admin=True)
S = 1000  # ms


def record(**kw: Any) -> ClusterRecord:
    base: dict[str, Any] = dict(
        name="c1", owner="alice", backend="local", options="{}", config="{}", token="t",
        tls_cert="", tls_key="", start_time=1_000_000,
    )  # fmt: skip
    base.update(kw)
    return ClusterRecord(**base)


# -- deadlines (pure) ---------------------------------------------------------------------


def test_start_timeout_names_what_is_missing() -> None:
    limits = Lifecycle(cluster_start_timeout=60)
    c = record()
    assert cluster_overdue(c, limits, c.start_time + 60 * S, since=0) is None
    reason = cluster_overdue(c, limits, c.start_time + 61 * S, since=0)
    assert reason is not None and "within cluster_start_timeout (60 s)" in reason
    assert "no launcher of backend 'local' started it" in reason
    c.observed = Observed.STARTING
    reason = cluster_overdue(c, limits, c.start_time + 61 * S, since=0)
    assert reason is not None and "never reported to the gateway" in reason


def test_heartbeat_timeout_counts_from_the_last_heartbeat() -> None:
    limits = Lifecycle(heartbeat_timeout=30)
    c = record(observed=Observed.RUNNING, last_heartbeat=2_000_000)
    assert cluster_overdue(c, limits, 2_000_000 + 30 * S, since=0) is None
    reason = cluster_overdue(c, limits, 2_000_000 + 31 * S, since=0)
    assert reason == (
        "Cluster's scheduler stopped sending heartbeats: none for 31 s (heartbeat_timeout 30 s)"
    )


def test_no_deadline_before_the_registry_started_plus_the_timeout() -> None:
    limits = Lifecycle(cluster_start_timeout=60, heartbeat_timeout=30)
    since = 5_000_000  # the registry restarted long after these clusters' last news
    pending = record()
    running = record(observed=Observed.RUNNING, last_heartbeat=1_000_000)
    for c in (pending, running):
        assert cluster_overdue(c, limits, since + 29 * S, since) is None
    assert cluster_overdue(running, limits, since + 31 * S, since) is not None
    assert cluster_overdue(pending, limits, since + 59 * S, since) is None
    assert cluster_overdue(pending, limits, since + 61 * S, since) is not None


def test_stopping_clusters_have_no_deadline() -> None:
    c = record(target=Target.STOPPED, observed=Observed.STARTING)
    assert cluster_overdue(c, Lifecycle(cluster_start_timeout=1), 10**12, since=0) is None


def test_late_workers_are_judged_by_a_heartbeat_after_their_deadline() -> None:
    limits = Lifecycle(worker_start_timeout=10)
    c = record(observed=Observed.RUNNING, last_heartbeat=1_000_000 + 9 * S)
    c.workers = {
        "w1": WorkerRecord("w1", observed=Observed.STARTING, start_time=1_000_000),
        "w2": WorkerRecord("w2", observed=Observed.RUNNING, start_time=1_000_000),
        "w3": WorkerRecord(
            "w3", observed=Observed.STARTING, start_time=1_000_000, close_expected=True
        ),
    }
    assert late_workers(c, limits, since=0) == []
    c.last_heartbeat = 1_000_000 + 11 * S
    assert late_workers(c, limits, since=0) == ["w1"]
    assert late_workers(c, limits, since=1_000_000 + 5 * S) == []


def test_lifecycle_from_records_written_before_these_settings() -> None:
    assert Lifecycle.from_config_json('{"heartbeat_period": 5}') == Lifecycle(heartbeat_timeout=10)
    assert Lifecycle.from_config_json("not json") == Lifecycle()
    limits = Lifecycle.from_config(
        {
            "cluster_start_timeout": 4,
            "heartbeat_timeout": 9,
            "worker_start_timeout": 3,
            "worker_start_failure_limit": 0,
        }
    )
    assert limits == Lifecycle(4, 9, 3, 0)


# -- the service --------------------------------------------------------------------------


def admin_config(**cluster: Any) -> Config:
    config = Config()
    for key, value in cluster.items():
        setattr(config.ClusterConfig, key, value)
    return config


@pytest.fixture
async def store() -> AsyncIterator[SQLiteStore]:
    s = SQLiteStore(":memory:")
    await s.open()
    try:
        yield s
    finally:
        await s.close()


async def make_service(
    store: SQLiteStore,
    logs_request_timeout: float = 5.0,
    check_addresses: bool = False,
    **cluster: Any,
) -> ClusterService:
    settings = ServiceSettings(
        options=Options(),
        cluster_config=admin_config(**cluster),
        api_url="http://gateway/api",
        logs_request_timeout=logs_request_timeout,
        check_addresses=check_addresses,
        check_timeout=2.0,
    )
    service = ClusterService(store, settings, SchedulerAPI())
    await service.start()
    return service


def beat(count: int = 0, active: list[str] | None = None) -> dict[str, Any]:
    return {
        "scheduler_address": "tls://127.0.0.1:1",
        "dashboard_address": "http://127.0.0.1:2",
        "api_address": "http://127.0.0.1:3",
        "count": count,
        "active_workers": active or [],
        "closing_workers": [],
        "closed_workers": [],
    }


async def test_a_cluster_that_never_starts_fails_at_its_start_timeout(store: SQLiteStore) -> None:
    service = await make_service(store, cluster_start_timeout=4)
    c = await service.create(ALICE, {})
    assert await service.check_timeouts(c.start_time + 3 * S) == 0
    assert await service.check_timeouts(c.start_time + 5 * S) == 1
    report = await service.get(ALICE, c.name)
    assert report.target == Target.FAILED and report.status == Status.STOPPING
    assert "cluster_start_timeout (4 s)" in report.reason
    # The launcher tears it down: FAILED, and stored so.
    await service.report_cluster(c.name, Observed.STOPPED, "", "")
    stored = await store.get_cluster(c.name)
    assert stored is not None and stored.status == Status.FAILED
    assert "cluster_start_timeout" in stored.reason


async def test_a_start_timeout_says_why_the_first_heartbeat_was_refused(
    store: SQLiteStore,
) -> None:
    """A scheduler whose address the registry cannot confirm keeps sending its first
    heartbeat; the cluster's failure names the check, not a scheduler that never spoke."""
    service = await make_service(store, check_addresses=True, cluster_start_timeout=4)
    c = await service.create(ALICE, {})
    await service.report_cluster(c.name, Observed.STARTING, "{}", "")
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    body = {**beat(), "scheduler_address": f"tls://127.0.0.1:{port}"}
    with pytest.raises(InvalidRequest, match="is not reachable"):
        await service.heartbeat(Identity("alice", cluster=c.name), c.name, body)
    assert await service.check_timeouts(c.start_time + 5 * S) == 1
    report = await service.get(ALICE, c.name)
    assert report.reason.startswith(
        "Cluster failed to start within cluster_start_timeout (4 s): its scheduler's first "
        f"heartbeat was refused: scheduler_address tls://127.0.0.1:{port} is not reachable"
    ), report.reason


async def test_a_silent_scheduler_fails_at_its_heartbeat_timeout(store: SQLiteStore) -> None:
    service = await make_service(store, heartbeat_period=1, heartbeat_timeout=3)
    c = await service.create(ALICE, {})
    await service.heartbeat(Identity("alice", cluster=c.name), c.name, beat())
    running = await service.get(ALICE, c.name)
    assert running.status == Status.RUNNING and running.last_heartbeat is not None
    assert await service.check_timeouts(running.last_heartbeat + 2 * S) == 0
    assert await service.check_timeouts(running.last_heartbeat + 4 * S) == 1
    failed = await service.get(ALICE, c.name)
    assert failed.target == Target.FAILED
    assert (
        "stopped sending heartbeats" in failed.reason and "(heartbeat_timeout 3 s)" in failed.reason
    )
    # A late heartbeat does not revive it.
    await service.heartbeat(Identity("alice", cluster=c.name), c.name, beat())
    assert (await service.get(ALICE, c.name)).target == Target.FAILED


async def test_late_workers_count_as_failed_starts(store: SQLiteStore) -> None:
    service = await make_service(store, worker_start_timeout=10, worker_start_failure_limit=2)
    service.started -= 60 * S  # the registry has been up for a while
    c = await service.create(ALICE, {})
    token = Identity("alice", cluster=c.name)
    await service.heartbeat(token, c.name, beat(count=1))
    [first] = (await service.get(ALICE, c.name)).workers
    # Make the worker older than its timeout, as if 11 s had passed.
    service._active[c.name].workers[first].start_time -= 11 * S
    await service.heartbeat(token, c.name, beat(count=1))
    snap = await service.get(ALICE, c.name)
    assert snap.workers[first].target == Target.FAILED
    assert "worker_start_timeout (10 s)" in snap.workers[first].reason
    [second] = [n for n, w in snap.workers.items() if w.target == Target.RUNNING]
    assert snap.target == Target.RUNNING  # one failure, the limit is 2
    service._active[c.name].workers[second].start_time -= 11 * S
    await service.heartbeat(token, c.name, beat(count=1))
    snap = await service.get(ALICE, c.name)
    assert snap.target == Target.FAILED
    assert snap.reason.startswith("2 consecutive workers failed to start")
    assert all(w.target != Target.RUNNING for w in snap.workers.values())


async def test_a_connected_worker_resets_the_failure_count(store: SQLiteStore) -> None:
    service = await make_service(store, worker_start_failure_limit=2)
    c = await service.create(ALICE, {})
    token = Identity("alice", cluster=c.name)
    await service.heartbeat(token, c.name, beat(count=1))
    for _ in range(3):
        [w] = [n for n, w in (await service.get(ALICE, c.name)).workers.items()]
        await service.report_worker(c.name, w, Observed.STOPPED, "", "worker exited with code 2")
        snap = await service.get(ALICE, c.name)
        if snap.target != Target.RUNNING:
            break
        [w] = list(snap.workers)
        await service.heartbeat(token, c.name, beat(count=1, active=[w]))
    # exit, connect, exit, connect, exit: never two failures in a row.
    assert (await service.get(ALICE, c.name)).target == Target.RUNNING


async def test_worker_failures_fail_the_cluster_at_the_per_cluster_limit(
    store: SQLiteStore,
) -> None:
    service = await make_service(store, worker_start_failure_limit=3)
    c = await service.create(ALICE, {})
    await service.heartbeat(Identity("alice", cluster=c.name), c.name, beat(count=1))
    for i in range(3):
        snap = await service.get(ALICE, c.name)
        assert snap.target == Target.RUNNING, f"failed after {i} worker failures"
        [w] = [n for n, w in snap.workers.items() if w.target == Target.RUNNING]
        await service.report_worker(c.name, w, Observed.STOPPED, "", "worker exited with code 2")
    snap = await service.get(ALICE, c.name)
    assert snap.target == Target.FAILED
    assert snap.reason == (
        "3 consecutive workers failed to start (last: worker exited with code 2)"
    )


async def test_worker_failures_in_a_row_survive_a_registry_restart(store: SQLiteStore) -> None:
    """The count lives in the cluster's record: a restarted registry (or a replica taking
    over) does not give a cluster whose workers keep failing a fresh allowance."""
    first = await make_service(store, worker_start_failure_limit=3)
    c = await first.create(ALICE, {})
    await first.heartbeat(Identity("alice", cluster=c.name), c.name, beat(count=1))

    async def fail_one(service: ClusterService) -> ClusterRecord:
        snap = await service.get(ALICE, c.name)
        [w] = [n for n, w in snap.workers.items() if w.target == Target.RUNNING]
        await service.report_worker(c.name, w, Observed.STOPPED, "", "worker exited with code 2")
        return await service.get(ALICE, c.name)

    for _ in range(2):
        await fail_one(first)
    stored = await store.get_cluster(c.name)
    assert stored is not None and stored.worker_start_failures == 2
    second = await make_service(store, worker_start_failure_limit=3)  # the restarted one
    snap = await fail_one(second)
    assert snap.target == Target.FAILED
    assert snap.reason.startswith("3 consecutive workers failed to start")


async def test_retention_purges_only_old_finished_clusters(store: SQLiteStore) -> None:
    old_stopped = record(name="old", target=Target.STOPPED, observed=Observed.STOPPED,
                         stop_time=1_000)  # fmt: skip
    old_stopped.workers["w"] = WorkerRecord("w", Target.STOPPED, Observed.STOPPED, stop_time=900)
    old_failed = record(name="oldfail", target=Target.FAILED, observed=Observed.STOPPED,
                        stop_time=2_000)  # fmt: skip
    recent = record(name="recent", target=Target.STOPPED, observed=Observed.STOPPED,
                    stop_time=9_000)  # fmt: skip
    ancient_but_running = record(name="active", start_time=1, observed=Observed.RUNNING)
    for c in (old_stopped, old_failed, recent, ancient_but_running):
        await store.save_cluster(c, c.workers)
        await store.save_logs(c.name, {"scheduler": f"log of {c.name}"}, 1)

    keeper = Housekeeping(
        lambda: asyncio.sleep(0, 0),
        store.purge_finished,
        check_period=1,
        cleanup_period=1,
        max_age=0.001,  # anything that stopped over 1 ms ago
    )
    assert await store.purge_finished(5_000) == 2
    assert await store.get_cluster("old") is None and await store.get_cluster("oldfail") is None
    assert await store.get_logs("old") == {}
    assert await store.get_logs("recent") == {"scheduler": "log of recent"}
    assert await keeper.purge_now() == 1  # "recent" is old by the clock
    assert [c.name for c in await store.load_unfinished()] == ["active"]
    assert await store.get_logs("active") == {"scheduler": "log of active"}
    async with store.db.execute("SELECT count(*) FROM workers") as cur:
        assert (await cur.fetchone()) == (0,)


async def test_housekeeping_runs_its_chores_until_stopped() -> None:
    checks: list[int] = []
    purges: list[int] = []
    done = asyncio.Event()

    async def check() -> int:
        checks.append(1)
        if len(checks) >= 3:
            done.set()
        return 0

    async def purge(before: int) -> int:
        purges.append(before)
        return 0

    leading = False
    asked: list[bool] = []
    asked_thrice = asyncio.Event()

    def leads() -> bool:
        asked.append(leading)
        if len(asked) >= 3:
            asked_thrice.set()
        return leading

    keeper = Housekeeping(
        check, purge, check_period=0.01, cleanup_period=60, max_age=3600, leads=leads
    )
    keeper.start()
    await asyncio.wait_for(asked_thrice.wait(), 10)  # three rounds while another leads
    assert checks == [] and purges == []
    leading = True
    await asyncio.wait_for(done.wait(), 10)
    await keeper.stop()
    assert purges == []  # the purge runs at start (not leading then), then every 60 s
    n, rounds = len(checks), len(asked)
    for _ in range(20):  # let anything still scheduled run
        await asyncio.sleep(0)
    assert (len(checks), len(asked)) == (n, rounds)  # stopped
    purged = asyncio.Event()

    async def purge_once(before: int) -> int:
        purged.set()
        return await purge(before)

    keeper = Housekeeping(check, purge_once, check_period=60, cleanup_period=60, max_age=3600)
    keeper.start()
    await asyncio.wait_for(purged.wait(), 10)  # the purge runs at start
    await keeper.stop()
    assert len(purges) == 1


# -- workers and why they failed ----------------------------------------------------------

OOM = "worker w exceeded its memory limit of 400 MiB (OOMKilled)"


async def two_connected_workers(service: ClusterService) -> tuple[str, Identity, str, str]:
    """A new cluster of alice's with two workers connected: its name, its scheduler's
    identity and the workers' names (sorted)."""
    c = await service.create(ALICE, {})
    token = Identity("alice", cluster=c.name)
    await service.heartbeat(token, c.name, beat(count=2))
    first, second = sorted((await service.get(ALICE, c.name)).workers)
    await service.heartbeat(token, c.name, beat(count=2, active=[first, second]))
    return c.name, token, first, second


async def test_workers_lists_the_ended_ones_with_the_launchers_reason(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = await make_service(store)
    name, token, first, second = await two_connected_workers(service)
    await service.report_worker(name, first, Observed.STOPPED, "", OOM)
    listed = {w.name: w for w in await service.workers(ALICE, name)}
    assert len(listed) == 3  # the failed one, the other, and the failed one's replacement
    assert (listed[first].status, listed[first].reason) == (Status.FAILED, OOM)
    assert listed[first].stop_time is not None
    assert (listed[second].status, listed[second].reason) == (Status.RUNNING, "")
    [replacement] = set(listed) - {first, second}
    assert listed[replacement].status == Status.PENDING
    # Newest first, bounded.
    store_order = [w.name for w in await service.workers(ALICE, name)]
    starts = [listed[n].start_time for n in store_order]
    assert starts == sorted(starts, reverse=True)
    monkeypatch.setattr(clusters, "MAX_LISTED_WORKERS", 1)
    assert len(await service.workers(ALICE, name)) == 1
    # Only the owner and admins; a cluster token is not a user.
    assert len(await service.workers(ADMIN, name)) == 1
    with pytest.raises(PermissionDenied, match="User bob lacks permissions to view cluster"):
        await service.workers(BOB, name)
    with pytest.raises(PermissionDenied):
        await service.workers(token, name)
    with pytest.raises(ClusterNotFound):
        await service.workers(ALICE, "nope")
    # Kept with the finished cluster's record.
    await service.stop(ALICE, name)
    await service.report_cluster(name, Observed.STOPPED, "", "")
    monkeypatch.setattr(clusters, "MAX_LISTED_WORKERS", 1000)
    ended = {w.name: w for w in await service.workers(ALICE, name)}
    assert set(ended) == set(listed) and ended[first].reason == OOM
    assert all(w.status in (Status.STOPPED, Status.FAILED) for w in ended.values())


async def test_the_launchers_reason_replaces_the_schedulers(store: SQLiteStore) -> None:
    """The scheduler often sees a worker go before its launcher sees why (a memory limit,
    a cancelled job): the launcher's words replace the scheduler's vaguer ones."""
    service = await make_service(store)
    name, token, died, scaled = await two_connected_workers(service)
    await service.heartbeat(
        token, name, {**beat(count=2, active=[scaled]), "closed_workers": [died]}
    )
    [w] = [w for w in await service.workers(ALICE, name) if w.name == died]
    assert (w.status, w.reason) == (Status.STOPPING, "worker left the scheduler unexpectedly")
    await service.report_worker(name, died, Observed.STOPPED, "", OOM)
    [w] = [w for w in await service.workers(ALICE, name) if w.name == died]
    assert (w.status, w.reason) == (Status.FAILED, OOM)
    # A worker closed on purpose (a scale down) stays STOPPED, without a reason.
    await service.heartbeat(
        token, name, {**beat(count=1, active=[scaled]), "closing_workers": [scaled]}
    )
    await service.heartbeat(token, name, {**beat(count=1), "closed_workers": [scaled]})
    await service.report_worker(name, scaled, Observed.STOPPED, "", "exited with code 0")
    [w] = [w for w in await service.workers(ALICE, name) if w.name == scaled]
    assert (w.status, w.reason) == (Status.STOPPED, "")


# -- logs ---------------------------------------------------------------------------------


async def test_logs_of_a_finished_cluster_stay_with_its_record(
    store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = await make_service(store)
    c = await service.create(ALICE, {})
    await service.report_cluster(c.name, Observed.STARTING, '{"pid": 1}', "")
    await service.report_cluster(c.name, None, "", "scheduler exited with code 3")
    await service.save_logs(
        c.name, {"worker-b": "w\x00b", "scheduler": "Traceback: boom", "worker-a": "wa"}, 0
    )
    await service.report_cluster(c.name, Observed.STOPPED, "", "")
    assert (await service.list_clusters(ALICE)) == []
    logs = await service.logs(ALICE, c.name)
    assert list(logs) == ["scheduler", "worker-a", "worker-b"]
    assert logs["scheduler"] == "Traceback: boom"
    assert logs["worker-b"] == "w\ufffdb"  # no NUL in stored text
    assert await service.logs(ADMIN, c.name) == logs
    with pytest.raises(PermissionDenied, match="User bob lacks permissions to view cluster"):
        await service.logs(BOB, c.name)
    with pytest.raises(PermissionDenied):
        await service.logs(Identity("alice", cluster=c.name), c.name)
    with pytest.raises(ClusterNotFound):
        await service.logs(ALICE, "nope")
    with pytest.raises(ClusterNotFound):
        await service.save_logs("nope", {"scheduler": "x"}, 0)
    # A reply is bounded: the scheduler, then the most recently saved, until the limit.
    await store.save_logs(c.name, {"worker-c": "newest"}, updated_time=2**50)
    monkeypatch.setattr(clusters, "MAX_LOGS_BYTES", 40)
    assert list(await service.logs(ALICE, c.name)) == ["scheduler", "worker-c"]
    monkeypatch.setattr(clusters, "MAX_LOGS_BYTES", 1)
    assert list(await service.logs(ALICE, c.name)) == ["scheduler"]  # always one


async def test_logs_of_an_active_cluster_are_asked_of_its_launcher(store: SQLiteStore) -> None:
    service = await make_service(store)
    c = await service.create(ALICE, {})
    requests: list[int] = []

    async def launcher() -> None:
        with service.launch_hub.subscribe() as sub:
            while True:
                batch = await sub.next_batch()
                rec = batch.get(c.name)
                if rec is not None and rec.logs_request > rec.logs_answered:
                    requests.append(rec.logs_request)
                    await service.save_logs(
                        c.name, {"scheduler": f"live {len(requests)}"}, rec.logs_request
                    )

    task = asyncio.create_task(launcher())
    try:
        await asyncio.sleep(0)  # let it subscribe
        assert await service.logs(ALICE, c.name) == {"scheduler": "live 1"}
        # An answer less than a second old serves the next caller too.
        assert await service.logs(ALICE, c.name) == {"scheduler": "live 1"}
        assert len(requests) == 1
        record = service._active[c.name]
        record.logs_request -= 2000  # as if that request was made 2 s ago
        record.logs_answered -= 2000
        assert await service.logs(ALICE, c.name) == {"scheduler": "live 2"}
        # A new request, larger than the one before (as shifted above).
        assert len(requests) == 2 and requests[1] > requests[0] - 2000
    finally:
        task.cancel()


async def test_logs_of_an_active_cluster_without_a_launcher_answer_in_time(
    store: SQLiteStore,
) -> None:
    service = await make_service(store, logs_request_timeout=0.2)
    c = await service.create(ALICE, {})
    await store.save_logs(c.name, {"scheduler": "collected earlier"}, 1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    assert await service.logs(ALICE, c.name) == {"scheduler": "collected earlier"}
    assert 0.15 < loop.time() - started < 5
    # The request stays open for the launcher: a second caller does not add another.
    first = (await service.get(ALICE, c.name)).logs_request
    await service.logs(ALICE, c.name)
    assert (await service.get(ALICE, c.name)).logs_request == first
    stored = await store.get_cluster(c.name)
    assert stored is not None and stored.logs_request == first  # persisted (migration 0002)
    assert json.loads(stored.config)["worker_start_failure_limit"] == 3
