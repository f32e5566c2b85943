"""The launcher's de-duplicating work queue with backoff."""

from __future__ import annotations

import asyncio

import pytest
from flotilla_launcher.workqueue import QueueClosed, WorkQueue


async def test_put_deduplicates_queued_keys() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.put("a")
    q.put("a")
    q.put("b")
    assert len(q) == 2
    assert await q.get() == "a"
    assert await q.get() == "b"
    assert len(q) == 0


async def test_key_is_not_handed_out_twice_while_processing() -> None:
    q: WorkQueue[str] = WorkQueue()
    q.put("a")
    assert await q.get() == "a"
    q.put("a")  # changed while being processed: dirty, not queued
    assert "a" not in q
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(q.get(), 0.05)
    q.task_done("a")
    assert "a" in q
    assert await asyncio.wait_for(q.get(), 1) == "a"


async def test_delayed_key_becomes_ready_later_and_sooner_put_wins() -> None:
    q: WorkQueue[str] = WorkQueue()
    loop = asyncio.get_running_loop()
    q.put("slow", delay=30)
    q.put("fast", delay=0.05)
    start = loop.time()
    assert await asyncio.wait_for(q.get(), 5) == "fast"
    assert loop.time() - start >= 0.04
    q.put("slow", delay=0)  # an immediate put overrides the long delay
    assert await asyncio.wait_for(q.get(), 1) == "slow"


async def test_backoff_doubles_is_capped_and_forget_resets() -> None:
    q: WorkQueue[str] = WorkQueue(backoff_base=0.5, backoff_max=3)
    assert [q.backoff("a") for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    assert q.failures("a") == 5
    assert q.backoff("b") == 0.5  # per key
    q.forget("a")
    assert q.failures("a") == 0
    assert q.backoff("a") == 0.5


async def test_put_backoff_while_processing_requeues_after_task_done() -> None:
    q: WorkQueue[str] = WorkQueue(backoff_base=0.01)
    q.put("a")
    key = await q.get()
    q.put_backoff(key)
    q.task_done(key)
    assert await asyncio.wait_for(q.get(), 1) == "a"


async def test_close_wakes_waiting_getters() -> None:
    q: WorkQueue[str] = WorkQueue()
    getter = asyncio.create_task(q.get())
    await asyncio.sleep(0)
    q.close()
    with pytest.raises(QueueClosed):
        await asyncio.wait_for(getter, 1)
    q.put("ignored")
    assert len(q) == 0
