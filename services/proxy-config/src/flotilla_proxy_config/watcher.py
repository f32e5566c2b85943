"""Follows the registry's routes (``RouteService.WatchRoutes``) into new snapshots.

The first message of every watch is the full route set (``reset=true``); later ones add
or remove routes. The watch is re-opened with exponential backoff whenever it fails,
keeping the last routes meanwhile. Until the first full set arrives nothing per-cluster
is served; after ``ProxyConfig.initial_routes_wait`` the static part is, so the API
through Envoy answers (503 while the registry is down) instead of hanging.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Iterable

import grpc
from flotilla.registry.v1 import internal_pb2, internal_pb2_grpc
from flotilla_common.config import Deployment
from flotilla_common.grpcserver import internal_metadata

from .config import ProxyConfig
from .snapshot import Route, SnapshotBuilder
from .xds import SnapshotStore

__all__ = ["RouteWatcher"]

log = logging.getLogger(__name__)

_BACKOFF_START = 0.1


class RouteWatcher:
    """Keeps ``store`` in line with the registry's RUNNING clusters."""

    def __init__(
        self,
        deployment: Deployment,
        config: ProxyConfig,
        builder: SnapshotBuilder,
        store: SnapshotStore,
    ) -> None:
        self._address = deployment.registry_grpc_address
        self._metadata = internal_metadata(deployment.secret("internal_token"))
        self._initial_wait = config.initial_routes_wait
        self._backoff_max = max(config.watch_backoff_max, _BACKOFF_START)
        self._builder = builder
        self._store = store
        self._routes: dict[str, Route] = {}
        self._have_full_set = False
        self.full_set_received = asyncio.Event()

    @property
    def routes(self) -> dict[str, Route]:
        return dict(self._routes)

    async def run(self) -> None:
        """Watch until cancelled."""
        fallback = asyncio.create_task(self._serve_static_after_wait())
        channel = grpc.aio.insecure_channel(
            self._address,
            options=[
                ("grpc.keepalive_time_ms", 30_000),
                ("grpc.keepalive_timeout_ms", 10_000),
                ("grpc.keepalive_permit_without_calls", 1),
                # gRPC's own reconnect backoff (1 s at first) would add to ours.
                ("grpc.initial_reconnect_backoff_ms", int(_BACKOFF_START * 1000)),
                ("grpc.min_reconnect_backoff_ms", int(_BACKOFF_START * 1000)),
                ("grpc.max_reconnect_backoff_ms", int(self._backoff_max * 1000)),
            ],
        )
        backoff = _BACKOFF_START
        failures = 0
        try:
            stub = internal_pb2_grpc.RouteServiceStub(channel)
            while True:
                try:
                    call = stub.WatchRoutes(
                        internal_pb2.WatchRoutesRequest(), metadata=self._metadata
                    )
                    async for message in call:
                        if failures:
                            log.info("route watch on registry %s re-established", self._address)
                        failures = 0
                        backoff = _BACKOFF_START
                        self._apply(message)
                    log.warning("registry %s ended the route watch", self._address)
                except grpc.aio.AioRpcError as exc:
                    failures += 1
                    # Say it once per outage (UNAVAILABLE) but every time when it is
                    # something the registry refused (wrong token, bug).
                    if exc.code() != grpc.StatusCode.UNAVAILABLE:
                        level = logging.ERROR
                    else:
                        level = logging.WARNING if failures == 1 else logging.DEBUG
                    log.log(
                        level,
                        "route watch on registry %s failed: %s %s; retrying with backoff",
                        self._address,
                        exc.code().name,
                        exc.details(),
                    )
                delay = backoff * random.uniform(0.8, 1.2)
                log.debug("re-opening route watch in %.2f s", delay)
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self._backoff_max)
        finally:
            fallback.cancel()
            await channel.close()

    async def _serve_static_after_wait(self) -> None:
        try:
            await asyncio.wait_for(self.full_set_received.wait(), self._initial_wait)
        except TimeoutError:
            if self._store.current is None:
                log.warning(
                    "no routes from registry %s after %.1f s: serving the static "
                    "configuration only",
                    self._address,
                    self._initial_wait,
                )
                self._store.set(self._builder.build(None, complete=False))

    def _apply(self, message: internal_pb2.WatchRoutesResponse) -> None:
        if message.reset:
            fresh = dict(self._valid(message.upserted))
            for name in sorted(self._routes.keys() - fresh.keys()):
                log.info("route removed: cluster %s", name)
            for name, route in sorted(fresh.items()):
                if self._routes.get(name) != route:
                    self._log_set(route)
            self._routes = fresh
            self._have_full_set = True
            self._store.set(self._builder.build(self._routes, complete=True))
            self.full_set_received.set()
            return
        upserts = dict(self._valid(message.upserted))
        removed = [name for name in message.removed if name in self._routes]
        for route in upserts.values():
            self._log_set(route)
        for name in removed:
            log.info("route removed: cluster %s", name)
        self._routes.update(upserts)
        for name in removed:
            del self._routes[name]
        if not self._have_full_set:
            log.warning("route change before the full route set: waiting for it")
            return
        # Only what changed: O(changed) whatever the number of routes.
        self._store.set(self._builder.apply(upserts.values(), removed, complete=True))

    @staticmethod
    def _log_set(route: Route) -> None:
        log.info(
            "route set: cluster %s scheduler %s dashboard %s",
            route.name,
            route.scheduler_address,
            route.dashboard_address or "-",
        )

    @staticmethod
    def _valid(routes: Iterable[internal_pb2.Route]) -> Iterable[tuple[str, Route]]:
        for proto in routes:
            route = Route(
                name=proto.cluster_name,
                scheduler_address=proto.scheduler_address,
                dashboard_address=proto.dashboard_address,
            )
            try:
                route.validate()
            except ValueError as exc:
                log.error("ignoring route of cluster %s: %s", proto.cluster_name, exc)
                continue
            yield route.name, route
