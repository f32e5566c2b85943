"""Keeping several registry replicas on one PostgreSQL database consistent.

``ClusterService`` holds every unfinished cluster in memory and writes each change
through to the store. With one registry (SQLite, ``LocalReplica``) memory is the truth.
With several sharing a database (``PostgresReplica``):

- **Changes elsewhere reach memory.** Every save notifies ``<name>:<revision>`` on commit;
  each replica LISTENs and reloads a cluster whose revision differs from the one it
  holds, updating its record in place and telling its watchers (launchers' WatchClusters,
  proxy-config's WatchRoutes, ``?wait`` long-polls) exactly as for a local change. A
  resync every ``resync_period`` seconds, and after each reconnect of the listening
  connection, compares all revisions and catches anything a notification missed.
- **Concurrent changes to one cluster take turns.** ``guard`` (the service's per-cluster
  lock) also takes the row's lock in the database and, if the stored revision is not the
  one in memory, reloads the record before the change is applied, inside the same
  transaction. So the second writer always builds on the first: a heartbeat handled by
  one replica cannot overwrite a stop handled by another (no lost update, no stopped
  cluster brought back).
- **One replica leads.** The listening connection also holds a session advisory lock;
  the replica holding it has ``leads`` True and is the one that should run periodic jobs
  (timeouts, purges). Leadership moves when that connection drops. Jobs must still go
  through ``guard``, which keeps them correct during the short overlap a failover can give.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING, Any

from .errors import StoreUnavailable
from .tasks import cancel_and_wait

if TYPE_CHECKING:
    from .clusters import ClusterService
    from .model import ClusterRecord
    from .pgstore import PostgresStore

__all__ = ["LocalReplica", "PostgresReplica", "Replica"]

log = logging.getLogger(__name__)


class Replica(abc.ABC):
    """How one registry process coordinates with others on the same store."""

    leads: bool = True

    @abc.abstractmethod
    def guard(
        self, name: str, lock: asyncio.Lock, owner: str = ""
    ) -> AbstractAsyncContextManager[Any]:
        """What ``ClusterService`` holds while it changes cluster ``name``; with ``owner``
        also that user's lock across replicas (quota checks), taken first."""

    async def fetch(self, name: str) -> ClusterRecord | None:
        """A cluster missing from memory that another replica may have just created."""
        return None

    async def start(self) -> None:  # noqa: B027 (optional hook)
        pass

    async def stop(self) -> None:  # noqa: B027 (optional hook)
        pass


class LocalReplica(Replica):
    """The only registry on its store: memory is the truth, the local lock suffices."""

    def guard(
        self, name: str, lock: asyncio.Lock, owner: str = ""
    ) -> AbstractAsyncContextManager[Any]:
        return lock


class PostgresReplica(Replica):
    """One of several registries sharing a PostgreSQL database (see the module docstring)."""

    def __init__(
        self, service: ClusterService, store: PostgresStore, resync_period: float = 10.0
    ) -> None:
        self.service = service
        self.store = store
        self.resync_period = resync_period
        self.leads = False
        self.connected = asyncio.Event()
        self._pending: set[str] = set()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def guard(
        self, name: str, lock: asyncio.Lock, owner: str = ""
    ) -> AbstractAsyncContextManager[Any]:
        return self._guarded(name, lock, owner)

    @contextlib.asynccontextmanager
    async def _guarded(self, name: str, lock: asyncio.Lock, owner: str) -> AsyncIterator[None]:
        async with lock, self.store.locked(name, owner) as stored_revision:
            held = self.service.peek(name)
            if stored_revision is not None and (held is None or held.revision != stored_revision):
                # Another replica changed it since we last looked (or our last save
                # failed): build on what is stored, not on what we remember.
                self.service.apply_stored(name, await self.store.load_cluster(name))
            yield

    async def fetch(self, name: str) -> ClusterRecord | None:
        await self.refresh(name)
        return self.service.peek(name)

    async def refresh(self, name: str) -> None:
        """Reload ``name`` from the store if it differs from memory."""
        async with self.service.local_lock(name):
            stored = await self.store.load_cluster(name)
            held = self.service.peek(name)
            if stored is None and held is None:
                return
            if stored is not None and held is not None and stored.revision == held.revision:
                return
            if held is None and stored is not None and stored.finished:
                return
            self.service.apply_stored(name, stored)

    # -- notifications and resync ----------------------------------------------------------

    async def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._listen_forever(), name="registry-listen"),
            asyncio.create_task(self._apply_forever(), name="registry-apply"),
        ]
        # Serve only once changes from other replicas reach us (the resync after
        # connecting covers whatever happened before).
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), self.store.connect_timeout)

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    def _on_notify(self, name: str, revision: int) -> None:
        held = self.service.peek(name)
        if held is not None and held.revision == revision:
            return  # our own save, or one we already loaded
        self._pending.add(name)
        self._wake.set()

    async def _apply_forever(self) -> None:
        delay = 0.1
        while True:
            await self._wake.wait()
            self._wake.clear()
            names, self._pending = self._pending, set()
            failed = False
            for name in sorted(names):
                try:
                    await self.refresh(name)
                except StoreUnavailable as exc:
                    log.warning("cluster %s: cannot reload it: %s", name, exc.log_message)
                    self._pending.add(name)
                    failed = True
                except Exception:
                    log.exception("cluster %s: reloading it failed", name)
            if failed:
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
                self._wake.set()
            else:
                delay = 0.1

    async def _resync(self) -> None:
        stored = await self.store.revisions()
        held = self.service.active_revisions()
        stale = {n for n, r in stored.items() if held.get(n) != r}
        stale |= held.keys() - stored.keys()  # finished elsewhere
        if stale:
            log.info("resync: reloading %d clusters changed elsewhere", len(stale))
            self._pending |= stale
            self._wake.set()

    async def _listen_forever(self) -> None:
        delay = 0.2
        while True:
            conn = None
            try:
                conn = await self.store.listen(self._on_notify)
                lost = asyncio.Event()
                conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
                delay = 0.2
                while not lost.is_set():
                    if self.leads:
                        await self.store.ping(conn)  # notices a connection that died quietly
                    elif await self.store.try_lead(conn):
                        self.leads = True
                        log.info("this registry replica now runs the periodic jobs")
                    await self._resync()
                    self.connected.set()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(lost.wait(), self.resync_period)
                log.warning("lost the connection for change notifications; reconnecting")
            except asyncio.CancelledError:
                raise
            except StoreUnavailable as exc:
                log.warning("change notifications unavailable (%s); retrying", exc.log_message)
            except Exception:
                log.exception("change notifications failed; retrying")
            finally:
                self.leads = False
                self.connected.clear()
                if conn is not None:
                    conn.terminate()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
