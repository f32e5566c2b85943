"""flotilla.scheduler_preload in an in-process scheduler, against an in-test heartbeat receiver."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from distributed import Client, Scheduler, Worker
from flotilla import scheduler_preload

from .conftest import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

TOKEN = "cluster-token"


class Gateway:
    """Receives heartbeats and deletes for cluster ``c1``."""

    def __init__(self) -> None:
        self.beats: list[dict[str, Any]] = []
        self.deletes = 0
        self.unauthorized = 0
        self.url = ""

    def _ok(self, request: web.Request) -> bool:
        if request.headers.get("Authorization") != f"token {TOKEN}":
            self.unauthorized += 1
            return False
        return True

    async def heartbeat(self, request: web.Request) -> web.Response:
        if not self._ok(request):
            return web.Response(status=401)
        assert request.headers["Content-Type"] == "application/json"
        self.beats.append(await request.json())
        return web.Response()

    async def delete(self, request: web.Request) -> web.Response:
        if not self._ok(request):
            return web.Response(status=401)
        self.deletes += 1
        return web.Response(status=204)


@pytest.fixture
async def gateway(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> AsyncIterator[Gateway]:
    gw = Gateway()
    app = web.Application()
    app.router.add_post("/api/v1/clusters/c1/heartbeat", gw.heartbeat)
    app.router.add_delete("/api/v1/clusters/c1", gw.delete)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    gw.url = f"http://127.0.0.1:{runner.addresses[0][1]}/api"
    token_file = tmp_path / "api-token"
    token_file.write_text(TOKEN + "\n")
    monkeypatch.setenv("DASK_GATEWAY_API_URL", gw.url)
    monkeypatch.setenv("DASK_GATEWAY_API_TOKEN", str(token_file))  # a path: read the file
    monkeypatch.setenv("DASK_GATEWAY_CLUSTER_NAME", "c1")
    try:
        yield gw
    finally:
        await runner.cleanup()


def scheduler(*argv: str) -> Scheduler:
    return Scheduler(
        host="127.0.0.1",
        port=0,
        dashboard=False,
        dashboard_address="127.0.0.1:0",
        preload=["flotilla.scheduler_preload"],
        preload_argv=["--dg-api-address", "127.0.0.1:0", *argv],
    )


async def post(api: str, body: Any, token: str | None = TOKEN, raw: str | None = None) -> int:
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"token {token}"
    data = raw if raw is not None else json.dumps(body)
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{api}/api/comm", data=data, headers=headers) as r,
    ):
        return r.status


def test_missing_environment_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DASK_GATEWAY_CLUSTER_NAME", raising=False)
    monkeypatch.setenv("DASK_GATEWAY_API_URL", "http://x/api")
    monkeypatch.setenv("DASK_GATEWAY_API_TOKEN", "t")
    with pytest.raises(SystemExit) as info:
        scheduler_preload._read_environment()
    assert info.value.code == 1


async def test_heartbeats_api_and_scale_down_by_name(gateway: Gateway) -> None:
    async with scheduler("--dg-heartbeat-period", "0.2") as s:
        plugin = s.plugins[scheduler_preload.GatewayPlugin.name]
        beat = await wait_for(lambda: gateway.beats and gateway.beats[0], 10, "first heartbeat")
        dashboard_port = s.services["dashboard"].port
        assert isinstance(beat.pop("loop_lag"), float)
        assert beat == {
            "scheduler_address": s.address,
            "dashboard_address": f"http://127.0.0.1:{dashboard_port}",
            "api_address": plugin.api_address,
            "count": 0,
            "active_workers": [],
            "closing_workers": [],
            "closed_workers": [],
            "clients": 0,
        }
        api = plugin.api_address
        async with aiohttp.ClientSession() as session, session.get(f"{api}/api/health") as r:
            assert r.status == 200
        assert await post(api, {"op": "scale", "count": 1}, token=None) == 403
        assert await post(api, {"op": "scale", "count": 1}, token="bad") == 403
        assert await post(api, {"op": "resize"}) == 422
        assert await post(api, {"op": "scale", "count": -1}) == 422
        assert await post(api, None, raw="{not json") == 400

        # Ask for the workers before they join: with a count of 0, a heartbeat in flight
        # as they register would (rightly) retire one.
        assert await post(api, {"op": "scale", "count": 2}) == 200
        await wait_for(lambda: gateway.beats[-1]["count"] == 2, 10, "count 2")
        async with (
            Worker(s.address, name="wa", nthreads=1, dashboard_address="127.0.0.1:0"),
            Worker(s.address, name="wb", nthreads=1, dashboard_address="127.0.0.1:0"),
        ):
            await wait_for(
                lambda: (
                    gateway.beats[-1]["count"] == 2
                    and gateway.beats[-1]["active_workers"] == ["wa", "wb"]
                ),
                10,
                "two active workers",
            )
            assert await post(api, {"op": "scale", "count": 1}) == 200
            closed = await wait_for(
                lambda: gateway.beats[-1]["closed_workers"], 20, "a closed worker"
            )
            [name] = closed
            beats = gateway.beats
            first_closing = next(i for i, b in enumerate(beats) if b["closing_workers"])
            first_closed = next(i for i, b in enumerate(beats) if b["closed_workers"])
            # Announced as closing before it was removed.
            assert first_closing < first_closed
            assert beats[first_closing]["closing_workers"] == [name]
            assert name not in beats[first_closing]["active_workers"]
            await wait_for(
                lambda: gateway.beats[-1]["active_workers"] == sorted({"wa", "wb"} - {name}),
                10,
                "one active worker",
            )
    assert gateway.unauthorized == 0


async def test_adaptive_clamps_and_turns_off_on_scale(gateway: Gateway) -> None:
    async with scheduler("--dg-heartbeat-period", "0", "--dg-adaptive-period", "0.1") as s:
        plugin = s.plugins[scheduler_preload.GatewayPlugin.name]
        await wait_for(lambda: gateway.beats, 10, "first heartbeat")
        api = plugin.api_address
        assert await post(api, {"op": "adapt", "minimum": 2, "maximum": 5, "active": True}) == 200
        await wait_for(lambda: gateway.beats[-1]["count"] == 2, 10, "count raised to minimum")
        # Lower the bounds: scale down only once the whole window agrees.
        assert await post(api, {"op": "adapt", "minimum": 0, "maximum": 1, "active": True}) == 200
        await wait_for(lambda: gateway.beats[-1]["count"] == 0, 10, "count down to 0")
        assert await post(api, {"op": "scale", "count": 3}) == 200
        await wait_for(lambda: gateway.beats[-1]["count"] == 3, 10, "count 3")
        assert plugin._adaptive_task is None


async def test_clients_connecting_and_leaving_are_reported_at_once(gateway: Gateway) -> None:
    """With no periodic heartbeats (period 0: hourly), each beat after the first is one
    a client's arrival or departure triggered; the scheduler's own client never counts."""
    async with scheduler("--dg-heartbeat-period", "0") as s:
        plugin = s.plugins[scheduler_preload.GatewayPlugin.name]
        await wait_for(lambda: gateway.beats, 10, "first heartbeat")
        assert "fire-and-forget" in s.clients
        assert [b["clients"] for b in gateway.beats] == [0]
        async with Client(s.address, asynchronous=True) as first:
            await wait_for(lambda: gateway.beats[-1]["clients"] == 1, 10, "one client")
            async with Client(s.address, asynchronous=True):
                await wait_for(lambda: gateway.beats[-1]["clients"] == 2, 10, "two clients")
            await wait_for(lambda: gateway.beats[-1]["clients"] == 1, 10, "one client left")
            plugin.own_clients.add(first.id)  # as if the plugin had opened it itself
            assert plugin.connected_clients() == 0
            plugin.own_clients.clear()
        await wait_for(lambda: gateway.beats[-1]["clients"] == 0, 10, "no client left")
        assert [b["clients"] for b in gateway.beats] == [0, 1, 2, 1, 0]


async def test_idle_timeout_deletes_the_cluster(gateway: Gateway) -> None:
    async with scheduler("--dg-idle-timeout", "0.4"):
        await wait_for(lambda: gateway.deletes == 1, 10, "the idle DELETE")


async def test_an_advertised_host_replaces_the_listening_one_in_every_address(
    gateway: Gateway, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A pod behind a Kubernetes Service: it listens on its pod IP, the gateway is told
    # the Service's name.
    monkeypatch.setenv(scheduler_preload.ADVERTISE_HOST, "c1.dask.svc")
    async with scheduler("--dg-heartbeat-period", "0.2") as s:
        beat = await wait_for(lambda: gateway.beats and gateway.beats[0], 10, "first heartbeat")
        port = s.address.rpartition(":")[2]
        assert s.address.startswith("tls://127.0.0.1:") or s.address.startswith("tcp://127.0.0.1:")
        assert beat["scheduler_address"] == s.address.replace("127.0.0.1", "c1.dask.svc")
        assert beat["scheduler_address"].endswith(f"c1.dask.svc:{port}")
        assert beat["dashboard_address"] == (f"http://c1.dask.svc:{s.services['dashboard'].port}")
        assert beat["api_address"].startswith("http://c1.dask.svc:")
