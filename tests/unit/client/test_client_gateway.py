"""Gateway / GatewayCluster flows against an in-test RegistryService double."""

from __future__ import annotations

import base64
import operator
import warnings
from datetime import datetime
from typing import TYPE_CHECKING

import dask.config
import pytest
from distributed.core import Status
from flotilla import (
    BasicAuth,
    ClusterReport,
    ClusterStatus,
    Gateway,
    GatewayAuthError,
    GatewayCluster,
    GatewayClusterError,
    GatewayPermissionError,
    GatewaySecurity,
    GatewayServerError,
    GatewayWarning,
    Options,
)

if TYPE_CHECKING:
    from .conftest import FakeGateway

pytestmark = pytest.mark.timeout(60)

RUNNING = 2
FAILED = 5
STOPPED = 4


def gateway_for(fake: FakeGateway, **kwargs: object) -> Gateway:
    kwargs.setdefault("auth", BasicAuth("alice"))
    if fake.relay is not None:
        kwargs.setdefault("proxy_address", fake.proxy_address)
    return Gateway(fake.address, **kwargs)  # type: ignore[arg-type]


# -- sync API ------------------------------------------------------------------------


def test_versions_options_and_cookie(bare_gateway: FakeGateway) -> None:
    with gateway_for(bare_gateway) as gw:
        assert repr(gw) == f"Gateway<{bare_gateway.address}>"
        versions = gw.get_versions()
        assert versions["server"] == {"version": "9.9.9"}
        assert versions["client"]["version"]
        opts = gw.cluster_options()
        assert isinstance(opts, Options)
        assert opts.worker_memory == 1.0 and opts.profile == "small"
        gw.list_clusters()
    with pytest.raises(RuntimeError, match="is closed"):
        gw.list_clusters()
    gw.close()  # idempotent
    calls = bare_gateway.registry.calls
    # First call: credentials proactively (no 401 round trip); later calls: the cookie.
    first = calls[0][1]
    assert first["authorization"] == "Basic " + base64.b64encode(b"alice:").decode()
    assert "cookie" not in first
    for _, md in calls[1:]:
        assert md["cookie"].startswith("flotilla-session=")
        assert "authorization" not in md


def test_local_default_options(bare_gateway: FakeGateway) -> None:
    with dask.config.set({"gateway.cluster.options": {"label": "{USER_LABEL}", "worker_cores": 2}}):
        import os

        os.environ["USER_LABEL"] = "from-env"
        try:
            with gateway_for(bare_gateway) as gw:
                assert gw.cluster_options().label == "from-env"
                assert gw.cluster_options(use_local_defaults=False).label == ""
                name = gw.submit(profile="large")
                report = gw.get_cluster(name)
        finally:
            del os.environ["USER_LABEL"]
    assert report.options["label"] == "from-env"
    assert report.options["worker_cores"] == 2
    assert report.options["profile"] == "large"


def test_expired_cookie_falls_back_to_credentials(bare_gateway: FakeGateway) -> None:
    with gateway_for(bare_gateway) as gw:
        gw.list_clusters()
        bare_gateway.registry.sessions.clear()  # e.g. the auth service restarted
        gw.list_clusters()
    methods = [(m, "cookie" in md, "authorization" in md) for m, md in bare_gateway.registry.calls]
    assert methods == [
        ("ListClusters", False, True),
        ("ListClusters", True, False),
        ("ListClusters", False, True),
    ]


def test_bad_credentials(bare_gateway: FakeGateway) -> None:
    bare_gateway.registry.password = "right"
    with gateway_for(bare_gateway, auth=BasicAuth("alice", "wrong")) as gw:
        with pytest.raises(GatewayAuthError, match="Authentication required"):
            gw.list_clusters()


