"""A channel between services reconnects soon after its server comes back."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from flotilla_common.grpcserver import RECONNECT_BACKOFF_MAX, internal_channel
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from helpers import free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def serve(port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return server


async def test_reconnects_within_its_backoff_after_a_long_outage() -> None:
    port = free_port()
    server = await serve(port)
    channel = internal_channel(f"127.0.0.1:{port}")
    check = health_pb2_grpc.HealthStub(channel).Check
    try:
        await check(health_pb2.HealthCheckRequest(), timeout=5)
        await server.stop(None)
        # Long enough for gRPC's default backoff to wait several seconds between
        # attempts (1 s, 1.6 s, 2.6 s, 4.1 s, ...); calls keep failing meanwhile.
        outage_end = time.monotonic() + 6
        while time.monotonic() < outage_end:
            with pytest.raises(grpc.aio.AioRpcError):
                await check(health_pb2.HealthCheckRequest(), timeout=1)
            await asyncio.sleep(0.1)
        server = await serve(port)
        back = time.monotonic()
        while True:
            try:
                await check(health_pb2.HealthCheckRequest(), timeout=1)
                break
            except grpc.aio.AioRpcError:
                assert time.monotonic() - back < RECONNECT_BACKOFF_MAX + 1.0, "no reconnect"
                await asyncio.sleep(0.02)
    finally:
        await channel.close()
        await server.stop(None)
