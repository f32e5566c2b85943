"""The registry's REST and gRPC APIs on free ports, with a scripted launcher and scheduler."""

from __future__ import annotations

import asyncio
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path

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
from flotilla_common.config import load_config
from flotilla_common.grpcserver import internal_metadata
from flotilla_common.identity import IDENTITY_HEADER, Identity, sign_identity
from flotilla_common.tls import new_keypair
from flotilla_registry.app import RegistryApp
from flotilla_registry.crypto import generate_key

pytestmark = pytest.mark.integration


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each test runs against the embedded default and against PostgreSQL."""
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres").new_database())
    return f"sqlite:///{tmp_path / 'registry.sqlite'}"


@pytest.fixture
async def registry(tmp_path: Path, db_url: str) -> AsyncIterator[RegistryApp]:
    config_file = tmp_path / "config.py"
    config_file.write_text(
        f"c.Deployment.state_dir = {str(tmp_path)!r}\n"
        'c.Deployment.registry_grpc_address = "127.0.0.1:0"\n'
        'c.Deployment.registry_http_address = "127.0.0.1:0"\n'
        "c.ClusterConfig.cluster_max_workers = 3\n"
        f"c.Registry.db_url = {db_url!r}\n"
        f"c.Registry.db_encrypt_keys = [{generate_key()!r}]\n"
    )
    app = RegistryApp(load_config(config_file))
    await app.start()
    try:
        yield app
    finally:
        await app.stop()


async def _tls_listener(directory: Path, cert: str, key: str) -> asyncio.Server:
    """A TLS listener on 127.0.0.1 presenting ``cert`` that hangs up after the handshake."""
    directory.mkdir()
    (directory / "cert.pem").write_text(cert)
    (directory / "key.pem").write_text(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(directory / "cert.pem", directory / "key.pem")

    async def hang_up(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    return await asyncio.start_server(hang_up, "127.0.0.1", 0, ssl=context)


def _port(server: asyncio.Server) -> int:
    return int(server.sockets[0].getsockname()[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _key(tmp: RegistryApp) -> str:
    from flotilla_common.config import Deployment

    return str(Deployment(config=tmp.config).secret("identity_key"))


def _internal(app: RegistryApp) -> tuple[tuple[str, str], ...]:
    from flotilla_common.config import Deployment

    return internal_metadata(Deployment(config=app.config).secret("internal_token"))


async def test_lifecycle_over_grpc_and_rest(registry: RegistryApp, tmp_path: Path) -> None:
    key = _key(registry)
    alice = ((IDENTITY_HEADER, sign_identity(Identity("alice"), key)),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{registry.grpc_port}") as channel:
        api = registry_pb2_grpc.RegistryServiceStub(channel)
        launcher = internal_pb2_grpc.LauncherServiceStub(channel)
        watch = launcher.WatchClusters(
            internal_pb2.WatchClustersRequest(backend="local"), metadata=_internal(registry)
        )
        first = await watch.read()
        assert first.initial and not first.clusters

        created = await api.CreateCluster(registry_pb2.CreateClusterRequest(), metadata=alice)
        name = created.name
        event = await watch.read()
        assert [c.name for c in event.clusters] == [name]
        launch = event.clusters[0]
        assert launch.owner == "alice" and launch.target == types_pb2.TARGET_RUNNING
        assert json.loads(launch.config_json)["worker_cmd"] == ["dask", "worker"]

        await launcher.ReportCluster(
            internal_pb2.ReportClusterRequest(
                name=name, observed=types_pb2.OBSERVED_STARTING, state_json='{"pid": 1}'
            ),
            metadata=_internal(registry),
        )
        got = await api.GetCluster(registry_pb2.GetClusterRequest(name=name), metadata=alice)
        assert got.cluster.status == types_pb2.CLUSTER_STATUS_PENDING
        assert got.cluster.tls_key == ""

        # The scheduler's first heartbeat, through REST with a cluster identity. Its TLS
        # address answers with the cluster's certificate, as a scheduler does.
        sched = sign_identity(Identity("alice", cluster=name), key)
        url = f"http://127.0.0.1:{registry.http_port}/api/v1/clusters/{name}/heartbeat"
        scheduler = await _tls_listener(tmp_path / "own", launch.tls_cert, launch.tls_key)
        impostor = await _tls_listener(tmp_path / "other", *new_keypair(name))
        sched_port = _port(scheduler)
        body = {
            "scheduler_address": f"tls://127.0.0.1:{sched_port}",
            "dashboard_address": "http://127.0.0.1:1235",
            "api_address": "http://127.0.0.1:1236",
            "count": 5,
            "active_workers": [],
            "closing_workers": [],
            "closed_workers": [],
        }
        async with aiohttp.ClientSession() as http:
            # Malformed addresses are refused (they would become unreachable routes).
            for field, bad in (
                ("scheduler_address", "127.0.0.1:1234"),
                ("scheduler_address", "tls://127.0.0.1"),
                ("scheduler_address", "tls://127.0.0.1:99999"),
                ("api_address", "file:///etc/passwd"),
                ("dashboard_address", "http://:80"),
                # Well formed, but not this cluster's scheduler (checked by TLS handshake),
                # or beside it on another host: the routes could lead anywhere.
                ("scheduler_address", f"tls://127.0.0.1:{_port(impostor)}"),
                ("scheduler_address", f"tls://127.0.0.1:{_free_port()}"),
                ("dashboard_address", "http://127.0.0.2:1235"),
                ("api_address", "http://localhost:1236"),
            ):
                bad_body = {**body, field: bad}
                async with http.post(url, json=bad_body, headers={IDENTITY_HEADER: sched}) as resp:
                    assert resp.status == 422, (field, bad)
                    assert field in (await resp.json())["error"]
            impostor.close()
            got = await api.GetCluster(registry_pb2.GetClusterRequest(name=name), metadata=alice)
            assert got.cluster.status == types_pb2.CLUSTER_STATUS_PENDING
            async with http.post(url, json=body, headers={IDENTITY_HEADER: sched}) as resp:
                assert resp.status == 200
            # A user cannot send heartbeats.
            user = sign_identity(Identity("alice"), key)
            async with http.post(url, json=body, headers={IDENTITY_HEADER: user}) as resp:
                assert resp.status == 403
        scheduler.close()
        got = await api.GetCluster(registry_pb2.GetClusterRequest(name=name), metadata=alice)
        assert got.cluster.status == types_pb2.CLUSTER_STATUS_RUNNING
        assert got.cluster.dashboard_route == f"/clusters/{name}/status"
        assert got.cluster.requested_workers == 3  # clamped to cluster_max_workers
        # The launcher is asked for three workers.
        while True:
            event = await asyncio.wait_for(watch.read(), 5)
            workers = [w for c in event.clusters for w in c.workers]
            if len(workers) == 3:
                break
        assert event.clusters[0].scheduler_address == f"127.0.0.1:{sched_port}"

        # bob cannot see or stop it.
        bob = ((IDENTITY_HEADER, sign_identity(Identity("bob"), key)),)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await api.GetCluster(registry_pb2.GetClusterRequest(name=name), metadata=bob)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        listed = await api.ListClusters(registry_pb2.ListClustersRequest(), metadata=bob)
        assert not listed.clusters

        await api.StopCluster(registry_pb2.StopClusterRequest(name=name), metadata=alice)
        got = await api.GetCluster(registry_pb2.GetClusterRequest(name=name), metadata=alice)
        assert got.cluster.status == types_pb2.CLUSTER_STATUS_STOPPING
        await launcher.ReportCluster(
            internal_pb2.ReportClusterRequest(name=name, observed=types_pb2.OBSERVED_STOPPED),
            metadata=_internal(registry),
        )
        got = await api.GetCluster(registry_pb2.GetClusterRequest(name=name), metadata=alice)
        assert got.cluster.status == types_pb2.CLUSTER_STATUS_STOPPED
        assert got.cluster.reason == "Stopped by alice"
        listed = await api.ListClusters(
            registry_pb2.ListClustersRequest(statuses=[types_pb2.CLUSTER_STATUS_STOPPED]),
            metadata=alice,
        )
        assert [c.name for c in listed.clusters] == [name]
        watch.cancel()


async def test_internal_services_need_the_internal_token(registry: RegistryApp) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{registry.grpc_port}") as channel:
        tokens = internal_pb2_grpc.ClusterTokenServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await tokens.VerifyClusterToken(
                internal_pb2.VerifyClusterTokenRequest(cluster_name="x", token="y"),
                metadata=(("x-flotilla-internal-token", "wrong"),),
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reply = await tokens.VerifyClusterToken(
            internal_pb2.VerifyClusterTokenRequest(cluster_name="x", token="y"),
            metadata=_internal(registry),
        )
        assert not reply.valid


async def test_records_survive_a_registry_restart(registry: RegistryApp) -> None:
    key = _key(registry)
    alice = ((IDENTITY_HEADER, sign_identity(Identity("alice"), key)),)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{registry.grpc_port}") as channel:
        api = registry_pb2_grpc.RegistryServiceStub(channel)
        name = (await api.CreateCluster(registry_pb2.CreateClusterRequest(), metadata=alice)).name
    await registry.stop()
    await registry.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{registry.grpc_port}") as channel:
        api = registry_pb2_grpc.RegistryServiceStub(channel)
        listed = await api.ListClusters(registry_pb2.ListClustersRequest(), metadata=alice)
        assert [c.name for c in listed.clusters] == [name]


async def test_rest_accepts_auth_session_cookies(registry: RegistryApp) -> None:
    """Envoy sends a request with auth's session cookie (and no credentials) straight to
    the registry: the cookie, checked here, is the identity; anything forged is 401."""
    from flotilla_common.sessions import session_cookies

    sessions = session_cookies(registry.config)
    good = sessions.encode("alice", frozenset({"g"}), admin=False)
    forged = sessions.encode("alice", frozenset(), admin=True)[:-4] + "AAAA"
    expired = sessions.encode("alice", frozenset(), admin=False, now=0)
    # Valid for another 240 s, but its roles were decided longer ago than the refresh
    # period: the client must go through auth again.
    stale = sessions.encode(
        "alice", frozenset(), admin=False, now=time.time() - sessions.roles_refresh_seconds - 60
    )
    url = f"http://127.0.0.1:{registry.http_port}/api/v1/clusters/"
    async with aiohttp.ClientSession() as http:
        headers = {"Cookie": f"x=1; {sessions.name}={good}"}
        async with http.post(url, json={}, headers=headers) as r:
            assert r.status == 201
            name = (await r.json())["name"]
        async with http.get(url, headers=headers) as r:
            assert r.status == 200
            assert list(await r.json()) == [name]
        for bad in (forged, expired, stale, "garbage"):
            async with http.get(url, headers={"Cookie": f"{sessions.name}={bad}"}) as r:
                assert r.status == 401
                assert r.headers["WWW-Authenticate"] == "Basic"
        # Another user's cookie sees nothing of alice's.
        bob = sessions.encode("bob", frozenset(), admin=False)
        async with http.get(url, headers={"Cookie": f"{sessions.name}={bob}"}) as r:
            assert await r.json() == {}
