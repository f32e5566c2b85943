"""Every service's Prometheus metrics, scraped from a whole gateway while a cluster starts,
scales and stops; and users cannot reach them through Envoy."""

from __future__ import annotations

import urllib.request
from collections.abc import Iterator

import pytest
from flotilla import BasicAuth, Gateway
from gateway_stack import Gateway as Stack
from gateway_stack import running_gateway
from helpers import wait_for

USER = "mia"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_gateway(tmp_path_factory.mktemp("metrics")) as gateway:
        yield gateway


def _value(metrics: dict, name: str, **labels: str) -> float:
    """A sample's value; 0 where the series is absent (nothing counted yet)."""
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def _sample(stack: Stack, service: str, name: str, **labels: str) -> float:
    return _value(stack.metrics(service), name, **labels)


def test_metrics_follow_a_cluster_from_start_to_stop(stack: Stack) -> None:
    registry = stack.metrics("registry")
    assert _value(registry, "flotilla_clusters", status="RUNNING", backend="local") == 0
    assert ("flotilla_clusters", (("backend", "local"), ("status", "PENDING"))) in registry
    assert _value(registry, "flotilla_user_cores", user=USER) == 0
    started = _value(registry, "flotilla_cluster_start_seconds_count", backend="local")
    pushes = _sample(stack, "proxy-config", "flotilla_xds_push_seconds_count", type="Cluster")
    launch = {"backend": "local", "what": "cluster"}
    launched = _sample(stack, "launcher-local", "flotilla_launcher_start_seconds_count", **launch)

    with Gateway(stack.address, auth=BasicAuth(USER)) as gw:
        cluster = gw.new_cluster()
        registry = stack.metrics("registry")
        assert _value(registry, "flotilla_clusters", status="RUNNING", backend="local") == 1
        count = _value(registry, "flotilla_cluster_start_seconds_count", backend="local")
        assert count == started + 1
        assert _value(registry, "flotilla_cluster_start_seconds_sum", backend="local") > 0
        assert _value(registry, "flotilla_user_clusters", user=USER) == 1
        cores = _value(registry, "flotilla_user_cores", user=USER)
        memory = _value(registry, "flotilla_user_memory_bytes", user=USER)
        assert cores > 0 and memory >= 512 * 2**20  # the scheduler's (write_config)
        launcher = stack.metrics("launcher-local")
        assert _value(launcher, "flotilla_launcher_clusters", backend="local") == 1
        assert _value(launcher, "flotilla_launcher_start_seconds_count", **launch) == launched + 1

        # The cluster's route reached Envoy, which ACKed it.
        wait_for(
            lambda: (
                _sample(stack, "proxy-config", "flotilla_xds_push_seconds_count", type="Cluster")
                > pushes
            ),
            30,
            "Envoy to ACK the cluster's route",
        )

        cluster.scale(1)
        client = cluster.get_client(set_as_default=False)
        client.wait_for_workers(1, timeout=120)
        registry = stack.metrics("registry")
        assert _value(registry, "flotilla_user_workers", user=USER) == 1
        assert _value(registry, "flotilla_user_cores", user=USER) > cores
        assert _value(registry, "flotilla_user_memory_bytes", user=USER) > memory
        # Heartbeats keep coming: their intervals and the schedulers' loop lag are seen.
        wait_for(
            lambda: _sample(stack, "registry", "flotilla_heartbeat_interval_seconds_count") >= 1,
            30,
            "a second heartbeat",
        )
        assert _value(registry, "flotilla_scheduler_loop_lag_seconds_count") >= 1
        client.close()
        cluster.shutdown()

    stopped = {"backend": "local", "status": "STOPPED"}
    wait_for(
        lambda: _sample(stack, "registry", "flotilla_clusters_finished_total", **stopped) == 1,
        30,
        "the cluster to be counted as STOPPED",
    )
    registry = stack.metrics("registry")
    for status in ("PENDING", "RUNNING", "STOPPING"):
        assert _value(registry, "flotilla_clusters", status=status, backend="local") == 0
    assert ("flotilla_user_cores", (("user", USER),)) not in registry
    wait_for(
        lambda: (
            _sample(stack, "launcher-local", "flotilla_launcher_clusters", backend="local") == 0
        ),
        30,
        "the launcher to let the cluster go",
    )


def test_auth_decisions_are_counted_by_result(stack: Stack) -> None:
    before = stack.metrics("auth")
    status, _, _ = stack.request("GET", "/api/v1/clusters/", user=USER)
    assert status == 200
    status, _, _ = stack.request("GET", "/api/v1/clusters/", user=None)
    assert status == 401
    after = stack.metrics("auth")
    for result, code in (("allowed", "200"), ("denied", "401")):
        assert _value(after, "flotilla_auth_decisions_total", result=result, code=code) == (
            _value(before, "flotilla_auth_decisions_total", result=result, code=code) + 1
        ), (result, code)
    assert _value(after, "flotilla_auth_check_seconds_count") == (
        _value(before, "flotilla_auth_check_seconds_count") + 2
    )
    # Each service's process metrics come along.
    assert _value(after, "process_resident_memory_bytes") > 0


def test_envoy_stats_are_on_its_admin_port(stack: Stack) -> None:
    port = stack.stack.deployment.envoy_admin_port
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats/prometheus", timeout=10) as r:
        text = r.read().decode()
    assert "envoy_http_downstream_rq_total" in text


@pytest.mark.parametrize("path", ["/metrics", "/api/metrics", "/stats/prometheus"])
def test_users_cannot_read_metrics_through_the_gateway(stack: Stack, path: str) -> None:
    status, _, body = stack.request("GET", path, user=USER)
    assert status == 404, (status, body)
    assert "flotilla_" not in str(body)
