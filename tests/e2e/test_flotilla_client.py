"""Acceptance: the same lifecycle with our own client, plus the options round trip."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import dask.array as da
import pytest
from flotilla import BasicAuth, Gateway, GatewayPermissionError
from gateway_stack import Gateway as Stack
from gateway_stack import cluster_pids
from helpers import wait_for


def test_flotilla_client_lifecycle(gateway: Stack) -> None:
    with Gateway(gateway.address, auth=BasicAuth("carol")) as gw:
        assert gw.list_clusters() == []
        cluster = gw.new_cluster()
        name = cluster.name
        assert gw.get_cluster(name).status.name == "RUNNING"
        assert (
            cluster.scheduler_address
            == f"gateway://127.0.0.1:{gateway.address.rsplit(':', 1)[1]}/{name}"
        )
        cluster.scale(2)
        client = cluster.get_client()
        client.wait_for_workers(2, timeout=120)
        assert da.ones((4000, 4000), chunks=500).sum().compute() == 16_000_000
        with urllib.request.urlopen(cluster.dashboard_link, timeout=30) as resp:
            assert resp.status == 200
        cluster.adapt(minimum=1, maximum=3)

        with Gateway(gateway.address, auth=BasicAuth("carol")) as second:
            assert name in [c.name for c in second.list_clusters()]
            again = second.connect(name)
            client2 = again.get_client(set_as_default=False)
            assert client2.submit(sum, [1, 2, 3]).result(timeout=60) == 6
            client2.close()
            client.close()
            cluster.shutdown()
            deadline = time.monotonic() + 5
            while second.get_cluster(name).status.name != "STOPPED":
                assert time.monotonic() < deadline, "cluster not STOPPED within 5 s"
                time.sleep(0.1)
            assert cluster_pids(name) == []

            # Its routes are gone from Envoy: the dashboard answers 404.
            def dashboard_gone() -> bool:
                try:
                    urllib.request.urlopen(cluster.dashboard_link, timeout=5)
                except urllib.error.HTTPError as exc:
                    return exc.code == 404
                return False

            wait_for(dashboard_gone, 5, "the dashboard route to be removed")
            stopped = second.list_clusters(status="STOPPED")
            assert [c.name for c in stopped] == [name]


def test_options_round_trip_every_field_type(gateway: Stack) -> None:
    with Gateway(gateway.address, auth=BasicAuth("dave")) as gw:
        options = gw.cluster_options()
        assert dict(options) == {
            "worker_cores": 1,
            "worker_memory": 0.5,
            "label": "none",
            "keep_alive": True,
            "profile": "small",
            "environment": {},
        }
        options.worker_cores = 2
        options.worker_memory = 1
        options.label = "round-trip"
        options.keep_alive = False
        options.profile = "large"
        options.environment = {"FLOTILLA_E2E": "yes"}
        # Invalid values are refused on the client, naming the field.
        with pytest.raises(ValueError, match="worker_cores"):
            options.worker_cores = 7
        with pytest.raises(ValueError, match="profile"):
            options.profile = "huge"
        with pytest.raises(ValueError, match="keep_alive"):
            options.keep_alive = "yes"
        # ... and on the server, for a client that skips validation.
        with pytest.raises(ValueError, match="worker_cores must be <= 2"):
            gw.new_cluster(worker_cores=9)

        cluster = gw.new_cluster(options)
        try:
            report = gw.get_cluster(cluster.name)
            assert report.options == {
                "worker_cores": 2,
                "worker_memory": 1.0,
                "label": "round-trip",
                "keep_alive": False,
                "profile": "large",
                "environment": {"FLOTILLA_E2E": "yes"},
            }
            cluster.scale(1)
            client = cluster.get_client(set_as_default=False)
            client.wait_for_workers(1, timeout=120)
            env = client.run(
                lambda: {
                    k: __import__("os").environ.get(k)
                    for k in ("FLOTILLA_E2E", "FLOTILLA_TEST_USER", "FLOTILLA_TEST_LABEL")
                }
            )
            assert list(env.values()) == [
                {
                    "FLOTILLA_E2E": "yes",
                    "FLOTILLA_TEST_USER": "dave",
                    "FLOTILLA_TEST_LABEL": "round-trip",
                }
            ]
            nthreads = client.nthreads()
            assert list(nthreads.values()) == [2]
            client.close()
        finally:
            cluster.shutdown()


def test_other_users_cluster_through_our_client(gateway: Stack) -> None:
    with (
        Gateway(gateway.address, auth=BasicAuth("erin")) as erin,
        Gateway(gateway.address, auth=BasicAuth("frank")) as frank,
    ):
        cluster = erin.new_cluster()
        try:
            assert cluster.name not in [c.name for c in frank.list_clusters()]
            with pytest.raises(GatewayPermissionError):
                frank.get_cluster(cluster.name)
            with pytest.raises(GatewayPermissionError):
                frank.scale_cluster(cluster.name, 1)
            with pytest.raises(GatewayPermissionError):
                frank.stop_cluster(cluster.name)
            assert erin.get_cluster(cluster.name).status.name == "RUNNING"
        finally:
            cluster.shutdown()
