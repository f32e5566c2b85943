"""The simulation backend against the registry double: clusters without Dask processes
that look, to the gateway, like real ones (heartbeats, TLS, scheduler API, workers)."""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp
import pytest
from flotilla.registry.v1 import types_pb2
from flotilla_launcher.backends.sim import SimBackend
from flotilla_launcher.config import Launcher
from flotilla_launcher.reconciler import Reconciler
from helpers import free_ports
from traitlets.config import Config

from .conftest import TOKEN, FakeRegistry, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


async def test_sim_clusters_heartbeat_scale_and_stop(registry: FakeRegistry) -> None:
    tls_port, http_port = free_ports(2)
    config = Config()
    config.SimBackend.tls_port = tls_port
    config.SimBackend.http_port = http_port
    reconciler = Reconciler(
        SimBackend(config=config), "sim", registry.grpc_address, TOKEN, Launcher(config=config)
    )
    await reconciler.start()
    try:
        name = registry.add_cluster()
        registry.records[name].backend = "sim"
        registry.publish(name)
        beat = await wait_for(lambda: registry.last_heartbeat(name), 30, "a heartbeat")
        assert registry.records[name].observed == types_pb2.OBSERVED_RUNNING
        assert beat["scheduler_address"] == f"tls://127.0.0.1:{tls_port}"
        assert beat["api_address"] == f"http://127.0.0.1:{http_port}/c/{name}"
        # The stub speaks TLS with any SNI, as the scheduler does behind Envoy.
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{http_port}/sim/clusters/{name}") as r:
                assert (await r.json())["running_at"] > 0
            async with http.get(f"http://127.0.0.1:{http_port}/status") as r:
                assert r.status == 200  # a dashboard page
            token = registry.records[name].token
            comm = f"{beat['api_address']}/api/comm"
            scale: dict[str, Any] = {"op": "scale", "count": 2}
            async with http.post(comm, data=json.dumps(scale)) as r:
                assert r.status == 403  # the cluster's token only
            headers = {"Authorization": f"token {token}"}
            async with http.post(comm, json=scale, headers=headers) as r:
                assert r.status == 200

        def active(count: int) -> bool:
            last = registry.last_heartbeat(name)
            return last is not None and len(last["active_workers"]) == count

        await wait_for(lambda: active(2), 30, "two simulated workers")
        registry.set_target(name, types_pb2.TARGET_STOPPED)
        await wait_for(
            lambda: registry.records[name].observed == types_pb2.OBSERVED_STOPPED, 30, "stopped"
        )
    finally:
        await reconciler.stop()
