"""RouteWatcher against a RouteService double: full set, changes, reconnects, fallback."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from flotilla.registry.v1 import internal_pb2
from flotilla_common.config import Deployment
from flotilla_proxy_config.config import ProxyConfig
from flotilla_proxy_config.snapshot import SnapshotBuilder
from flotilla_proxy_config.watcher import RouteWatcher
from flotilla_proxy_config.xds import SnapshotStore
from traitlets.config import Config

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]

Waiter = Callable[..., Awaitable[float]]


class Harness:
    def __init__(self, registry_address: str, tmp_path: Path, token: str) -> None:
        cfg = Config()
        cfg.Deployment.registry_grpc_address = registry_address
        cfg.Deployment.internal_token = token
        cfg.Deployment.state_dir = str(tmp_path)
        cfg.ProxyConfig.initial_routes_wait = 0.2
        cfg.ProxyConfig.watch_backoff_max = 0.2
        deployment, config = Deployment(config=cfg), ProxyConfig(config=cfg)
        self.store = SnapshotStore()
        self.watcher = RouteWatcher(
            deployment, config, SnapshotBuilder(deployment, config), self.store
        )
        self.task: asyncio.Task[None] | None = None

    def routes(self) -> set[str]:
        snapshot = self.store.current
        return set(snapshot.routes) if snapshot is not None else set()

    def complete(self) -> bool:
        return self.store.current is not None and self.store.current.complete


@pytest.fixture
async def harness(
    fake_registry: Any, free_port: Callable[[], int], tmp_path: Path
) -> AsyncIterator[Harness]:
    fake_registry.port = free_port()
    h = Harness(fake_registry.address, tmp_path, fake_registry.token)
    h.task = asyncio.create_task(h.watcher.run())
    yield h
    h.task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await h.task


async def test_full_set_then_changes(
    harness: Harness, fake_registry: Any, wait_for: Waiter
) -> None:
    routes = fake_registry.routes
    routes.upsert("alpha", "127.0.0.1:9000", "127.0.0.1:9001")
    routes.upsert("Bad/Name", "127.0.0.1:9000")  # invalid: ignored, not fatal
    await fake_registry.start()

    async def has(names: set[str]) -> bool:
        return harness.complete() and harness.routes() == names

    await wait_for(lambda: has({"alpha"}), 5, what="the full set")
    routes.upsert("beta", "127.0.0.1:9100")
    await wait_for(lambda: has({"alpha", "beta"}), 5, what="beta")
    routes.remove("alpha")
    await wait_for(lambda: has({"beta"}), 5, what="alpha removed")


async def test_reconnect_replaces_the_set(
    harness: Harness, fake_registry: Any, wait_for: Waiter
) -> None:
    fake_registry.routes.upsert("alpha", "127.0.0.1:9000")
    await fake_registry.start()

    async def has(names: set[str]) -> bool:
        return harness.routes() == names

    await wait_for(lambda: has({"alpha"}), 5, what="the full set")
    await fake_registry.stop()
    # While the registry is down, alpha stops and gamma starts; the last routes stay served.
    fake_registry.routes.routes.clear()
    fake_registry.routes.routes["gamma"] = internal_pb2.Route(
        cluster_name="gamma", scheduler_address="127.0.0.1:9200"
    )
    assert harness.routes() == {"alpha"}
    await fake_registry.start()
    await wait_for(lambda: has({"gamma"}), 5, what="the new full set after reconnect")
    assert fake_registry.routes.watch_calls >= 2


async def test_static_part_is_served_while_the_registry_is_down(
    harness: Harness, fake_registry: Any, wait_for: Waiter
) -> None:
    async def static_served() -> bool:
        return harness.store.current is not None

    await wait_for(static_served, 5, what="the static snapshot")
    assert not harness.complete()
    assert harness.routes() == set()
    fake_registry.routes.upsert("alpha", "127.0.0.1:9000")
    await fake_registry.start()
    await wait_for(lambda: _true(harness.complete()), 5, what="the full set")
    assert harness.routes() == {"alpha"}


async def test_wrong_token_serves_nothing_per_cluster(
    fake_registry: Any, tmp_path: Path, wait_for: Waiter
) -> None:
    fake_registry.routes.upsert("alpha", "127.0.0.1:9000")
    await fake_registry.start()
    h = Harness(fake_registry.address, tmp_path, "wrong-token")
    task = asyncio.create_task(h.watcher.run())
    try:
        await wait_for(lambda: _true(h.store.current is not None), 5, what="static snapshot")
        assert not h.complete()
        assert h.routes() == set()
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _true(value: bool) -> bool:
    return value
