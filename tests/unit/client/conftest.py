"""Fixtures for the client tests: a RegistryService test double, a TLS scheduler with one
worker, and an SNI-checking TCP relay standing in for the gateway's proxy.

Everything runs in this process on 127.0.0.1; async services live on a background
event loop so synchronous client APIs can be driven from the test thread.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import uuid
from collections.abc import Coroutine, Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from distributed import Scheduler, Worker
from distributed.security import Security
from flotilla.registry.v1 import registry_pb2, registry_pb2_grpc, types_pb2
from flotilla_common.tls import new_keypair
from google.protobuf.timestamp_pb2 import Timestamp

T = TypeVar("T")

S = types_pb2.ClusterStatus

OPTIONS_SPEC: list[dict[str, Any]] = [
    {
        "field": "worker_cores",
        "label": "Worker cores",
        "default": 1,
        "spec": {"type": "int", "min": 1, "max": 4},
    },
    {
        "field": "worker_memory",
        "label": "Worker memory (GiB)",
        "default": 1,
        "spec": {"type": "float", "min": 0.5, "max": 8.0},
    },
    {"field": "label", "label": "Label", "default": "", "spec": {"type": "string"}},
    {"field": "keep_alive", "label": "Keep alive", "default": False, "spec": {"type": "bool"}},
    {
        "field": "profile",
        "label": "Profile",
        "default": "small",
        "spec": {"type": "select", "options": ["small", "large"]},
    },
    {"field": "environment", "label": "Environment", "default": {}, "spec": {"type": "mapping"}},
]


# ---------------------------------------------------------------------------------
# Background event loop


class BackgroundLoop:
    """An asyncio loop in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def bg_loop() -> Iterator[BackgroundLoop]:
    bg = BackgroundLoop()
    yield bg
    bg.stop()


# ---------------------------------------------------------------------------------
# TLS scheduler + worker


@dataclass
class TLSCluster:
    cert: str
    key: str
    scheduler_address: str  # tls://127.0.0.1:port


@pytest.fixture(scope="module")
def tls_cluster(
    bg_loop: BackgroundLoop, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TLSCluster]:
    cert, key = new_keypair("test-cluster")
    d: Path = tmp_path_factory.mktemp("tls")
    (d / "cert.pem").write_text(cert)
    (d / "key.pem").write_text(key)
    cert_file, key_file = str(d / "cert.pem"), str(d / "key.pem")

    async def start() -> tuple[Scheduler, Worker]:
        sched_sec = Security(
            tls_ca_file=cert_file,
            tls_scheduler_cert=cert_file,
            tls_scheduler_key=key_file,
            require_encryption=True,
        )
        worker_sec = Security(
            tls_ca_file=cert_file,
            tls_worker_cert=cert_file,
            tls_worker_key=key_file,
            require_encryption=True,
        )
        scheduler = Scheduler(
            protocol="tls", host="127.0.0.1", port=0, security=sched_sec, dashboard=False
        )
        await scheduler
        worker = Worker(
            scheduler.address,
            security=worker_sec,
            nthreads=1,
            host="127.0.0.1",
            dashboard=False,
        )
        await worker
        return scheduler, worker

    scheduler, worker = bg_loop.run(start())
    yield TLSCluster(cert=cert, key=key, scheduler_address=scheduler.address)

    async def stop() -> None:
        await worker.close()
        await scheduler.close()

    bg_loop.run(stop())


# ---------------------------------------------------------------------------------
# SNI relay (the gateway proxy's TCP side)


