"""Delta ADS server: serves the current snapshot to every connected Envoy.

``SnapshotStore`` holds the current ``Snapshot``; each ``DeltaAggregatedResources`` stream
keeps, per type URL, what Envoy subscribed to and which resource versions it holds, and
sends only the difference whenever the snapshot or the subscription changes:

- LDS and CDS are wildcard subscriptions, RDS is subscribed by name.
- On (re)connect Envoy reports ``initial_resource_versions``; versions are content hashes,
  so a resource Envoy already holds is not sent again.
- Order within one push: added/changed clusters first, then the listener and routes,
  then removed clusters, so a route never names a cluster Envoy does not have yet.
- ACK/NACK by nonce. A NACK is logged, what it rejected is forgotten, and the type is
  pushed again after a backoff (Envoy does not retry, e.g. after a listener bind failure).
- A snapshot that is not ``complete`` (registry not yet heard from) only adds resources
  Envoy lacks: it never removes or replaces what a previous proxy-config gave Envoy.
- Work per change is O(changed): a stream that is up to date with a snapshot's
  ``parent`` looks only at the names the snapshot says changed (a full diff happens on
  subscription changes, resumption and NACKs).
- Flow control: while Envoy has not ACKed a type's last response, further changes of
  that type wait and are sent together once it does; routes also wait for pending
  cluster additions. Under a burst of changes Envoy thus gets a few larger updates
  rather than a queue of stale ones (one route configuration can be megabytes).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import grpc
from envoy.service.discovery.v3 import ads_pb2_grpc, discovery_pb2

from .metrics import XdsMetrics
from .snapshot import CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE, Resource, Snapshot

__all__ = ["ADS_SERVICE_NAME", "AggregatedDiscoveryServicer", "DeltaStream", "SnapshotStore"]

log = logging.getLogger(__name__)

ADS_SERVICE_NAME = "envoy.service.discovery.v3.AggregatedDiscoveryService"
# Types whose additions go out first; removals go out in reverse order.
_PUSH_ORDER = (CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)
_NACK_BACKOFF_MIN = 1.0
_NACK_BACKOFF_MAX = 30.0


class SnapshotStore:
    """The current snapshot, and who to tell when it changes."""

    def __init__(self) -> None:
        self._snapshot: Snapshot | None = None
        self._subscribers: dict[int, Callable[[], None]] = {}
        self._ids = itertools.count()
        self._closed = False

    @property
    def current(self) -> Snapshot | None:
        return self._snapshot

    @property
    def closed(self) -> bool:
        return self._closed

    def set(self, snapshot: Snapshot) -> None:
        """Make ``snapshot`` current and push it to every stream (no-op when unchanged)."""
        previous = self._snapshot
        if previous is not None and previous.version == snapshot.version:
            return
        self._snapshot = snapshot
        log.info(
            "snapshot %s: %d routes%s",
            snapshot.version,
            len(snapshot.routes),
            "" if snapshot.complete else " (static part only, registry not heard from)",
        )
        self._notify()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback`` on every change; returns the unsubscribe function."""
        key = next(self._ids)
        self._subscribers[key] = callback

        def unsubscribe() -> None:
            self._subscribers.pop(key, None)

        return unsubscribe

    def close(self) -> None:
        """Ends every stream (Envoy reconnects, e.g. to a restarted proxy-config)."""
        self._closed = True
        self._notify()

    def _notify(self) -> None:
        for callback in list(self._subscribers.values()):
            try:
                callback()
            except Exception:
                log.exception("snapshot subscriber failed")


@dataclass
class _Sent:
    """What one response changed: name → (version before, version sent; None = absent)."""

    changes: dict[str, tuple[str | None, str | None]]
    sent_at: float = field(default_factory=time.monotonic)


@dataclass
class _TypeState:
    wildcard: bool = False
    names: set[str] = field(default_factory=set)
    # What Envoy holds, as far as we know: name → version.
    known: dict[str, str] = field(default_factory=dict)
    # Explicitly subscribed names we told Envoy do not exist.
    reported_absent: set[str] = field(default_factory=set)
    answered: bool = False
    resumed: bool = False
    pending: dict[str, _Sent] = field(default_factory=dict)
    backoff: float = 0.0
    retry: asyncio.TimerHandle | None = None
    # The snapshot version this type has been brought up to (sent, or noted in
    # ``dirty`` to send once Envoy ACKs), and whether a full diff is owed instead.
    synced: str | None = None
    dirty: set[str] = field(default_factory=set)
    full: bool = True


