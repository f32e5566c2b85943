"""gRPC between services: grpc.aio servers with health, error mapping and an optional
internal-token check, and the channels services open to each other."""

from __future__ import annotations

import asyncio
import hmac
import logging
import signal
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .errors import ErrorInterceptor

__all__ = [
    "INTERNAL_TOKEN_METADATA",
    "InternalTokenInterceptor",
    "internal_channel",
    "internal_metadata",
    "run_until_signalled",
    "start_server",
]

log = logging.getLogger(__name__)

INTERNAL_TOKEN_METADATA = "x-flotilla-internal-token"


#: Longest wait between reconnection attempts of an internal channel, in seconds.
RECONNECT_BACKOFF_MAX = 1.0


def internal_metadata(token: str) -> tuple[tuple[str, str], ...]:
    return ((INTERNAL_TOKEN_METADATA, token),)


def internal_channel(address: str) -> grpc.aio.Channel:
    """A channel to another service (the registry) that reconnects within about a second
    of it coming back.

    gRPC's default reconnect backoff grows to two minutes, and calls fail at once while it
    waits: after a registry outage of a minute, auth would refuse every scheduler's
    heartbeat (and the launcher see no changes) for up to another minute.
    """
    return grpc.aio.insecure_channel(
        address,
        options=[
            ("grpc.initial_reconnect_backoff_ms", 100),
            ("grpc.min_reconnect_backoff_ms", 100),
            ("grpc.max_reconnect_backoff_ms", int(RECONNECT_BACKOFF_MAX * 1000)),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_timeout_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
        ],
    )


class InternalTokenInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Rejects calls to the listed services unless they carry the internal token."""

    def __init__(self, token: str, protected_prefixes: Iterable[str]) -> None:
        self._token = token.encode()
        self._prefixes = tuple(protected_prefixes)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method: str = handler_call_details.method
        if method.startswith(self._prefixes):
            presented = dict(handler_call_details.invocation_metadata or ()).get(
                INTERNAL_TOKEN_METADATA, ""
            )
            if not hmac.compare_digest(str(presented).encode(), self._token):
                return _deny_handler()
        return await continuation(handler_call_details)


def _deny_handler() -> grpc.RpcMethodHandler:
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, "internal token required")

    # A unary handler also rejects streaming calls: the abort happens before any
    # message is read or written.
    return grpc.unary_unary_rpc_method_handler(deny)


async def start_server(
    address: str,
    register: Callable[[grpc.aio.Server], None],
    service_names: Iterable[str],
    interceptors: Iterable[grpc.aio.ServerInterceptor] = (),
    options: Iterable[tuple[str, Any]] = (),
) -> tuple[grpc.aio.Server, int]:
    """Start a server on ``address`` (port 0 picks a free one); returns it and the port."""
    server = grpc.aio.server(
        interceptors=[*interceptors, ErrorInterceptor()],
        options=[
            ("grpc.so_reuseport", 0),
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ("grpc.keepalive_permit_without_calls", 1),
            *options,
        ],
    )
    register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_insecure_port(address)
    if port == 0:
        raise SystemExit(f"cannot listen on {address}")
    await server.start()
    for name in [*service_names, ""]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return server, port


async def run_until_signalled(stop: Callable[[], Awaitable[None]]) -> None:
    """Wait for SIGINT/SIGTERM, then run ``stop``."""
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, event.set)
    await event.wait()
    log.info("shutting down")
    await stop()
