"""Reconcile decisions against a fake backend and a fake registry stub (no processes)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any

import grpc
import pytest
from flotilla.registry.v1 import internal_pb2, types_pb2
from flotilla_launcher.backends.base import (
    Backend,
    BackendError,
    ClusterSpec,
    ProcessStatus,
    WorkerSpec,
)
from flotilla_launcher.config import Launcher
from flotilla_launcher.reconciler import Reconciler

RUNNING = types_pb2.TARGET_RUNNING


class FakeBackend(Backend):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.started: list[str] = []
        self.stopped: list[str] = []
        self.alive: set[str] = set()
        self.fail_start = ""
        self.logs: dict[str, str] = {}
        self.log_reads: list[tuple[str, dict[str, Any], int, int]] = []
        self.hook_specs: list[tuple[str, ClusterSpec]] = []

    async def start_cluster(self, cluster: ClusterSpec) -> AsyncIterator[dict[str, Any]]:
        yield {"workdir": f"/w/{cluster.name}"}
        if self.fail_start:
            raise BackendError(self.fail_start)
        self.started.append(cluster.name)
        self.alive.add(cluster.name)
        yield {"workdir": f"/w/{cluster.name}", "pid": 100 + len(self.started)}

    async def stop_cluster(self, cluster: ClusterSpec, state: Mapping[str, Any]) -> None:
        self.hook_specs.append(("stop", cluster))
        self.stopped.append(cluster.name)
        self.alive.discard(cluster.name)

    async def check_clusters(
        self, clusters: Sequence[tuple[ClusterSpec, Mapping[str, Any]]]
    ) -> list[ProcessStatus]:
        return [
            ProcessStatus(True) if c.name in self.alive else ProcessStatus(False, "exited 3")
            for c, _ in clusters
        ]

    async def start_worker(self, worker: WorkerSpec) -> AsyncIterator[dict[str, Any]]:
        self.started.append(f"{worker.cluster.name}/{worker.name}")
        self.alive.add(f"{worker.cluster.name}/{worker.name}")
        yield {"pid": 7}

    async def stop_worker(self, worker: WorkerSpec, state: Mapping[str, Any]) -> None:
        self.stopped.append(f"{worker.cluster.name}/{worker.name}")
        self.alive.discard(f"{worker.cluster.name}/{worker.name}")

    async def check_workers(
        self, workers: Sequence[tuple[WorkerSpec, Mapping[str, Any]]]
    ) -> list[ProcessStatus]:
        return [
            ProcessStatus(f"{w.cluster.name}/{w.name}" in self.alive, "worker exited")
            for w, _ in workers
        ]

    async def read_logs(
        self, cluster: ClusterSpec, state: Mapping[str, Any], tail_bytes: int, total_bytes: int
    ) -> dict[str, str]:
        self.hook_specs.append(("logs", cluster))
        self.log_reads.append((cluster.name, dict(state), tail_bytes, total_bytes))
        return dict(self.logs)


class FakeStub:
    def __init__(self) -> None:
        self.cluster_reports: list[internal_pb2.ReportClusterRequest] = []
        self.worker_reports: list[internal_pb2.ReportWorkerRequest] = []
        self.log_saves: list[internal_pb2.SaveClusterLogsRequest] = []
        self.alive: list[list[str]] = []

    async def ReportAlive(self, req: Any, **kwargs: Any) -> Any:
        self.alive.append(list(req.names))
        return internal_pb2.ReportAliveResponse()

    async def ReportCluster(self, req: Any, **kwargs: Any) -> Any:
        self.cluster_reports.append(req)
        return internal_pb2.ReportClusterResponse()

    async def ReportWorker(self, req: Any, **kwargs: Any) -> Any:
        self.worker_reports.append(req)
        return internal_pb2.ReportWorkerResponse()

    async def SaveClusterLogs(self, req: Any, **kwargs: Any) -> Any:
        self.log_saves.append(req)
        return internal_pb2.SaveClusterLogsResponse()


@pytest.fixture
def setup() -> tuple[Reconciler, FakeBackend, FakeStub]:
    backend = FakeBackend()
    reconciler = Reconciler(backend, "local", "127.0.0.1:1", "secret")
    stub = FakeStub()
    reconciler._stub = stub  # type: ignore[assignment]
    return reconciler, backend, stub


def record(**kwargs: Any) -> internal_pb2.LaunchCluster:
    base: dict[str, Any] = dict(
        name="c1",
        owner="alice",
        backend="local",
        target=RUNNING,
        observed=types_pb2.OBSERVED_CREATED,
        config_json="{}",
        token="t",
        api_url="http://x/api",
        revision=1,
    )
    base.update(kwargs)
    return internal_pb2.LaunchCluster(**base)


def initial(*recs: internal_pb2.LaunchCluster) -> internal_pb2.WatchClustersResponse:
    return internal_pb2.WatchClustersResponse(initial=True, clusters=list(recs))


async def test_start_reports_each_checkpoint_and_a_stale_record_does_not_restart(
    setup: tuple[Reconciler, FakeBackend, FakeStub],
) -> None:
    reconciler, backend, stub = setup
    reconciler._apply(initial(record()))
    await reconciler._reconcile("c1")
    assert backend.started == ["c1"]
    assert [r.observed for r in stub.cluster_reports] == [types_pb2.OBSERVED_STARTING] * 2
    assert json.loads(stub.cluster_reports[-1].state_json)["pid"] == 101
    # The watch has not caught up yet (still CREATED): no second scheduler.
    await reconciler._reconcile("c1")
    assert backend.started == ["c1"]


async def test_adopts_a_live_checkpoint_instead_of_starting(
    setup: tuple[Reconciler, FakeBackend, FakeStub],
) -> None:
    reconciler, backend, stub = setup
    backend.alive.add("c1")
    rec = record(
        observed=types_pb2.OBSERVED_RUNNING,
        state_json=json.dumps({"pid": 5}),
        scheduler_address="127.0.0.1:9",
        workers=[
            internal_pb2.LaunchWorker(
                name="w1", target=RUNNING, observed=types_pb2.OBSERVED_STARTING
            )
        ],
    )
    backend.alive.add("c1/w1")
    reconciler._apply(initial(rec))
    await reconciler._reconcile("c1")
    assert backend.started == [] and stub.cluster_reports == [] and stub.worker_reports == []
    await reconciler.check_now()  # both are now watched by the periodic check
    backend.alive.discard("c1/w1")
    await reconciler.check_now()
    await reconciler._reconcile("c1")
    [report] = stub.worker_reports
    assert report.observed == types_pb2.OBSERVED_STOPPED and report.failure_reason


async def test_dead_checkpoint_is_reported_as_failure_once(
    setup: tuple[Reconciler, FakeBackend, FakeStub],
) -> None:
    reconciler, backend, stub = setup
    reconciler._apply(initial(record(observed=types_pb2.OBSERVED_STARTING, state_json="{}")))
    await reconciler._reconcile("c1")
    await reconciler._reconcile("c1")
    [report] = stub.cluster_reports
    assert report.failure_reason == "exited 3"
    assert backend.started == []


async def test_start_failure_is_reported_with_the_backend_reason(
    setup: tuple[Reconciler, FakeBackend, FakeStub],
) -> None:
    reconciler, backend, stub = setup
    backend.fail_start = "cannot start the scheduler: nope"
    reconciler._apply(initial(record()))
    await reconciler._reconcile("c1")
    assert stub.cluster_reports[-1].failure_reason == "cannot start the scheduler: nope"


async def test_stop_stops_workers_and_scheduler_then_reports_stopped(
    setup: tuple[Reconciler, FakeBackend, FakeStub],
) -> None:
    reconciler, backend, stub = setup
    worker = internal_pb2.LaunchWorker(
        name="w1", target=types_pb2.TARGET_STOPPED, observed=types_pb2.OBSERVED_RUNNING
    )
    reconciler._apply(
        initial(
            record(
                target=types_pb2.TARGET_FAILED,
                observed=types_pb2.OBSERVED_RUNNING,
                workers=[worker],
            )
        )
    )
    await reconciler._reconcile("c1")
    assert sorted(backend.stopped) == ["c1", "c1/w1"]
    assert stub.worker_reports[-1].observed == types_pb2.OBSERVED_STOPPED
    assert stub.cluster_reports[-1].observed == types_pb2.OBSERVED_STOPPED
    # Finished records leave the cache; the cluster is then forgotten.
    reconciler._apply(
        internal_pb2.WatchClustersResponse(
            clusters=[
                record(
                    target=types_pb2.TARGET_FAILED, observed=types_pb2.OBSERVED_STOPPED, revision=2
                )
            ]
        )
    )
    await reconciler._reconcile("c1")
    assert reconciler.cached("c1") is None and "c1" not in reconciler._tracked


class WholeClusterBackend(FakeBackend):
    """A resource manager that runs the whole cluster: stopping it stops the workers."""

    stops_workers_with_cluster = True


def _stopping_with_workers() -> internal_pb2.LaunchCluster:
    return record(
        target=types_pb2.TARGET_STOPPED,
        observed=types_pb2.OBSERVED_RUNNING,
        workers=[
            internal_pb2.LaunchWorker(
                name=name, target=RUNNING, observed=types_pb2.OBSERVED_RUNNING
            )
            for name in ("w1", "w2")
        ]
        + [
            internal_pb2.LaunchWorker(
                name="w0", target=types_pb2.TARGET_STOPPED, observed=types_pb2.OBSERVED_STOPPED
            )
        ],
    )


def test_backends_stop_their_workers_one_by_one_by_default() -> None:
    assert Backend.stops_workers_with_cluster is False
    assert WholeClusterBackend.stops_workers_with_cluster is True


async def test_a_backend_that_stops_workers_with_its_cluster_gets_one_stop() -> None:
    backend = WholeClusterBackend()
    reconciler = Reconciler(backend, "local", "127.0.0.1:1", "secret")
    stub = FakeStub()
    reconciler._stub = stub  # type: ignore[assignment]
    reconciler._apply(initial(_stopping_with_workers()))
    await reconciler._reconcile("c1")
    assert backend.stopped == ["c1"]  # no stop_worker calls
    # The workers that were running are reported stopped all the same, then the cluster.
    assert sorted(r.worker_name for r in stub.worker_reports) == ["w1", "w2"]
    assert {r.observed for r in stub.worker_reports} == {types_pb2.OBSERVED_STOPPED}
    assert stub.cluster_reports[-1].observed == types_pb2.OBSERVED_STOPPED


async def test_a_failed_whole_cluster_stop_reports_no_worker_stopped() -> None:
    class Failing(WholeClusterBackend):
        async def stop_cluster(self, cluster: ClusterSpec, state: Mapping[str, Any]) -> None:
            raise RuntimeError("qdel timed out")

    reconciler = Reconciler(Failing(), "local", "127.0.0.1:1", "secret")
    stub = FakeStub()
    reconciler._stub = stub  # type: ignore[assignment]
    reconciler._apply(initial(_stopping_with_workers()))
    with pytest.raises(RuntimeError, match="qdel"):
        await reconciler._reconcile("c1")
    assert stub.worker_reports == [] and stub.cluster_reports == []


async def test_the_stop_and_logs_hooks_get_the_clusters_own_spec(
    setup: tuple[Reconciler, FakeBackend, FakeStub],
) -> None:
    reconciler, backend, _ = setup
    rec = record(
        target=types_pb2.TARGET_STOPPED,
        observed=types_pb2.OBSERVED_RUNNING,
        config_json=json.dumps({"worker_cores": 4, "partition": "gpu"}),
        tls_cert="CERT",
        tls_key="KEY",
    )
    reconciler._apply(initial(rec))
    await reconciler._reconcile("c1")
    assert [hook for hook, _ in backend.hook_specs] == ["stop", "logs"]
    for _, spec in backend.hook_specs:
        assert spec.config.worker_cores == 4 and spec.config.extra["partition"] == "gpu"
        assert (spec.token, spec.api_url, spec.tls_cert) == ("t", "http://x/api", "CERT")


async def test_a_cluster_with_a_broken_configuration_still_stops(
    setup: tuple[Reconciler, FakeBackend, FakeStub],
) -> None:
    reconciler, backend, stub = setup
    rec = record(
        target=types_pb2.TARGET_STOPPED,
        observed=types_pb2.OBSERVED_RUNNING,
        config_json=json.dumps({"worker_cmd": []}),
    )
    reconciler._apply(initial(rec))
    await reconciler._reconcile("c1")
    assert backend.stopped == ["c1"]
    [(_, spec), _] = backend.hook_specs
    assert spec.config.worker_cmd == ("dask", "worker") and spec.token == "t"
    assert stub.cluster_reports[-1].observed == types_pb2.OBSERVED_STOPPED


async def test_workers_wait_for_the_scheduler_address(
    setup: tuple[Reconciler, FakeBackend, FakeStub],
) -> None:
    reconciler, backend, stub = setup
    backend.alive.add("c1")
    worker = internal_pb2.LaunchWorker(
        name="w1", target=RUNNING, observed=types_pb2.OBSERVED_CREATED
    )
    rec = record(observed=types_pb2.OBSERVED_STARTING, state_json='{"pid": 1}', workers=[worker])
    reconciler._apply(initial(rec))
    await reconciler._reconcile("c1")
    assert backend.started == []
    reconciler._apply(
        internal_pb2.WatchClustersResponse(
            clusters=[
                record(
                    observed=types_pb2.OBSERVED_RUNNING,
                    state_json='{"pid": 1}',
                    workers=[worker],
                    scheduler_address="127.0.0.1:5",
                    revision=2,
                )
            ]
        )
    )
    await reconciler._reconcile("c1")
    assert backend.started == ["c1/w1"]
    assert stub.worker_reports[-1].observed == types_pb2.OBSERVED_STARTING


@pytest.mark.parametrize("ended", [True, False])
async def test_a_worker_the_registry_failed_is_stopped_with_why_it_ended(
    setup: tuple[Reconciler, FakeBackend, FakeStub], ended: bool
) -> None:
    """The scheduler saw the worker leave, so the registry failed it: the stop report
    carries the backend's reason when the worker had already ended, none while it ran."""
    reconciler, backend, stub = setup
    backend.alive.add("c1")
    if not ended:
        backend.alive.add("c1/w1")
    running = {"scheduler_address": "127.0.0.1:5", "state_json": '{"pid": 1}'}
    worker = internal_pb2.LaunchWorker(
        name="w1", target=types_pb2.TARGET_FAILED, observed=types_pb2.OBSERVED_RUNNING,
        state_json='{"pid": 7}',
    )  # fmt: skip
    reconciler._apply(
        initial(record(observed=types_pb2.OBSERVED_RUNNING, workers=[worker], **running))
    )
    await reconciler._reconcile("c1")
    assert backend.stopped == ["c1/w1"]
    [report] = stub.worker_reports
    assert report.observed == types_pb2.OBSERVED_STOPPED
    assert report.failure_reason == ("worker exited" if ended else "")


