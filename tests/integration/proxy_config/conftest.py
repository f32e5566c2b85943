"""Reusable helpers for tests that run a real Envoy: free ports, port waits, Envoy process.

Fixtures:

- ``free_port``: a callable returning a free 127.0.0.1 port below the ephemeral range;
- ``wait_for`` / ``wait_port``: async pollers with a deadline (no sleeps for readiness);
- ``envoy``: starts Envoy processes from a bootstrap dict, stops each by PID at teardown;
- ``fake_registry``: a test double of the registry's RouteService (plus
  RegistryService.GetVersion) on a port of its own.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from flotilla.registry.v1 import internal_pb2, internal_pb2_grpc, registry_pb2, registry_pb2_grpc
from flotilla_common.grpcserver import INTERNAL_TOKEN_METADATA
from helpers import free_port

ENVOY_BIN = Path(
    os.environ.get(
        "FLOTILLA_ENVOY",
        Path(__file__).resolve().parents[3]
        / ".cache/envoy/lib/python3.11/site-packages/envoy/_bin/envoy",
    )
)


def find_free_port(host: str = "127.0.0.1") -> int:
    """A free port below the ephemeral range (see helpers.free_port)."""
    return free_port()


async def wait_until(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float = 10.0,
    interval: float = 0.005,
    what: str = "condition",
) -> float:
    """Poll ``predicate`` until true; returns the seconds it took. Fails after ``timeout``."""
    start = time.monotonic()
    deadline = start + timeout
    while True:
        if await predicate():
            return time.monotonic() - start
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(interval)


async def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    """Wait until a TCP connect to host:port succeeds."""

    async def accepts() -> bool:
        try:
            _, writer = await asyncio.open_connection(host, port)
        except OSError:
            return False
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass
        return True

    await wait_until(accepts, timeout, 0.02, f"{host}:{port} to accept connections")


class EnvoyProcess:
    """One Envoy started from a bootstrap; stopped by PID."""

    def __init__(self, binary: Path, bootstrap: dict[str, Any], workdir: Path) -> None:
        self.workdir = workdir
        self.bootstrap_path = workdir / "envoy-bootstrap.json"
        self.bootstrap_path.write_text(json.dumps(bootstrap, indent=2))
        self.log_path = workdir / "envoy.log"
        self.admin_port = int(bootstrap["admin"]["address"]["socket_address"]["port_value"])
        self.binary = binary
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, command_for: Callable[[Path], list[str]] | None = None) -> None:
        """Run Envoy; ``command_for(bootstrap_path)`` gives the command line (logs appended)."""
        command = command_for(self.bootstrap_path) if command_for else [
            str(self.binary), "-c", str(self.bootstrap_path), "--concurrency", "2",
            "--drain-time-s", "1", "--disable-hot-restart", "-l", "info",
        ]  # fmt: skip
        with open(self.workdir / "envoy.stdout", "wb") as out:
            self.proc = subprocess.Popen(
                [*command, "--log-path", str(self.log_path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def admin_get(self, path: str) -> str:
        url = f"http://127.0.0.1:{self.admin_port}{path}"
        with urllib.request.urlopen(url, timeout=2) as response:
            return str(response.read().decode())

    async def admin(self, path: str) -> str:
        return await asyncio.get_running_loop().run_in_executor(None, self.admin_get, path)

    async def stat(self, name: str) -> int:
        text = await self.admin(f"/stats?filter=^{name}$")
        for line in text.splitlines():
            key, _, value = line.partition(": ")
            if key == name:
                return int(value)
        return 0

    async def wait_live(self, timeout: float = 15.0) -> None:
        async def live() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"envoy exited {self.proc.returncode}:\n{self.logs()}")
            try:
                return (await self.admin("/ready")).strip() == "LIVE"
            except OSError:
                return False

        await wait_until(live, timeout, 0.02, "envoy /ready = LIVE")

    def logs(self, tail: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text().splitlines()[-tail:])
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


class FakeRouteService(internal_pb2_grpc.RouteServiceServicer):  # type: ignore[misc]
    """RouteService as the registry serves it: a full set (reset), then changes."""

    def __init__(self, token: str) -> None:
        self.token = token
        self.routes: dict[str, internal_pb2.Route] = {}
        self.watch_calls = 0
        self._watchers: list[asyncio.Queue[internal_pb2.WatchRoutesResponse]] = []

    async def WatchRoutes(
        self, request: internal_pb2.WatchRoutesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[internal_pb2.WatchRoutesResponse]:
        self.watch_calls += 1
        if dict(context.invocation_metadata()).get(INTERNAL_TOKEN_METADATA) != self.token:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "internal token required")
        queue: asyncio.Queue[internal_pb2.WatchRoutesResponse] = asyncio.Queue()
        self._watchers.append(queue)
        try:
            yield internal_pb2.WatchRoutesResponse(reset=True, upserted=self.routes.values())
            while True:
                yield await queue.get()
        finally:
            self._watchers.remove(queue)

    def upsert(self, name: str, scheduler: str, dashboard: str = "") -> None:
        route = internal_pb2.Route(
            cluster_name=name, scheduler_address=scheduler, dashboard_address=dashboard
        )
        self.routes[name] = route
        self.push(internal_pb2.WatchRoutesResponse(upserted=[route]))

    def remove(self, name: str) -> None:
        self.routes.pop(name, None)
        self.push(internal_pb2.WatchRoutesResponse(removed=[name]))

    def push(self, message: internal_pb2.WatchRoutesResponse) -> None:
        for queue in self._watchers:
            queue.put_nowait(message)


class FakeRegistryService(registry_pb2_grpc.RegistryServiceServicer):  # type: ignore[misc]
    """GetVersion answers with the x-test-auth header it received (set by ext_authz)."""

    async def GetVersion(
        self, request: registry_pb2.GetVersionRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetVersionResponse:
        auth = dict(context.invocation_metadata()).get("x-test-auth", "")
        return registry_pb2.GetVersionResponse(version=f"auth={auth}")


class FakeRegistry:
    """The registry's gRPC side as proxy-config and Envoy see it; start/stop at will."""

    token = "test-internal-token"

    def __init__(self) -> None:
        self.routes = FakeRouteService(self.token)
        self._server: grpc.aio.Server | None = None
        self.port = 0

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self, port: int = 0) -> None:
        server = grpc.aio.server()
        internal_pb2_grpc.add_RouteServiceServicer_to_server(self.routes, server)
        registry_pb2_grpc.add_RegistryServiceServicer_to_server(FakeRegistryService(), server)
        self.port = server.add_insecure_port(f"127.0.0.1:{port or self.port}")
        await server.start()
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None


