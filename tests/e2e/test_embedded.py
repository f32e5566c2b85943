"""The embedded runner: stopping the gateway stops its clusters; a crashed service is
restarted."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from flotilla import BasicAuth, Gateway
from flotilla_common.embedded import EmbeddedStack
from gateway_stack import cluster_pids, leftover_cluster_pids, write_config
from helpers import wait_for


def test_stopping_the_gateway_stops_its_clusters(tmp_path: Path) -> None:
    config, address = write_config(tmp_path)
    stack = EmbeddedStack(str(config))
    try:
        stack.start()
        with Gateway(address, auth=BasicAuth("grace")) as gw:
            cluster = gw.new_cluster(shutdown_on_close=False)
            cluster.scale(1)
            wait_for(lambda: len(cluster_pids(cluster.name)) >= 3, 60, "scheduler and worker")
            name = cluster.name
            cluster.close(shutdown=False)
    finally:
        stack.stop()
    assert leftover_cluster_pids(tmp_path) == {}
    # The record says why it stopped, and its logs are kept.
    assert (tmp_path / "clusters" / name / "logs" / "scheduler.log").exists()


def test_a_crashed_service_is_restarted(tmp_path: Path) -> None:
    config, address = write_config(tmp_path)
    stack = EmbeddedStack(str(config))
    try:
        stack.start()
        old = stack.pid("auth")
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: stack.check_children() or stack.pid("auth") != old, 10, "a new auth")
        stack.wait_healthy(30)
        with Gateway(address, auth=BasicAuth("heidi")) as gw:
            assert gw.list_clusters() == []
    finally:
        stack.stop()
