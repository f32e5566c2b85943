"""PostgresStore on a real server: migrations under concurrent start, and change locks."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest
from flotilla_registry.crypto import FieldCipher, generate_key
from flotilla_registry.model import ClusterRecord, Target
from flotilla_registry.pgstore import PostgresStore
from flotilla_registry.store import _migrations
from postgres import PostgresServer

pytestmark = pytest.mark.integration


def _record() -> ClusterRecord:
    return ClusterRecord(
        name=uuid.uuid4().hex, owner="alice", backend="local", options="{}", config="{}",
        token="t", tls_cert="c", tls_key="k",
    )  # fmt: skip


async def test_replicas_starting_together_migrate_once(postgres: PostgresServer) -> None:
    url = postgres.new_database()
    cipher = FieldCipher([generate_key()])
    stores = [PostgresStore(url, cipher) for _ in range(4)]
    try:
        await asyncio.gather(*(s.open() for s in stores))
        again = PostgresStore(url, cipher)
        await again.open()  # idempotent
        await again.close()
    finally:
        for s in stores:
            await s.close()
    conn = await asyncpg.connect(url)
    try:
        applied = [r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")]
    finally:
        await conn.close()
    assert applied == [name for name, _ in _migrations("postgres")]


async def test_changes_to_one_cluster_take_turns(postgres: PostgresServer) -> None:
    """While one store holds a cluster's change lock, another waits for it, then sees the
    committed revision; a change that fails rolls back."""
    url = postgres.new_database()
    a, b = PostgresStore(url), PostgresStore(url)
    await a.open()
    await b.open()
    try:
        c = _record()
        await a.save_cluster(c)
        order: list[str] = []
        async with a.locked(c.name) as revision:
            assert revision == 0
            waiter = asyncio.create_task(_lock_and_read(b, c.name, order))
            await asyncio.sleep(0.2)  # give b every chance to get in first (it must not)
            order.append("a saves")
            c.revision, c.target, c.worker_start_failures = 1, Target.STOPPED, 2
            await a.save_cluster(c)
        assert await waiter == 1
        assert order == ["a saves", "b locked"]

        with pytest.raises(RuntimeError, match="boom"):
            async with a.locked(c.name):
                c.revision, c.target = 2, Target.RUNNING
                await a.save_cluster(c)
                raise RuntimeError("boom")
        stored = await b.get_cluster(c.name)
        assert stored is not None
        assert (stored.revision, stored.target, stored.worker_start_failures) == (
            1,
            Target.STOPPED,
            2,
        )
    finally:
        await a.close()
        await b.close()


async def _lock_and_read(store: PostgresStore, name: str, order: list[str]) -> int | None:
    async with store.locked(name) as revision:
        order.append("b locked")
        return revision


async def test_client_counts_are_kept_unknown_included(postgres: PostgresServer) -> None:
    """Migration 0005: a heartbeat's client count (NULL when not reported) and since when
    none has been connected, in ms since the epoch (needs BIGINT)."""
    store = PostgresStore(postgres.new_database())
    await store.open()
    try:
        unknown, gone = _record(), _record()
        gone.clients, gone.clients_gone_since = 0, 1_767_225_600_123
        await store.save_cluster(unknown)
        await store.save_cluster(gone)
        loaded = {c.name: c for c in await store.load_unfinished()}
        assert (loaded[unknown.name].clients, loaded[unknown.name].clients_gone_since) == (
            None,
            None,
        )
        assert (loaded[gone.name].clients, loaded[gone.name].clients_gone_since) == (
            0,
            1_767_225_600_123,
        )
    finally:
        await store.close()
