"""A de-duplicating work queue with per-key exponential backoff.

Keys (cluster names) are queued at most once; a key being processed is never handed
out twice at the same time. Adding a key while it is processed marks it dirty: it is
queued again when the worker calls :meth:`WorkQueue.task_done`. Like client-go's
rate-limited work queue, as used by dask-gateway's Kubernetes controller.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["QueueClosed", "WorkQueue"]

K = TypeVar("K", bound=Hashable)


class QueueClosed(Exception):
    """Raised by :meth:`WorkQueue.get` once the queue is closed."""


class WorkQueue(Generic[K]):
    """De-duplicating, delay-capable queue of keys.

    Parameters
    ----------
    backoff_base, backoff_max:
        The n-th consecutive :meth:`put_backoff` of a key waits
        ``min(backoff_base * 2**(n-1), backoff_max)`` seconds; :meth:`forget` resets n.
    """

    def __init__(self, backoff_base: float = 0.1, backoff_max: float = 300.0) -> None:
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}  # queued keys -> when they become ready
        self._processing: set[K] = set()
        self._dirty: dict[K, float] = {}  # re-added while processing -> delay
        self._failures: dict[K, int] = {}
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._closed = False

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def __len__(self) -> int:
        return len(self._due)

    def __contains__(self, key: object) -> bool:
        return key in self._due

    @property
    def closed(self) -> bool:
        """True once :meth:`close` was called."""
        return self._closed

    def put(self, key: K, delay: float = 0.0) -> None:
        """Queue ``key`` to be ready after ``delay`` seconds (sooner wins if queued)."""
        if self._closed:
            return
        if key in self._processing:
            self._dirty[key] = min(delay, self._dirty.get(key, delay))
            return
        when = self._now() + max(delay, 0.0)
        if key in self._due and self._due[key] <= when:
            return
        self._due[key] = when
        heapq.heappush(self._heap, (when, next(self._seq), key))
        self._wakeup.set()

    def backoff(self, key: K) -> float:
        """Record one more failure of ``key`` and return the delay it now deserves."""
        n = self._failures.get(key, 0) + 1
        self._failures[key] = n
        return float(min(self.backoff_base * 2 ** (n - 1), self.backoff_max))

    def put_backoff(self, key: K) -> float:
        """Queue ``key`` again after its exponential backoff; returns the delay."""
        delay = self.backoff(key)
        self.put(key, delay)
        return delay

    def failures(self, key: K) -> int:
        """How many consecutive failures ``key`` has had."""
        return self._failures.get(key, 0)

    def forget(self, key: K) -> None:
        """Reset the backoff of ``key`` (after it was processed successfully)."""
        self._failures.pop(key, None)

    async def get(self) -> K:
        """Wait for the next ready key and mark it as being processed."""
        while True:
            if self._closed:
                raise QueueClosed
            timeout: float | None = None
            while self._heap:
                when, _, key = self._heap[0]
                if self._due.get(key) != when:  # superseded entry
                    heapq.heappop(self._heap)
                    continue
                now = self._now()
                if when <= now:
                    heapq.heappop(self._heap)
                    del self._due[key]
                    self._processing.add(key)
                    return key
                timeout = when - now
                break
            self._wakeup.clear()
            try:
                await asyncio.wait_for(self._wakeup.wait(), timeout)
            except TimeoutError:
                pass

    def task_done(self, key: K) -> None:
        """Mark ``key`` as processed; re-queue it if it was added meanwhile."""
        self._processing.discard(key)
        if key in self._dirty:
            self.put(key, self._dirty.pop(key))

    def close(self) -> None:
        """Wake every waiting :meth:`get` with :class:`QueueClosed`."""
        self._closed = True
        self._wakeup.set()
