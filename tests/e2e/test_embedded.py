"""The embedded runner: stopping the gateway stops its clusters; a crashed service is
restarted."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
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


def test_make_run_restarts_a_crashed_service(tmp_path: Path) -> None:
    """``flotilla-embedded`` (what ``make run`` runs) brings back a SIGKILLed service and
    still stops everything on Ctrl-C."""
    config, address = write_config(tmp_path)
    output = tmp_path / "embedded.out"
    exe = Path(sys.executable).parent / "flotilla-embedded"
    with output.open("wb") as out:
        runner = subprocess.Popen(
            [str(exe), "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def started(service: str) -> list[int]:
            """The pids the runner reported starting ``service`` with, in order."""
            pattern = rf" started {re.escape(service)} \(pid (\d+)\)"
            return [int(pid) for pid in re.findall(pattern, output.read_text())]

        wait_for(lambda: "Flotilla is up" in output.read_text(), 90, "the gateway to start")
        [auth] = started("auth")
        os.kill(auth, signal.SIGKILL)
        wait_for(lambda: len(started("auth")) == 2, 30, "the runner to restart auth")
        with Gateway(address, auth=BasicAuth("heidi")) as gw:
            wait_for(lambda: gw.list_clusters() == [], 30, "the API through the new auth")
            cluster = gw.new_cluster(shutdown_on_close=False)
            name = cluster.name
        runner.send_signal(signal.SIGINT)
        assert runner.wait(timeout=60) == 0, output.read_text()[-3000:]
    finally:
        if runner.poll() is None:
            runner.kill()
            runner.wait()
    assert leftover_cluster_pids(tmp_path) == {}, output.read_text()[-3000:]
    assert (tmp_path / "clusters" / name / "logs" / "scheduler.log").exists()
