"""Change streams: subscribers get the latest value per key, de-duplicated.

A slow subscriber never sees stale intermediate states, only the newest value for each
key that changed since it last looked (level-triggered).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Generic, TypeVar

__all__ = ["Hub", "Subscription"]

K = TypeVar("K")
V = TypeVar("V")


class Subscription(Generic[K, V]):
    def __init__(self, hub: Hub[K, V], accept: Callable[[K, V], bool]) -> None:
        self._hub = hub
        self._accept = accept
        self._pending: dict[K, V] = {}
        self._event = asyncio.Event()

    def _offer(self, key: K, value: V) -> None:
        if self._accept(key, value):
            self._pending[key] = value
            self._event.set()

    async def next_batch(self) -> dict[K, V]:
        """Wait for changes; return the newest value of every key that changed."""
        while not self._pending:
            self._event.clear()
            await self._event.wait()
        batch, self._pending = self._pending, {}
        return batch

    def close(self) -> None:
        self._hub._subscribers.discard(self)

    def __enter__(self) -> Subscription[K, V]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Hub(Generic[K, V]):
    def __init__(self) -> None:
        self._subscribers: set[Subscription[K, V]] = set()

    def subscribe(self, accept: Callable[[K, V], bool] = lambda k, v: True) -> Subscription[K, V]:
        sub: Subscription[K, V] = Subscription(self, accept)
        self._subscribers.add(sub)
        return sub

    def publish(self, key: K, value: V) -> None:
        for sub in list(self._subscribers):
            sub._offer(key, value)
