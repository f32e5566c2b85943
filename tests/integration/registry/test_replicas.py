"""Registry processes on PostgreSQL: a SIGKILLed registry loses nothing, two replicas on one
database see each other's changes (lists, long-polls, launcher and route watches), concurrent
changes never bring a stopped cluster back, and a database outage answers 503."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from flotilla.registry.v1 import (
    internal_pb2,
    internal_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    types_pb2,
)
from flotilla_common.grpcserver import internal_metadata
from flotilla_common.identity import IDENTITY_HEADER, Identity, sign_identity
from flotilla_registry.config import KEYS_ENV
from flotilla_registry.crypto import generate_key
from helpers import free_ports, wait_for
from postgres import PostgresServer, postgres_server

pytestmark = pytest.mark.integration

IDENTITY_KEY = "replica-test-identity-key"
INTERNAL = internal_metadata("replica-test-internal-token")


def alice() -> tuple[tuple[str, str], ...]:
    """alice's identity, signed now: a signed identity expires (5 minutes), so one made
    at import time fails once the suite has run that long before these tests."""
    return ((IDENTITY_HEADER, sign_identity(Identity("alice"), IDENTITY_KEY)),)


STATUS = types_pb2.ClusterStatus


class RegistryProcess:
    """``flotilla-registry`` as its own process; stopped (or killed) by PID."""

    def __init__(self, workdir: Path, db_url: str, key: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.workdir = workdir
        self.grpc_port, self.http_port = free_ports(2)
        self.config = workdir / "config.py"
        self.config.write_text(
            f"c.Deployment.state_dir = {str(workdir / 'state')!r}\n"
            f'c.Deployment.registry_grpc_address = "127.0.0.1:{self.grpc_port}"\n'
            f'c.Deployment.registry_http_address = "127.0.0.1:{self.http_port}"\n'
            f"c.Deployment.identity_key = {IDENTITY_KEY!r}\n"
            f"c.Deployment.internal_token = {INTERNAL[0][1]!r}\n"
            f"c.Registry.db_url = {db_url!r}\n"
            "c.Registry.db_resync_seconds = 0.5\n"
            # Heartbeats here carry made-up addresses; the check has its own test.
            "c.Registry.check_scheduler_addresses = False\n"
        )
        self.key = key
        self.db_url = db_url
        self.log = workdir / "registry.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        env = {**os.environ, KEYS_ENV: self.key}
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "flotilla-registry"),
                    "--config",
                    str(self.config),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

        def healthy() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"registry exited:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.http}/api/health", timeout=1) as resp:
                    return bool(resp.status == 200)
            except OSError:
                return False

        wait_for(healthy, 30, "the registry to answer /api/health")

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        os.kill(proc.pid, sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def replicas(tmp_path: Path, postgres: PostgresServer) -> Iterator[list[RegistryProcess]]:
    """Two registry processes (not started) sharing one fresh database and one key."""
    url, key = postgres.new_database(), generate_key()
    procs = [RegistryProcess(tmp_path / n, url, key) for n in ("a", "b")]
    try:
        yield procs
    finally:
        for p in procs:
            p.stop()


class Client:
    """The gRPC and REST APIs of one registry process."""

    def __init__(self, reg: RegistryProcess, channel: grpc.aio.Channel) -> None:
        self.reg = reg
        self.api = registry_pb2_grpc.RegistryServiceStub(channel)
        self.launcher = internal_pb2_grpc.LauncherServiceStub(channel)
        self.routes = internal_pb2_grpc.RouteServiceStub(channel)
        self.tokens = internal_pb2_grpc.ClusterTokenServiceStub(channel)

    async def create(self) -> str:
        reply = await self.api.CreateCluster(registry_pb2.CreateClusterRequest(), metadata=alice())
        return str(reply.name)

    async def status(self, name: str) -> int:
        got = await self.api.GetCluster(registry_pb2.GetClusterRequest(name=name), metadata=alice())
        return int(got.cluster.status)

    async def listed(self, *statuses: int) -> dict[str, int]:
        reply = await self.api.ListClusters(
            registry_pb2.ListClustersRequest(statuses=list(statuses)), metadata=alice()
        )
        return {c.name: c.status for c in reply.clusters}

    async def report(self, name: str, observed: int, **fields: Any) -> None:
        await self.launcher.ReportCluster(
            internal_pb2.ReportClusterRequest(name=name, observed=observed, **fields),
            metadata=INTERNAL,
        )

    async def heartbeat(self, http: aiohttp.ClientSession, name: str, count: int = 0) -> int:
        sched = sign_identity(Identity("alice", cluster=name), IDENTITY_KEY)
        body = {
            "scheduler_address": f"tls://127.0.0.1:1{count:04d}",
            "dashboard_address": "http://127.0.0.1:2000",
            "api_address": "http://127.0.0.1:3000",
            "count": count,
            "active_workers": [],
            "closing_workers": [],
            "closed_workers": [],
        }
        async with http.post(
            f"{self.reg.http}/api/v1/clusters/{name}/heartbeat",
            json=body,
            headers={IDENTITY_HEADER: sched},
        ) as resp:
            return resp.status


@contextlib.asynccontextmanager
async def connect(reg: RegistryProcess) -> AsyncIterator[Client]:
    async with grpc.aio.insecure_channel(reg.grpc_address) as channel:
        yield Client(reg, channel)


async def _until(stream: Any, predicate: Any, timeout: float = 10.0) -> Any:
    """Read a watch stream until a message satisfies ``predicate``; returns that message."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise AssertionError("the watch did not show the change in time")
        msg = await asyncio.wait_for(stream.read(), remaining)
        if predicate(msg):
            return msg