def client_hello_sni(record: bytes) -> str | None:
    """The server name of a TLS ClientHello record (None when it has none)."""
    if len(record) < 5 or record[0] != 0x16:
        return None
    body = record[5:]
    if not body or body[0] != 0x01:  # handshake type ClientHello
        return None
    i = 4 + 2 + 32  # handshake header, client_version, random
    i += 1 + body[i]  # session id
    i += 2 + int.from_bytes(body[i : i + 2], "big")  # cipher suites
    i += 1 + body[i]  # compression methods
    end = i + 2 + int.from_bytes(body[i : i + 2], "big")
    i += 2
    while i + 4 <= end:
        ext_type = int.from_bytes(body[i : i + 2], "big")
        ext_len = int.from_bytes(body[i + 2 : i + 4], "big")
        data = body[i + 4 : i + 4 + ext_len]
        if ext_type == 0:  # server_name
            # list length (2), name type (1), name length (2), name
            name_len = int.from_bytes(data[3:5], "big")
            return data[5 : 5 + name_len].decode("ascii")
        i += 4 + ext_len
    return None


@dataclass
class SNIRelay:
    port: int
    routes: dict[str, str]  # cluster name -> "host:port" of its scheduler
    seen: list[str | None] = field(default_factory=list)
    rejected: list[str | None] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


@pytest.fixture(scope="module")
def sni_relay(bg_loop: BackgroundLoop) -> Iterator[SNIRelay]:
    relay = SNIRelay(port=0, routes={})

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            header = await reader.readexactly(5)
            record = header + await reader.readexactly(int.from_bytes(header[3:5], "big"))
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        sni = client_hello_sni(record)
        relay.seen.append(sni)
        target = None
        if sni is not None and sni.startswith("daskgateway-"):
            target = relay.routes.get(sni.removeprefix("daskgateway-"))
        if target is None:
            relay.rejected.append(sni)
            writer.close()
            return
        host, port = target.rsplit(":", 1)
        up_reader, up_writer = await asyncio.open_connection(host, int(port))
        up_writer.write(record)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    async def start() -> asyncio.Server:
        return await asyncio.start_server(handle, "127.0.0.1", 0)

    server = bg_loop.run(start())
    relay.port = server.sockets[0].getsockname()[1]
    yield relay

    async def stop() -> None:
        server.close()

    bg_loop.run(stop())


# ---------------------------------------------------------------------------------
# RegistryService test double


@dataclass
class FakeCluster:
    name: str
    owner: str
    options: dict[str, Any]
    status: int = S.CLUSTER_STATUS_PENDING
    reason: str = ""
    count: int = 0
    adapt: tuple[int | None, int | None, bool] | None = None
    logs: dict[str, str] = field(default_factory=dict)