async def test_logs_are_sent_before_the_stopped_report(
    setup: tuple[Reconciler, FakeBackend, FakeStub],
) -> None:
    reconciler, backend, stub = setup
    backend.logs = {"scheduler": "boom", "worker-w1": "w" * 700_000, "worker-w2": "x" * 700_000}
    calls: list[str] = []
    save, report = stub.SaveClusterLogs, stub.ReportCluster

    async def save_logged(req: Any, **kwargs: Any) -> Any:
        calls.append("logs")
        return await save(req, **kwargs)

    async def report_logged(req: Any, **kwargs: Any) -> Any:
        calls.append(f"report {req.observed}")
        return await report(req, **kwargs)

    stub.SaveClusterLogs, stub.ReportCluster = save_logged, report_logged  # type: ignore[method-assign]
    rec = record(
        target=types_pb2.TARGET_FAILED,
        observed=types_pb2.OBSERVED_RUNNING,
        state_json='{"workdir": "/w/c1", "pid": 3}',
    )
    reconciler._apply(initial(rec))
    await reconciler._reconcile("c1")
    # Split into calls under the batch size, all before the cluster is reported STOPPED.
    assert calls == ["logs", "logs", "report 4"]
    sent = {log.process: log.text for req in stub.log_saves for log in req.logs}
    assert sent == backend.logs
    assert [req.answers_request for req in stub.log_saves] == [0, 0]
    [(name, state, tail, total)] = backend.log_reads
    assert name == "c1" and state["workdir"] == "/w/c1"
    assert (tail, total) == (256 * 1024, 4 * 1024 * 1024)