async def _stored_target(url: str, name: str) -> int:
    conn = await asyncpg.connect(url)
    try:
        return int(await conn.fetchval("SELECT target FROM clusters WHERE name = $1", name))
    finally:
        await conn.close()


async def test_a_killed_registry_keeps_every_record(replicas: list[RegistryProcess]) -> None:
    reg = replicas[0]
    reg.start()
    async with connect(reg) as c, aiohttp.ClientSession() as http:
        running, finished, pending = await c.create(), await c.create(), await c.create()
        assert await c.heartbeat(http, running, count=2) == 200
        await c.api.StopCluster(registry_pb2.StopClusterRequest(name=finished), metadata=alice())
        await c.report(finished, types_pb2.OBSERVED_STOPPED)
        watch = c.launcher.WatchClusters(
            internal_pb2.WatchClustersRequest(backend="local"), metadata=INTERNAL
        )
        before = {x.name: x for x in (await watch.read()).clusters}
        watch.cancel()
        assert set(before) == {running, pending} and len(before[running].workers) == 2
        statuses = await c.listed()
        statuses |= await c.listed(STATUS.CLUSTER_STATUS_STOPPED)

    reg.stop(signal.SIGKILL)
    reg.start()
    async with connect(reg) as c:
        assert await c.listed() | await c.listed(STATUS.CLUSTER_STATUS_STOPPED) == statuses
        assert statuses[running] == STATUS.CLUSTER_STATUS_RUNNING
        assert statuses[finished] == STATUS.CLUSTER_STATUS_STOPPED
        watch = c.launcher.WatchClusters(
            internal_pb2.WatchClustersRequest(backend="local"), metadata=INTERNAL
        )
        after = {x.name: x for x in (await watch.read()).clusters}
        watch.cancel()
        assert set(after) == {running, pending}
        for name in (running, pending):
            assert after[name].token == before[name].token
            assert after[name].tls_key == before[name].tls_key
            assert sorted(w.name for w in after[name].workers) == sorted(
                w.name for w in before[name].workers
            )
            ok = await c.tokens.VerifyClusterToken(
                internal_pb2.VerifyClusterTokenRequest(cluster_name=name, token=before[name].token),
                metadata=INTERNAL,
            )
            assert ok.valid and ok.owner == "alice"
        bad = await c.tokens.VerifyClusterToken(
            internal_pb2.VerifyClusterTokenRequest(cluster_name=running, token="forged"),
            metadata=INTERNAL,
        )
        assert not bad.valid