def test_submit_report_list_stop(bare_gateway: FakeGateway) -> None:
    with gateway_for(bare_gateway, public_address="https://public.example/") as gw:
        opts = gw.cluster_options()
        opts.worker_cores = 3
        name = gw.submit(opts, label="x")
        report = gw.get_cluster(name)
        assert isinstance(report, ClusterReport)
        assert report.status is ClusterStatus.PENDING
        assert report.scheduler_address is None and report.dashboard_link is None
        assert report.options["worker_cores"] == 3 and report.options["label"] == "x"
        assert report.owner == "alice" and report.backend == "fake"
        assert report.start_time == datetime.fromtimestamp(1_795_310_803.011)
        assert report.stop_time is None and report.security is None
        assert repr(report) == f"ClusterReport<name={name}, status=PENDING>"

        bare_gateway.registry.clusters[name].status = RUNNING
        (listed,) = gw.list_clusters()
        assert listed.name == name
        assert listed.scheduler_address == f"gateway://127.0.0.1:{bare_gateway.port}/{name}"
        assert listed.dashboard_link == f"https://public.example/clusters/{name}/status"

        assert gw.list_clusters(status="stopped") == []
        gw.stop_cluster(name)
        gw.stop_cluster("unknown-is-fine")
        assert gw.list_clusters() == []
        (stopped,) = gw.list_clusters(status=["STOPPED", ClusterStatus.FAILED])
        assert stopped.status is ClusterStatus.STOPPED
        assert isinstance(stopped.stop_time, datetime)
        with pytest.raises(ValueError, match="'bogus' is not a valid ClusterStatus"):
            gw.list_clusters(status="bogus")


def test_error_mapping_end_to_end(bare_gateway: FakeGateway) -> None:
    reg = bare_gateway.registry
    with gateway_for(bare_gateway) as gw:
        with pytest.raises(ValueError, match="Cluster nope not found"):
            gw.get_cluster("nope")
        with pytest.raises(ValueError, match=r"Unknown fields \['foo'\]"):
            gw.submit(foo=1)
        bobs = reg.new_pending("bob")
        with pytest.raises(GatewayPermissionError, match="lacks permissions") as info:
            gw.get_cluster(bobs)
        assert isinstance(info.value, PermissionError)
        with pytest.raises(GatewayClusterError, match="is not running"):
            gw.scale_cluster(gw.submit(), 2)
        with pytest.raises(ValueError, match="Scale expects a non-negative integer, got -1"):
            gw.scale_cluster("x", -1)
        with pytest.raises(GatewayPermissionError):
            gw.list_clusters(all_users=True)
        import grpc

        reg.fail_with = (grpc.StatusCode.INTERNAL, "database is locked")
        with pytest.raises(GatewayServerError, match="database is locked"):
            gw.list_clusters()
        reg.fail_with = None
    with gateway_for(bare_gateway, auth=BasicAuth("admin")) as admin:
        assert {c.owner for c in admin.list_clusters(all_users=True)} == {"alice", "bob"}


def test_cluster_logs(bare_gateway: FakeGateway) -> None:
    reg = bare_gateway.registry
    big = "x" * (5 * 2**20)  # over gRPC's default 4 MiB message limit
    with gateway_for(bare_gateway) as gw:
        name = gw.submit()
        reg.clusters[name].logs = {"scheduler": "s", "worker-a": big, "worker-b": "b"}
        logs = gw.get_cluster_logs(name)
        assert list(logs) == ["scheduler", "worker-a", "worker-b"]
        assert logs["worker-a"] == big
        gw.stop_cluster(name)
        assert gw.get_cluster_logs(name)["scheduler"] == "s"  # also once stopped
        with pytest.raises(ValueError, match="Cluster nope not found"):
            gw.get_cluster_logs("nope")
        with pytest.raises(GatewayPermissionError):
            gw.get_cluster_logs(reg.new_pending("bob"))


def test_https_gateway_with_configured_ca(https_gateway: tuple[FakeGateway, str]) -> None:
    fake, ca_file = https_gateway
    address = f"https://localhost:{fake.port}"
    with dask.config.set({"gateway.tls.ca-file": ca_file}):
        with Gateway(address, auth=BasicAuth("alice")) as gw:
            assert gw.proxy_address == f"gateway://localhost:{fake.port}"
            assert gw.get_versions()["server"]["version"] == "9.9.9"
    # Without the CA the self-signed certificate does not verify.
    with Gateway(address, auth=BasicAuth("alice")) as gw:
        with pytest.raises(GatewayServerError, match="unavailable"):
            gw.get_versions()


