"""proxy-config driving the real Envoy binary.

Everything around Envoy is a small in-test double: the registry's RouteService (and a
RegistryService.GetVersion), an ext_authz service that allows and adds a header, a TLS
echo "scheduler", and aiohttp upstreams for a dashboard and the REST API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web
from envoy.config.core.v3 import base_pb2
from envoy.service.auth.v3 import external_auth_pb2, external_auth_pb2_grpc
from envoy.type.v3 import http_status_pb2
from flotilla.registry.v1 import registry_pb2, registry_pb2_grpc
from flotilla_common.tls import new_keypair
from flotilla_proxy_config.app import ProxyConfigService
from flotilla_proxy_config.bootstrap import bootstrap_config, envoy_command
from flotilla_proxy_config.config import ProxyConfig
from google.rpc import status_pb2
from traitlets.config import Config

Waiter = Callable[..., Awaitable[float]]

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


# ---------------------------------------------------------------- test doubles


class AllowAll(external_auth_pb2_grpc.AuthorizationServicer):  # type: ignore[misc]
    """Allows every request, unless told to deny with ``deny = (status, JSON body)``."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.deny: tuple[int, str] | None = None

    async def Check(
        self, request: external_auth_pb2.CheckRequest, context: grpc.aio.ServicerContext
    ) -> external_auth_pb2.CheckResponse:
        self.paths.append(request.attributes.request.http.path)
        if self.deny is not None:
            status, body = self.deny
            return external_auth_pb2.CheckResponse(
                status=status_pb2.Status(code=14),
                denied_response=external_auth_pb2.DeniedHttpResponse(
                    status=http_status_pb2.HttpStatus(code=status), body=body
                ),
            )
        header = base_pb2.HeaderValueOption(
            header=base_pb2.HeaderValue(key="x-test-auth", value="allowed"),
            append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
        )
        return external_auth_pb2.CheckResponse(
            status=status_pb2.Status(code=0),
            ok_response=external_auth_pb2.OkHttpResponse(headers=[header]),
        )


class TlsEcho:
    """A TLS server with its own self-signed cert that echoes bytes and records SNIs."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.sni = f"daskgateway-{name}"
        cert, key = new_keypair(self.sni)
        self.cafile = workdir / f"{name}.pem"
        self.cafile.write_text(cert)
        keyfile = workdir / f"{name}.key"
        keyfile.write_text(key)
        self._ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._ctx.load_cert_chain(self.cafile, keyfile)
        self._ctx.sni_callback = self._record_sni
        self.seen_sni: list[str | None] = []
        self._server: asyncio.Server | None = None
        self._clients: set[asyncio.StreamWriter] = set()
        self.port = 0

    def _record_sni(self, _sock: Any, name: str | None, _ctx: Any) -> None:
        self.seen_sni.append(name)

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._echo, "127.0.0.1", 0, ssl=self._ctx)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _echo(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._clients.add(writer)
        try:
            with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
        finally:
            self._clients.discard(writer)
            writer.close()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.transport.abort()
            await self._server.wait_closed()


class HttpUpstream:
    """aiohttp server answering every path with what it received; /ws is a WebSocket echo."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        if request.path == "/ws":
            ws = web.WebSocketResponse()
            await ws.prepare(request)
            async for msg in ws:
                await ws.send_str(f"echo:{msg.data}")
            return ws
        return web.json_response(
            {"upstream": self.label, "path_qs": request.path_qs, "headers": dict(request.headers)}
        )

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        self.port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def start_authz(authz: AllowAll) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    external_auth_pb2_grpc.add_AuthorizationServicer_to_server(authz, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, port


# ---------------------------------------------------------------- client probes


async def tls_echo(port: int, sni: str, cafile: Path, payload: bytes = b"ping") -> bytes:
    """Handshake through Envoy verifying the *upstream's* certificate, echo ``payload``."""
    ctx = ssl.create_default_context(cafile=str(cafile))  # CERT_REQUIRED + hostname check
    reader, writer = await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname=sni), 2
    )
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 2)
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def tls_ok(port: int, sni: str, cafile: Path) -> bool:
    try:
        return await tls_echo(port, sni, cafile) == b"ping"
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError, TimeoutError):
        return False


