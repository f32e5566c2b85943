"""The registry's timeouts, retention and logs over its real gRPC and REST servers, with
the test acting as the launcher."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from flotilla.registry.v1 import (
    internal_pb2,
    internal_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    types_pb2,
)
from flotilla_common.config import Deployment, load_config
from flotilla_common.grpcserver import internal_metadata
from flotilla_common.identity import IDENTITY_HEADER, Identity, sign_identity
from flotilla_registry.app import RegistryApp
from flotilla_registry.crypto import generate_key

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

Metadata = tuple[tuple[str, str], ...]


@pytest.fixture
async def start_registry(tmp_path: Path) -> AsyncIterator[Callable[[str], Any]]:
    apps: list[RegistryApp] = []

    async def start(extra: str) -> RegistryApp:
        config_file = tmp_path / f"config{len(apps)}.py"
        config_file.write_text(
            f"c.Deployment.state_dir = {str(tmp_path)!r}\n"
            'c.Deployment.registry_grpc_address = "127.0.0.1:0"\n'
            'c.Deployment.registry_http_address = "127.0.0.1:0"\n'
            "c.Registry.check_timeouts_period = 0.1\n"
            f"c.Registry.db_encrypt_keys = [{generate_key()!r}]\n" + extra
        )
        app = RegistryApp(load_config(config_file))
        await app.start()
        apps.append(app)
        return app

    try:
        yield start
    finally:
        for app in apps:
            await app.stop()


def identity(app: RegistryApp, user: str, **kw: Any) -> str:
    return sign_identity(Identity(user, **kw), Deployment(config=app.config).secret("identity_key"))


def internal(app: RegistryApp) -> Metadata:
    return internal_metadata(Deployment(config=app.config).secret("internal_token"))


async def wait_until(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


async def test_start_timeout_then_logs_through_grpc_and_rest(start_registry: Any) -> None:
    app = await start_registry("c.ClusterConfig.cluster_start_timeout = 0.5\n")
    alice = ((IDENTITY_HEADER, identity(app, "alice")),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        api = registry_pb2_grpc.RegistryServiceStub(channel)
        launcher = internal_pb2_grpc.LauncherServiceStub(channel)
        created = time.monotonic()
        name = (await api.CreateCluster(registry_pb2.CreateClusterRequest(), metadata=alice)).name

        async def failing() -> Any:
            got = await api.GetCluster(registry_pb2.GetClusterRequest(name=name), metadata=alice)
            return got.cluster if got.cluster.reason else None

        cluster = await wait_until(failing, 10, "the start timeout")
        assert time.monotonic() - created >= 0.5
        assert cluster.status == types_pb2.CLUSTER_STATUS_STOPPING
        assert cluster.reason == (
            "Cluster failed to start within cluster_start_timeout (0.5 s): "
            "no launcher of backend 'local' started it"
        )
        listed = await api.ListClusters(registry_pb2.ListClustersRequest(), metadata=alice)
        assert name not in [c.name for c in listed.clusters]

        # The launcher saves the logs, then reports the cluster stopped.
        await launcher.SaveClusterLogs(
            internal_pb2.SaveClusterLogsRequest(
                cluster_name=name,
                logs=[
                    types_pb2.ProcessLog(process="worker-w1", text="worker says hi"),
                    types_pb2.ProcessLog(process="scheduler", text="it hung here"),
                ],
            ),
            metadata=internal(app),
        )
        await launcher.ReportCluster(
            internal_pb2.ReportClusterRequest(name=name, observed=types_pb2.OBSERVED_STOPPED),
            metadata=internal(app),
        )
        got = await api.GetCluster(registry_pb2.GetClusterRequest(name=name), metadata=alice)
        assert got.cluster.status == types_pb2.CLUSTER_STATUS_FAILED
        logs = await api.GetClusterLogs(
            registry_pb2.GetClusterLogsRequest(name=name), metadata=alice
        )
        assert [(log.process, log.text) for log in logs.logs] == [
            ("scheduler", "it hung here"),
            ("worker-w1", "worker says hi"),
        ]
        bob = ((IDENTITY_HEADER, identity(app, "bob")),)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.GetClusterLogs(registry_pb2.GetClusterLogsRequest(name=name), metadata=bob)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.GetClusterLogs(
                registry_pb2.GetClusterLogsRequest(name="nope"), metadata=alice
            )
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # It never had workers; bob may not ask.
        listed = await api.ListWorkers(registry_pb2.ListWorkersRequest(name=name), metadata=alice)
        assert list(listed.workers) == []
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.ListWorkers(registry_pb2.ListWorkersRequest(name=name), metadata=bob)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await launcher.SaveClusterLogs(
                internal_pb2.SaveClusterLogsRequest(cluster_name=name),
                metadata=(("x-flotilla-internal-token", "wrong"),),
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    base = f"http://127.0.0.1:{app.http_port}/api/v1/clusters"
    async with aiohttp.ClientSession() as http:

        async def get(path: str, who: str | None) -> tuple[int, Any]:
            headers = {IDENTITY_HEADER: identity(app, who)} if who else {}
            async with http.get(f"{base}/{path}", headers=headers) as resp:
                return resp.status, await resp.json()

        assert await get(f"{name}/logs", "alice") == (
            200,
            {"logs": {"scheduler": "it hung here", "worker-w1": "worker says hi"}},
        )
        assert await get(f"{name}/logs", "bob") == (
            403,
            {"error": f"User bob lacks permissions to view cluster {name}"},
        )
        assert await get("nope/logs", "alice") == (404, {"error": "Cluster nope not found"})
        assert await get(f"{name}/logs", None) == (401, {"error": "Authentication required"})
        assert await get(f"{name}/workers", "alice") == (200, {"workers": []})
        assert await get(f"{name}/workers", "bob") == (
            403,
            {"error": f"User bob lacks permissions to view cluster {name}"},
        )
        assert await get("nope/workers", "alice") == (404, {"error": "Cluster nope not found"})
        # The dask-gateway report keeps exactly its keys: the reason is not among them.
        status, report = await get(name, "alice")
        assert status == 200 and report["status"] == "FAILED"
        assert set(report) == {
            "name", "dashboard_route", "status", "start_time", "stop_time", "options",
            "tls_cert", "tls_key",
        }  # fmt: skip


async def test_logs_of_an_active_cluster_come_from_its_launcher(start_registry: Any) -> None:
    app = await start_registry("")
    alice = ((IDENTITY_HEADER, identity(app, "alice")),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        api = registry_pb2_grpc.RegistryServiceStub(channel)
        launcher = internal_pb2_grpc.LauncherServiceStub(channel)
        watch = launcher.WatchClusters(
            internal_pb2.WatchClustersRequest(backend="local"), metadata=internal(app)
        )
        assert (await watch.read()).initial
        name = (await api.CreateCluster(registry_pb2.CreateClusterRequest(), metadata=alice)).name

        async def answer() -> None:
            while True:
                event = await watch.read()
                for rec in event.clusters:
                    if rec.name == name and rec.logs_request:
                        await launcher.SaveClusterLogs(
                            internal_pb2.SaveClusterLogsRequest(
                                cluster_name=name,
                                logs=[types_pb2.ProcessLog(process="scheduler", text="live")],
                                answers_request=rec.logs_request,
                            ),
                            metadata=internal(app),
                        )

        task = asyncio.create_task(answer())
        try:
            logs = await api.GetClusterLogs(
                registry_pb2.GetClusterLogsRequest(name=name), metadata=alice, timeout=10
            )
            assert [(log.process, log.text) for log in logs.logs] == [("scheduler", "live")]
        finally:
            task.cancel()
            watch.cancel()


async def test_finished_records_are_purged_after_their_max_age(start_registry: Any) -> None:
    app = await start_registry(
        "c.Registry.db_cluster_max_age = 1.0\nc.Registry.db_cleanup_period = 0.1\n"
    )
    alice = ((IDENTITY_HEADER, identity(app, "alice")),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{app.grpc_port}") as channel:
        api = registry_pb2_grpc.RegistryServiceStub(channel)
        launcher = internal_pb2_grpc.LauncherServiceStub(channel)
        done = (await api.CreateCluster(registry_pb2.CreateClusterRequest(), metadata=alice)).name
        active = (await api.CreateCluster(registry_pb2.CreateClusterRequest(), metadata=alice)).name
        await api.StopCluster(registry_pb2.StopClusterRequest(name=done), metadata=alice)
        await launcher.SaveClusterLogs(
            internal_pb2.SaveClusterLogsRequest(
                cluster_name=done, logs=[types_pb2.ProcessLog(process="scheduler", text="bye")]
            ),
            metadata=internal(app),
        )
        await launcher.ReportCluster(
            internal_pb2.ReportClusterRequest(name=done, observed=types_pb2.OBSERVED_STOPPED),
            metadata=internal(app),
        )
        stopped_at = time.monotonic()
        logs = await api.GetClusterLogs(
            registry_pb2.GetClusterLogsRequest(name=done), metadata=alice
        )
        assert logs.logs[0].text == "bye"

        async def gone() -> bool:
            try:
                await api.GetCluster(registry_pb2.GetClusterRequest(name=done), metadata=alice)
            except grpc.aio.AioRpcError as exc:
                assert exc.code() == grpc.StatusCode.NOT_FOUND
                return True
            return False

        await wait_until(gone, 15, "the purge")
        assert time.monotonic() - stopped_at >= 0.9
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.GetClusterLogs(registry_pb2.GetClusterLogsRequest(name=done), metadata=alice)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # The active cluster, older than the max age by now, stays.
        got = await api.GetCluster(registry_pb2.GetClusterRequest(name=active), metadata=alice)
        assert got.cluster.status == types_pb2.CLUSTER_STATUS_PENDING
        assert await app.store.get_logs(done) == {}