async def test_a_logs_request_of_an_active_cluster_is_answered_once(
    setup: tuple[Reconciler, FakeBackend, FakeStub],
) -> None:
    reconciler, backend, stub = setup
    backend.alive.add("c1")
    backend.logs = {"scheduler": "running fine"}
    rec = record(observed=types_pb2.OBSERVED_RUNNING, state_json='{"pid": 1}', logs_request=7)
    reconciler._apply(initial(rec))
    await reconciler._reconcile("c1")
    await reconciler._reconcile("c1")  # the same request: not answered twice
    [req] = stub.log_saves
    assert req.answers_request == 7
    assert [(log.process, log.text) for log in req.logs] == [("scheduler", "running fine")]
    backend.logs = {}  # a backend without logs still answers (with none)
    reconciler._apply(
        internal_pb2.WatchClustersResponse(
            clusters=[
                record(
                    observed=types_pb2.OBSERVED_RUNNING,
                    state_json='{"pid": 1}',
                    logs_request=9,
                    revision=2,
                )
            ]
        )
    )
    await reconciler._reconcile("c1")
    assert stub.log_saves[-1].answers_request == 9 and not stub.log_saves[-1].logs


async def test_reading_logs_may_fail_without_blocking_the_stop(
    setup: tuple[Reconciler, FakeBackend, FakeStub],
) -> None:
    reconciler, backend, stub = setup

    async def broken(*args: Any) -> dict[str, str]:
        raise OSError("disk on fire")

    backend.read_logs = broken  # type: ignore[method-assign]
    reconciler._apply(
        initial(
            record(
                target=types_pb2.TARGET_STOPPED, observed=types_pb2.OBSERVED_RUNNING, logs_request=3
            )
        )
    )
    await reconciler._reconcile("c1")
    assert stub.cluster_reports[-1].observed == types_pb2.OBSERVED_STOPPED
    [req] = stub.log_saves
    assert req.answers_request == 3 and not req.logs


