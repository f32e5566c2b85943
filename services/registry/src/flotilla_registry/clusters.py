"""The registry's domain logic: clusters and workers, their owners, and their lifecycle."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import json
import logging
import secrets
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from typing import Any

from flotilla_common.identity import Identity
from flotilla_common.tls import new_keypair
from traitlets.config import Config

from .addresses import AddressRefused, check_first_addresses
from .backends import BackendChoice
from .clusterconfig import clamp_adapt, clamp_scale, config_class_for, resolve_cluster_config
from .errors import (
    ClusterNotFound,
    ClusterNotRunning,
    InvalidRequest,
    PermissionDenied,
    RegistryError,
)
from .lifecycle import Lifecycle, cluster_expired, cluster_overdue, late_workers
from .model import ClusterRecord, Observed, Status, Target, WorkerRecord, now_ms
from .options import Options, OptionsError, resolve_options
from .quotas import (
    Quota,
    Quotas,
    Shape,
    Usage,
    clamp_message,
    quota_limit,
    quota_refusal,
    workers_allowed,
)
from .replication import LocalReplica, Replica
from .scheduler_api import SchedulerAPI, SchedulerUnreachable
from .store import Store
from .watch import Hub

__all__ = ["ClusterObserver", "ClusterService", "RouteInfo", "ServiceSettings"]

log = logging.getLogger(__name__)

ACTIVE = frozenset({Status.PENDING, Status.RUNNING})
#: Most log text one GetClusterLogs reply carries (the client accepts larger messages).
MAX_LOGS_BYTES = 16 * 2**20
#: Most workers one ListWorkers reply lists (the most recently started).
MAX_LISTED_WORKERS = 1000
#: Most workers or clients a heartbeat's report is stored as (the columns are 32-bit
#: integers; more is the same to the gateway).
_MAX_REPORTED = 2**31 - 1
#: Event-loop lag (seconds) a heartbeat reports that the registry logs.
_LAG_WORTH_LOGGING = 2.0
#: How recent an answered logs request must be to serve another caller (ms).
LOGS_FRESH_MS = 1000


@dataclass(frozen=True)
class ServiceSettings:
    options: Any  # Options, or a callable (user) -> Options, sync or async
    cluster_config: Config
    api_url: str
    backends: BackendChoice = field(default_factory=BackendChoice)
    # How long GetClusterLogs waits for an active cluster's launcher to send current logs.
    logs_request_timeout: float = 5.0
    # Check the first heartbeat's addresses with a TLS handshake (addresses.py); the
    # registry's configuration turns it on, tests with made-up addresses leave it off.
    check_addresses: bool = False
    check_timeout: float = 5.0
    # Per-user limits over all of a user's active clusters (c.Quotas).
    quotas: Quotas = field(default_factory=Quotas)


class ClusterObserver:
    """What the cluster service tells whoever watches it as things happen (metrics.py);
    this one ignores it all."""

    def started(self, c: ClusterRecord, seconds: float) -> None:
        """``c``'s first heartbeat came ``seconds`` after its creation."""

    def finished_cluster(self, c: ClusterRecord) -> None:
        """``c`` ended (its status is STOPPED or FAILED)."""

    def heartbeat(self, c: ClusterRecord, interval: float | None, lag: float) -> None:
        """``c``'s scheduler sent a heartbeat, ``interval`` seconds after its previous one
        (None: the first this registry saw), reporting its event loop ``lag`` behind."""


@dataclass(frozen=True)
class RouteInfo:
    cluster_name: str
    scheduler_address: str
    dashboard_address: str


def _host_port(address: str) -> str:
    """``tls://h:p`` / ``http://h:p`` → ``h:p``."""
    return address.split("://", 1)[-1].rstrip("/")


#: What a scheduler may report as each of its addresses: the URL schemes allowed.
_ADDRESS_SCHEMES = {
    "scheduler_address": ("tls",),
    "dashboard_address": ("http", "https"),
    "api_address": ("http", "https"),
}


def _check_address(key: str, address: str) -> None:
    """InvalidRequest unless ``address`` is ``<scheme>://host:port`` with an allowed
    scheme: a malformed address would become a route nobody can reach."""
    schemes = _ADDRESS_SCHEMES[key]
    try:
        parts = urllib.parse.urlsplit(address)
        valid = parts.scheme in schemes and bool(parts.hostname) and parts.port is not None
    except ValueError:  # a port out of range or not a number, a bad IPv6 literal
        valid = False
    if not valid:
        shown = address if len(address) <= 100 else address[:100] + "..."
        raise InvalidRequest(f"{key} must look like {schemes[0]}://host:port, got {shown!r}")


def _snapshot(c: ClusterRecord) -> ClusterRecord:
    snap = copy.copy(c)
    snap.workers = {n: copy.copy(w) for n, w in c.workers.items()}
    return snap