# ---------------------------------------------------------------- the gateway


@dataclass
class Gateway:
    config: Config
    public_port: int
    routes: Any  # conftest.FakeRouteService
    authz: AllowAll
    dashboard: HttpUpstream
    api: HttpUpstream
    echoes: dict[str, TlsEcho]
    service: ProxyConfigService
    envoy: Any
    http: aiohttp.ClientSession
    workdir: Path
    cleanups: list[Callable[[], Any]] = field(default_factory=list)
    auth_server: grpc.aio.Server | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.public_port}{path}"

    async def get(
        self, path: str, headers: dict[str, str] | None = None
    ) -> tuple[int, Any, aiohttp.typedefs.LooseHeaders]:
        async with self.http.get(
            self.url(path), allow_redirects=False, headers=headers
        ) as response:
            body = await response.read()
            try:
                data: Any = json.loads(body)
            except ValueError:
                data = body
            return response.status, data, response.headers

    async def add_echo(self, name: str) -> TlsEcho:
        echo = TlsEcho(name, self.workdir)
        await echo.start()
        self.echoes[name] = echo
        return echo


def make_config(tmp_path: Path, public_port: int, admin_port: int, **addresses: str) -> Config:
    cfg = Config()
    cfg.Deployment.public_host = "127.0.0.1"
    cfg.Deployment.public_port = public_port
    cfg.Deployment.envoy_admin_port = admin_port
    cfg.Deployment.internal_token = "test-internal-token"  # FakeRegistry.token
    cfg.Deployment.state_dir = str(tmp_path / "state")
    for key, value in addresses.items():
        setattr(cfg.Deployment, key, value)
    cfg.ProxyConfig.initial_routes_wait = 0.3
    cfg.ProxyConfig.watch_backoff_max = 0.3
    return cfg


async def start_envoy_for(
    cfg: Config, xds_port: int, envoy: Callable[..., Any], envoy_binary: Path
) -> Any:
    proxy_config = ProxyConfig(config=cfg)
    process = envoy(
        bootstrap_config(cfg, xds_address=f"127.0.0.1:{xds_port}"),
        lambda path: envoy_command(proxy_config, path, envoy_path=str(envoy_binary)),
    )
    await process.wait_live()
    return process


@pytest.fixture
async def gateway(
    tmp_path: Path,
    envoy: Callable[..., Any],
    envoy_binary: Path,
    free_port: Callable[[], int],
    fake_registry: Any,
) -> AsyncIterator[Gateway]:
    cleanups: list[Callable[[], Any]] = []
    try:
        await fake_registry.start()
        routes = fake_registry.routes
        authz = AllowAll()
        auth_server, auth_port = await start_authz(authz)
        cleanups.append(lambda: auth_server.stop(0))
        dashboard, api = HttpUpstream("dashboard"), HttpUpstream("api")
        for upstream in (dashboard, api):
            await upstream.start()
            cleanups.append(upstream.stop)
        alpha = TlsEcho("alpha", tmp_path)
        await alpha.start()
        cleanups.append(alpha.stop)
        routes.upsert("alpha", f"127.0.0.1:{alpha.port}", f"127.0.0.1:{dashboard.port}")

        public_port = free_port()
        cfg = make_config(
            tmp_path,
            public_port,
            free_port(),
            registry_grpc_address=fake_registry.address,
            registry_http_address=f"127.0.0.1:{api.port}",
            auth_grpc_address=f"127.0.0.1:{auth_port}",
        )
        service = ProxyConfigService(cfg, xds_address="127.0.0.1:0")
        xds_port = await service.start()
        cleanups.append(service.stop)
        process = await start_envoy_for(cfg, xds_port, envoy, envoy_binary)
        cleanups.append(process.stop)
        http = aiohttp.ClientSession()
        cleanups.append(http.close)
        gw = Gateway(
            config=cfg,
            public_port=public_port,
            routes=routes,
            authz=authz,
            dashboard=dashboard,
            api=api,
            echoes={"alpha": alpha},
            service=service,
            envoy=process,
            http=http,
            workdir=tmp_path,
            cleanups=cleanups,
            auth_server=auth_server,
        )
        yield gw
    finally:
        await run_cleanups(cleanups)


