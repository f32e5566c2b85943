"""Test doubles of the registry for the launcher: its internal gRPC API and its REST API.

``FakeRegistry`` implements ``LauncherService`` (watch + reports, behind the real
internal-token interceptor) and the two REST routes a scheduler calls (heartbeat and
DELETE), applying the state model of docs/internals.md in a simplified form.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from flotilla.registry.v1 import internal_pb2, internal_pb2_grpc, types_pb2
from flotilla_common.grpcserver import InternalTokenInterceptor, start_server
from flotilla_common.tls import new_keypair
from flotilla_launcher import procfs
from flotilla_launcher.backends.local import LocalBackend
from flotilla_launcher.config import Launcher
from flotilla_launcher.reconciler import Reconciler
from traitlets.config import Config

TOKEN = "internal-secret"
RUNNING = types_pb2.TARGET_RUNNING


async def wait_for(
    predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition"
) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


class FakeRegistry(internal_pb2_grpc.LauncherServiceServicer):  # type: ignore[misc]
    """In-memory registry: the records, the watchers, and what the cluster sent."""

    def __init__(self) -> None:
        self.records: dict[str, internal_pb2.LaunchCluster] = {}
        self.watchers: list[asyncio.Queue[internal_pb2.WatchClustersResponse]] = []
        self.cluster_reports: list[internal_pb2.ReportClusterRequest] = []
        self.worker_reports: list[internal_pb2.ReportWorkerRequest] = []
        self.heartbeats: list[tuple[str, dict[str, Any]]] = []
        self.deletes: list[str] = []
        # Reports for which this returns True get no answer (their launcher is to die
        # waiting for it); they are kept in ``held``, not applied.
        self.hold: Callable[[Any], bool] | None = None
        self.held: list[Any] = []
        self.logs: dict[str, dict[str, str]] = {}
        self.logs_answered: dict[str, int] = {}
        #: The names of each ReportAlive call, by backend.
        self.alive: list[tuple[str, list[str]]] = []
        self.api_url = ""
        self.grpc_address = ""

    # -- records ----------------------------------------------------------------------

    def add_cluster(self, name: str | None = None, owner: str = "alice", **config: Any) -> str:
        name = name or uuid.uuid4().hex
        cert, key = new_keypair(name)
        cfg = {
            "scheduler_cmd": ["dask", "scheduler"],
            "worker_cmd": ["dask", "worker"],
            "scheduler_preload": "flotilla.scheduler_preload",
            "environment": {},
            "worker_threads": 1,
            "worker_memory": 512 * 2**20,
            "heartbeat_period": 0.5,
            "adaptive_period": 3.0,
            "idle_timeout": 0.0,
        }
        cfg.update(config)
        self.records[name] = internal_pb2.LaunchCluster(
            name=name,
            owner=owner,
            backend="local",
            target=RUNNING,
            observed=types_pb2.OBSERVED_CREATED,
            config_json=json.dumps(cfg),
            tls_cert=cert,
            tls_key=key,
            token=uuid.uuid4().hex,
            api_url=self.api_url,
        )
        self.publish(name)
        return name

    def publish(self, name: str) -> None:
        rec = self.records[name]
        rec.revision += 1
        for q in self.watchers:
            msg = internal_pb2.WatchClustersResponse()
            msg.clusters.add().CopyFrom(rec)
            q.put_nowait(msg)

    def set_target(self, name: str, target: int) -> None:
        rec = self.records[name]
        rec.target = target  # type: ignore[assignment]
        if target != RUNNING:
            for w in rec.workers:
                if w.target == RUNNING:
                    w.target = types_pb2.TARGET_STOPPED
        self.publish(name)

    def state(self, name: str) -> dict[str, Any]:
        return json.loads(self.records[name].state_json or "{}")

    def worker(self, name: str, worker: str) -> internal_pb2.LaunchWorker:
        return next(w for w in self.records[name].workers if w.name == worker)

    # -- LauncherService ----------------------------------------------------------------

    async def WatchClusters(
        self, request: internal_pb2.WatchClustersRequest, context: Any
    ) -> AsyncIterator[internal_pb2.WatchClustersResponse]:
        q: asyncio.Queue[internal_pb2.WatchClustersResponse] = asyncio.Queue()
        self.watchers.append(q)
        try:
            first = internal_pb2.WatchClustersResponse(initial=True)
            for rec in self.records.values():
                if rec.backend == request.backend and not (
                    rec.target != RUNNING and rec.observed == types_pb2.OBSERVED_STOPPED
                ):
                    first.clusters.add().CopyFrom(rec)
            yield first
            while True:
                yield await q.get()
        finally:
            self.watchers.remove(q)

    async def ReportCluster(
        self, request: internal_pb2.ReportClusterRequest, context: Any
    ) -> internal_pb2.ReportClusterResponse:
        await self._maybe_hold(request, context)
        self.cluster_reports.append(request)
        rec = self.records.get(request.name)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such cluster")
        assert rec is not None
        if request.observed > rec.observed:  # observed never moves backwards
            rec.observed = request.observed
        if request.state_json:
            rec.state_json = request.state_json
        if request.failure_reason and rec.target == RUNNING:
            self.set_target(request.name, types_pb2.TARGET_FAILED)
            return internal_pb2.ReportClusterResponse()
        self.publish(request.name)
        return internal_pb2.ReportClusterResponse()

    async def ReportWorker(
        self, request: internal_pb2.ReportWorkerRequest, context: Any
    ) -> internal_pb2.ReportWorkerResponse:
        await self._maybe_hold(request, context)
        self.worker_reports.append(request)
        rec = self.records.get(request.cluster_name)
        if rec is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such cluster")
        assert rec is not None
        w = self.worker(request.cluster_name, request.worker_name)
        if request.observed > w.observed:
            w.observed = request.observed
        if request.state_json:
            w.state_json = request.state_json
        if request.observed == types_pb2.OBSERVED_STOPPED and w.target == RUNNING:
            w.target = (
                types_pb2.TARGET_FAILED if request.failure_reason else types_pb2.TARGET_STOPPED
            )
        self.publish(request.cluster_name)
        return internal_pb2.ReportWorkerResponse()

    async def _maybe_hold(self, request: Any, context: Any) -> None:
        if self.hold is None or not self.hold(request):
            return
        self.held.append(request)
        # No answer while the test holds reports (its launcher is killed meanwhile).
        while self.hold is not None and not context.done():
            await asyncio.sleep(0.05)
        await context.abort(grpc.StatusCode.UNAVAILABLE, "report held by the test")

    async def SaveClusterLogs(
        self, request: internal_pb2.SaveClusterLogsRequest, context: Any
    ) -> internal_pb2.SaveClusterLogsResponse:
        if request.cluster_name not in self.records:
            await context.abort(grpc.StatusCode.NOT_FOUND, "no such cluster")
        saved = self.logs.setdefault(request.cluster_name, {})
        saved.update({log.process: log.text for log in request.logs})
        if request.answers_request:
            self.logs_answered[request.cluster_name] = request.answers_request
        return internal_pb2.SaveClusterLogsResponse()

    async def ReportAlive(
        self, request: internal_pb2.ReportAliveRequest, context: Any
    ) -> internal_pb2.ReportAliveResponse:
        self.alive.append((request.backend, list(request.names)))
        return internal_pb2.ReportAliveResponse()

    def request_logs(self, name: str) -> int:
        """Ask the launcher for the current logs, as the registry does; returns the id."""
        rec = self.records[name]
        rec.logs_request += 1
        self.publish(name)
        return rec.logs_request

    # -- REST (what schedulers call) ----------------------------------------------------

    def _authorized(self, request: web.Request, name: str) -> bool:
        rec = self.records.get(name)
        return rec is not None and request.headers.get("Authorization") == f"token {rec.token}"

    async def heartbeat(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not self._authorized(request, name):
            return web.json_response({"error": "Unauthorized"}, status=401)
        body = await request.json()
        self.heartbeats.append((name, body))
        rec = self.records[name]
        if rec.target != RUNNING:
            return web.Response()
        if rec.observed != types_pb2.OBSERVED_RUNNING:
            rec.observed = types_pb2.OBSERVED_RUNNING
            rec.scheduler_address = body["scheduler_address"].split("://", 1)[-1]
        for w in rec.workers:
            if w.name in body["active_workers"] or w.name in body["closing_workers"]:
                if w.observed < types_pb2.OBSERVED_RUNNING:
                    w.observed = types_pb2.OBSERVED_RUNNING
            if w.name in body["closed_workers"] and w.target == RUNNING:
                w.target = types_pb2.TARGET_STOPPED
        live = [w for w in rec.workers if w.target == RUNNING]
        for _ in range(body["count"] - len(live)):
            rec.workers.add(
                name=uuid.uuid4().hex, target=RUNNING, observed=types_pb2.OBSERVED_CREATED
            )
        self.publish(name)
        return web.Response()

    async def delete(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if not self._authorized(request, name):
            return web.json_response({"error": "Unauthorized"}, status=401)
        self.deletes.append(name)
        self.set_target(name, types_pb2.TARGET_STOPPED)
        return web.Response(status=204)

    def last_heartbeat(self, name: str) -> dict[str, Any] | None:
        beats = [body for n, body in self.heartbeats if n == name]
        return beats[-1] if beats else None


@pytest.fixture
async def registry() -> AsyncIterator[FakeRegistry]:
    """The registry double, serving gRPC and REST on free 127.0.0.1 ports."""
    reg = FakeRegistry()
    server, port = await start_server(
        "127.0.0.1:0",
        lambda s: internal_pb2_grpc.add_LauncherServiceServicer_to_server(reg, s),
        [],
        interceptors=[InternalTokenInterceptor(TOKEN, ["/flotilla.registry.v1.LauncherService/"])],
    )
    reg.grpc_address = f"127.0.0.1:{port}"
    app = web.Application()
    app.router.add_post("/api/v1/clusters/{name}/heartbeat", reg.heartbeat)
    app.router.add_delete("/api/v1/clusters/{name}", reg.delete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    http_port = runner.addresses[0][1]
    reg.api_url = f"http://127.0.0.1:{http_port}/api"
    try:
        yield reg
    finally:
        await runner.cleanup()
        await server.stop(grace=None)
        # Whatever the test left running is stopped by pid (never by name).
        for rec in reg.records.values():
            for text in [rec.state_json, *(w.state_json for w in rec.workers)]:
                kill_checkpoint(json.loads(text or "{}"))
        for request in reg.held:  # started, but the registry never recorded them
            kill_checkpoint(json.loads(request.state_json or "{}"))


def kill_checkpoint(state: dict[str, Any]) -> None:
    """SIGKILL the process group of a checkpoint if it is still that process."""
    pid, start = state.get("pid"), state.get("start_time")
    if pid and start and procfs.same_process(pid, start):
        os.killpg(pid, signal.SIGKILL)


def alive(state: dict[str, Any]) -> bool:
    """True if the checkpoint's process still runs (zombies count as gone)."""
    return procfs.same_process(state["pid"], state["start_time"])