def _string_list(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise InvalidRequest(f"{key} must be a list of strings")
    return value


class ClusterService:
    """Every unfinished cluster is held in memory (and written through to the store);
    finished ones are read from the store."""

    def __init__(self, store: Store, settings: ServiceSettings, scheduler_api: SchedulerAPI):
        self.store = store
        self.settings = settings
        self.scheduler_api = scheduler_api
        self._active: dict[str, ClusterRecord] = {}
        # Names of each owner's active clusters: a user's list is O(their clusters),
        # not O(every cluster).
        self._by_owner: dict[str, set[str]] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._owner_locks: dict[str, asyncio.Lock] = {}
        self._shapes: dict[str, Shape] = {}
        self._changed: dict[str, asyncio.Event] = {}
        self._max_workers: dict[str, int | None] = {}
        self._lifecycle: dict[str, Lifecycle] = {}
        # Why each pending cluster's latest first heartbeat was refused (for its start timeout).
        self._refused: dict[str, str] = {}
        #: When this service started (ms): no timeout deadline falls before it plus the
        #: timeout (see :mod:`.lifecycle`).
        self.started = now_ms()
        self.launch_hub: Hub[str, ClusterRecord] = Hub()
        self.route_hub: Hub[str, RouteInfo | None] = Hub()
        # How this process coordinates with other registries on the same store; its
        # ``leads`` says whether this one runs periodic jobs.
        self.replica: Replica = LocalReplica()
        self.observer = ClusterObserver()

    async def start(self) -> None:
        self.started = now_ms()
        for c in await self.store.load_unfinished():
            self._add_active(c)
            self._max_workers[c.name] = json.loads(c.config).get("max_workers")
            self._lifecycle[c.name] = Lifecycle.from_config_json(c.config)
        log.info("loaded %d unfinished clusters", len(self._active))

    # -- queries used by watchers ---------------------------------------------------------

    def active_for_backend(self, backend: str) -> list[ClusterRecord]:
        return [_snapshot(c) for c in self._active.values() if c.backend == backend]

    def active_snapshot(self) -> list[ClusterRecord]:
        """The active clusters as they are now; safe to call from another thread (a
        metrics scrape) while the event loop changes them."""
        return list(self._active.values())

    def reserved_by_owner(self) -> dict[str, Usage]:
        """What each owner's active clusters reserve now (as ``usage()`` counts it); safe
        from another thread, like :meth:`active_snapshot`."""
        out: dict[str, Usage] = {}
        for c in self.active_snapshot():
            if c.target != Target.RUNNING:
                continue
            shape = self._shapes.get(c.name) or Shape.from_config_json(c.config)
            out[c.owner] = out.get(c.owner, Usage()) + shape.usage(self._held_workers(c))
        return out

    def routes(self) -> list[RouteInfo]:
        return [r for c in self._active.values() if (r := self._route(c)) is not None]

    @staticmethod
    def _route(c: ClusterRecord) -> RouteInfo | None:
        if c.status != Status.RUNNING or not c.scheduler_address:
            return None
        return RouteInfo(c.name, _host_port(c.scheduler_address), _host_port(c.dashboard_address))

    # -- helpers ---------------------------------------------------------------------------

    def _add_active(self, c: ClusterRecord) -> None:
        self._active[c.name] = c
        self._by_owner.setdefault(c.owner, set()).add(c.name)

    def _drop_active(self, name: str) -> None:
        c = self._active.pop(name, None)
        if c is None:
            return
        names = self._by_owner.get(c.owner)
        if names is not None:
            names.discard(name)
            if not names:
                del self._by_owner[c.owner]

    def local_lock(self, name: str) -> asyncio.Lock:
        lock = self._locks.get(name)
        if lock is None:
            lock = self._locks[name] = asyncio.Lock()
        return lock

    def _lock(self, name: str) -> AbstractAsyncContextManager[object]:
        """Held while changing ``name``; with replicas, also its row in the database."""
        return self.replica.guard(name, self.local_lock(name))

    @contextlib.asynccontextmanager
    async def _owner_lock(self, owner: str, name: str) -> AsyncIterator[None]:
        """:meth:`_lock` of ``name`` after the lock on everything ``owner`` reserves (held
        while checking a quota; always taken in this order)."""
        lock = self._owner_locks.setdefault(owner, asyncio.Lock())
        async with lock, self.replica.guard(name, self.local_lock(name), owner):
            yield
        if not lock.locked() and owner not in self._by_owner:
            self._owner_locks.pop(owner, None)

    # -- quotas (see quotas.py) --------------------------------------------------------------

    def _shape(self, c: ClusterRecord) -> Shape:
        shape = self._shapes.get(c.name)
        if shape is None:
            shape = Shape.from_config_json(c.config)
            if c.name in self._active:
                self._shapes[c.name] = shape
        return shape

    @staticmethod
    def _held_workers(c: ClusterRecord) -> int:
        """The workers ``c`` reserves: its granted count, or its live workers while it has
        more (a scale down frees the share once they are gone)."""
        # A copy: a metrics scrape calls this from another thread while the loop changes it.
        live = sum(1 for w in list(c.workers.values()) if w.target == Target.RUNNING)
        return max(c.count, live)

    def _quota(self, c: ClusterRecord, identity: Identity | None = None) -> Quota:
        """The quota of ``c``'s owner: with the owner's groups from ``identity`` when the
        owner is calling, else those stored with the cluster when it was created."""
        if identity is not None and identity.user == c.owner and not identity.cluster:
            groups: Iterable[str] = identity.groups
        else:
            try:
                groups = json.loads(c.config).get("owner_groups") or ()
            except (ValueError, AttributeError):
                groups = ()
        return self.settings.quotas.for_user(c.owner, groups)

    async def _reserved(self, owner: str, but: str) -> Usage:
        """What ``owner``'s active clusters other than ``but`` reserve, as stored (call
        under :meth:`_owner_lock`: with replicas, this sees every committed change)."""
        total = Usage()
        for name, config, count in await self.store.reservations(owner):
            if name != but:
                held = self._shapes.get(name) or Shape.from_config_json(config)
                total = total + held.usage(count)
        return total

    def _accrue(self, c: ClusterRecord) -> None:
        """Account what ``c`` reserved since the last change, and its reservation from now."""
        now = now_ms()
        if c.accrued_until is not None and now > c.accrued_until:
            seconds = (now - c.accrued_until) / 1000
            c.core_seconds += c.accrued_cores * seconds
            c.memory_seconds += c.accrued_memory * seconds
        c.accrued_until = now
        if c.target == Target.RUNNING:
            held = self._shape(c).usage(self._held_workers(c))
            c.accrued_cores, c.accrued_memory = held.cores, held.memory
        else:
            c.accrued_cores = c.accrued_memory = 0.0

    async def _current(self, name: str) -> ClusterRecord | None:
        """The unfinished cluster ``name``, also one another replica just created."""
        return self._active.get(name) or await self.replica.fetch(name)

    async def _commit(self, c: ClusterRecord, workers: Iterable[str] = ()) -> None:
        """Persist a change, then tell watchers and waiters."""
        c.revision += 1
        self._accrue(c)
        if c.finished and c.stop_time is None:
            c.stop_time = now_ms()
        worker_names = list(workers)
        for n in worker_names:
            w = c.workers.get(n)
            if w is not None and w.finished and w.stop_time is None:
                w.stop_time = now_ms()
        await self.store.save_cluster(c, worker_names)
        for n in worker_names:
            w = c.workers.get(n)
            if w is not None and w.finished:
                del c.workers[n]
        if c.finished:
            self._forget(c.name)
            self.observer.finished_cluster(c)
        self._announce(c)

    def _forget(self, name: str) -> None:
        self._drop_active(name)
        self._locks.pop(name, None)
        self._shapes.pop(name, None)
        self._max_workers.pop(name, None)
        self._lifecycle.pop(name, None)
        self._refused.pop(name, None)

    def _announce(self, c: ClusterRecord) -> None:
        """Tell watchers and waiters about a change of ``c``."""
        self.launch_hub.publish(c.name, _snapshot(c))
        self.route_hub.publish(c.name, self._route(c))
        event = self._changed.pop(c.name, None)
        if event is not None:
            event.set()

    # -- replicas --------------------------------------------------------------------------

    def peek(self, name: str) -> ClusterRecord | None:
        return self._active.get(name)

    def active_revisions(self) -> dict[str, int]:
        return {name: c.revision for name, c in self._active.items()}

    def apply_stored(self, name: str, stored: ClusterRecord | None) -> None:
        """Take the stored record of ``name``, written by another replica, as the truth.

        The record in memory is updated in place (callers holding it see the change) and
        watchers and waiters are told, as for a change made here.
        """
        c = self._active.get(name)
        if stored is None:  # gone from the store: nothing left to watch
            if c is not None:
                self._forget(name)
                self.route_hub.publish(name, None)
            return
        if c is None:
            c = stored
            self._add_active(c)
            self._max_workers[name] = json.loads(stored.config).get("max_workers")
        else:
            for f in dataclasses.fields(stored):
                setattr(c, f.name, getattr(stored, f.name))
        if c.finished:
            self._forget(name)
        self._announce(c)

    def _check_access(self, identity: Identity, c: ClusterRecord, verb: str) -> None:
        if identity.cluster:
            # A scheduler's token only lets it act on its own cluster.
            if identity.cluster != c.name:
                raise PermissionDenied(
                    f"Cluster token lacks permissions to {verb} cluster {c.name}"
                )
            return
        if c.owner != identity.user:
            if not identity.admin:
                raise PermissionDenied(
                    f"User {identity.user} lacks permissions to {verb} cluster {c.name}"
                )
            log.info("admin %s: %s cluster %s of user %s", identity.user, verb, c.name, c.owner)

    async def _find(self, identity: Identity, name: str, verb: str) -> ClusterRecord:
        c = await self._current(name) or await self.store.get_cluster(name)
        if c is None:
            raise ClusterNotFound(name)
        self._check_access(identity, c, verb)
        return c

    def _require_user(self, identity: Identity) -> None:
        if identity.cluster:
            raise PermissionDenied("Cluster tokens may only send heartbeats and stop their cluster")

    # -- user operations -------------------------------------------------------------------

    async def options_spec(self, identity: Identity) -> Options:
        spec = await resolve_options(self.settings.options, identity)
        return self.settings.backends.offer(spec, identity)

    async def create(self, identity: Identity, requested: Any) -> ClusterRecord:
        self._require_user(identity)
        spec = await self.options_spec(identity)
        try:
            options = spec.parse_options({} if requested is None else requested)
            overrides = dict(await spec.get_configuration(options, identity))
            # The backend is chosen (and popped) first; the rest configures the cluster.
            backend = self.settings.backends.choose(overrides, options, identity)
            resolved = resolve_cluster_config(
                self.settings.cluster_config, overrides, config_class=config_class_for(backend)
            )
        except (OptionsError, ValueError, TypeError) as exc:
            raise InvalidRequest(str(exc)) from exc
        config = json.loads(resolved.to_json())
        config["max_workers"] = resolved.max_workers
        # The owner's groups when created: their quota when someone else acts on it.
        config["owner_groups"] = sorted(identity.groups)
        quota = self.settings.quotas.for_user(identity.user, identity.groups)
        name = uuid.uuid4().hex
        cert, key = await asyncio.to_thread(new_keypair, name)
        c = ClusterRecord(
            name=name,
            owner=identity.user,
            backend=backend,
            options=json.dumps(options),
            config=json.dumps(config),
            token=secrets.token_urlsafe(32),
            tls_cert=cert,
            tls_key=key,
        )
        self._add_active(c)
        self._max_workers[name] = resolved.max_workers
        self._lifecycle[name] = Lifecycle.from_config(config)
        try:
            if quota.limited:
                async with self._owner_lock(identity.user, name):
                    used = await self._reserved(identity.user, name)
                    refusal = quota_refusal(identity.user, quota, used, self._shape(c).usage(0))
                    if refusal is not None:
                        log.info("cluster for %s refused: %s", identity.user, refusal.message)
                        raise refusal
                    await self._commit(c)
            else:
                async with self._lock(name):
                    await self._commit(c)
        except BaseException:
            self._forget(name)  # not stored: it must not linger in memory
            raise
        log.info("cluster %s: created for %s on %s", name, identity.user, backend)
        return _snapshot(c)

    async def get(self, identity: Identity, name: str, wait_seconds: float = 0) -> ClusterRecord:
        c = await self._find(identity, name, "view")
        deadline = asyncio.get_running_loop().time() + max(0.0, min(wait_seconds, 20.0))
        while c.status == Status.PENDING and name in self._active:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                break
            event = self._changed.setdefault(name, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                break
            c = self._active.get(name) or await self.store.get_cluster(name) or c
        return _snapshot(c)

    async def list_clusters(
        self, identity: Identity, statuses: set[Status] | None = None, all_users: bool = False
    ) -> list[ClusterRecord]:
        self._require_user(identity)
        owner = None if (all_users and identity.admin) else identity.user
        if all_users and not identity.admin:
            raise PermissionDenied(f"User {identity.user} is not an admin")
        wanted = set(statuses) if statuses else set(ACTIVE)
        if owner is None:
            candidates: Iterable[ClusterRecord] = self._active.values()
        else:
            candidates = (self._active[n] for n in self._by_owner.get(owner, ()))
        out = [_snapshot(c) for c in candidates if c.status in wanted]
        if wanted & {Status.STOPPED, Status.FAILED}:
            out.extend(c for c in await self.store.list_finished(owner) if c.status in wanted)
        out.sort(key=lambda c: c.start_time)
        return out

    async def usage(self, identity: Identity, all_users: bool = False) -> list[dict[str, Any]]:
        """What the caller's active clusters reserve now, their quota, and the core-hours
        and memory-hours (GiB) reserved so far; with ``all_users`` (admins) every user's."""
        self._require_user(identity)
        if all_users and not identity.admin:
            raise PermissionDenied(f"User {identity.user} is not an admin")
        accrued = await self.store.accrued(None if all_users else identity.user)
        owners = set(self._by_owner) | set(accrued) if all_users else {identity.user}
        now = now_ms()
        out = []
        for owner in sorted(owners):
            clusters = [self._active[n] for n in self._by_owner.get(owner, ())]
            core_seconds, memory_seconds = accrued.get(owner, (0.0, 0.0))
            used = Usage()
            for c in clusters:
                if c.target == Target.RUNNING:
                    used = used + self._shape(c).usage(self._held_workers(c))
                since = (now - c.accrued_until) / 1000 if c.accrued_until else 0.0
                core_seconds += c.core_seconds + c.accrued_cores * max(0.0, since)
                memory_seconds += c.memory_seconds + c.accrued_memory * max(0.0, since)
            if owner == identity.user:
                quota = self.settings.quotas.for_user(owner, identity.groups)
            elif clusters:
                quota = self._quota(clusters[0])
            else:
                quota = self.settings.quotas.for_user(owner, ())
            out.append(
                {
                    "user": owner,
                    "clusters": used.clusters,
                    "cores": used.cores,
                    "memory": used.memory,
                    "workers": used.workers,
                    "quota": quota.to_dict(),
                    "core_hours": core_seconds / 3600,
                    "memory_gib_hours": memory_seconds / 3600 / 2**30,
                }
            )
        return out

    async def stop(self, identity: Identity, name: str) -> None:
        c = await self._current(name)
        if c is None:
            finished = await self.store.get_cluster(name)
            if finished is not None:
                self._check_access(identity, finished, "stop")
            return  # unknown or already finished: stopping is idempotent
        self._check_access(identity, c, "stop")
        async with self._lock(name):
            if c.target != Target.RUNNING:
                return
            if identity.cluster:
                reason = "Stopped by its scheduler"
            elif identity.user != c.owner:
                reason = f"Stopped by admin {identity.user}"
            else:
                reason = f"Stopped by {identity.user}"
            await self._stop_locked(c, reason)
        log.info("cluster %s (user %s): stop requested (%s)", name, c.owner, c.reason)

    async def _stop_locked(self, c: ClusterRecord, reason: str) -> None:
        """Stop ``c`` (a normal end: target STOPPED) and its workers; hold its lock."""
        c.target = Target.STOPPED
        c.reason = reason
        await self._commit(c, self._stop_workers(c))

    async def stop_all(self, reason: str, wait_seconds: float) -> tuple[int, int]:
        """Stop every active cluster; wait up to ``wait_seconds`` for them to finish.

        Returns how many were asked to stop and how many had not finished in time.
        """
        names = [c.name for c in self._active.values() if c.target == Target.RUNNING]
        for name in names:
            c = self._active.get(name)
            if c is None:
                continue
            async with self._lock(name):
                if c.target != Target.RUNNING:
                    continue
                c.target = Target.STOPPED
                c.reason = reason
                await self._commit(c, self._stop_workers(c))
        log.info("stopping all %d active clusters: %s", len(names), reason)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_seconds
        while self._active and loop.time() < deadline:
            waiters = [
                asyncio.create_task(self._changed.setdefault(n, asyncio.Event()).wait())
                for n in list(self._active)
            ]
            try:
                await asyncio.wait(
                    waiters, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for task in waiters:
                    task.cancel()
        return len(names), len(self._active)

    async def _running(self, identity: Identity, name: str, verb: str) -> ClusterRecord:
        self._require_user(identity)
        c = await self._find(identity, name, verb)
        if c.status != Status.RUNNING or not c.api_address:
            raise ClusterNotRunning(name)
        return c

    async def scale(self, identity: Identity, name: str, count: Any) -> tuple[bool, str]:
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidRequest(f"Scale expects a non-negative integer, got {count}")
        c = await self._running(identity, name, "scale")
        requested = count
        count, msg = clamp_scale(count, self._max_workers.get(name))
        quota = self._quota(c, identity)
        if quota.limited:
            # The granted count is reserved now, so concurrent requests see it.
            async with self._owner_lock(c.owner, name):
                others = await self._reserved(c.owner, name)
                allowed, binding, in_use = workers_allowed(count, quota, others, self._shape(c))
                if binding is not None:
                    msg = clamp_message(requested, allowed, quota, binding, in_use)
                    count = allowed
                if c.target != Target.RUNNING:
                    raise ClusterNotRunning(name)
                if c.count != count:
                    c.count = count
                    await self._commit(c)
        await self._send(c, {"op": "scale", "count": count})
        return msg is None, msg or ""

    async def adapt(
        self, identity: Identity, name: str, minimum: Any, maximum: Any, active: Any
    ) -> tuple[bool, str]:
        for label, value in (("minimum", minimum), ("maximum", maximum)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise InvalidRequest(f"Adapt expects {label} to be a non-negative integer or null")
        if not isinstance(active, bool):
            raise InvalidRequest(f"Adapt expects active to be a bool, got {active!r}")
        if minimum is not None and maximum is not None and minimum > maximum:
            raise InvalidRequest(f"Adapt expects minimum <= maximum, got {minimum} > {maximum}")
        c = await self._running(identity, name, "adapt")
        minimum, maximum, msg = clamp_adapt(minimum, maximum, self._max_workers.get(name))
        quota = self._quota(c, identity)
        if quota.limited:
            # Nothing is reserved here: each heartbeat asking for more is checked again.
            async with self._owner_lock(c.owner, name):
                others = await self._reserved(c.owner, name)
            wanted = maximum if maximum is not None else max(minimum or 0, 2**31 - 1)
            allowed, binding, in_use = workers_allowed(wanted, quota, others, self._shape(c))
            if binding is not None:
                new_minimum = min(minimum or 0, allowed)
                msg = (
                    f"Adapt with `maximum={maximum}, minimum={minimum}` workers would exceed "
                    f"quota {binding} of {quota_limit(quota, binding)} "
                    f"(in use by your other clusters and this scheduler: {in_use}). "
                    f"Using `maximum={allowed}, minimum={new_minimum}` instead."
                )
                minimum, maximum = new_minimum, allowed
        await self._send(
            c, {"op": "adapt", "minimum": minimum, "maximum": maximum, "active": active}
        )
        return msg is None, msg or ""

    async def _send(self, c: ClusterRecord, msg: dict[str, Any]) -> None:
        try:
            await self.scheduler_api.send(c.name, c.api_address, c.token, msg)
        except SchedulerUnreachable as exc:
            raise ClusterNotRunning(c.name) from exc

    # -- scheduler heartbeats --------------------------------------------------------------

    async def heartbeat(self, identity: Identity, name: str, body: Any) -> None:
        if identity.cluster != name:
            raise PermissionDenied("Heartbeats need the cluster's token")
        if not isinstance(body, dict):
            raise InvalidRequest("heartbeat body must be a JSON object")
        count = body.get("count", 0)
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise InvalidRequest("count must be a non-negative integer")
        count = min(count, _MAX_REPORTED)
        clients = body.get("clients")  # absent (dask-gateway's preload): unknown
        if clients is not None and (
            isinstance(clients, bool) or not isinstance(clients, int) or clients < 0
        ):
            raise InvalidRequest("clients must be a non-negative integer")
        if clients is not None:
            clients = min(clients, _MAX_REPORTED)
        lag = body.get("loop_lag", 0)  # flotilla's preload: how far its event loop is behind
        if isinstance(lag, bool) or not isinstance(lag, int | float) or not 0 <= lag < 1e9:
            raise InvalidRequest("loop_lag must be a non-negative number of seconds")
        active = _string_list(body, "active_workers")
        closing = _string_list(body, "closing_workers")
        closed = _string_list(body, "closed_workers")
        addresses = {
            k: body.get(k, "") for k in ("scheduler_address", "dashboard_address", "api_address")
        }
        if not all(isinstance(v, str) for v in addresses.values()):
            raise InvalidRequest("addresses must be strings")
        for key, address in addresses.items():
            if address:  # absent: "" (later heartbeats need none, nor a dashboard-less one)
                _check_address(key, address)
        c = await self._current(name)
        if c is None or c.target != Target.RUNNING:
            return  # stopping or gone: nothing to do (the reference answers 200 too)
        if self.settings.check_addresses and c.observed != Observed.RUNNING:
            # Before the lock: a TLS handshake with an address that may never answer. A
            # cluster that is RUNNING now stays so (or fails) while its target is, so no
            # heartbeat becomes the first one unchecked while it waits for the lock.
            await self._check_first_addresses(c, addresses)
        limit = self._max_workers.get(name)
        count = min(count, limit) if limit is not None else count
        quota = self._quota(c) if count > c.count else None
        guard = (
            self._owner_lock(c.owner, name)
            if quota is not None and quota.limited
            else self._lock(name)
        )
        async with guard:
            if c.target != Target.RUNNING:
                return  # stopped while we waited for the lock
            if count > c.count and not (quota is not None and quota.limited):
                # Another replica lowered the count meanwhile: asking for more again needs
                # the quota check (the next heartbeat makes it).
                if self._quota(c).limited:
                    count = c.count
            elif quota is not None and quota.limited and count > c.count:
                others = await self._reserved(c.owner, name)
                allowed, binding, _ = workers_allowed(count, quota, others, self._shape(c))
                if binding is not None and allowed != c.count:
                    log.info(
                        "cluster %s (user %s): scheduler asks for %d workers, quota %s allows %d",
                        name,
                        c.owner,
                        count,
                        binding,
                        allowed,
                    )
                count = allowed
            first = c.observed != Observed.RUNNING
            if first and not (addresses["scheduler_address"] and addresses["api_address"]):
                raise InvalidRequest("the first heartbeat must carry the scheduler's addresses")
            previous, c.last_heartbeat = c.last_heartbeat, now_ms()
            self.observer.heartbeat(
                c, (c.last_heartbeat - previous) / 1000 if previous else None, float(lag)
            )
            if first:
                self.observer.started(c, (c.last_heartbeat - c.start_time) / 1000)
            self._note_clients(c, clients, c.last_heartbeat)
            if lag >= _LAG_WORTH_LOGGING:
                log.warning(
                    "cluster %s (user %s): scheduler's event loop is %.1f s behind (busy)",
                    name,
                    c.owner,
                    lag,
                )
            if first:
                c.scheduler_address = addresses["scheduler_address"]
                c.dashboard_address = addresses["dashboard_address"]
                c.api_address = addresses["api_address"]
                c.observed = Observed.RUNNING
                log.info("cluster %s: running at %s", name, c.scheduler_address)
            c.count = count
            changed = self._apply_worker_report(c, active, closing, closed)
            changed |= self._fail_late_workers(c)
            if c.target == Target.RUNNING:
                changed |= self._match_count(c)
            await self._commit(c, changed)

    @staticmethod
    def _note_clients(c: ClusterRecord, clients: int | None, now: int) -> None:
        """Record a heartbeat's client count (None: not reported) for no_client_timeout:
        the clock starts when a count of 0 follows one of more, or an unknown one (the
        first heartbeat: the cluster just became RUNNING), and stops at any other."""
        if clients is None or clients > 0:
            c.clients_gone_since = None
        elif c.clients != 0 or c.clients_gone_since is None:
            c.clients_gone_since = now
        c.clients = clients

    async def _check_first_addresses(self, c: ClusterRecord, addresses: dict[str, str]) -> None:
        """InvalidRequest unless the addresses are the cluster's scheduler's (a heartbeat
        without them is refused under the lock anyway)."""
        if not (addresses["scheduler_address"] and addresses["api_address"]):
            return
        try:
            await check_first_addresses(
                c.name, addresses, c.tls_cert, c.tls_key, self.settings.check_timeout
            )
        except AddressRefused as exc:
            log.warning("cluster %s (user %s): first heartbeat refused: %s", c.name, c.owner, exc)
            self._refused[c.name] = str(exc)
            raise InvalidRequest(str(exc)) from None

    def _apply_worker_report(
        self, c: ClusterRecord, active: list[str], closing: list[str], closed: list[str]
    ) -> set[str]:
        changed: set[str] = set()
        for n in closing:
            w = c.workers.get(n)
            if w is not None and not w.close_expected:
                w.close_expected = True
                changed.add(n)
        for n in active:
            w = c.workers.get(n)
            if w is not None and w.target == Target.RUNNING and w.observed != Observed.RUNNING:
                if w.observed != Observed.STOPPED:
                    w.observed = Observed.RUNNING
                    c.worker_start_failures = 0
                    changed.add(n)
        for n in closed:
            w = c.workers.get(n)
            if w is not None and w.target == Target.RUNNING:
                w.target = Target.STOPPED if w.close_expected else Target.FAILED
                if not w.close_expected:
                    w.reason = "worker left the scheduler unexpectedly"
                changed.add(n)
        return changed

    def _match_count(self, c: ClusterRecord) -> set[str]:
        """Create or cancel worker records so the live ones match the requested count."""
        changed: set[str] = set()
        live = [w for w in c.workers.values() if w.target == Target.RUNNING]
        excess = len(live) - c.count
        if excess > 0:
            pending = sorted(
                (w for w in live if w.observed != Observed.RUNNING), key=lambda w: w.observed
            )
            for w in pending[:excess]:
                w.target = Target.STOPPED
                w.close_expected = True
                changed.add(w.name)
        for _ in range(-excess):
            w = WorkerRecord(name=uuid.uuid4().hex)
            c.workers[w.name] = w
            changed.add(w.name)
        return changed

    @staticmethod
    def _stop_workers(c: ClusterRecord) -> set[str]:
        changed = set()
        for w in c.workers.values():
            if w.target == Target.RUNNING:
                w.target = Target.STOPPED
                w.close_expected = True
                changed.add(w.name)
        return changed

    # -- launcher reports ------------------------------------------------------------------

    def _active_cluster(self, name: str) -> ClusterRecord:
        c = self._active.get(name)
        if c is None:
            raise ClusterNotFound(name)
        return c

    async def report_cluster(
        self, name: str, observed: Observed | None, state: str, failure_reason: str
    ) -> None:
        c = self._active_cluster(name)
        async with self._lock(name):
            changed: set[str] = set()
            if state:
                c.state = state
            if failure_reason and c.target == Target.RUNNING:
                c.target = Target.FAILED
                c.reason = failure_reason
                changed |= self._stop_workers(c)
                log.warning("cluster %s: failed: %s", name, failure_reason)
            if observed == Observed.STARTING and c.observed == Observed.CREATED:
                c.observed = Observed.STARTING
            elif observed == Observed.STOPPED:
                if c.target == Target.RUNNING:
                    c.target = Target.FAILED
                    c.reason = c.reason or "the scheduler stopped unexpectedly"
                c.observed = Observed.STOPPED
                for w in c.workers.values():
                    if w.target == Target.RUNNING:
                        w.target = Target.STOPPED
                    w.observed = Observed.STOPPED
                    changed.add(w.name)
            await self._commit(c, changed)

    async def report_worker(
        self,
        cluster: str,
        worker: str,
        observed: Observed | None,
        state: str,
        failure_reason: str,
    ) -> None:
        c = self._active_cluster(cluster)
        async with self._lock(cluster):
            w = c.workers.get(worker)
            if w is None:
                raise RegistryError(
                    f"Worker {worker} of cluster {cluster} not found",
                    code=ClusterNotFound.code,
                )
            if state:
                w.state = state
            changed = {worker}
            if observed == Observed.STARTING and w.observed == Observed.CREATED:
                w.observed = Observed.STARTING
            elif observed == Observed.STOPPED:
                never_ran = w.observed != Observed.RUNNING
                w.observed = Observed.STOPPED
                if w.target == Target.RUNNING:
                    w.target = Target.STOPPED if w.close_expected else Target.FAILED
                    w.reason = failure_reason or "worker exited"
                    if not w.close_expected and never_ran:
                        changed |= self._count_start_failure(c, w.reason)
                elif w.target == Target.FAILED and failure_reason and not w.close_expected:
                    # The scheduler saw it leave first; the launcher says why it ended.
                    w.reason = failure_reason
                if c.target == Target.RUNNING:
                    changed |= self._match_count(c)
            await self._commit(c, changed)

    def _count_start_failure(self, c: ClusterRecord, reason: str) -> set[str]:
        c.worker_start_failures += 1
        failures = c.worker_start_failures
        limit = self._limits(c).worker_start_failure_limit
        if limit and failures >= limit and c.target == Target.RUNNING:
            c.target = Target.FAILED
            c.reason = f"{failures} consecutive workers failed to start (last: {reason})"
            log.warning("cluster %s: %s", c.name, c.reason)
            return self._stop_workers(c)
        return set()

    # -- timeouts (see lifecycle.py) -------------------------------------------------------

    def _limits(self, c: ClusterRecord) -> Lifecycle:
        limits = self._lifecycle.get(c.name)
        if limits is None:
            limits = Lifecycle.from_config_json(c.config)
            if c.name in self._active:
                self._lifecycle[c.name] = limits
        return limits

    def _fail_late_workers(self, c: ClusterRecord) -> set[str]:
        """Fail the workers the latest heartbeat shows late; each counts as a failed start."""
        limits = self._limits(c)
        changed: set[str] = set()
        for n in late_workers(c, limits, self.started):
            w = c.workers[n]
            if w.target != Target.RUNNING:
                continue  # the failure limit already stopped it
            w.target = Target.FAILED
            w.reason = (
                f"worker did not connect within worker_start_timeout "
                f"({limits.worker_start_timeout:g} s)"
            )
            changed.add(n)
            log.warning("cluster %s: worker %s: %s", c.name, n, w.reason)
            changed |= self._count_start_failure(c, w.reason)
        return changed

    async def report_alive(
        self, backend: str, names: Iterable[str], now: int | None = None
    ) -> None:
        """A launcher's status check found these clusters' scheduler processes alive.

        Stored only for clusters whose heartbeats are late (by half their
        ``heartbeat_timeout``, and not stored that recently): then the heartbeat deadline
        counts from it (:func:`.lifecycle.cluster_overdue`). On-time clusters cost nothing.
        """
        now = now_ms() if now is None else now
        for name in names:
            c = self._active.get(name)
            if c is None or not self._alive_worth_storing(c, backend, now):
                continue
            async with self._lock(name):
                if name not in self._active or not self._alive_worth_storing(c, backend, now):
                    continue
                c.seen_alive = now
                await self._commit(c)
            silent = now - max(c.last_heartbeat or c.start_time, self.started)
            log.warning(
                "cluster %s (user %s): no heartbeat for %.0f s, but its launcher sees the "
                "scheduler's process alive: a busy scheduler, kept running",
                name,
                c.owner,
                silent / 1000,
            )

    def _alive_worth_storing(self, c: ClusterRecord, backend: str, now: int) -> bool:
        if c.backend != backend or c.target != Target.RUNNING or c.observed != Observed.RUNNING:
            return False
        last = max(c.last_heartbeat or c.start_time, c.seen_alive or 0)
        return now - last > self._limits(c).heartbeat_timeout * 500

    async def check_timeouts(self, now: int | None = None) -> int:
        """Fail every cluster past its start or heartbeat deadline, then stop every one
        past its lifetime or left without clients (:func:`.lifecycle.cluster_expired`);
        returns how many ended."""
        now = now_ms() if now is None else now
        failed = 0
        for c in list(self._active.values()):
            if cluster_overdue(c, self._limits(c), now, self.started) is None:
                continue
            async with self._lock(c.name):
                # Checked again under the lock: a heartbeat may have come in meanwhile.
                reason = cluster_overdue(
                    c, self._limits(c), now, self.started, self._refused.get(c.name, "")
                )
                if reason is None or c.name not in self._active:
                    continue

                c.target = Target.FAILED
                c.reason = reason
                await self._commit(c, self._stop_workers(c))
            log.warning("cluster %s (user %s): failed: %s", c.name, c.owner, reason)
            failed += 1
        return failed + await self._stop_expired(now)

    async def _stop_expired(self, now: int) -> int:
        """Stop every cluster :func:`.lifecycle.cluster_expired` ends; returns how many."""
        stopped = 0
        for c in list(self._active.values()):
            if cluster_expired(c, self._limits(c), now, self.started) is None:
                continue
            async with self._lock(c.name):
                reason = cluster_expired(c, self._limits(c), now, self.started)
                if reason is None or c.name not in self._active:
                    continue
                await self._stop_locked(c, reason)
            log.info("cluster %s (user %s): stopping: %s", c.name, c.owner, reason)
            stopped += 1
        return stopped

    # -- logs ------------------------------------------------------------------------------

    async def logs(self, identity: Identity, name: str) -> dict[str, str]:
        """The output of a cluster's processes (process -> text), fresh while it is active.

        The scheduler's, then the most recent others, up to :data:`MAX_LOGS_BYTES`.
        """
        self._require_user(identity)
        await self._find(identity, name, "view")
        if name in self._active:
            await self._request_logs(name)
        out: dict[str, str] = {}
        budget = MAX_LOGS_BYTES
        for process, text in (await self.store.get_logs(name)).items():
            budget -= len(text.encode()) + len(process)
            if budget < 0 and out:
                log.info(
                    "cluster %s: older logs left out of a reply (over %d bytes)",
                    name,
                    MAX_LOGS_BYTES,
                )
                break
            out[process] = text
        return out

    async def workers(self, identity: Identity, name: str) -> list[WorkerRecord]:
        """A cluster's :data:`MAX_LISTED_WORKERS` most recently started workers, the
        ended ones too (with their reasons), newest first."""
        self._require_user(identity)
        await self._find(identity, name, "view")
        return await self.store.list_workers(name, MAX_LISTED_WORKERS)

    async def _request_logs(self, name: str) -> None:
        """Ask the cluster's launcher for current logs (through its watch) and wait for the
        answer, at most ``logs_request_timeout`` seconds; a launcher that does not answer
        leaves what was stored before."""
        c = await self._current(name)
        if c is None:
            return
        async with self._lock(name):
            if c.logs_request <= c.logs_answered:  # none outstanding
                # Request ids are times (ms): an answer to a request made less than
                # LOGS_FRESH_MS ago serves this caller too.
                if now_ms() - c.logs_answered < LOGS_FRESH_MS:
                    return
                c.logs_request = max(now_ms(), c.logs_request + 1)
                await self._commit(c)
            wanted = c.logs_request
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.logs_request_timeout
        while True:
            current = self._active.get(name)
            if current is None or current.logs_answered >= wanted:
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                log.info("cluster %s: no current logs from its launcher in time", name)
                return
            event = self._changed.setdefault(name, asyncio.Event())
            try:
                await asyncio.wait_for(event.wait(), remaining)
            except TimeoutError:
                pass

    async def save_logs(self, name: str, logs: Mapping[str, str], answers_request: int) -> None:
        """Store a launcher's log tails; ``answers_request`` > 0 marks a logs request done."""
        c = await self._current(name) or await self.store.get_cluster(name)
        if c is None:
            raise ClusterNotFound(name)
        if any(not process or len(process) > 256 for process in logs):
            raise InvalidRequest("process names must have 1 to 256 characters")
        if logs:
            # PostgreSQL text cannot hold NUL characters.
            clean = {p: text.replace("\x00", "\ufffd") for p, text in logs.items()}
            await self.store.save_logs(name, clean, now_ms())
        active = self._active.get(name)
        if answers_request > 0 and active is not None:
            async with self._lock(name):
                if answers_request > active.logs_answered:
                    active.logs_answered = answers_request
                    await self._commit(active)

    async def verify_token(self, name: str, token: str) -> str | None:
        c = await self._current(name)
        if c is None or not secrets.compare_digest(c.token.encode(), token.encode()):
            return None
        return c.owner
