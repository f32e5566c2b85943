"""The real auth gRPC server on a free port, with an in-test registry ClusterTokenService."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from envoy.service.auth.v3 import attribute_context_pb2, external_auth_pb2, external_auth_pb2_grpc
from flotilla.registry.v1 import internal_pb2, internal_pb2_grpc
from flotilla_auth import app
from flotilla_common.grpcserver import InternalTokenInterceptor, start_server
from flotilla_common.identity import IDENTITY_HEADER, Identity, verify_identity
from google.rpc import code_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from traitlets.config import Config

pytestmark = pytest.mark.integration

INTERNAL_TOKEN = "internal-token-for-tests"
IDENTITY_KEY = "identity-key-for-tests"
TOKEN_SERVICE = internal_pb2.DESCRIPTOR.services_by_name["ClusterTokenService"].full_name


class FakeClusterTokens(internal_pb2_grpc.ClusterTokenServiceServicer):  # type: ignore[misc]
    """The registry's token check: one cluster, one token; counts calls."""

    def __init__(self) -> None:
        self.calls = 0

    async def VerifyClusterToken(
        self, request: internal_pb2.VerifyClusterTokenRequest, context: grpc.aio.ServicerContext
    ) -> internal_pb2.VerifyClusterTokenResponse:
        self.calls += 1
        if request.cluster_name == "ns.c1" and request.token == "tok-1":
            return internal_pb2.VerifyClusterTokenResponse(valid=True, owner="bob")
        return internal_pb2.VerifyClusterTokenResponse(valid=False)


@dataclass
class Stack:
    stub: external_auth_pb2_grpc.AuthorizationStub
    channel: grpc.aio.Channel
    tokens: FakeClusterTokens
    auth: app.AuthServer
    config: Config = field(default_factory=Config)


async def _registry(tokens: FakeClusterTokens) -> tuple[grpc.aio.Server, int]:
    def register(server: grpc.aio.Server) -> None:
        internal_pb2_grpc.add_ClusterTokenServiceServicer_to_server(tokens, server)

    return await start_server(
        "127.0.0.1:0",
        register,
        [TOKEN_SERVICE],
        interceptors=[InternalTokenInterceptor(INTERNAL_TOKEN, [f"/{TOKEN_SERVICE}/"])],
    )


def _config(tmp_path: Path, registry_port: int, internal_token: str = INTERNAL_TOKEN) -> Config:
    config = Config()
    config.Deployment.state_dir = str(tmp_path / "state")
    config.Deployment.registry_grpc_address = f"127.0.0.1:{registry_port}"
    config.Deployment.internal_token = internal_token
    config.Deployment.identity_key = IDENTITY_KEY
    config.BasicAuthenticator.password = "secret"
    config.Auth.admin_users = ["root"]
    return config


async def _stack(tmp_path: Path, internal_token: str = INTERNAL_TOKEN) -> AsyncIterator[Stack]:
    tokens = FakeClusterTokens()
    registry, registry_port = await _registry(tokens)
    config = _config(tmp_path, registry_port, internal_token)
    auth = await app.start(config, "127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{auth.port}")
    try:
        yield Stack(
            external_auth_pb2_grpc.AuthorizationStub(channel), channel, tokens, auth, config
        )
    finally:
        await channel.close()
        await auth.stop(grace=1)
        await registry.stop(None)


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[Stack]:
    async for s in _stack(tmp_path):
        yield s


def _request(method: str, path: str, headers: dict[str, str]) -> external_auth_pb2.CheckRequest:
    return external_auth_pb2.CheckRequest(
        attributes=attribute_context_pb2.AttributeContext(
            request=attribute_context_pb2.AttributeContext.Request(
                http=attribute_context_pb2.AttributeContext.HttpRequest(
                    method=method, path=path, headers=headers
                )
            )
        )
    )


async def _check(
    stack: Stack, method: str, path: str, headers: dict[str, str] | None = None
) -> external_auth_pb2.CheckResponse:
    resp: external_auth_pb2.CheckResponse = await stack.stub.Check(
        _request(method, path, headers or {}), timeout=10
    )
    return resp


def _identity(resp: external_auth_pb2.CheckResponse) -> Identity:
    assert resp.status.code == code_pb2.OK, resp
    headers = {o.header.key: o.header.value for o in resp.ok_response.headers}
    return verify_identity(headers[IDENTITY_HEADER], IDENTITY_KEY)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


async def test_health_service_serves(stack: Stack) -> None:
    health = health_pb2_grpc.HealthStub(stack.channel)
    for service in ("", "envoy.service.auth.v3.Authorization"):
        resp = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING


async def test_public_route(stack: Stack) -> None:
    resp = await _check(stack, "GET", "/api/version", {IDENTITY_HEADER: "forged"})
    assert resp.status.code == code_pb2.OK
    assert list(resp.ok_response.headers_to_remove) == [IDENTITY_HEADER]