# ---------------------------------------------------------------- tests


async def test_sni_passthrough_reaches_scheduler_tls(gateway: Gateway) -> None:
    alpha = gateway.echoes["alpha"]
    # The client verifies the upstream's own certificate: Envoy does not terminate TLS.
    assert await tls_echo(gateway.public_port, alpha.sni, alpha.cafile, b"hello") == b"hello"
    assert alpha.seen_sni == [alpha.sni]
    # Envoy lower-cases the SNI, so a mixed-case name reaches the same cluster.
    assert await tls_ok(gateway.public_port, "DaskGateway-ALPHA", alpha.cafile)


async def test_unknown_or_foreign_sni_is_refused(gateway: Gateway) -> None:
    alpha = gateway.echoes["alpha"]
    assert not await tls_ok(gateway.public_port, "daskgateway-nope", alpha.cafile)
    assert not await tls_ok(gateway.public_port, "example.org", alpha.cafile)
    assert await gateway.envoy.stat("tcp.sni.downstream_cx_no_route") >= 1
    assert alpha.seen_sni == []


async def test_dashboard_prefix_is_rewritten_without_auth(gateway: Gateway) -> None:
    status, body, _ = await gateway.get("/clusters/alpha/x?y=1")
    assert status == 200
    assert body["upstream"] == "dashboard"
    assert body["path_qs"] == "/x?y=1"
    assert "x-test-auth" not in {k.lower() for k in body["headers"]}
    status, _, headers = await gateway.get("/clusters/alpha")
    assert status == 302
    assert headers["location"].endswith("/clusters/alpha/")
    assert gateway.authz.paths == []


async def test_dashboard_websocket_upgrade(gateway: Gateway) -> None:
    async with gateway.http.ws_connect(gateway.url("/clusters/alpha/ws")) as ws:
        await ws.send_str("hi")
        assert (await ws.receive_str(timeout=5)) == "echo:hi"


async def test_api_goes_through_ext_authz(gateway: Gateway) -> None:
    status, body, _ = await gateway.get("/api/v1/clusters?wait=1")
    assert status == 200
    assert body["upstream"] == "api"
    assert body["path_qs"] == "/api/v1/clusters?wait=1"
    assert body["headers"].get("x-test-auth") == "allowed"
    assert gateway.authz.paths == ["/api/v1/clusters?wait=1"]


async def test_auths_denials_keep_their_body_and_auth_down_is_json_503(
    gateway: Gateway,
) -> None:
    """A 503 from auth (its identity provider is down) keeps auth's words; a 503 because
    auth itself does not answer gets Envoy's JSON."""
    for status, text in ((503, "JupyterHub is unavailable"), (401, "Authentication required")):
        gateway.authz.deny = (status, json.dumps({"error": text}))
        got, body, headers = await gateway.get("/api/v1/clusters/")
        assert (got, body) == (status, {"error": text})
        assert headers["content-type"] == "application/json"
    assert gateway.auth_server is not None
    await gateway.auth_server.stop(0)
    got, body, headers = await gateway.get("/api/v1/clusters/")
    assert (got, body) == (503, {"error": "Service Unavailable"})
    assert headers["content-type"] == "application/json"


async def test_session_cookie_without_credentials_skips_ext_authz(gateway: Gateway) -> None:
    cookie = {"Cookie": "other=1; flotilla-session=abc.def", "x-flotilla-identity": "forged"}
    async with gateway.http.get(gateway.url("/api/v1/clusters/"), headers=cookie) as r:
        body = await r.json()
    assert body["upstream"] == "api"
    assert "flotilla-session=abc.def" in body["headers"]["Cookie"], "the registry checks it"
    assert "x-flotilla-identity" not in {k.lower() for k in body["headers"]}
    assert "x-test-auth" not in body["headers"]
    assert gateway.authz.paths == []
    # With credentials (e.g. the client's retry after a 401), auth decides as always.
    with_credentials = {**cookie, "Authorization": "Basic YWxpY2U6"}
    async with gateway.http.get(gateway.url("/api/v1/clusters/"), headers=with_credentials) as r:
        body = await r.json()
    assert body["headers"].get("x-test-auth") == "allowed"
    assert gateway.authz.paths == ["/api/v1/clusters/"]


