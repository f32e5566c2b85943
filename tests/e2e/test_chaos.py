"""Chaos: every service is SIGKILLed once while three clusters compute; nothing is lost.

The real stack runs as ``flotilla-embedded`` runs it: each service a child process, and
the runner's own restart logic (``EmbeddedStack.check_children``) brings back whatever
dies. One step per service (auth, registry, launcher, proxy-config, Envoy): start a
computation on every cluster, SIGKILL the service, wait until it answers again, then
check the computation's result, that every cluster still works, and that each cluster
still has exactly one scheduler and one process group per worker.
"""

from __future__ import annotations

import operator
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest
from distributed import Client, Future
from flotilla import BasicAuth, Gateway, GatewayCluster
from flotilla_common.embedded import EmbeddedStack
from gateway_stack import (
    cluster_pids,
    cluster_process_groups,
    leftover_cluster_pids,
    write_config,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import free_port, wait_for

pytestmark = [pytest.mark.timeout(300)]

WORKERS_PER_CLUSTER = 2
IN_FLIGHT_SECONDS = 4.0


def expected_square_sum(n: int) -> int:
    return (n - 1) * n * (2 * n - 1) // 6


@contextmanager
def supervised(stack: EmbeddedStack) -> Iterator[None]:
    """Run the runner's restart check in the background, as ``flotilla-embedded`` does."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(0.2):
            stack.check_children()

    thread = threading.Thread(target=loop, name="embedded-supervisor", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


def grpc_serving(address: str) -> bool:
    """True once the gRPC health service at ``address`` answers SERVING."""
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


class Chaos:
    """The stack, its three clusters and one dask client per cluster."""

    def __init__(self, stack: EmbeddedStack, gateway: Gateway, launcher_health: str) -> None:
        self.stack = stack
        self.gateway = gateway
        self.launcher_health = launcher_health
        self.clusters: list[GatewayCluster] = []
        self.clients: list[Client] = []
        self.workers = {}  # cluster name -> how many workers it should have

    def health_address(self, service: str) -> str:
        deployment = self.stack.deployment
        return {
            "auth": deployment.auth_grpc_address,
            "registry": deployment.registry_grpc_address,
            "proxy-config": deployment.xds_address,
            "launcher-local": self.launcher_health,
        }[service]

    def kill(self, service: str) -> None:
        """SIGKILL ``service`` and wait until the runner has restarted it and it answers."""
        old = self.stack.pid(service)
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: self.stack.pid(service) != old, 20, f"{service} to be restarted")
        if service == "envoy":
            self.stack.wait_healthy(30)
        else:
            wait_for(lambda: grpc_serving(self.health_address(service)), 30, f"{service} up")
            self.stack.wait_healthy(30)

    def start_in_flight(self) -> list[Future]:
        """On each cluster, the sum of squares below 1000 + i, ready no sooner than a
        sleep of IN_FLIGHT_SECONDS (stdlib functions only: workers cannot import tests)."""
        futures = []
        for i, client in enumerate(self.clients):
            n = 1000 + i
            squares = client.map(pow, range(n), [2] * n, pure=False)
            total = client.submit(sum, squares, pure=False)
            gate = client.submit(time.sleep, IN_FLIGHT_SECONDS, pure=False)
            futures.append(client.submit(operator.getitem, [total, gate], 0, pure=False))
        return futures

    def check_in_flight(self, futures: list[Future]) -> None:
        for i, future in enumerate(futures):
            assert future.result(timeout=60) == expected_square_sum(1000 + i)

    def check_clusters(self) -> None:
        """Every cluster RUNNING, computing, with one scheduler and its workers, once each."""
        listed = {c.name: c.status.name for c in self.gateway.list_clusters()}
        assert listed == {c.name: "RUNNING" for c in self.clusters}
        for cluster, client in zip(self.clusters, self.clients, strict=True):
            assert client.submit(sum, [1, 2, 3], pure=False).result(timeout=60) == 6
            self.check_processes(cluster.name, client)

    def check_processes(self, name: str, client: Client) -> None:
        """One scheduler group, one group per worker the scheduler knows, nothing else."""
        want = self.workers[name]

        def settled() -> bool:
            groups = cluster_process_groups(name)
            names = {w["name"] for w in client.scheduler_info()["workers"].values()}
            return len(names) == want and set(groups.workers) == names

        wait_for(settled, 60, f"cluster {name} to settle on {want} workers")
        groups = cluster_process_groups(name)
        assert len(groups.schedulers) == 1, groups
        assert all(len(leaders) == 1 for leaders in groups.workers.values()), groups
        assert not groups.strays, groups


@pytest.fixture
def chaos(tmp_path: Path) -> Iterator[Chaos]:
    launcher_health = f"127.0.0.1:{free_port()}"
    config, address = write_config(
        tmp_path, extra=f"\nc.Launcher.health_address = {launcher_health!r}\n"
    )
    stack = EmbeddedStack(str(config))
    try:
        stack.start()
        with supervised(stack), Gateway(address, auth=BasicAuth("chaos")) as gateway:
            chaos = Chaos(stack, gateway, launcher_health)
            try:
                yield chaos
            finally:
                for client in chaos.clients:
                    client.close()
    finally:
        stack.stop()
        leftover = leftover_cluster_pids(tmp_path)
        for pids in leftover.values():
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if os.environ.get("FLOTILLA_TEST_SHOW_LOGS"):
            for log in sorted((tmp_path / "logs").glob("*.log")):
                print(f"==== {log.name}\n{log.read_text()[-8000:]}")
        assert not leftover, f"cluster processes left after the gateway stopped: {leftover}"


def step(chaos: Chaos, service: str, during: Callable[[], Any] | None = None) -> None:
    """One chaos step: a computation in flight on every cluster while ``service`` dies."""
    started = time.monotonic()
    futures = chaos.start_in_flight()
    if during is not None:
        during()
    chaos.kill(service)
    chaos.check_in_flight(futures)
    chaos.check_clusters()
    print(f"{service}: killed and recovered in {time.monotonic() - started:.1f}s")


def test_each_service_killed_once_loses_nothing(chaos: Chaos) -> None:
    gateway = chaos.gateway
    for _ in range(3):
        cluster = gateway.new_cluster(shutdown_on_close=False)
        cluster.scale(WORKERS_PER_CLUSTER)
        chaos.clusters.append(cluster)
        chaos.workers[cluster.name] = WORKERS_PER_CLUSTER
    for cluster in chaos.clusters:
        client = cluster.get_client(set_as_default=False)
        client.wait_for_workers(WORKERS_PER_CLUSTER, timeout=120)
        chaos.clients.append(client)
    chaos.check_clusters()

    # auth: the client's session cookie and the schedulers' tokens keep working.
    step(chaos, "auth")

    # registry: in-memory state is rebuilt from SQLite; watchers reconnect.
    step(chaos, "registry")

    # launcher: killed while it starts new workers; the new one adopts them, once each.
    def scale_up() -> None:
        for cluster in chaos.clusters:
            cluster.scale(WORKERS_PER_CLUSTER + 1)
            chaos.workers[cluster.name] = WORKERS_PER_CLUSTER + 1
        wait_for(
            lambda: any(
                len(cluster_process_groups(c.name).workers) > WORKERS_PER_CLUSTER
                for c in chaos.clusters
            ),
            60,
            "a new worker process",
            interval=0.01,
        )

    step(chaos, "launcher-local", during=scale_up)

    # proxy-config: Envoy keeps its routes and the clients' live connections.
    comms = [client.scheduler_comm.comm for client in chaos.clients]
    step(chaos, "proxy-config")
    for client, comm in zip(chaos.clients, comms, strict=True):
        assert client.scheduler_comm.comm is comm and not comm.closed()

    # Envoy: live connections die with it; the clients reconnect and compute again.
    step_envoy(chaos)

    for cluster in chaos.clusters:
        cluster.shutdown()
    names = {c.name for c in chaos.clusters}
    wait_for(
        lambda: {c.name for c in gateway.list_clusters(status="STOPPED")} == names,
        30,
        "every cluster STOPPED",
    )
    assert {n: pids for n in names if (pids := cluster_pids(n))} == {}


def step_envoy(chaos: Chaos) -> None:
    started = time.monotonic()
    chaos.kill("envoy")
    for client in chaos.clients:
        wait_for(lambda c=client: c.status == "running", 60, "the client to reconnect")
    chaos.check_in_flight(chaos.start_in_flight())
    chaos.check_clusters()
    print(f"envoy: killed and recovered in {time.monotonic() - started:.1f}s")