@pytest.fixture
async def fake_registry() -> AsyncIterator[FakeRegistry]:
    """A FakeRegistry, not yet started (``await fake_registry.start(port=0)``)."""
    registry = FakeRegistry()
    yield registry
    await registry.stop()


@pytest.fixture(name="free_port")
def free_port_fixture() -> Callable[[], int]:
    return find_free_port


@pytest.fixture
def wait_for() -> Callable[..., Awaitable[float]]:
    """``await wait_for(async_predicate, timeout=..., what=...)``."""
    return wait_until


@pytest.fixture
def wait_port() -> Callable[..., Awaitable[None]]:
    """``await wait_port(host, port, timeout=10)``."""
    return wait_for_port


@pytest.fixture
def envoy_binary() -> Path:
    if not os.access(ENVOY_BIN, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"Envoy binary not found at {ENVOY_BIN}; `make test` installs it")
        pytest.skip(f"Envoy binary not found at {ENVOY_BIN}")
    return ENVOY_BIN


@pytest.fixture
def envoy(envoy_binary: Path, tmp_path: Path) -> Iterator[Callable[..., EnvoyProcess]]:
    """``start(bootstrap_dict, command_for=None) -> EnvoyProcess`` (not yet waited for)."""
    started: list[EnvoyProcess] = []

    def start(
        bootstrap: dict[str, Any], command_for: Callable[[Path], list[str]] | None = None
    ) -> EnvoyProcess:
        workdir = tmp_path / f"envoy{len(started)}"
        workdir.mkdir()
        process = EnvoyProcess(envoy_binary, bootstrap, workdir)
        started.append(process)
        process.start(command_for)
        return process

    yield start
    for process in started:
        process.stop()