@pytest.fixture
def launcher_config(tmp_path: Path) -> Config:
    """Configuration of the local backend and launcher for these tests."""
    cfg = Config()
    cfg.Deployment.state_dir = str(tmp_path / "state")
    cfg.LocalBackend.run_as = "self"
    cfg.LocalBackend.sigint_timeout = 10.0
    cfg.LocalBackend.sigterm_timeout = 5.0
    cfg.Launcher.status_check_period = 0.2
    cfg.Launcher.shutdown_grace = 10.0
    return cfg


@pytest.fixture
async def make_launcher(
    registry: FakeRegistry, launcher_config: Config
) -> AsyncIterator[Callable[..., Any]]:
    """Start reconcilers (real LocalBackend) against the registry double."""
    started: list[Reconciler] = []

    async def make(config: Config | None = None) -> Reconciler:
        cfg = config or launcher_config
        reconciler = Reconciler(
            LocalBackend(config=cfg),
            "local",
            registry.grpc_address,
            TOKEN,
            Launcher(config=cfg),
        )
        await reconciler.start()
        started.append(reconciler)
        await wait_for(reconciler.synced.is_set, 10, "the launcher's first watch message")
        forkserver = reconciler.backend.forkserver  # type: ignore[attr-defined]
        if forkserver is not None:
            # Production forks schedulers and workers: so do these tests, from the start.
            await asyncio.to_thread(forkserver.wait_ready, 120)
            assert forkserver.ready, "the fork server did not become ready"
        return reconciler

    try:
        yield make
    finally:
        for reconciler in started:
            await reconciler.stop()


