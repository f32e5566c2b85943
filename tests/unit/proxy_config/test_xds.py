"""The delta ADS state machine, driven request by request without Envoy."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from types import MappingProxyType

import pytest
from envoy.service.discovery.v3 import discovery_pb2
from flotilla_common.config import Deployment
from flotilla_proxy_config import xds
from flotilla_proxy_config.config import ProxyConfig
from flotilla_proxy_config.snapshot import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    ROUTE_CONFIG_NAME,
    ROUTE_TYPE,
    Resource,
    Route,
    Snapshot,
    SnapshotBuilder,
)
from flotilla_proxy_config.xds import DeltaStream, SnapshotStore
from google.rpc import status_pb2

Response = discovery_pb2.DeltaDiscoveryResponse
ALPHA = Route("alpha", "127.0.0.1:9000", "127.0.0.1:9001")
BETA = Route("beta", "127.0.0.1:9100", "127.0.0.1:9101")


@pytest.fixture
def builder() -> SnapshotBuilder:
    return SnapshotBuilder(Deployment(), ProxyConfig())


def build(builder: SnapshotBuilder, *routes: Route, complete: bool = True) -> Snapshot:
    return builder.build({r.name: r for r in routes}, complete=complete)


def with_new_routes(snapshot: Snapshot, tag: str) -> Snapshot:
    """``snapshot`` with a different route configuration (as a configuration change
    would make; routes never change with Dask clusters)."""
    routes = dict(snapshot.of_type(ROUTE_TYPE))
    old = routes[ROUTE_CONFIG_NAME]
    routes[ROUTE_CONFIG_NAME] = Resource(old.name, f"{old.version}-{tag}", old.body)
    return dataclasses.replace(
        snapshot,
        version=f"{snapshot.version}-{tag}",
        resources=MappingProxyType({**snapshot.resources, ROUTE_TYPE: MappingProxyType(routes)}),
        parent=None,
    )


def drain(stream: DeltaStream) -> list[Response]:
    out = []
    while not stream._out.empty():
        item = stream._out.get_nowait()
        assert item is not None
        out.append(item)
    return out


def subscribe(
    stream: DeltaStream,
    type_url: str,
    names: list[str] | None = None,
    initial: dict[str, str] | None = None,
) -> None:
    stream.on_request(
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=type_url,
            resource_names_subscribe=names or [],
            initial_resource_versions=initial or {},
        )
    )


def ack(stream: DeltaStream, *responses: Response) -> None:
    for r in responses:
        stream.on_request(
            discovery_pb2.DeltaDiscoveryRequest(type_url=r.type_url, response_nonce=r.nonce)
        )


def connect(store: SnapshotStore) -> tuple[DeltaStream, list[Response]]:
    """A stream subscribed like Envoy (CDS, LDS wildcard; RDS by name), all ACKed."""
    stream = DeltaStream(store, "test")
    store.subscribe(stream._on_snapshot)
    sent: list[Response] = []
    for type_url, names in (
        (CLUSTER_TYPE, None),
        (LISTENER_TYPE, None),
        (ROUTE_TYPE, ["http_routes"]),
    ):
        subscribe(stream, type_url, names)
        responses = drain(stream)
        ack(stream, *responses)
        sent += responses
    return stream, sent


def names(response: Response) -> set[str]:
    return {r.name for r in response.resources}


async def test_initial_subscriptions(builder: SnapshotBuilder) -> None:
    store = SnapshotStore()
    store.set(build(builder, ALPHA))
    stream, sent = connect(store)
    assert [r.type_url for r in sent] == [CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE]
    assert names(sent[0]) == {
        "flotilla_auth", "registry_http", "registry_grpc", "sni_daskgateway-alpha", "dash_alpha",
    }  # fmt: skip
    assert names(sent[1]) == {"public"}
    assert names(sent[2]) == {"http_routes"}
    for response in sent:
        assert all(r.version for r in response.resources)
        assert response.system_version_info == store.current.version  # type: ignore[union-attr]
    assert drain(stream) == []


async def test_nothing_before_the_first_snapshot(builder: SnapshotBuilder) -> None:
    store = SnapshotStore()
    stream = DeltaStream(store, "test")
    store.subscribe(stream._on_snapshot)
    subscribe(stream, CLUSTER_TYPE)
    assert drain(stream) == []
    store.set(build(builder))
    assert [r.type_url for r in drain(stream)] == [CLUSTER_TYPE]


async def test_dask_clusters_change_clusters_only(builder: SnapshotBuilder) -> None:
    store = SnapshotStore()
    store.set(build(builder, ALPHA))
    stream, _ = connect(store)

    store.set(build(builder, ALPHA, BETA))
    (added,) = drain(stream)  # listener and routes untouched
    assert added.type_url == CLUSTER_TYPE
    assert names(added) == {"sni_daskgateway-beta", "dash_beta"}
    assert not added.removed_resources
    ack(stream, added)

    store.set(build(builder, ALPHA))
    (removed,) = drain(stream)
    assert removed.type_url == CLUSTER_TYPE
    assert set(removed.removed_resources) == {"sni_daskgateway-beta", "dash_beta"}
    assert not removed.resources
    ack(stream, removed)
    store.set(build(builder, ALPHA))  # same version: no-op
    assert drain(stream) == []


async def test_adds_go_clusters_first_and_removals_routes_first(builder: SnapshotBuilder) -> None:
    store = SnapshotStore()
    store.set(build(builder, ALPHA))
    stream, _ = connect(store)

    store.set(with_new_routes(build(builder, ALPHA, BETA), "a"))
    added = drain(stream)
    assert [r.type_url for r in added] == [CLUSTER_TYPE, ROUTE_TYPE]  # listener untouched
    assert names(added[0]) == {"sni_daskgateway-beta", "dash_beta"}
    ack(stream, *added)

    store.set(with_new_routes(build(builder, ALPHA), "b"))
    removed = drain(stream)
    assert [r.type_url for r in removed] == [ROUTE_TYPE, CLUSTER_TYPE]
    assert set(removed[1].removed_resources) == {"sni_daskgateway-beta", "dash_beta"}
    assert not removed[1].resources


async def test_reconnect_with_matching_versions_gets_nothing(builder: SnapshotBuilder) -> None:
    store = SnapshotStore()
    store.set(build(builder, ALPHA, BETA))
    _, sent = connect(store)
    held = {
        t: {r.name: r.version for s in sent if s.type_url == t for r in s.resources}
        for t in (CLUSTER_TYPE, LISTENER_TYPE, ROUTE_TYPE)
    }

    # A new proxy-config with the same state: Envoy reports what it holds.
    fresh = SnapshotStore()
    fresh.set(SnapshotBuilder(Deployment(), ProxyConfig()).build({"alpha": ALPHA, "beta": BETA}))
    stream = DeltaStream(fresh, "test")
    subscribe(stream, CLUSTER_TYPE, initial=held[CLUSTER_TYPE])
    subscribe(stream, LISTENER_TYPE, initial=held[LISTENER_TYPE])
    subscribe(stream, ROUTE_TYPE, ["http_routes"], initial=held[ROUTE_TYPE])
    assert drain(stream) == []


async def test_reconnect_diff_sends_changes_and_removals(builder: SnapshotBuilder) -> None:
    store = SnapshotStore()
    store.set(build(builder, ALPHA))
    stream = DeltaStream(store, "test")
    clusters = {n: r.version for n, r in store.current.of_type(CLUSTER_TYPE).items()}  # type: ignore[union-attr]
    clusters["sni_daskgateway-alpha"] = "stale"
    clusters["sni_daskgateway-gone"] = "whatever"
    subscribe(stream, CLUSTER_TYPE, initial=clusters)
    upserts, removals = drain(stream)
    assert names(upserts) == {"sni_daskgateway-alpha"}
    assert not upserts.removed_resources
    assert list(removals.removed_resources) == ["sni_daskgateway-gone"]
    assert not removals.resources


async def test_removals_are_sent_after_upserts(builder: SnapshotBuilder) -> None:
    store = SnapshotStore()
    store.set(build(builder, ALPHA))
    stream = DeltaStream(store, "test")
    held = {n: r.version for n, r in store.current.of_type(CLUSTER_TYPE).items()}  # type: ignore[union-attr]
    held["sni_daskgateway-gone"] = "v"
    subscribe(stream, CLUSTER_TYPE, initial=held)
    (response,) = drain(stream)
    assert list(response.removed_resources) == ["sni_daskgateway-gone"]
    assert not response.resources


async def test_partial_snapshot_adds_but_never_removes(builder: SnapshotBuilder) -> None:
    store = SnapshotStore()
    store.set(build(builder, complete=False))
    stream = DeltaStream(store, "test")
    store.subscribe(stream._on_snapshot)
    held = {"sni_daskgateway-old": "v1", "registry_http": "old-version"}
    subscribe(stream, CLUSTER_TYPE, initial=held)
    (response,) = drain(stream)
    assert names(response) == {"flotilla_auth", "registry_grpc"}
    assert not response.removed_resources
    ack(stream, response)

    store.set(build(builder, ALPHA))  # the registry's full set arrives
    upserts, removals = drain(stream)
    assert "registry_http" in names(upserts)
    assert "sni_daskgateway-alpha" in names(upserts)
    assert list(removals.removed_resources) == ["sni_daskgateway-old"]


async def test_nack_is_forgotten_and_retried(
    builder: SnapshotBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(xds, "_NACK_BACKOFF_MIN", 0.01)
    store = SnapshotStore()
    store.set(build(builder))
    stream = DeltaStream(store, "test")
    subscribe(stream, LISTENER_TYPE)
    (first,) = drain(stream)
    stream.on_request(
        discovery_pb2.DeltaDiscoveryRequest(
            type_url=LISTENER_TYPE,
            response_nonce=first.nonce,
            error_detail=status_pb2.Status(code=13, message="cannot bind"),
        )
    )
    assert drain(stream) == []  # not at once: after the backoff
    retried = await asyncio.wait_for(stream._out.get(), 2)
    assert retried is not None
    assert names(retried) == {"public"}
    assert retried.nonce != first.nonce
    ack(stream, retried)
    assert drain(stream) == []


async def test_named_subscription_to_a_missing_resource(builder: SnapshotBuilder) -> None:
    store = SnapshotStore()
    store.set(build(builder))
    stream = DeltaStream(store, "test")
    store.subscribe(stream._on_snapshot)
    subscribe(stream, ROUTE_TYPE, ["http_routes", "nope"])
    responses = drain(stream)
    assert {n for r in responses for n in names(r)} == {"http_routes"}
    assert [n for r in responses for n in r.removed_resources] == ["nope"]
    ack(stream, *responses)
    store.set(with_new_routes(build(builder, ALPHA), "x"))
    (update,) = drain(stream)
    assert names(update) == {"http_routes"} and not update.removed_resources


async def test_run_streams_responses_until_the_store_closes(builder: SnapshotBuilder) -> None:
    store = SnapshotStore()
    store.set(build(builder))
    requests: asyncio.Queue[discovery_pb2.DeltaDiscoveryRequest] = asyncio.Queue()

    async def incoming() -> AsyncIterator[discovery_pb2.DeltaDiscoveryRequest]:
        while True:
            yield await requests.get()

    stream = DeltaStream(store, "test")
    responses = stream.run(incoming())
    requests.put_nowait(discovery_pb2.DeltaDiscoveryRequest(type_url=CLUSTER_TYPE))
    first = await asyncio.wait_for(anext(responses), 2)
    assert first.type_url == CLUSTER_TYPE
    store.close()
    with pytest.raises(StopAsyncIteration):
        await asyncio.wait_for(anext(responses), 2)


async def test_changes_wait_for_the_ack_and_go_together(builder: SnapshotBuilder) -> None:
    store = SnapshotStore()
    store.set(build(builder))
    stream, _ = connect(store)
    gamma = Route("gamma", "127.0.0.1:9200", "127.0.0.1:9201")

    store.set(build(builder, ALPHA))
    (first,) = drain(stream)
    assert first.type_url == CLUSTER_TYPE
    # Envoy has not ACKed yet: nothing more is sent, whatever changes meanwhile.
    store.set(build(builder, ALPHA, BETA))
    store.set(build(builder, ALPHA, BETA, gamma))
    assert drain(stream) == []
    ack(stream, first)  # ACKed: the held changes go, in one response
    (clusters,) = drain(stream)
    assert names(clusters) == {
        "sni_daskgateway-beta",
        "dash_beta",
        "sni_daskgateway-gamma",
        "dash_gamma",
    }
    ack(stream, clusters)
    assert drain(stream) == []


async def test_routes_wait_for_held_back_clusters(builder: SnapshotBuilder) -> None:
    store = SnapshotStore()
    store.set(build(builder))
    stream, _ = connect(store)
    store.set(with_new_routes(build(builder, ALPHA), "a"))
    clusters, routes = drain(stream)
    ack(stream, routes)
    # beta's clusters are held (alpha's not ACKed yet): new routes must wait for them.
    store.set(with_new_routes(build(builder, ALPHA, BETA), "b"))
    assert drain(stream) == []
    ack(stream, clusters)
    assert [r.type_url for r in drain(stream)] == [CLUSTER_TYPE, ROUTE_TYPE]


async def test_in_sync_streams_only_look_at_what_changed(
    builder: SnapshotBuilder, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SnapshotStore()
    store.set(build(builder, ALPHA))
    stream, _ = connect(store)

    def no_full_diffs(*args: object) -> None:
        raise AssertionError("a full diff for a stream that was up to date")

    monkeypatch.setattr(stream, "_diff", no_full_diffs)
    store.set(builder.apply([BETA]))
    (added,) = drain(stream)
    assert names(added) == {"sni_daskgateway-beta", "dash_beta"}
    ack(stream, added)
    store.set(builder.apply([], ["alpha"]))
    (removed,) = drain(stream)
    assert set(removed.removed_resources) == {"sni_daskgateway-alpha", "dash_alpha"}