async def test_two_replicas_see_each_others_changes(replicas: list[RegistryProcess]) -> None:
    a, b = replicas
    a.start()
    b.start()
    async with connect(a) as on_a, connect(b) as on_b, aiohttp.ClientSession() as http:
        launches_b = on_b.launcher.WatchClusters(
            internal_pb2.WatchClustersRequest(backend="local"), metadata=INTERNAL
        )
        routes_b = on_b.routes.WatchRoutes(internal_pb2.WatchRoutesRequest(), metadata=INTERNAL)
        launches_a = on_a.launcher.WatchClusters(
            internal_pb2.WatchClustersRequest(backend="local"), metadata=INTERNAL
        )
        assert not (await launches_b.read()).clusters
        assert (await routes_b.read()).reset
        assert not (await launches_a.read()).clusters

        # Created on A: B's launcher watch and B's list show it.
        name = await on_a.create()
        msg = await _until(launches_b, lambda m: any(x.name == name for x in m.clusters))
        assert msg.clusters[0].token  # B decrypted what A encrypted
        assert (await on_b.listed()) == {name: STATUS.CLUSTER_STATUS_PENDING}

        # A long-poll on B is released by the heartbeat A receives.
        user = sign_identity(Identity("alice"), IDENTITY_KEY)
        started = time.monotonic()
        sent = asyncio.Event()

        async def on_sent(*_: Any) -> None:
            sent.set()

        tracing = aiohttp.TraceConfig()
        tracing.on_request_headers_sent.append(on_sent)
        polling = aiohttp.ClientSession(trace_configs=[tracing])
        poll = asyncio.create_task(
            polling.get(f"{b.http}/api/v1/clusters/{name}?wait", headers={IDENTITY_HEADER: user})
        )
        await asyncio.wait_for(sent.wait(), 10)  # the poll is on its way to B
        assert not poll.done()
        assert await on_a.heartbeat(http, name, count=1) == 200
        async with await asyncio.wait_for(poll, 10) as resp:
            assert resp.status == 200 and (await resp.json())["status"] == "RUNNING"
        await polling.close()
        assert time.monotonic() - started < 10  # released, not timed out at 20 s

        # ... B's route watch has the scheduler, B's launcher watch the worker to start.
        route = await _until(routes_b, lambda m: any(r.cluster_name == name for r in m.upserted))
        assert route.upserted[0].scheduler_address == "127.0.0.1:10001"
        await _until(launches_b, lambda m: any(len(x.workers) == 1 for x in m.clusters))

        # Stopped through B: A's launcher watch sees it.
        async with http.delete(
            f"{b.http}/api/v1/clusters/{name}", headers={IDENTITY_HEADER: user}
        ) as resp:
            assert resp.status == 204
        msg = await _until(
            launches_a,
            lambda m: any(
                x.name == name and x.target == types_pb2.TARGET_STOPPED for x in m.clusters
            ),
        )
        assert all(w.target == types_pb2.TARGET_STOPPED for w in msg.clusters[0].workers)
        assert await on_a.status(name) == STATUS.CLUSTER_STATUS_STOPPING

        # The launcher on A reports it gone: B drops the route and lists it as stopped.
        await on_a.report(name, types_pb2.OBSERVED_STOPPED)
        await _until(routes_b, lambda m: name in m.removed)
        await _until(
            launches_b,
            lambda m: any(
                x.name == name and x.observed == types_pb2.OBSERVED_STOPPED for x in m.clusters
            ),
        )
        assert await on_b.listed() == {}
        assert await on_b.listed(STATUS.CLUSTER_STATUS_STOPPED) == {
            name: STATUS.CLUSTER_STATUS_STOPPED
        }
        for stream in (launches_a, launches_b, routes_b):
            stream.cancel()