class LauncherProcess:
    """A real ``flotilla-launcher`` process against the registry double; stopped by PID."""

    def __init__(self, config_file: Path, log_path: Path) -> None:
        exe = Path(sys.executable).parent / "flotilla-launcher"
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.proc = subprocess.Popen(
            [str(exe), "--backend", "local", "--config", str(config_file)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, as when the machine's OOM killer strikes."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()

    def close(self) -> None:
        self.kill()
        self._log.close()


@pytest.fixture
def launcher_process(
    registry: FakeRegistry, launcher_config: Config, tmp_path: Path
) -> Iterator[Callable[[], LauncherProcess]]:
    """Start ``flotilla-launcher`` processes (config as ``launcher_config``, then the
    ``c.X.y = ...`` lines given)."""
    started: list[LauncherProcess] = []

    def start(*extra: str) -> LauncherProcess:
        config_file = tmp_path / f"flotilla_config-{len(started)}.py"
        lines = [
            f"c.Deployment.state_dir = {launcher_config.Deployment.state_dir!r}",
            f"c.Deployment.registry_grpc_address = {registry.grpc_address!r}",
            f"c.Deployment.internal_token = {TOKEN!r}",
            "c.LocalBackend.run_as = 'self'",
            "c.Launcher.status_check_period = 0.2",
            *extra,
        ]
        config_file.write_text("\n".join(lines) + "\n")
        process = LauncherProcess(config_file, tmp_path / f"launcher-{len(started)}.log")
        started.append(process)
        return process

    try:
        yield start
    finally:
        for process in started:
            process.close()
