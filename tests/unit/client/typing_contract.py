"""What type checkers see of the client, sync and async: checked by test_client_types.py."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Literal, assert_type

from distributed import Client
from flotilla import ClusterReport, Gateway, GatewayCluster, Options
from flotilla.client import UsageReport, WorkerReport


def sync_mode(flag: bool) -> None:
    gw = Gateway("http://gw.example")
    assert_type(gw, Gateway[Literal[False]])
    assert_type(gw.list_clusters(), list[ClusterReport])
    assert_type(gw.get_cluster("c"), ClusterReport)
    assert_type(gw.cluster_options(), Options)
    assert_type(gw.submit(), str)
    assert_type(gw.wait_for_start("c"), ClusterReport)
    assert_type(gw.stop_cluster("c"), None)
    assert_type(gw.scale_cluster("c", 2), None)
    assert_type(gw.adapt_cluster("c", maximum=3), None)
    assert_type(gw.get_cluster_logs("c"), dict[str, str])
    assert_type(gw.list_workers("c"), list[WorkerReport])
    assert_type(gw.usage(), list[UsageReport])
    assert_type(gw.get_versions(), dict[str, dict[str, str]])
    assert_type(gw.close(), None)
    with gw as same:
        assert_type(same, Gateway[Literal[False]])
    cluster = gw.new_cluster(worker_cores=2)
    assert_type(cluster, GatewayCluster[Literal[False]])
    assert_type(gw.connect("c"), GatewayCluster[Literal[False]])
    assert_type(cluster.report(), ClusterReport)
    assert_type(cluster.scale(3), None)
    assert_type(cluster.adapt(maximum=4), None)
    assert_type(cluster.get_logs(), dict[str, str])
    assert_type(cluster.list_workers(), list[WorkerReport])
    assert_type(cluster.get_client(), Client)
    assert_type(cluster.close(), None)
    assert_type(cluster.shutdown(), None)
    assert_type(cluster.gateway, Gateway[Literal[False]])
    assert_type(GatewayCluster.from_name("c"), GatewayCluster[Literal[False]])
    with GatewayCluster() as c2:
        assert_type(c2, GatewayCluster[Literal[False]])
    either = Gateway(asynchronous=flag)
    assert_type(either, Gateway[bool])
    assert_type(either.get_cluster("c"), ClusterReport | Awaitable[ClusterReport])


async def async_mode() -> None:
    gw = Gateway("http://gw.example", asynchronous=True)
    assert_type(gw, Gateway[Literal[True]])
    assert_type(await gw.list_clusters(), list[ClusterReport])
    assert_type(await gw.submit(), str)
    assert_type(await gw.stop_cluster("c"), None)
    assert_type(gw.close(), asyncio.Future[None] | None)
    async with gw as same:
        assert_type(same, Gateway[Literal[True]])
    cluster = await gw.new_cluster()
    assert_type(cluster, GatewayCluster[Literal[True]])
    async with gw.connect("c") as connected:
        assert_type(connected, GatewayCluster[Literal[True]])
    assert_type(await cluster.report(), ClusterReport)
    assert_type(await cluster.get_logs(), dict[str, str])
    assert_type(await cluster.list_workers(), list[WorkerReport])
    assert_type(await gw.list_workers("c"), list[WorkerReport])
    await cluster.scale(2)
    await cluster.close()
    assert_type(
        await GatewayCluster.from_name("c", asynchronous=True), GatewayCluster[Literal[True]]
    )
    assert_type(await GatewayCluster(asynchronous=True), GatewayCluster[Literal[True]])
    assert_type(gw.sync(gw._cluster_report, "c"), Awaitable[ClusterReport])
