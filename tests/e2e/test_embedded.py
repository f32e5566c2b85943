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


class Runner:
    """``flotilla-embedded`` (what ``make run`` runs) as a process, and what it printed."""

    def __init__(self, config: Path, output: Path) -> None:
        self.output = output
        exe = Path(sys.executable).parent / "flotilla-embedded"
        with output.open("wb") as out:
            self.proc = subprocess.Popen(
                [str(exe), "--config", str(config)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def text(self) -> str:
        return self.output.read_text()

    def wait_up(self) -> None:
        wait_for(lambda: "Flotilla is up" in self.text(), 90, "the gateway to start")

    def started(self, service: str) -> list[int]:
        """The pids the runner reported starting ``service`` with, in order."""
        pattern = rf" started {re.escape(service)} \(pid (\d+)\)"
        return [int(pid) for pid in re.findall(pattern, self.text())]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def alive(pid: int) -> bool:
    """True while ``pid`` runs (an exited, unreaped process counts as gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def test_make_run_restarts_a_crashed_service(tmp_path: Path) -> None:
    """``flotilla-embedded`` brings back a SIGKILLed service and still stops everything
    on Ctrl-C."""
    config, address = write_config(tmp_path)
    runner = Runner(config, tmp_path / "embedded.out")
    try:
        runner.wait_up()
        [auth] = runner.started("auth")
        os.kill(auth, signal.SIGKILL)
        wait_for(lambda: len(runner.started("auth")) == 2, 30, "the runner to restart auth")
        with Gateway(address, auth=BasicAuth("heidi")) as gw:
            wait_for(lambda: gw.list_clusters() == [], 30, "the API through the new auth")
            cluster = gw.new_cluster(shutdown_on_close=False)
            name = cluster.name
        runner.proc.send_signal(signal.SIGINT)
        assert runner.proc.wait(timeout=60) == 0, runner.text()[-3000:]
    finally:
        runner.close()
    assert leftover_cluster_pids(tmp_path) == {}, runner.text()[-3000:]
    assert (tmp_path / "clusters" / name / "logs" / "scheduler.log").exists()


def test_services_stop_when_the_runner_is_killed(tmp_path: Path) -> None:
    """A SIGKILLed runner takes its services along (they get SIGTERM): none is orphaned."""
    config, _ = write_config(tmp_path)
    runner = Runner(config, tmp_path / "embedded.out")
    services = ["registry", "auth", "proxy-config", "launcher-local", "envoy"]
    pids: list[int] = []
    try:
        runner.wait_up()
        pids = [runner.started(service)[-1] for service in services]
        assert all(alive(pid) for pid in pids)
        runner.proc.kill()
        runner.proc.wait()
        wait_for(lambda: not any(alive(pid) for pid in pids), 30, "every service to stop")
    finally:
        runner.close()
        for pid in pids:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