class DeltaStream:
    """One Envoy's DeltaAggregatedResources stream."""

    def __init__(self, store: SnapshotStore, peer: str, metrics: XdsMetrics | None = None) -> None:
        self._store = store
        self._peer = peer
        self._metrics = metrics or XdsMetrics()
        self._node = ""
        self._types: dict[str, _TypeState] = {}
        self._out: asyncio.Queue[discovery_pb2.DeltaDiscoveryResponse | None] = asyncio.Queue()
        self._nonces = itertools.count(1)

    async def run(
        self, requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        unsubscribe = self._store.subscribe(self._on_snapshot)
        reader = asyncio.create_task(self._read(requests))
        try:
            while True:
                response = await self._out.get()
                if response is None:
                    return
                yield response
        finally:
            unsubscribe()
            reader.cancel()
            for state in self._types.values():
                if state.retry is not None:
                    state.retry.cancel()
            log.info("xDS stream from %s (node %s) closed", self._peer, self._node or "?")

    async def _read(self, requests: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]) -> None:
        try:
            async for request in requests:
                self.on_request(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("xDS stream from %s ended: %s", self._peer, exc)
        self._out.put_nowait(None)

    def _on_snapshot(self) -> None:
        if self._store.closed:
            self._out.put_nowait(None)
            return
        self._reconcile()

    def on_request(self, request: discovery_pb2.DeltaDiscoveryRequest) -> None:
        """Apply one request from Envoy: subscription changes, then ACK/NACK."""
        if request.node.id and not self._node:
            self._node = request.node.id
            log.info("xDS stream from %s: node %s", self._peer, self._node)
        type_url = request.type_url
        state = self._types.get(type_url)
        changed = False
        if state is None:
            state = self._types[type_url] = _TypeState()
            state.known = dict(request.initial_resource_versions)
            state.resumed = bool(state.known)
            # A first request without names is a (legacy) wildcard subscription.
            state.wildcard = not request.resource_names_subscribe
            changed = True
            log.debug(
                "%s subscribes to %s (wildcard %s, holds %d)",
                self._node,
                type_url,
                state.wildcard,
                len(state.known),
            )
        for name in request.resource_names_subscribe:
            changed = True
            if name == "*":
                state.wildcard = True
            else:
                state.names.add(name)
        for name in request.resource_names_unsubscribe:
            changed = True
            if name == "*":
                state.wildcard = False
            else:
                state.names.discard(name)
                state.reported_absent.discard(name)
                if not state.wildcard:
                    state.known.pop(name, None)
        if changed:
            state.full = True  # a new subscription: compare everything
        if request.response_nonce:
            self._on_reply(type_url, state, request)
            # Changes held back for this ACK (of this type, or routes waiting for
            # clusters) can go now.
            if not state.pending and any(t.full or t.dirty for t in self._types.values()):
                changed = True
        if changed:
            self._reconcile()

    def _on_reply(
        self, type_url: str, state: _TypeState, request: discovery_pb2.DeltaDiscoveryRequest
    ) -> None:
        sent = state.pending.get(request.response_nonce)
        if sent is None:
            log.debug("%s: reply to unknown nonce %s", type_url, request.response_nonce)
            return
        # Envoy answers every response in order: earlier nonces are settled too.
        for nonce in list(state.pending):
            del state.pending[nonce]
            if nonce == request.response_nonce:
                break
        if not request.HasField("error_detail"):
            self._metrics.acked(type_url, time.monotonic() - sent.sent_at)
            state.backoff = 0.0
            log.debug("%s ACKed %s nonce %s", self._node, type_url, request.response_nonce)
            return
        # NACK: Envoy kept its previous resources. Forget what it rejected.
        self._metrics.nacked(type_url)
        state.full = True
        for name, (before, after) in sent.changes.items():
            if state.known.get(name) != after:
                continue  # changed again since
            if before is None:
                state.known.pop(name, None)
            else:
                state.known[name] = before
        state.backoff = min(max(state.backoff * 2, _NACK_BACKOFF_MIN), _NACK_BACKOFF_MAX)
        log.error(
            "Envoy %s rejected %s (%s): %s; retrying in %.0f s",
            self._node,
            type_url,
            ", ".join(sorted(sent.changes)) or "-",
            request.error_detail.message,
            state.backoff,
        )
        if state.retry is not None:
            state.retry.cancel()
        state.retry = asyncio.get_running_loop().call_later(state.backoff, self._retry, state)

    def _retry(self, state: _TypeState) -> None:
        state.retry = None
        state.full = True
        self._reconcile()

    def _diff(
        self, type_url: str, state: _TypeState, snapshot: Snapshot
    ) -> tuple[list[Resource], list[str]]:
        """Everything Envoy's copy of ``type_url`` lacks or has too much: O(all)."""
        available = snapshot.of_type(type_url)
        if state.wildcard:
            desired = dict(available)
        else:
            desired = {n: available[n] for n in state.names if n in available}
        upserts = [r for n, r in desired.items() if state.known.get(n) != r.version]
        if not snapshot.complete:
            return [r for r in upserts if r.name not in state.known], []
        removals = [n for n in state.known if n not in desired]
        missing = state.names - available.keys() - state.known.keys() - state.reported_absent
        return upserts, sorted({*removals, *missing})

    def _diff_names(
        self, type_url: str, state: _TypeState, snapshot: Snapshot, names: set[str]
    ) -> tuple[list[Resource], list[str]]:
        """The same as :meth:`_diff`, looking only at ``names``: O(changed)."""
        available = snapshot.of_type(type_url)
        upserts: list[Resource] = []
        removals: list[str] = []
        for name in sorted(names):
            wanted = state.wildcard or name in state.names
            resource = available.get(name) if wanted else None
            if resource is not None:
                if state.known.get(name) != resource.version:
                    upserts.append(resource)
            elif snapshot.complete and (
                name in state.known or (name in state.names and name not in state.reported_absent)
            ):
                removals.append(name)
        if not snapshot.complete:
            return [r for r in upserts if r.name not in state.known], []
        return upserts, removals

    def _catch_up(self, type_url: str, state: _TypeState, snapshot: Snapshot) -> None:
        """Note what ``snapshot`` changed for this type since the stream last looked."""
        if state.synced == snapshot.version:
            return
        if state.full or state.synced is None or snapshot.parent != state.synced:
            state.full = True
            state.dirty.clear()
        else:
            state.dirty |= snapshot.changed.get(type_url, frozenset())
        state.synced = snapshot.version

    def _reconcile(self) -> None:
        snapshot = self._store.current
        if snapshot is None or self._store.closed:
            return
        ordered = [t for t in _PUSH_ORDER if t in self._types]
        ordered += sorted(t for t in self._types if t not in _PUSH_ORDER)
        for type_url in ordered:
            self._catch_up(type_url, self._types[type_url], snapshot)
        clusters = self._types.get(CLUSTER_TYPE)
        diffs: dict[str, tuple[list[Resource], list[str]]] = {}
        for type_url in ordered:
            state = self._types[type_url]
            if state.retry is not None or state.pending:
                continue  # NACKed recently (wait for the retry), or awaiting an ACK
            if not (state.full or state.dirty or not state.answered):
                continue
            if (
                type_url != CLUSTER_TYPE
                and clusters is not None
                and (clusters.full or clusters.dirty)
                and clusters.pending
            ):
                continue  # routes may name clusters Envoy does not have yet
            if state.full:
                diffs[type_url] = self._diff(type_url, state, snapshot)
            else:
                diffs[type_url] = self._diff_names(type_url, state, snapshot, state.dirty)
            state.full = False
            state.dirty.clear()
        # Additions and changes, clusters first; cluster removals last.
        for type_url, (upserts, removals) in diffs.items():
            now_removed = removals if type_url != CLUSTER_TYPE else []
            self._send(type_url, snapshot, upserts, now_removed)
        if CLUSTER_TYPE in diffs and diffs[CLUSTER_TYPE][1]:
            self._send(CLUSTER_TYPE, snapshot, [], diffs[CLUSTER_TYPE][1])

    def _send(
        self, type_url: str, snapshot: Snapshot, upserts: list[Resource], removals: list[str]
    ) -> None:
        state = self._types[type_url]
        if not upserts and not removals:
            # The first answer for a type lets Envoy finish initialising even when there
            # is nothing to send; a resumed stream whose versions all match gets nothing.
            if state.answered or state.resumed:
                return
        state.answered = True
        nonce = str(next(self._nonces))
        changes: dict[str, tuple[str | None, str | None]] = {}
        for resource in upserts:
            changes[resource.name] = (state.known.get(resource.name), resource.version)
            state.known[resource.name] = resource.version
            state.reported_absent.discard(resource.name)
        for name in removals:
            changes[name] = (state.known.pop(name, None), None)
            if name in state.names:
                state.reported_absent.add(name)
        state.pending[nonce] = _Sent(changes)
        response = discovery_pb2.DeltaDiscoveryResponse(
            system_version_info=snapshot.version,
            type_url=type_url,
            nonce=nonce,
            resources=[
                discovery_pb2.Resource(name=r.name, version=r.version, resource=r.body)
                for r in upserts
            ],
            removed_resources=removals,
        )
        log.debug(
            "-> %s %s nonce %s: %d resources, %d removed",
            self._node,
            type_url,
            nonce,
            len(upserts),
            len(removals),
        )
        self._out.put_nowait(response)


class AggregatedDiscoveryServicer(ads_pb2_grpc.AggregatedDiscoveryServiceServicer):  # type: ignore[misc]
    """gRPC adapter: one ``DeltaStream`` per Envoy connection; delta xDS only."""

    def __init__(self, store: SnapshotStore, metrics: XdsMetrics | None = None) -> None:
        self._store = store
        self.metrics = metrics or XdsMetrics()

    async def StreamAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> None:
        await context.abort(
            grpc.StatusCode.UNIMPLEMENTED, "state-of-the-world xDS is not served; use DELTA_GRPC"
        )

    async def DeltaAggregatedResources(
        self,
        request_iterator: AsyncIterator[discovery_pb2.DeltaDiscoveryRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[discovery_pb2.DeltaDiscoveryResponse]:
        stream = DeltaStream(self._store, context.peer(), self.metrics)
        log.info("xDS stream from %s opened", context.peer())
        self.metrics.streams.inc()
        try:
            async for response in stream.run(request_iterator):
                yield response
        finally:
            self.metrics.streams.dec()