async def test_registry_grpc_over_h2c_goes_through_ext_authz(gateway: Gateway) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.public_port}") as channel:
        stub = registry_pb2_grpc.RegistryServiceStub(channel)
        reply = await stub.GetVersion(registry_pb2.GetVersionRequest(), timeout=5)
    assert reply.version == "auth=allowed"
    assert gateway.authz.paths == ["/flotilla.registry.v1.RegistryService/GetVersion"]


async def test_everything_else_is_json_404(gateway: Gateway) -> None:
    for path in ("/nope", "/clusters/unknown/", "/api", "/uix"):
        status, body, headers = await gateway.get(path)
        assert (status, body) == (404, {"error": "Not Found"}), path
        assert headers["content-type"] == "application/json"
    assert gateway.authz.paths == []


async def test_the_web_page_goes_to_the_registry_without_auth(gateway: Gateway) -> None:
    for path in ("/", "/ui/app.js"):
        status, body, _ = await gateway.get(path, headers={"x-flotilla-identity": "forged"})
        assert status == 200 and body["upstream"] == "api", path
        assert body["path_qs"] == path
        assert "x-flotilla-identity" not in {k.lower() for k in body["headers"]}
    assert gateway.authz.paths == []


async def test_route_added_and_removed_at_runtime(gateway: Gateway, wait_for: Waiter) -> None:
    port = gateway.public_port
    beta = await gateway.add_echo("beta")
    gateway.cleanups.append(beta.stop)
    assert not await tls_ok(port, beta.sni, beta.cafile)

    async def beta_works() -> bool:
        return await tls_ok(port, beta.sni, beta.cafile)

    async def beta_dashboard_works() -> bool:
        return (await gateway.get("/clusters/beta/status"))[0] == 200

    start = time.monotonic()
    gateway.routes.upsert("beta", f"127.0.0.1:{beta.port}", f"127.0.0.1:{gateway.dashboard.port}")
    await wait_for(beta_works, 1.0, what="beta's SNI route")
    await wait_for(beta_dashboard_works, 1.0, what="beta's dashboard route")
    assert time.monotonic() - start < 1.0

    async def beta_gone() -> bool:
        return not await beta_works() and not await beta_dashboard_works()

    start = time.monotonic()
    gateway.routes.remove("beta")
    await wait_for(beta_gone, 1.0, what="beta's routes to go")
    assert time.monotonic() - start < 1.0
    assert (await gateway.get("/clusters/beta/status"))[:2] == (404, {"error": "Not Found"})
    # alpha is untouched.
    assert await tls_ok(port, gateway.echoes["alpha"].sni, gateway.echoes["alpha"].cafile)