class FakeRegistry(registry_pb2_grpc.RegistryServiceServicer):
    """Just enough of the registry + auth to exercise the client.

    - Auth: Basic credentials (any password unless ``password`` is set) or the session
      cookie it handed out; answers every credential-authenticated call with
      ``set-cookie``.
    - A cluster starts PENDING; a GetCluster with ``wait_seconds`` moves it to
      ``start_outcome`` (RUNNING with the TLS cluster's credentials, or FAILED/STOPPED).
    """

    cookie_name = "flotilla-session"

    def __init__(self, tls: TLSCluster | None, relay: SNIRelay | None) -> None:
        self.tls = tls
        self.relay = relay
        self.password: str | None = None
        self.admins = {"admin"}
        self.clusters: dict[str, FakeCluster] = {}
        self.sessions: dict[str, str] = {}
        self.calls: list[tuple[str, dict[str, str]]] = []
        self.start_outcome = S.CLUSTER_STATUS_RUNNING
        self.start_reason = ""
        self.max_workers = 3
        self.fail_with: tuple[grpc.StatusCode, str] | None = None

    # -- helpers --

    def _auth(self, method: str, context: grpc.ServicerContext) -> str:
        md = {k: v for k, v in context.invocation_metadata() if isinstance(v, str)}
        self.calls.append((method, md))
        if self.fail_with is not None:
            context.abort(*self.fail_with)
        for part in md.get("cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == self.cookie_name and value in self.sessions:
                return self.sessions[value]
        scheme, _, cred = md.get("authorization", "").partition(" ")
        if scheme.lower() == "basic" and cred:
            user, _, password = base64.b64decode(cred).decode("latin-1").partition(":")
            if self.password is None or password == self.password:
                session = uuid.uuid4().hex
                self.sessions[session] = user
                context.send_initial_metadata(
                    [("set-cookie", f"{self.cookie_name}={session}; Max-Age=600; Path=/")]
                )
                return user
        context.abort(grpc.StatusCode.UNAUTHENTICATED, "Authentication required")
        raise AssertionError("unreachable")

    def _get(self, name: str, user: str, context: grpc.ServicerContext) -> FakeCluster:
        c = self.clusters.get(name)
        if c is None:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Cluster {name} not found")
            raise AssertionError("unreachable")
        if c.owner != user and user not in self.admins:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"User {user} lacks permissions to view cluster {name}",
            )
        return c

    def _proto(self, c: FakeCluster) -> types_pb2.Cluster:
        msg = types_pb2.Cluster(
            name=c.name,
            status=c.status,
            options_json=json.dumps(c.options),
            owner=c.owner,
            backend="fake",
            reason=c.reason,
            requested_workers=c.count,
        )
        msg.start_time.CopyFrom(Timestamp(seconds=1_795_310_803, nanos=11_000_000))
        if c.status in (S.CLUSTER_STATUS_STOPPED, S.CLUSTER_STATUS_FAILED):
            msg.stop_time.CopyFrom(Timestamp(seconds=1_795_310_902))
        if c.status == S.CLUSTER_STATUS_RUNNING:
            msg.dashboard_route = f"/clusters/{c.name}/status"
            if self.tls is not None:
                msg.tls_cert, msg.tls_key = self.tls.cert, self.tls.key
        return msg

    def new_pending(self, owner: str, options: dict[str, Any] | None = None) -> str:
        name = uuid.uuid4().hex
        self.clusters[name] = FakeCluster(name=name, owner=owner, options=options or {})
        return name

    # -- RPCs --

    def GetVersion(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._auth("GetVersion", context)
        return registry_pb2.GetVersionResponse(version="9.9.9")

    def GetOptions(self, request: Any, context: grpc.ServicerContext) -> Any:
        self._auth("GetOptions", context)
        return registry_pb2.GetOptionsResponse(
            fields=[
                types_pb2.OptionField(
                    field=f["field"],
                    label=f["label"],
                    default_json=json.dumps(f["default"]),
                    spec_json=json.dumps(f["spec"]),
                )
                for f in OPTIONS_SPEC
            ]
        )

    def CreateCluster(self, request: Any, context: grpc.ServicerContext) -> Any:
        user = self._auth("CreateCluster", context)
        options = json.loads(request.options_json or "{}")
        known = {f["field"] for f in OPTIONS_SPEC}
        unknown = sorted(set(options) - known)
        if unknown:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"Unknown fields {unknown}")
        full = {f["field"]: f["default"] for f in OPTIONS_SPEC} | options
        name = self.new_pending(user, full)
        if self.relay is not None and self.tls is not None:
            self.relay.routes[name] = self.tls.scheduler_address.removeprefix("tls://")
        return registry_pb2.CreateClusterResponse(name=name)

    def GetCluster(self, request: Any, context: grpc.ServicerContext) -> Any:
        user = self._auth("GetCluster", context)
        c = self._get(request.name, user, context)
        if request.wait_seconds > 0 and c.status == S.CLUSTER_STATUS_PENDING:
            c.status = self.start_outcome
            c.reason = self.start_reason
        return registry_pb2.GetClusterResponse(cluster=self._proto(c))

    def ListClusters(self, request: Any, context: grpc.ServicerContext) -> Any:
        user = self._auth("ListClusters", context)
        if request.all_users and user not in self.admins:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, "Only admins may list all users")
        statuses = set(request.statuses) or {S.CLUSTER_STATUS_PENDING, S.CLUSTER_STATUS_RUNNING}
        return registry_pb2.ListClustersResponse(
            clusters=[
                self._proto(c)
                for c in self.clusters.values()
                if c.status in statuses and (request.all_users or c.owner == user)
            ]
        )

    def StopCluster(self, request: Any, context: grpc.ServicerContext) -> Any:
        user = self._auth("StopCluster", context)
        if request.name in self.clusters:
            c = self._get(request.name, user, context)
            if c.status not in (S.CLUSTER_STATUS_FAILED,):
                c.status = S.CLUSTER_STATUS_STOPPED
        return registry_pb2.StopClusterResponse()

    def _running(self, name: str, user: str, context: grpc.ServicerContext) -> FakeCluster:
        c = self._get(name, user, context)
        if c.status != S.CLUSTER_STATUS_RUNNING:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"cluster {name} is not running")
        return c

    def ScaleCluster(self, request: Any, context: grpc.ServicerContext) -> Any:
        user = self._auth("ScaleCluster", context)
        c = self._running(request.name, user, context)
        if request.count < 0:
            context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"Scale expects a non-negative integer, got {request.count}",
            )
        if request.count > self.max_workers:
            c.count = self.max_workers
            return registry_pb2.ScaleClusterResponse(
                ok=False,
                message=(
                    f"Scale request of {request.count} workers would exceed resource limit "
                    f"of {self.max_workers} workers. Scaling to {self.max_workers} instead."
                ),
            )
        c.count = request.count
        return registry_pb2.ScaleClusterResponse(ok=True)

    def AdaptCluster(self, request: Any, context: grpc.ServicerContext) -> Any:
        user = self._auth("AdaptCluster", context)
        c = self._running(request.name, user, context)
        minimum = request.minimum if request.HasField("minimum") else None
        maximum = request.maximum if request.HasField("maximum") else None
        c.adapt = (minimum, maximum, request.active)
        if maximum is None or maximum > self.max_workers:
            return registry_pb2.AdaptClusterResponse(
                ok=False, message=f"Using `maximum={self.max_workers}` instead."
            )
        return registry_pb2.AdaptClusterResponse(ok=True)

    def GetClusterLogs(self, request: Any, context: grpc.ServicerContext) -> Any:
        user = self._auth("GetClusterLogs", context)
        c = self._get(request.name, user, context)
        return registry_pb2.GetClusterLogsResponse(
            logs=[types_pb2.ProcessLog(process=p, text=t) for p, t in c.logs.items()]
        )


