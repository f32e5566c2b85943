"""Scheduler preload that connects a Dask scheduler to a Flotilla (or dask-gateway) gateway.

Used as ``dask scheduler --preload flotilla.scheduler_preload --dg-...``. It speaks the
gateway's internal protocol, the same as ``dask_gateway.scheduler_preload``, so a
cluster works behind either gateway:

* heartbeats ``POST {API_URL}/v1/clusters/{name}/heartbeat`` (``Authorization: token``)
  carrying the scheduler's addresses, the requested worker count and the workers that
  are active, being closed and closed (workers are identified by their ``--name``), the
  number of connected Dask clients (``clients``, a Flotilla addition the gateway's
  ``no_client_timeout`` needs; sent at once when a client connects or disconnects) and
  how far the event loop is behind (``loop_lag``, seconds, another addition);
* heartbeats leave from a thread of their own: the event loop builds each message, but a
  loop that stalls (a dashboard page being rendered, a task holding the loop) does not
  stop them; while it is behind, the thread repeats the latest message with the lag;
* an HTTP API on ``--dg-api-address``: ``GET /api/health`` and ``POST /api/comm`` with
  ``{"op": "scale", "count": n}`` or ``{"op": "adapt", "minimum", "maximum", "active"}``;
* adaptive scaling from ``Scheduler.adaptive_target`` and an optional idle timeout that
  deletes the cluster through the API.

The environment provides ``DASK_GATEWAY_API_URL``, ``DASK_GATEWAY_API_TOKEN`` (a value
containing ``/`` names a file holding the token) and ``DASK_GATEWAY_CLUSTER_NAME``; the
scheduler exits with status 1 if one is missing. ``FLOTILLA_SCHEDULER_HOST``, when set,
is the host the heartbeats report in every address instead of the one the scheduler
listens on (a Kubernetes Service's DNS name in front of the pod's IP).

Only the standard library, click, tornado and distributed (all loaded by ``dask
scheduler`` anyway) are imported.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import sys
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Coroutine, Iterable
from typing import TYPE_CHECKING, Any

import click
from distributed.comm.addressing import get_address_host
from distributed.diagnostics.plugin import SchedulerPlugin
from tornado import web
from tornado.httpclient import AsyncHTTPClient, HTTPRequest
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

if TYPE_CHECKING:
    from distributed import Scheduler
    from distributed.scheduler import WorkerState

__all__ = ["GatewayPlugin", "dask_setup"]

# A child of "distributed": the scheduler's logging configuration (handlers, level)
# applies, so these lines land in the scheduler log next to distributed's own.
log = logging.getLogger("distributed.flotilla_preload")

#: How many recent adaptive targets a scale-down must agree with.
ADAPTIVE_WINDOW = 3
#: ``target_duration`` passed to ``Scheduler.adaptive_target`` (seconds).
TARGET_DURATION = 5.0
#: First retry delay after a failed heartbeat (seconds). The first heartbeat goes at
#: once: the user is waiting for it (it makes the cluster RUNNING).
RETRY_DELAY = 0.25
#: Longest gap between heartbeats when ``--dg-heartbeat-period 0`` (seconds).
MAX_HEARTBEAT_GAP = 3600.0
#: Delay of the heartbeat after unrequested worker changes (seconds).
WORKER_CHANGE_DELAY = 3.0
#: Timeout of each request to the gateway (seconds).
REQUEST_TIMEOUT = 10.0
#: A heartbeat is repeated from the sender thread when the event loop has handed it none
#: for this many heartbeat periods.
KEEPALIVE_PERIODS = 1.25
#: How often the event loop notes that it runs; lag is the time since, beyond this.
TICK_PERIOD = 0.5
#: Clients of the scheduler that are not a user's: its own (which it creates at start,
#: without the ``add_client`` hook).
INTERNAL_CLIENTS = frozenset({"fire-and-forget"})


def _parse_address(address: str) -> tuple[str, int]:
    """``host:port`` (host may be empty, meaning every interface) → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep:
        raise ValueError(f"invalid address {address!r}: expected host:port")
    return host.strip("[]"), int(port)