async def test_one_replica_leads_and_another_takes_over(replicas: list[RegistryProcess]) -> None:
    a, b = replicas
    a.start()
    b.start()
    leading = "now runs the periodic jobs"
    wait_for(lambda: leading in a.logs() or leading in b.logs(), 10, "a leader")
    first, second = (a, b) if leading in a.logs() else (b, a)
    assert leading not in second.logs()
    first.stop(signal.SIGKILL)
    wait_for(lambda: leading in second.logs(), 15, "the other replica to take over")


async def test_concurrent_changes_never_revive_a_stopped_cluster(
    replicas: list[RegistryProcess], postgres: PostgresServer
) -> None:
    a, b = replicas
    a.start()
    b.start()
    async with connect(a) as on_a, connect(b) as on_b, aiohttp.ClientSession() as http:
        for _round in range(3):
            name = await on_a.create()
            assert await on_a.heartbeat(http, name, count=1) == 200
            wait_for_b = asyncio.get_running_loop().time() + 10
            while await on_b.status(name) != STATUS.CLUSTER_STATUS_RUNNING:
                assert asyncio.get_running_loop().time() < wait_for_b
                await asyncio.sleep(0.02)
            # Heartbeats through both replicas race a stop through B.
            beats = [on_a.heartbeat(http, name, count=n % 3) for n in range(20)]
            beats += [on_b.heartbeat(http, name, count=n % 3) for n in range(10)]
            stop = on_b.api.StopCluster(
                registry_pb2.StopClusterRequest(name=name), metadata=alice()
            )
            results = await asyncio.gather(*beats[:15], stop, *beats[15:])
            assert all(r == 200 for r in results if isinstance(r, int)), results
            assert await _stored_target(a.db_url, name) == types_pb2.TARGET_STOPPED
            for client in (on_a, on_b):
                deadline = asyncio.get_running_loop().time() + 10
                while await client.status(name) != STATUS.CLUSTER_STATUS_STOPPING:
                    assert asyncio.get_running_loop().time() < deadline, "a replica revived it"
                    await asyncio.sleep(0.02)
            # Once stopping, a late heartbeat anywhere changes nothing.
            assert await on_a.heartbeat(http, name, count=2) == 200
            assert await _stored_target(a.db_url, name) == types_pb2.TARGET_STOPPED


async def test_a_database_outage_answers_503_and_recovers(tmp_path: Path) -> None:
    with postgres_server() as pg:
        reg = RegistryProcess(tmp_path / "r", pg.new_database(), generate_key())
        reg.start()
        try:
            async with connect(reg) as c, aiohttp.ClientSession() as http:
                name = await c.create()
                user = {IDENTITY_HEADER: sign_identity(Identity("alice"), IDENTITY_KEY)}
                pg.stop()

                async with http.post(f"{reg.http}/api/v1/clusters/", json={}, headers=user) as r:
                    assert r.status == 503
                    assert "database is unavailable" in (await r.json())["error"]
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await c.create()
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE
                assert await c.heartbeat(http, name, count=1) == 503
                async with http.delete(f"{reg.http}/api/v1/clusters/{name}", headers=user) as r:
                    assert r.status == 503
                # What is in memory still answers; nothing was lost or half-written.
                assert await c.listed() == {name: STATUS.CLUSTER_STATUS_PENDING}

                pg.start()
                deadline = asyncio.get_running_loop().time() + 30
                while True:
                    async with http.post(
                        f"{reg.http}/api/v1/clusters/", json={}, headers=user
                    ) as r:
                        if r.status == 201:
                            second = (await r.json())["name"]
                            break
                        assert r.status == 503
                    assert asyncio.get_running_loop().time() < deadline
                    await asyncio.sleep(0.1)
                assert await c.heartbeat(http, name, count=1) == 200
                assert await c.listed() == {
                    name: STATUS.CLUSTER_STATUS_RUNNING,
                    second: STATUS.CLUSTER_STATUS_PENDING,
                }
            assert "Traceback" not in reg.logs()
        finally:
            reg.stop()