@dataclass
class FakeGateway:
    registry: FakeRegistry
    port: int
    relay: SNIRelay | None

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def proxy_address(self) -> str:
        assert self.relay is not None
        return f"tls://{self.relay.address}"

    def methods(self) -> list[str]:
        return [m for m, _ in self.registry.calls]


def _serve(registry: FakeRegistry, tls: tuple[str, str] | None = None) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    registry_pb2_grpc.add_RegistryServiceServicer_to_server(registry, server)
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        cert, key = tls
        creds = grpc.ssl_server_credentials([(key.encode(), cert.encode())])
        port = server.add_secure_port("127.0.0.1:0", creds)
    server.start()
    return server, port


@pytest.fixture
def fake_gateway(tls_cluster: TLSCluster, sni_relay: SNIRelay) -> Iterator[FakeGateway]:
    """A RegistryService double whose RUNNING clusters route (via the relay) to a real
    TLS scheduler."""
    registry = FakeRegistry(tls_cluster, sni_relay)
    server, port = _serve(registry)
    yield FakeGateway(registry, port, sni_relay)
    server.stop(None).wait()


@pytest.fixture
def bare_gateway() -> Iterator[FakeGateway]:
    """A RegistryService double with no scheduler behind it."""
    registry = FakeRegistry(None, None)
    server, port = _serve(registry)
    yield FakeGateway(registry, port, None)
    server.stop(None).wait()


@pytest.fixture
def https_gateway(tmp_path: Path) -> Iterator[tuple[FakeGateway, str]]:
    """A RegistryService double behind TLS for ``localhost``; yields it and its CA file."""
    cert, key = new_keypair("localhost")
    ca_file = tmp_path / "gateway-ca.pem"
    ca_file.write_text(cert)
    registry = FakeRegistry(None, None)
    server, port = _serve(registry, tls=(cert, key))
    yield FakeGateway(registry, port, None), str(ca_file)
    server.stop(None).wait()