#: The host reported in the scheduler's addresses instead of the one it listens on.
ADVERTISE_HOST = "FLOTILLA_SCHEDULER_HOST"


def _read_environment() -> tuple[str, str, str]:
    """API URL, token and cluster name from the environment; exit 1 if one is missing."""
    names = ("DASK_GATEWAY_API_URL", "DASK_GATEWAY_API_TOKEN", "DASK_GATEWAY_CLUSTER_NAME")
    missing = [n for n in names if not os.environ.get(n)]
    if missing:
        log.error("flotilla scheduler preload: missing environment: %s", ", ".join(missing))
        sys.exit(1)
    api_url, token, cluster_name = (os.environ[n] for n in names)
    if "/" in token:
        with open(token) as f:
            token = f.read().strip()
    return api_url.rstrip("/"), token, cluster_name


def _error_text(body: bytes | None) -> str:
    """``: <message>`` of a gateway error body (``{"error": ...}``), else nothing."""
    try:
        error = json.loads(body or b"{}").get("error")
    except (ValueError, AttributeError):
        return ""
    return f": {error}" if isinstance(error, str) and error else ""


class _Sender:
    """Sends heartbeats from a thread of its own, so they do not wait for the event loop.

    The loop hands each message over with :meth:`submit` and gets whether the gateway took
    it; when it has handed none for ``KEEPALIVE_PERIODS`` heartbeat periods (it is busy:
    the scheduler still lives, its loop is behind), the thread sends the latest one
    again, retrying failures with backoff. Every message carries ``loop_lag``: how far
    behind the loop was (seconds) when it left.
    """

    def __init__(self, cluster_name: str, url: str, token: str, period: float) -> None:
        self.cluster_name = cluster_name
        self.url = url
        self.token = token
        self.keepalive = period * KEEPALIVE_PERIODS
        self.last_tick = time.monotonic()
        self._cond = threading.Condition()
        self._pending: tuple[dict[str, Any], asyncio.Future[bool]] | None = None
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"flotilla-heartbeats-{cluster_name}", daemon=True
        )

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def tick(self) -> None:
        """The event loop ran (called from it every ``TICK_PERIOD``)."""
        self.last_tick = time.monotonic()

    def lag(self) -> float:
        return round(max(0.0, time.monotonic() - self.last_tick - TICK_PERIOD), 1)

    def submit(self, body: dict[str, Any]) -> asyncio.Future[bool]:
        """Send ``body`` next (replacing one not sent yet); the future says if it was taken."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        with self._cond:
            if self._pending is not None:
                self._pending[1].cancel()
            self._pending = (body, future)
            self._cond.notify()
        return future

    def _run(self) -> None:
        latest: dict[str, Any] | None = None
        wait, backoff = self.keepalive, RETRY_DELAY
        while True:
            with self._cond:
                if self._pending is None and not self._closed:
                    self._cond.wait(wait)
                if self._closed:
                    return
                item, self._pending = self._pending, None
            if item is not None:
                latest, future = item
            elif latest is None:
                continue
            else:
                future = None
                log.warning(
                    "cluster %s: event loop %.1f s behind; heartbeat sent from its thread",
                    self.cluster_name,
                    self.lag(),
                )
            ok = self.post({**latest, "loop_lag": self.lag()})
            if future is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(_resolve, future, ok)
            if ok or future is not None:  # the loop retries its own with backoff
                wait, backoff = self.keepalive, RETRY_DELAY
            else:
                wait, backoff = backoff, min(backoff * 2, self.keepalive)

    def post(self, body: dict[str, Any]) -> bool:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(body).encode(),
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT) as response:
                response.read()
            return True
        except urllib.error.HTTPError as exc:
            log.warning(
                "cluster %s: POST %s returned %s%s",
                self.cluster_name,
                self.url,
                exc.code,
                _error_text(exc.read()),
            )
        except (OSError, ValueError) as exc:
            log.warning("cluster %s: POST %s failed: %s", self.cluster_name, self.url, exc)
        return False


def _resolve(future: asyncio.Future[bool], ok: bool) -> None:
    if not future.done():
        future.set_result(ok)


class _Handler(web.RequestHandler):
    def initialize(self, plugin: GatewayPlugin) -> None:
        self.plugin = plugin

    def check_xsrf_cookie(self) -> None:  # token-authenticated API, no cookies
        return None


class _HealthHandler(_Handler):
    def get(self) -> None:
        self.set_status(200)


class _CommHandler(_Handler):
    def post(self) -> None:
        scheme, _, presented = self.request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "token" or not hmac.compare_digest(
            presented.strip().encode(), self.plugin.token.encode()
        ):
            raise web.HTTPError(403, reason="Forbidden")
        msg: Any = {}
        if self.request.headers.get("Content-Type", "").startswith("application/json"):
            try:
                msg = json.loads(self.request.body or b"{}")
            except ValueError:
                raise web.HTTPError(400, reason="body is not valid JSON") from None
        if not isinstance(msg, dict):
            raise web.HTTPError(400, reason="body must be a JSON object")
        op = msg.get("op")
        if op == "scale":
            count = msg.get("count")
            if not isinstance(count, int) or isinstance(count, bool) or count < 0:
                raise web.HTTPError(422, reason="count must be a non-negative integer")
            self.plugin.scale(count)
        elif op == "adapt":
            minimum, maximum = msg.get("minimum"), msg.get("maximum")
            for value in (minimum, maximum):
                if value is not None and (
                    not isinstance(value, int) or isinstance(value, bool) or value < 0
                ):
                    raise web.HTTPError(422, reason="minimum/maximum must be integers or null")
            self.plugin.adapt(minimum, maximum, bool(msg.get("active", True)))
        else:
            raise web.HTTPError(422, reason="op must be one of {scale, adapt}")
        self.set_status(200)


class GatewayPlugin(SchedulerPlugin):
    """Scheduler plugin holding the gateway bridge: heartbeats, API, adaptive, idle."""

    name = "flotilla-gateway"

    def __init__(
        self,
        scheduler: Scheduler,
        *,
        api_url: str,
        token: str,
        cluster_name: str,
        heartbeat_period: float = 15.0,
        adaptive_period: float = 3.0,
        idle_timeout: float = 0.0,
    ) -> None:
        self.scheduler = scheduler
        self.api_url = api_url
        self.token = token
        self.cluster_name = cluster_name
        self.heartbeat_period = heartbeat_period
        self.adaptive_period = adaptive_period
        self.idle_timeout = idle_timeout
        self.api_address = ""
        #: The worker count the gateway is asked for.
        self.count = 0
        self.adaptive_minimum: int | None = None
        self.adaptive_maximum: int | None = None
        self._names: dict[str, str] = {}  # worker address -> name
        self._retiring: set[str] = set()
        self._closed: set[str] = set()
        #: Ids of Dask clients this plugin itself connects, if it ever does: not counted
        #: among the connected clients (they do not mean a user is there).
        self.own_clients: set[str] = set()
        self._targets: deque[int] = deque(maxlen=ADAPTIVE_WINDOW)
        self._last_activity = time.monotonic()
        self._wake = asyncio.Event()
        self._delayed: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._adaptive_task: asyncio.Task[None] | None = None
        self._server: HTTPServer | None = None
        self._client: AsyncHTTPClient | None = None
        self._sender: _Sender | None = None
        self._closing = False

    # -- lifecycle ------------------------------------------------------------------------

    async def start_bridge(self, api_address: str) -> None:
        """Serve the API on ``api_address`` and start heartbeats (and the idle check)."""
        for addr, ws in self.scheduler.workers.items():
            self._names[addr] = str(ws.name)
        host, port = _parse_address(api_address)
        sockets = bind_sockets(port, address=host or None)
        app = web.Application(
            [
                (r"/api/health", _HealthHandler, {"plugin": self}),
                (r"/api/comm", _CommHandler, {"plugin": self}),
            ]
        )
        self._server = HTTPServer(app)
        self._server.add_sockets(sockets)
        bound_port = sockets[0].getsockname()[1]
        self.api_address = f"http://{self._host()}:{bound_port}"
        self._client = AsyncHTTPClient(force_instance=True)
        period = self.heartbeat_period if self.heartbeat_period > 0 else MAX_HEARTBEAT_GAP
        self._sender = _Sender(
            self.cluster_name,
            f"{self.api_url}/v1/clusters/{self.cluster_name}/heartbeat",
            self.token,
            period,
        )
        self._sender.start()
        self._spawn(self._tick_loop())
        self._spawn(self._heartbeat_loop())
        if self.idle_timeout > 0:
            self._spawn(self._idle_loop())
        log.info(
            "cluster %s: gateway API at %s, heartbeats to %s every %ss",
            self.cluster_name,
            self.api_address,
            self.api_url,
            self.heartbeat_period,
        )

    async def close(self) -> None:
        """Stop every loop and the API server (scheduler plugin hook)."""
        self._closing = True
        if self._delayed is not None:
            self._delayed.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._sender is not None:
            self._sender.close()
            self._sender = None
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _host(self) -> str:
        return os.environ.get(ADVERTISE_HOST) or str(get_address_host(self.scheduler.address))

    def _scheduler_address(self) -> str:
        """The scheduler's comm address, with the advertised host if one is set."""
        address = str(self.scheduler.address)
        host = os.environ.get(ADVERTISE_HOST)
        if not host:
            return address
        scheme, _, rest = address.rpartition("://")
        port = rest.rpartition(":")[2]
        return f"{scheme}://{host}:{port}" if scheme else f"{host}:{port}"

    # -- scheduler plugin hooks -----------------------------------------------------------

    def add_worker(self, scheduler: Scheduler, worker: str) -> None:
        """Record the new worker's name; report soon if there are more than requested."""
        ws = scheduler.workers.get(worker)
        if ws is None:
            return
        self._names[worker] = str(ws.name)
        if len(self._active()) > self.count:
            self._heartbeat_soon(WORKER_CHANGE_DELAY)

    def remove_worker(self, scheduler: Scheduler, worker: str, **kwargs: Any) -> None:
        """Move the worker to the closed list; report soon if nobody asked it to close."""
        name = self._names.pop(worker, None)
        if name is None:
            return
        expected = name in self._retiring
        self._retiring.discard(name)
        self._closed.add(name)
        if not expected:
            self._heartbeat_soon(WORKER_CHANGE_DELAY)

    def add_client(self, scheduler: Scheduler, client: str) -> None:
        """Report the new client count at once (the gateway's no_client_timeout)."""
        self._heartbeat_soon(0)

    def remove_client(self, scheduler: Scheduler, client: str) -> None:
        """Report the new client count at once: the last one leaving starts the grace."""
        self._heartbeat_soon(0)

    def connected_clients(self) -> int:
        """Dask clients connected now, the scheduler's and this plugin's own left out."""
        return sum(
            1
            for client in self.scheduler.clients
            if client not in INTERNAL_CLIENTS and client not in self.own_clients
        )

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        """Note scheduler activity for the idle timeout."""
        self._last_activity = time.monotonic()

    def valid_workers_downscaling(
        self, scheduler: Scheduler, workers: list[WorkerState]
    ) -> list[WorkerState]:
        """Workers already being retired are not candidates again."""
        return [ws for ws in workers if str(ws.name) not in self._retiring]

    # -- requests from the gateway --------------------------------------------------------

    def scale(self, count: int) -> None:
        """Ask for ``count`` workers; turns adaptive scaling off."""
        self._stop_adaptive()
        log.info("cluster %s: scale to %d workers", self.cluster_name, count)
        self.count = count
        self._heartbeat_soon(0)

    def adapt(self, minimum: int | None, maximum: int | None, active: bool) -> None:
        """Start (or reconfigure) or stop adaptive scaling."""
        self._stop_adaptive()
        if not active:
            log.info("cluster %s: adaptive scaling off", self.cluster_name)
            return
        self.adaptive_minimum, self.adaptive_maximum = minimum, maximum
        log.info(
            "cluster %s: adaptive scaling between %s and %s", self.cluster_name, minimum, maximum
        )
        self.adaptive_step()
        self._adaptive_task = self._spawn(self._adaptive_loop())

    def _stop_adaptive(self) -> None:
        if self._adaptive_task is not None:
            self._adaptive_task.cancel()
            self._adaptive_task = None
        self._targets.clear()

    def _set_count(self, count: int) -> None:
        if count != self.count:
            log.info("cluster %s: adaptive target %d workers", self.cluster_name, count)
            self.count = count
            self._heartbeat_soon(0)

    # -- adaptive -------------------------------------------------------------------------

    def adaptive_step(self) -> None:
        """One adaptive decision: scale up at once, down only if the recent window agrees."""
        target = int(self.scheduler.adaptive_target(target_duration=TARGET_DURATION))
        if self.adaptive_minimum is not None:
            target = max(target, self.adaptive_minimum)
        if self.adaptive_maximum is not None:
            target = min(target, self.adaptive_maximum)
        self._targets.append(target)
        if target > self.count:
            self._set_count(target)
        elif max(self._targets) < self.count:
            self._set_count(max(self._targets))

    async def _adaptive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.adaptive_period)
            try:
                self.adaptive_step()
            except Exception:
                log.exception("cluster %s: adaptive step failed", self.cluster_name)

    # -- heartbeats -----------------------------------------------------------------------

    def _heartbeat_soon(self, delay: float) -> None:
        if self._closing:
            return
        if delay <= 0:
            self._wake.set()
        elif self._delayed is None or self._delayed.cancelled():
            loop = asyncio.get_running_loop()

            def fire() -> None:
                self._delayed = None
                self._wake.set()

            self._delayed = loop.call_later(delay, fire)

    def _active(self) -> list[str]:
        return [n for n in self._names.values() if n not in self._retiring]

    def heartbeat_body(self, closing: Iterable[str] = ()) -> dict[str, Any]:
        """The heartbeat message; ``closing`` are workers chosen for retirement now."""
        closing = set(closing)
        dashboard = self.scheduler.services.get("dashboard")
        return {
            "scheduler_address": self._scheduler_address(),
            "dashboard_address": f"http://{self._host()}:{dashboard.port}" if dashboard else "",
            "api_address": self.api_address,
            "count": self.count,
            "active_workers": sorted(n for n in self._active() if n not in closing),
            "closing_workers": sorted(self._retiring | closing),
            "closed_workers": sorted(self._closed),
            "clients": self.connected_clients(),
        }

    def _choose_closing(self) -> list[str]:
        active = self._active()
        excess = len(active) - self.count
        if excess <= 0:
            return []
        chosen = self.scheduler.workers_to_close(n=excess, attribute="name")
        names = set(active)
        return [str(n) for n in chosen if str(n) in names][:excess]

    async def heartbeat(self) -> bool:
        """Send one heartbeat; on success, retire the workers it announced as closing."""
        if self._sender is None:
            return False
        closing = self._choose_closing()
        body = self.heartbeat_body(closing)
        try:
            ok = await self._sender.submit(body)
        except asyncio.CancelledError:
            if self._closing:
                raise
            return False  # a newer message replaced it before it left
        if ok and closing:
            self._retiring.update(closing)
            self._spawn(self._retire(closing))
        return ok

    async def _retire(self, names: list[str]) -> None:
        log.info("cluster %s: retiring workers %s", self.cluster_name, ", ".join(names))
        try:
            await self.scheduler.retire_workers(names=names, remove=True, close_workers=True)
        except Exception:
            log.exception("cluster %s: retiring workers failed", self.cluster_name)

    async def _tick_loop(self) -> None:
        while self._sender is not None:
            self._sender.tick()
            await asyncio.sleep(TICK_PERIOD)

    async def _heartbeat_loop(self) -> None:
        period = self.heartbeat_period if self.heartbeat_period > 0 else MAX_HEARTBEAT_GAP
        delay, backoff = 0.0, RETRY_DELAY
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
            self._wake.clear()
            try:
                ok = await self.heartbeat()
            except Exception:
                log.exception("cluster %s: heartbeat failed", self.cluster_name)
                ok = False
            if ok:
                delay = period
                backoff = RETRY_DELAY
            else:
                delay = backoff
                backoff = min(backoff * 2, period)

    async def _request(self, method: str, url: str, body: dict[str, Any] | None = None) -> bool:
        if self._client is None:
            return False
        request = HTTPRequest(
            url,
            method=method,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
            body=json.dumps(body) if body is not None else None,
            request_timeout=REQUEST_TIMEOUT,
            allow_nonstandard_methods=True,
        )
        try:
            response = await self._client.fetch(request, raise_error=False)
        except Exception as exc:
            log.warning("cluster %s: %s %s failed: %s", self.cluster_name, method, url, exc)
            return False
        if response.code >= 400:
            log.warning(
                "cluster %s: %s %s returned %s%s",
                self.cluster_name,
                method,
                url,
                response.code,
                _error_text(response.body),
            )
            return False
        return True

    # -- idle timeout ---------------------------------------------------------------------

    def is_idle(self) -> bool:
        """No task processing, queued or unrunnable, and no activity for ``idle_timeout``."""
        s = self.scheduler
        if any(ws.processing for ws in s.workers.values()) or s.unrunnable or s.queued:
            return False
        return time.monotonic() - self._last_activity >= self.idle_timeout

    async def _idle_loop(self) -> None:
        while True:
            await asyncio.sleep(self.idle_timeout / 4)
            if not self.is_idle():
                continue
            log.info(
                "cluster %s: idle for %ss, asking the gateway to stop it",
                self.cluster_name,
                self.idle_timeout,
            )
            if await self._request("DELETE", f"{self.api_url}/v1/clusters/{self.cluster_name}"):
                return