def test_unreachable_gateway() -> None:
    from helpers import free_port

    with Gateway(f"http://127.0.0.1:{free_port()}", auth=BasicAuth("a")) as gw:
        with pytest.raises(GatewayServerError, match="unavailable"):
            gw.list_clusters()


def test_scale_and_adapt_messages(bare_gateway: FakeGateway) -> None:
    with gateway_for(bare_gateway) as gw:
        name = gw.submit()
        bare_gateway.registry.clusters[name].status = RUNNING
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            gw.scale_cluster(name, 2)
            gw.adapt_cluster(name, minimum=1, maximum=2)
        assert bare_gateway.registry.clusters[name].count == 2
        with pytest.warns(GatewayWarning, match="Scaling to 3 instead"):
            gw.scale_cluster(name, 5)
        with pytest.warns(GatewayWarning, match="maximum=3"):
            gw.adapt_cluster(name)
        assert bare_gateway.registry.clusters[name].adapt == (None, None, True)
        gw.adapt_cluster(name, active=False, maximum=1)
        assert bare_gateway.registry.clusters[name].adapt == (None, 1, False)


@pytest.mark.parametrize(
    ("outcome", "reason", "message"),
    [
        (FAILED, "", "failed to start, see logs for more information$"),
        (
            FAILED,
            "scheduler exited with code 1",
            r"failed to start, see logs for more information \(reason: scheduler exited",
        ),
        (STOPPED, "", "is already stopped"),
    ],
)
def test_new_cluster_start_failures(
    bare_gateway: FakeGateway, outcome: int, reason: str, message: str
) -> None:
    bare_gateway.registry.start_outcome = outcome
    bare_gateway.registry.start_reason = reason
    before = set(GatewayCluster._instances)
    with gateway_for(bare_gateway) as gw:
        with pytest.raises(GatewayClusterError, match=message) as info:
            gw.new_cluster()
        (name,) = bare_gateway.registry.clusters
        assert f"Cluster '{name}'" in str(info.value)
    # The cluster object that failed to start is not kept for atexit cleanup.
    assert set(GatewayCluster._instances) <= before


def test_running_without_tls_credentials_is_an_error(bare_gateway: FakeGateway) -> None:
    with gateway_for(bare_gateway) as gw:
        with pytest.raises(GatewayServerError, match="without TLS credentials"):
            gw.new_cluster()
        # shutdown_on_close: the half-started cluster was stopped again
        (c,) = bare_gateway.registry.clusters.values()
        assert c.status == STOPPED


def test_sync_cluster_lifecycle(fake_gateway: FakeGateway) -> None:
    reg = fake_gateway.registry
    with gateway_for(fake_gateway) as gw:
        with gw.new_cluster(worker_cores=2) as cluster:
            name = cluster.name
            assert isinstance(cluster, GatewayCluster)
            assert cluster.status == Status.running
            assert Status.running == cluster.status
            assert cluster.status == "running"  # dask-gateway's status strings
            assert cluster.status in (Status.running, Status.closing)
            assert cluster.status != Status.closed and cluster.status != "closed"
            assert repr(cluster) == f"GatewayCluster<{name}, status=running>"
            assert (
                cluster.scheduler_address
                == f"{fake_gateway.proxy_address.replace('tls', 'gateway', 1)}/{name}"
            )
            assert cluster.dashboard_link == f"{fake_gateway.address}/clusters/{name}/status"
            assert isinstance(cluster.security, GatewaySecurity)
            assert len(cluster.scheduler_info["workers"]) == 1
            assert reg.clusters[name].options["worker_cores"] == 2

            client = cluster.get_client(set_as_default=False)
            assert client.submit(operator.add, 40, 2).result(timeout=20) == 42

            cluster.scale(1)
            assert reg.clusters[name].count == 1
            with pytest.warns(GatewayWarning, match="Scaling to 3 instead"):
                cluster.scale(10)
            cluster.adapt(minimum=0, maximum=2)
            assert reg.clusters[name].adapt == (0, 2, True)
            assert cluster.report().status is ClusterStatus.RUNNING
            reg.clusters[name].logs = {"scheduler": "s", "worker-a": "a"}
            assert cluster.get_logs() == {"scheduler": "s", "worker-a": "a"}
            assert cluster.get_logs(workers=False) == {"scheduler": "s"}
            assert cluster.get_logs(scheduler=False) == {"worker-a": "a"}

            # another handle on the same cluster, not shutting it down on close
            other = gw.connect(name)
            assert other.scheduler_address == cluster.scheduler_address
            other.close()
            assert reg.clusters[name].status == RUNNING
        assert cluster.status == Status.closed
        assert client.status == "closed"
        assert reg.clusters[name].status == STOPPED
        assert f"daskgateway-{name}" in fake_gateway.relay.seen  # type: ignore[union-attr]