async def test_route_changes_never_touch_the_listener(gateway: Gateway, wait_for: Waiter) -> None:
    alpha = gateway.echoes["alpha"]
    ctx = ssl.create_default_context(cafile=str(alpha.cafile))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", gateway.public_port, ssl=ctx, server_hostname=alpha.sni
    )
    try:
        lds_before = await gateway.envoy.stat("listener_manager.lds.update_success")
        beta = await gateway.add_echo("beta")
        gateway.cleanups.append(beta.stop)
        gateway.routes.upsert("beta", f"127.0.0.1:{beta.port}")
        await wait_for(lambda: tls_ok(gateway.public_port, beta.sni, beta.cafile), 2, what="beta")
        gateway.routes.remove("beta")
        await wait_for(
            lambda: negate(tls_ok(gateway.public_port, beta.sni, beta.cafile)), 2, what="no beta"
        )
        # The long-lived connection survived both changes.
        writer.write(b"still here")
        await writer.drain()
        assert await asyncio.wait_for(reader.readexactly(10), 2) == b"still here"
        assert await gateway.envoy.stat("listener_manager.lds.update_success") == lds_before
        assert await gateway.envoy.stat("listener_manager.listener_modified") == 0
        assert await gateway.envoy.stat("listener_manager.listener_in_place_updated") == 0
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def test_restarted_proxy_config_resends_nothing(gateway: Gateway, wait_for: Waiter) -> None:
    xds_port = gateway.service.port
    await gateway.service.stop()

    async def connected(expected: int) -> bool:
        return await gateway.envoy.stat("control_plane.connected_state") == expected

    await wait_for(lambda: connected(0), 5, what="Envoy to notice proxy-config is gone")
    cds_before = await gateway.envoy.stat("cluster_manager.cds.update_success")
    lds_before = await gateway.envoy.stat("listener_manager.lds.update_success")
    rds_before = await gateway.envoy.stat("http.http.rds.http_routes.update_success")

    service = ProxyConfigService(gateway.config, xds_address=f"127.0.0.1:{xds_port}")
    await service.start()
    gateway.cleanups.append(service.stop)
    await wait_for(lambda: connected(1), 5, what="Envoy to reconnect")
    # Same state, same content hashes: nothing is pushed again. A route added now is
    # the only update Envoy sees.
    beta = await gateway.add_echo("beta")
    gateway.cleanups.append(beta.stop)
    gateway.routes.upsert("beta", f"127.0.0.1:{beta.port}")
    await wait_for(lambda: tls_ok(gateway.public_port, beta.sni, beta.cafile), 2, what="beta")
    assert await gateway.envoy.stat("cluster_manager.cds.update_success") == cds_before + 1
    assert await gateway.envoy.stat("listener_manager.lds.update_success") == lds_before
    rds_after = await gateway.envoy.stat("http.http.rds.http_routes.update_success")
    assert rds_after == rds_before  # beta has no dashboard: routes unchanged


async def test_registry_down_serves_static_part_then_recovers(
    tmp_path: Path,
    envoy: Callable[..., Any],
    envoy_binary: Path,
    free_port: Callable[[], int],
    fake_registry: Any,
    wait_for: Waiter,
) -> None:
    authz = AllowAll()
    auth_server, auth_port = await start_authz(authz)
    registry_port, api_port, public_port = free_port(), free_port(), free_port()
    cfg = make_config(
        tmp_path,
        public_port,
        free_port(),
        registry_grpc_address=f"127.0.0.1:{registry_port}",
        registry_http_address=f"127.0.0.1:{api_port}",
        auth_grpc_address=f"127.0.0.1:{auth_port}",
    )
    service = ProxyConfigService(cfg, xds_address="127.0.0.1:0")
    api = HttpUpstream("api")
    echo = TlsEcho("alpha", tmp_path)
    try:
        xds_port = await service.start()
        await start_envoy_for(cfg, xds_port, envoy, envoy_binary)
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{public_port}"
            async with http.get(f"{url}/api/health") as response:
                assert response.status == 503
                assert response.headers["content-type"] == "application/json"
                assert await response.json() == {"error": "Service Unavailable"}

            # The registry comes up: the REST API answers and the routes arrive.
            await api.start(api_port)
            await echo.start()
            fake_registry.routes.upsert("alpha", f"127.0.0.1:{echo.port}")
            await fake_registry.start(registry_port)

            async def api_up() -> bool:
                async with http.get(f"{url}/api/health") as response:
                    return response.status == 200

            await wait_for(api_up, 5, what="/api/health through Envoy")
            await wait_for(
                lambda: tls_ok(public_port, echo.sni, echo.cafile), 5, what="alpha route"
            )
    finally:
        await echo.stop()
        await api.stop()
        await service.stop()
        await auth_server.stop(0)


# ---------------------------------------------------------------- helpers


async def run_cleanups(cleanups: list[Callable[[], Any]]) -> None:
    """Run every cleanup, last first, even when some fail; re-raise the first failure."""
    failure: BaseException | None = None
    for cleanup in reversed(cleanups):
        try:
            result = cleanup()
            if asyncio.iscoroutine(result):
                await result
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure


async def negate(result: Any) -> bool:
    return not await result