async def test_basic_then_cookie(stack: Stack) -> None:
    resp = await _check(
        stack, "GET", "/api/v1/clusters/", {"authorization": _basic("root", "secret")}
    )
    assert _identity(resp) == Identity("root", admin=True)
    (set_cookie,) = [
        o.header.value
        for o in resp.ok_response.response_headers_to_add
        if o.header.key.lower() == "set-cookie"
    ]
    cookie = set_cookie.split(";", 1)[0]
    assert cookie.startswith("flotilla-session=")
    json_body = {"cookie": cookie, "content-type": "application/json"}
    resp = await _check(stack, "POST", "/api/v1/clusters/", json_body)
    assert _identity(resp) == Identity("root", admin=True)
    # What a form on another site could send with the cookie is refused.
    resp = await _check(stack, "POST", "/api/v1/clusters/", {"cookie": cookie})
    assert resp.denied_response.status.code == 403

    resp = await _check(stack, "GET", "/api/v1/clusters/", {"authorization": _basic("root", "no")})
    assert resp.denied_response.status.code == 401
    assert json.loads(resp.denied_response.body) == {"error": "Authentication required"}


async def test_cookie_survives_restart(tmp_path: Path) -> None:
    cookie = ""
    for _ in range(2):
        async for stack in _stack(tmp_path):
            if not cookie:
                resp = await _check(
                    stack, "GET", "/api/v1/options", {"authorization": _basic("alice", "secret")}
                )
                cookie = next(
                    o.header.value.split(";", 1)[0]
                    for o in resp.ok_response.response_headers_to_add
                    if o.header.key.lower() == "set-cookie"
                )
            else:
                resp = await _check(stack, "GET", "/api/v1/options", {"cookie": cookie})
                assert _identity(resp).user == "alice"


async def test_heartbeat_token_checked_by_registry_and_cached(stack: Stack) -> None:
    headers = {"authorization": "token tok-1"}
    for _ in range(3):
        resp = await _check(stack, "POST", "/api/v1/clusters/ns.c1/heartbeat", headers)
        assert _identity(resp) == Identity("bob", cluster="ns.c1")
    assert stack.tokens.calls == 1

    resp = await _check(
        stack, "POST", "/api/v1/clusters/ns.c1/heartbeat", {"authorization": "token nope"}
    )
    assert resp.denied_response.status.code == 401
    assert json.loads(resp.denied_response.body) == {"error": "Unauthorized"}
    assert {o.header.key: o.header.value for o in resp.denied_response.headers}[
        "www-authenticate"
    ] == "token"


async def test_delete_by_token(stack: Stack) -> None:
    resp = await _check(stack, "DELETE", "/api/v1/clusters/ns.c1", {"authorization": "token tok-1"})
    assert _identity(resp) == Identity("bob", cluster="ns.c1")


async def test_grpc_route(stack: Stack) -> None:
    path = "/flotilla.registry.v1.RegistryService/ListClusters"
    resp = await _check(
        stack,
        "POST",
        path,
        {"content-type": "application/grpc", "authorization": _basic("alice", "secret")},
    )
    assert _identity(resp).user == "alice"
    resp = await _check(stack, "POST", path, {"content-type": "application/grpc"})
    assert resp.status.code == code_pb2.UNAUTHENTICATED
    assert resp.denied_response.status.code == 401


async def test_registry_rejecting_internal_token_is_503(tmp_path: Path) -> None:
    async for stack in _stack(tmp_path, internal_token="wrong"):
        resp = await _check(
            stack, "POST", "/api/v1/clusters/ns.c1/heartbeat", {"authorization": "token tok-1"}
        )
        assert resp.denied_response.status.code == 503
        assert stack.tokens.calls == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def test_entry_point_serves_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = _free_port()
    config_file = tmp_path / "flotilla_config.py"
    config_file.write_text(
        f"c.Deployment.state_dir = {str(tmp_path / 'state')!r}\n"
        f"c.Deployment.auth_grpc_address = '127.0.0.1:{port}'\n"
        "c.Deployment.registry_grpc_address = '127.0.0.1:1'\n"
    )
    script = Path(sys.executable).with_name("flotilla-auth")
    proc = await asyncio.create_subprocess_exec(
        str(script), "--config", str(config_file), stderr=asyncio.subprocess.PIPE
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            resp = await health.Check(
                health_pb2.HealthCheckRequest(), timeout=30, wait_for_ready=True
            )
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
            stub = external_auth_pb2_grpc.AuthorizationStub(channel)
            check = await stub.Check(_request("GET", "/api/v1/options", {}), timeout=10)
            assert check.denied_response.status.code == 401
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=30)
        assert proc.returncode == 0, stderr.decode()
        assert b"shutting down" in stderr
        assert (tmp_path / "state" / "secrets" / "cookie_key").exists()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