@click.command(context_settings={"ignore_unknown_options": False})
@click.option(
    "--dg-api-address",
    default=":0",
    show_default=True,
    help="host:port the gateway API (health, scale, adapt) listens on; empty host: all.",
)
@click.option(
    "--dg-heartbeat-period",
    type=float,
    default=15.0,
    show_default=True,
    help="Seconds between heartbeats; 0: only on changes (at least hourly).",
)
@click.option(
    "--dg-adaptive-period",
    type=float,
    default=3.0,
    show_default=True,
    help="Seconds between adaptive scaling decisions.",
)
@click.option(
    "--dg-idle-timeout",
    type=float,
    default=0.0,
    show_default=True,
    help="Stop the cluster after this many idle seconds; 0: never.",
)
async def dask_setup(
    scheduler: Scheduler,
    dg_api_address: str,
    dg_heartbeat_period: float,
    dg_adaptive_period: float,
    dg_idle_timeout: float,
) -> None:
    """Attach the gateway plugin to ``scheduler`` (distributed preload hook)."""
    api_url, token, cluster_name = _read_environment()
    plugin = GatewayPlugin(
        scheduler,
        api_url=api_url,
        token=token,
        cluster_name=cluster_name,
        heartbeat_period=dg_heartbeat_period,
        adaptive_period=dg_adaptive_period,
        idle_timeout=dg_idle_timeout,
    )
    scheduler.add_plugin(plugin, name=GatewayPlugin.name)
    await plugin.start_bridge(dg_api_address)
