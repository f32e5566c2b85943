"""PostgresStore on a real server: migrations under concurrent start, change locks, and
the queries both stores answer alike."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest
from flotilla_registry.crypto import FieldCipher, generate_key
from flotilla_registry.model import ClusterRecord, Observed, Status, Target, WorkerRecord
from flotilla_registry.pgstore import PostgresStore
from flotilla_registry.store import SQLiteStore, Store, _migrations
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


@pytest.mark.parametrize("which", ["sqlite", "postgres"])
async def test_list_workers_is_newest_first_ended_ones_too(
    which: str, postgres: PostgresServer, tmp_path: Path
) -> None:
    """Both stores list a cluster's workers the same way (the workers listing of the
    REST API and ListWorkers), limited, and none of another cluster's."""
    store: Store = (
        PostgresStore(postgres.new_database())
        if which == "postgres"
        else SQLiteStore(str(tmp_path / "registry.sqlite"))
    )
    await store.open()
    try:
        c, other = _record(), _record()
        for i, name in enumerate(["a", "b", "c"]):
            c.workers[name] = WorkerRecord(name=name, start_time=1_000 + i)
        c.workers["a"].target, c.workers["a"].observed = Target.FAILED, Observed.STOPPED
        c.workers["a"].reason, c.workers["a"].stop_time = "exited with code 137", 5_000
        other.workers["x"] = WorkerRecord(name="x", start_time=9_000)
        await store.save_cluster(c, list(c.workers))
        await store.save_cluster(other, ["x"])
        listed = await store.list_workers(c.name, 10)
        assert [w.name for w in listed] == ["c", "b", "a"]
        assert (listed[2].status, listed[2].reason, listed[2].stop_time) == (
            Status.FAILED,
            "exited with code 137",
            5_000,
        )
        assert [w.name for w in await store.list_workers(c.name, 2)] == ["c", "b"]
        assert await store.list_workers("nope", 10) == []
    finally:
        await store.close()
