"""When a cluster has taken too long, and when a finished one is forgotten.

The registry fails a cluster (target FAILED, with a reason) when

* it has not become RUNNING ``cluster_start_timeout`` seconds after its creation (a
  scheduler that hangs, or no launcher starting it);
* it is RUNNING but its scheduler has sent no heartbeat for ``heartbeat_timeout`` seconds,
  unless its launcher saw the scheduler's process alive within that time (a busy event
  loop, see ``ReportAlive``): then only after ``busy_timeout`` seconds without one;
* ``worker_start_failure_limit`` workers in a row failed to start: exited before
  connecting, or still not connected at the first heartbeat after
  ``worker_start_timeout`` (see :func:`late_workers`; heartbeats are how the gateway
  learns that workers connected).

and stops it (target STOPPED, a normal end, with a reason naming the setting) when

* it is older than its ``max_lifetime`` (from its creation, pending or running; see
  :func:`cluster_expired`);
* it is RUNNING and no Dask client has been connected to it for ``no_client_timeout``
  seconds: its owner's notebook is gone.

The timeouts are per cluster (``c.ClusterConfig``, stored in each cluster's
``config_json``) so option handlers can change them. Failure deadlines never fall before
the registry started plus the timeout: while the registry (or auth, or Envoy) was down, no
heartbeat could arrive, and that must not fail every cluster at once on restart.

:class:`Housekeeping` runs the periodic checks: the timeouts every
``c.Registry.check_timeouts_period`` and the retention purge of finished clusters (with
their logs) older than ``c.Registry.db_cluster_max_age``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .model import ClusterRecord, Observed, Target, now_ms
from .tasks import cancel_and_wait

__all__ = ["Housekeeping", "Lifecycle", "cluster_expired", "cluster_overdue", "late_workers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Lifecycle:
    """One cluster's timeouts (seconds) and worker start-failure limit; 0 turns
    ``max_lifetime`` and ``no_client_timeout`` off."""

    cluster_start_timeout: float = 60.0
    heartbeat_timeout: float = 30.0
    worker_start_timeout: float = 60.0
    worker_start_failure_limit: int = 3
    max_lifetime: float = 0.0
    no_client_timeout: float = 0.0
    busy_timeout: float = 3600.0

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Lifecycle:
        """From a cluster's resolved configuration; missing keys (records written before
        these settings existed) take the defaults."""
        defaults = cls()
        heartbeat = config.get("heartbeat_timeout")
        if heartbeat is None:
            heartbeat = 2 * float(config.get("heartbeat_period") or 15.0)
        return cls(
            cluster_start_timeout=float(
                config.get("cluster_start_timeout") or defaults.cluster_start_timeout
            ),
            heartbeat_timeout=float(heartbeat),
            busy_timeout=float(config.get("busy_timeout", defaults.busy_timeout)),
            worker_start_timeout=float(
                config.get("worker_start_timeout") or defaults.worker_start_timeout
            ),
            worker_start_failure_limit=int(
                config.get("worker_start_failure_limit", defaults.worker_start_failure_limit)
            ),
            max_lifetime=float(config.get("max_lifetime") or 0.0),
            no_client_timeout=float(config.get("no_client_timeout") or 0.0),
        )

    @classmethod
    def from_config_json(cls, text: str) -> Lifecycle:
        try:
            config = json.loads(text) if text else {}
        except ValueError:
            config = {}
        return cls.from_config(config if isinstance(config, dict) else {})


def _seconds(ms: int) -> str:
    value = ms / 1000
    return f"{value:.0f}" if value >= 10 else f"{value:.1f}"


def _timeout(seconds: float) -> str:
    return f"{seconds:g}"


def cluster_overdue(
    c: ClusterRecord, limits: Lifecycle, now: int, since: int, refused: str = ""
) -> str | None:
    """Why cluster ``c`` must fail at ``now`` (ms), or None.

    ``since`` (ms) is when the registry started: no deadline falls before it plus the
    timeout. ``refused`` is why the scheduler's latest first heartbeat was refused, if
    it was: what an operator needs to see (a network the registry cannot reach through?).
    """
    if c.target != Target.RUNNING:
        return None
    if c.observed == Observed.RUNNING:
        last = max(c.last_heartbeat or c.start_time, since)
        timeout = limits.heartbeat_timeout * 1000
        if now - last <= timeout:
            return None
        if not busy(c, limits, now):
            return (
                f"Cluster's scheduler stopped sending heartbeats: none for "
                f"{_seconds(now - last)} s (heartbeat_timeout "
                f"{_timeout(limits.heartbeat_timeout)} s)"
            )
        if limits.busy_timeout and now - last > limits.busy_timeout * 1000:
            return (
                f"Cluster's scheduler stopped sending heartbeats: none for "
                f"{_seconds(now - last)} s while its process ran (busy_timeout "
                f"{_timeout(limits.busy_timeout)} s)"
            )
        return None
    if now - max(c.start_time, since) <= limits.cluster_start_timeout * 1000:
        return None
    if refused:
        why = f"its scheduler's first heartbeat was refused: {refused}"
    elif c.observed == Observed.CREATED:
        why = f"no launcher of backend {c.backend!r} started it"
    else:
        why = "its scheduler started but never reported to the gateway"
    return (
        f"Cluster failed to start within cluster_start_timeout "
        f"({_timeout(limits.cluster_start_timeout)} s): {why}"
    )


def busy(c: ClusterRecord, limits: Lifecycle, now: int) -> bool:
    """Whether ``c``'s launcher saw its scheduler's process alive within the last
    ``heartbeat_timeout`` (and ``busy_timeout`` allows that grace at all)."""
    if limits.busy_timeout and limits.busy_timeout <= limits.heartbeat_timeout:
        return False
    return c.seen_alive is not None and now - c.seen_alive <= limits.heartbeat_timeout * 1000


def cluster_expired(c: ClusterRecord, limits: Lifecycle, now: int, since: int) -> str | None:
    """Why cluster ``c`` must stop at ``now`` (ms), or None: a normal end, not a failure.

    ``max_lifetime`` counts from the cluster's creation (``start_time``), whatever the
    registry did meanwhile (``since`` is not used for it): a lifetime is wall-clock time.

    ``no_client_timeout`` counts from ``c.clients_gone_since`` (set by heartbeats that
    report no client, see ``ClusterService.heartbeat``) and, like the failure deadlines,
    never from before the registry started (``since``): while it was down, no heartbeat
    could say that a client connected. A cluster whose scheduler does not report its
    clients (``c.clients`` None: dask-gateway's preload) is never stopped for lack of them.
    """
    if c.target != Target.RUNNING:
        return None
    if limits.max_lifetime > 0 and now - c.start_time > limits.max_lifetime * 1000:
        return f"Cluster reached its max_lifetime of {_timeout(limits.max_lifetime)} s"
    if (
        limits.no_client_timeout > 0
        and c.observed == Observed.RUNNING
        and c.clients == 0
        and c.clients_gone_since is not None
    ):
        gone = now - max(c.clients_gone_since, since)
        if gone > limits.no_client_timeout * 1000:
            return (
                f"No client connected for {_seconds(now - c.clients_gone_since)} s "
                f"(no_client_timeout {_timeout(limits.no_client_timeout)} s)"
            )
    return None


def late_workers(c: ClusterRecord, limits: Lifecycle, since: int) -> list[str]:
    """Workers of ``c`` still not connected at the latest heartbeat, although that
    heartbeat came after their start deadline (their creation plus
    ``worker_start_timeout``, and not before the registry started plus that)."""
    if c.last_heartbeat is None or c.target != Target.RUNNING:
        return []
    timeout = limits.worker_start_timeout * 1000
    return [
        w.name
        for w in c.workers.values()
        if w.target == Target.RUNNING
        and w.observed in (Observed.CREATED, Observed.STARTING)
        and not w.close_expected
        and c.last_heartbeat - max(w.start_time, since) > timeout
    ]


class Housekeeping:
    """The registry's periodic chores, as tasks it owns.

    Parameters
    ----------
    check_timeouts:
        Fails every overdue cluster; called every ``check_period`` seconds.
    purge:
        ``purge(stopped_before_ms) -> count`` deletes finished records; called every
        ``cleanup_period`` seconds with now minus ``max_age``. ``max_age`` 0 keeps
        records forever.
    leads:
        Whether this registry runs the chores now: with several replicas on one database
        only the leading one does (the chores also take each cluster's lock, so a
        failover overlap stays correct). Default: always.
    """

    def __init__(
        self,
        check_timeouts: Callable[[], Awaitable[int]],
        purge: Callable[[int], Awaitable[int]],
        *,
        check_period: float,
        cleanup_period: float,
        max_age: float,
        leads: Callable[[], bool] = lambda: True,
    ) -> None:
        self._leads = leads
        self._check_timeouts = check_timeouts
        self._purge = purge
        self.check_period = check_period
        self.cleanup_period = cleanup_period
        self.max_age = max_age
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(
                self._every(self.check_period, self._check_timeouts, "timeout check"),
                name="registry-timeouts",
            )
        ]
        if self.max_age > 0:
            self._tasks.append(
                asyncio.create_task(
                    self._every(self.cleanup_period, self.purge_now, "retention purge"),
                    name="registry-retention",
                )
            )

    async def stop(self) -> None:
        await cancel_and_wait(self._tasks)
        self._tasks = []

    async def purge_now(self) -> int:
        """Delete the finished clusters older than ``max_age``; returns how many."""
        purged = await self._purge(now_ms() - int(self.max_age * 1000))
        if purged:
            log.info("retention: deleted %d clusters finished over %gs ago", purged, self.max_age)
        return purged

    async def _every(self, period: float, chore: Callable[[], Awaitable[int]], what: str) -> None:
        while True:
            try:
                if self._leads():
                    await chore()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("%s failed; trying again in %gs", what, period)
            await asyncio.sleep(period)
