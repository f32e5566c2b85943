"""Commands to a running scheduler's API (the preload's POST /api/comm)."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp

__all__ = ["SchedulerAPI", "SchedulerUnreachable"]

log = logging.getLogger(__name__)


class SchedulerUnreachable(Exception):
    pass


class SchedulerAPI:
    def __init__(self, retries: int = 3, timeout_seconds: float = 10.0) -> None:
        self.retries = retries
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def send(self, cluster: str, api_address: str, token: str, msg: dict[str, Any]) -> None:
        """POST ``msg`` to the scheduler, retrying with backoff (0.1 s, 0.2 s, ...)."""
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=self.timeout)
        url = f"{api_address.rstrip('/')}/api/comm"
        delay = 0.1
        for attempt in range(1, self.retries + 1):
            try:
                async with self._session.post(
                    url, json=msg, headers={"Authorization": f"token {token}"}
                ) as resp:
                    if resp.status == 200:
                        return
                    reason = f"HTTP {resp.status}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                reason = repr(exc)
            log.warning(
                "cluster %s: scheduler API %s failed (attempt %d): %s",
                cluster,
                url,
                attempt,
                reason,
            )
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay *= 2
        raise SchedulerUnreachable(f"scheduler API of {cluster} unreachable")
