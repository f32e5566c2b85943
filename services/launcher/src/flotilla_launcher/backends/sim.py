"""The simulation backend: clusters without Dask processes, to drive the control plane.

Every cluster of this backend is served by one shared stub in the launcher process,
which behaves like each cluster's scheduler as far as the gateway can see:

- a TLS listener: what Envoy's ``sni_daskgateway-<name>`` clusters point at, so a TLS
  handshake through the public port with SNI ``daskgateway-<name>`` succeeds once that
  cluster's route is live. With that SNI it presents the cluster's own certificate (as
  its scheduler would, and as the registry checks before adopting the first heartbeat's
  addresses); with any other, the stub's own;
- an HTTP server: a dashboard page for every cluster, and each cluster's scheduler API
  (``/c/<name>/api/comm`` and ``/api/health``), so scale and adapt work;
- heartbeats to the gateway with each cluster's own token, exactly as the scheduler
  preload sends them: the first one makes the cluster RUNNING, later ones report the
  simulated workers (started and stopped by the launcher like real ones).

So a thousand clusters cost the registry, auth, proxy-config and Envoy what a thousand
real ones do, and the machine almost nothing else. ``GET /sim/clusters/<name>`` on the
stub tells when the cluster's first heartbeat was accepted (``time.monotonic()``), which
the benchmark uses to time route propagation. Heartbeats go at once, after every change,
and every ``heartbeat_period`` (the first periodic one at a random point of the period,
so thousands of clusters do not beat in step).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
import random
import ssl
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from flotilla_common import SNI_PREFIX
from flotilla_common.tls import load_keypair, new_keypair
from traitlets import Integer, Unicode

from .base import Backend, ClusterSpec, ProcessStatus, WorkerSpec

__all__ = ["SimBackend"]

log = logging.getLogger(__name__)


#: Per-cluster TLS contexts the stub keeps (a context per cluster for 10,000 would
#: cost more memory than the stub is meant to).
_CONTEXTS_KEPT = 256


def _server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context presenting ``cert`` (PEM text), asking for no client certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    load_keypair(context, cert, key)
    return context


@dataclass
class _SimCluster:
    spec: ClusterSpec
    count: int = 0
    workers: set[str] = field(default_factory=set)
    closing: set[str] = field(default_factory=set)
    closed: set[str] = field(default_factory=set)
    running_at: float | None = None
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    task: asyncio.Task[None] | None = None


class SimBackend(Backend):
    """Clusters served by one in-process stub instead of Dask processes."""

    backend_name = "sim"

    host = Unicode("127.0.0.1", help="Address the stub's TLS and HTTP servers bind.", config=True)
    tls_port = Integer(0, help="Port of the stub's TLS listener (0: any free one).", config=True)
    http_port = Integer(
        0, help="Port of the stub's HTTP server (dashboards, scheduler API).", config=True
    )

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._clusters: dict[str, _SimCluster] = {}
        self._tls_server: asyncio.Server | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tls_address = ""
        self._http_address = ""
        self._started = asyncio.Lock()
        self._contexts: dict[str, ssl.SSLContext] = {}

    # -- the stub -------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the stub's servers."""
        async with self._started:
            if self._session is not None:
                return
            context = _server_context(*new_keypair("sim"))
            context.sni_callback = self._pick_certificate
            self._tls_server = await asyncio.start_server(
                self._serve_tls, self.host, self.tls_port, ssl=context
            )
            tls_port = self._tls_server.sockets[0].getsockname()[1]
            self._tls_address = f"tls://{self.host}:{tls_port}"
            app = web.Application()
            app.router.add_get("/sim/clusters/{name}", self._sim_info)
            app.router.add_get("/c/{name}/api/health", self._health)
            app.router.add_post("/c/{name}/api/comm", self._comm)
            app.router.add_get("/{tail:.*}", self._dashboard)
            self._runner = web.AppRunner(app, access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.host, self.http_port)
            await site.start()
            http_port = self._runner.addresses[0][1]
            self._http_address = f"http://{self.host}:{http_port}"
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=30),
                connector=aiohttp.TCPConnector(limit=64),
            )
            log.info(
                "sim stub: TLS at %s, dashboards and scheduler API at %s",
                self._tls_address,
                self._http_address,
            )

    async def close(self) -> None:
        for cluster in self._clusters.values():
            if cluster.task is not None:
                cluster.task.cancel()
        self._clusters.clear()
        if self._tls_server is not None:
            self._tls_server.close()
            self._tls_server = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _pick_certificate(
        self, sock: ssl.SSLObject, server_name: str | None, _: ssl.SSLContext
    ) -> None:
        """With SNI ``daskgateway-<name>`` of a cluster it serves, present that cluster's
        certificate (contexts of the latest few clusters are kept)."""
        cluster = self._clusters.get((server_name or "").removeprefix(SNI_PREFIX))
        if cluster is None:
            return
        name = cluster.spec.name
        context = self._contexts.pop(name, None) or _server_context(
            cluster.spec.tls_cert, cluster.spec.tls_key
        )
        self._contexts[name] = context  # most recently used last
        while len(self._contexts) > _CONTEXTS_KEPT:
            self._contexts.pop(next(iter(self._contexts)))
        sock.context = context

    async def _serve_tls(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A completed handshake is all a client needs to see; echo until it hangs up."""
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, ssl.SSLError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _sim_info(self, request: web.Request) -> web.Response:
        cluster = self._clusters.get(request.match_info["name"])
        if cluster is None:
            return web.json_response({"error": "unknown cluster"}, status=404)
        return web.json_response(
            {
                "running_at": cluster.running_at,
                "count": cluster.count,
                "workers": len(cluster.workers),
            }
        )

    async def _health(self, request: web.Request) -> web.Response:
        if request.match_info["name"] not in self._clusters:
            raise web.HTTPNotFound()
        return web.Response()

    async def _dashboard(self, request: web.Request) -> web.Response:
        return web.Response(text=f"simulated dashboard: {request.path}\n")

    async def _comm(self, request: web.Request) -> web.Response:
        cluster = self._clusters.get(request.match_info["name"])
        if cluster is None:
            raise web.HTTPNotFound()
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "token" or not hmac.compare_digest(
            token.encode(), cluster.spec.token.encode()
        ):
            raise web.HTTPForbidden()
        msg = await request.json()
        if not isinstance(msg, dict) or msg.get("op") not in ("scale", "adapt"):
            raise web.HTTPUnprocessableEntity(reason="op must be one of {scale, adapt}")
        if msg["op"] == "scale":
            count = msg.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise web.HTTPUnprocessableEntity(reason="count must be a non-negative integer")
            cluster.count = count
        elif msg.get("active", True):
            # Simulated adaptivity: no tasks, so the target is the minimum.
            cluster.count = int(msg.get("minimum") or 0)
        cluster.wake.set()
        return web.Response()

    def _body(self, cluster: _SimCluster) -> dict[str, Any]:
        name = cluster.spec.name
        excess = sorted(cluster.workers - cluster.closing)[cluster.count :]
        cluster.closing.update(excess)
        return {
            "scheduler_address": self._tls_address,
            "dashboard_address": self._http_address,
            "api_address": f"{self._http_address}/c/{name}",
            "count": cluster.count,
            "active_workers": sorted(cluster.workers - cluster.closing),
            "closing_workers": sorted(cluster.closing),
            "closed_workers": sorted(cluster.closed),
        }

    async def _heartbeats(self, cluster: _SimCluster) -> None:
        """Send a heartbeat now and after every change, as the scheduler preload does."""
        assert self._session is not None
        spec = cluster.spec
        url = f"{spec.api_url.rstrip('/')}/v1/clusters/{spec.name}/heartbeat"
        headers = {"Authorization": f"token {spec.token}"}
        delay = 0.25
        period = spec.config.heartbeat_period
        wait = random.uniform(0, period) if period > 0 else None
        while True:
            cluster.wake.clear()
            try:
                async with self._session.post(url, json=self._body(cluster), headers=headers) as r:
                    ok = r.status == 200
            except (aiohttp.ClientError, TimeoutError) as exc:
                log.warning("sim cluster %s: heartbeat failed: %s", spec.name, exc)
                ok = False
            if ok:
                if cluster.running_at is None:
                    cluster.running_at = time.monotonic()
                # Retired workers are gone once announced.
                cluster.workers -= cluster.closing
                cluster.closed |= cluster.closing
                cluster.closing.clear()
                delay = 0.25
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(cluster.wake.wait(), wait)
                wait = period if period > 0 else None
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 15.0)

    def _register(self, spec: ClusterSpec) -> _SimCluster:
        cluster = self._clusters.get(spec.name)
        if cluster is None:
            cluster = self._clusters[spec.name] = _SimCluster(spec)
            cluster.task = asyncio.create_task(self._heartbeats(cluster), name=f"sim-{spec.name}")
        return cluster

    # -- cluster hooks --------------------------------------------------------------------

    async def start_cluster(self, cluster: ClusterSpec) -> AsyncIterator[dict[str, Any]]:
        await self.start()
        yield {"sim": True, "scheduler": self._tls_address}
        self._register(cluster)

    async def stop_cluster(self, cluster: ClusterSpec, state: Mapping[str, Any]) -> None:
        sim = self._clusters.pop(cluster.name, None)
        if sim is not None and sim.task is not None:
            sim.task.cancel()

    async def check_clusters(
        self, clusters: Sequence[tuple[ClusterSpec, Mapping[str, Any]]]
    ) -> list[ProcessStatus]:
        """Simulated schedulers never die; a restarted launcher takes them over."""
        await self.start()
        for spec, _ in clusters:
            self._register(spec)
        return [ProcessStatus(True) for _ in clusters]

    # -- worker hooks ---------------------------------------------------------------------

    async def start_worker(self, worker: WorkerSpec) -> AsyncIterator[dict[str, Any]]:
        cluster = self._register(worker.cluster)
        yield {"sim": True}
        cluster.workers.add(worker.name)
        cluster.wake.set()

    async def stop_worker(self, worker: WorkerSpec, state: Mapping[str, Any]) -> None:
        cluster = self._clusters.get(worker.cluster.name)
        if cluster is not None and worker.name in cluster.workers:
            cluster.workers.discard(worker.name)
            cluster.closed.add(worker.name)
            cluster.wake.set()

    async def check_workers(
        self, workers: Sequence[tuple[WorkerSpec, Mapping[str, Any]]]
    ) -> list[ProcessStatus]:
        return [ProcessStatus(True) for _ in workers]
