"""serve_metrics: where each service's /metrics listens, and what a taken port does."""

from __future__ import annotations

import logging
import socket
import urllib.request

import pytest
from flotilla_common.config import Deployment
from flotilla_common.metrics import new_registry, serve_metrics
from helpers import free_ports
from prometheus_client import Counter
from traitlets.config import Config


def _deployment(**ports: int) -> Deployment:
    config = Config()
    config.Deployment.metrics_ports = ports
    return Deployment(config=config)


def test_a_service_serves_its_registry_on_the_metrics_host() -> None:
    registry = new_registry()
    Counter("flotilla_test_things", "Things.", registry=registry).inc(3)
    [port] = free_ports(1)
    server = serve_metrics(_deployment(registry=port), "registry", registry)
    assert server is not None
    try:
        assert server._server.server_address[0] == "127.0.0.1"  # never every interface
        with urllib.request.urlopen(server.url, timeout=10) as resp:
            text = resp.read().decode()
        assert "flotilla_test_things_total 3.0" in text
        assert "process_resident_memory_bytes" in text
    finally:
        server.close()


def test_no_port_no_metrics() -> None:
    deployment = _deployment(registry=0)
    assert serve_metrics(deployment, "registry", new_registry()) is None
    assert serve_metrics(deployment, "launcher-kubernetes", new_registry()) is None


def test_a_taken_port_is_logged_not_fatal(caplog: pytest.LogCaptureFixture) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with caplog.at_level(logging.ERROR):
            assert serve_metrics(_deployment(auth=port), "auth", new_registry()) is None
    assert f"cannot listen on 127.0.0.1:{port} (c.Deployment.metrics_ports['auth'])" in caplog.text