def test_close_without_shutdown_then_shutdown(fake_gateway: FakeGateway) -> None:
    reg = fake_gateway.registry
    with gateway_for(fake_gateway) as gw:
        cluster = gw.new_cluster(shutdown_on_close=False)
        name = cluster.name
        cluster.close()
        assert reg.clusters[name].status == RUNNING
        again = GatewayCluster.from_name(
            name,
            address=fake_gateway.address,
            proxy_address=fake_gateway.proxy_address,
            auth=BasicAuth("alice"),
        )
        again.shutdown()
        assert reg.clusters[name].status == STOPPED
        with pytest.raises(GatewayClusterError, match="is already stopped"):
            gw.connect(name)


def test_config_driven_gateway(fake_gateway: FakeGateway) -> None:
    with dask.config.set(
        {
            "gateway.address": fake_gateway.address,
            "gateway.proxy-address": fake_gateway.proxy_address,
            "gateway.auth.type": "basic",
            "gateway.auth.kwargs": {"username": "alice"},
        }
    ):
        with Gateway() as gw:
            assert gw.list_clusters() == []
    assert fake_gateway.registry.calls[0][1]["authorization"].startswith("Basic ")


# -- async API -----------------------------------------------------------------------


async def test_async_gateway_and_cluster(fake_gateway: FakeGateway) -> None:
    reg = fake_gateway.registry
    async with gateway_for(fake_gateway, asynchronous=True) as gw:
        assert gw.asynchronous
        opts = await gw.cluster_options()
        assert "worker_cores" in opts
        async with gw.new_cluster(opts, label="async") as cluster:
            name = cluster.name
            assert cluster.status == Status.running
            assert reg.clusters[name].options["label"] == "async"
            (report,) = await gw.list_clusters()
            assert report.name == name and report.status is ClusterStatus.RUNNING
            await cluster.scale(2)
            assert reg.clusters[name].count == 2
            await cluster.adapt(maximum=3)
            async with cluster.get_client(set_as_default=False) as client:
                fut = client.submit(operator.sub, 50, 8)
                assert await fut == 42
        assert reg.clusters[name].status == STOPPED

        name2 = await gw.submit()
        cluster2 = await gw.connect(name2, shutdown_on_close=True)
        assert cluster2.status == Status.running
        await cluster2.close()
        assert reg.clusters[name2].status == STOPPED

        cluster3 = await gw.new_cluster(shutdown_on_close=False)
        await cluster3.close(shutdown=True)
        assert reg.clusters[cluster3.name].status == STOPPED


async def test_async_errors(bare_gateway: FakeGateway) -> None:
    async with gateway_for(bare_gateway, asynchronous=True) as gw:
        with pytest.raises(ValueError, match="not found"):
            await gw.get_cluster("missing")
        bare_gateway.registry.start_outcome = FAILED
        bare_gateway.registry.start_reason = "no capacity"
        with pytest.raises(GatewayClusterError, match="no capacity"):
            await gw.new_cluster()


def test_client_shutdown_stops_the_cluster(fake_gateway: FakeGateway) -> None:
    reg = fake_gateway.registry
    with gateway_for(fake_gateway) as gw:
        cluster = gw.new_cluster()
        client = cluster.get_client(set_as_default=False)
        assert client.submit(operator.add, 1, 1).result(timeout=20) == 2
        client.shutdown()
        assert cluster.status == Status.closed
        assert reg.clusters[cluster.name].status == STOPPED
        cluster.close()  # idempotent