async def test_a_registry_without_logs_does_not_block_the_stop(
    setup: tuple[Reconciler, FakeBackend, FakeStub],
) -> None:
    reconciler, backend, stub = setup
    backend.logs = {"scheduler": "x"}

    async def unimplemented(req: Any, **kwargs: Any) -> Any:
        raise grpc.aio.AioRpcError(
            grpc.StatusCode.UNIMPLEMENTED, grpc.aio.Metadata(), grpc.aio.Metadata()
        )

    stub.SaveClusterLogs = unimplemented  # type: ignore[method-assign]
    reconciler._apply(
        initial(record(target=types_pb2.TARGET_STOPPED, observed=types_pb2.OBSERVED_RUNNING))
    )
    await reconciler._reconcile("c1")
    assert stub.cluster_reports[-1].observed == types_pb2.OBSERVED_STOPPED


async def test_a_pushed_change_runs_the_status_check_at_once_and_coalesces() -> None:
    """Backend.changed() from any thread wakes the check loop long before its period;
    many calls before the check runs make one check."""
    backend = FakeBackend()
    reconciler = Reconciler(
        backend, "local", "127.0.0.1:1", "secret", Launcher(status_check_period=3600)
    )
    checks: list[float] = []
    ran = asyncio.Event()

    async def check_now() -> None:
        checks.append(asyncio.get_running_loop().time())
        ran.set()

    reconciler.check_now = check_now  # type: ignore[method-assign]
    backend.changed()  # before the loop runs: nothing to wake, no error
    loop_task = asyncio.create_task(reconciler._check_loop())
    try:
        await asyncio.sleep(0)  # the loop is waiting now
        pushers = [threading.Thread(target=backend.changed) for _ in range(5)]
        for t in pushers:
            t.start()
        for t in pushers:
            t.join()
        await asyncio.wait_for(ran.wait(), 5)
        ran.clear()
        await asyncio.sleep(0.2)
        assert len(checks) == 1  # five pushes before the check: one check
        backend.changed()  # from the loop's own thread
        await asyncio.wait_for(ran.wait(), 5)
        assert len(checks) == 2
    finally:
        loop_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop_task
