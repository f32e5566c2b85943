"""Chaos: every service is SIGKILLed once while three clusters compute; nothing is lost.

The real stack runs as ``flotilla-embedded`` runs it: each service a child process, and
the runner's own restart check (``EmbeddedStack.check_children``) brings back whatever
dies. One step per service (auth, registry, launcher, proxy-config, Envoy): a
computation is in flight on every cluster, the service is SIGKILLed, and once it answers
again the computation's result is checked, then that every cluster is RUNNING, computes,
and has exactly one scheduler and one process group per worker, with nothing else.
"""

from __future__ import annotations

import operator
import os
import signal
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
import pytest
from distributed import Client, Future
from flotilla import BasicAuth, Gateway, GatewayCluster
from flotilla_common.embedded import EmbeddedStack
from gateway_stack import Gateway as Stack
from gateway_stack import (
    cluster_pids,
    cluster_process_groups,
    reap_leftover_cluster_processes,
    show_logs,
    write_config,
)
from grpc_health.v1 import health_pb2, health_pb2_grpc
from helpers import free_port, wait_for

pytestmark = [pytest.mark.timeout(300)]

CLUSTERS = 3
WORKERS = 1
IN_FLIGHT_SECONDS = 4.0
# What Envoy does when its configuration churns; none of it may happen when only
# proxy-config restarts.
ENVOY_CHURN = (
    "listener_manager.listener_modified",
    "listener_manager.listener_removed",
    "cluster_manager.cluster_modified",
    "cluster_manager.cluster_removed",
)


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
    # A subchannel of its own: a shared one would carry the reconnect backoff of the
    # attempts made while the service was down over to the next check.
    options = [("grpc.use_local_subchannel_pool", 1)]
    with grpc.insecure_channel(address, options=options) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=2
        )
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


def square_sum(n: int) -> int:
    return (n - 1) * n * (2 * n - 1) // 6


class Chaos:
    """The stack, its clusters, one dask client per cluster, and how to hurt them."""

    def __init__(self, stack: Stack, gateway: Gateway, launcher_health: str) -> None:
        self.stack = stack
        self.gateway = gateway
        self.launcher_health = launcher_health
        self.clusters: list[GatewayCluster] = []
        self.clients: list[Client] = []
        self.workers: dict[str, int] = {}  # cluster name -> how many workers it should have

    # -- services ---------------------------------------------------------------------

    def kill(self, service: str) -> int:
        """SIGKILL ``service``; returns the pid it had."""
        pid = self.stack.stack.pid(service)
        os.kill(pid, signal.SIGKILL)
        return pid

    def wait_back(self, service: str, old_pid: int) -> None:
        """Wait until the runner has restarted ``service`` and it answers."""
        embedded = self.stack.stack
        wait_for(lambda: embedded.pid(service) != old_pid, 20, f"{service} to be restarted")
        deployment = embedded.deployment
        health = {
            "auth": deployment.auth_grpc_address,
            "registry": deployment.registry_grpc_address,
            "proxy-config": deployment.xds_address,
            "launcher-local": self.launcher_health,
        }
        if service in health:
            wait_for(lambda: grpc_serving(health[service]), 30, f"{service} to serve")
        embedded.wait_healthy(30)  # /api/health through Envoy

    def envoy_stat(self, name: str) -> int:
        """One counter or gauge from Envoy's admin interface."""
        port = self.stack.stack.deployment.envoy_admin_port
        url = f"http://127.0.0.1:{port}/stats?filter=^{name}$"
        with urllib.request.urlopen(url, timeout=5) as response:
            for line in response.read().decode().splitlines():
                key, _, value = line.partition(": ")
                if key == name:
                    return int(value)
        return 0

    # -- clusters ---------------------------------------------------------------------

    def start_in_flight(self) -> list[Future]:
        """On cluster i, the sum of the squares below 100 + i, ready no sooner than
        IN_FLIGHT_SECONDS from now (stdlib functions only: workers cannot import tests)."""
        futures = []
        for i, client in enumerate(self.clients):
            n = 100 + i
            squares = client.map(pow, range(n), [2] * n, pure=False)
            total = client.submit(sum, squares, pure=False)
            gate = client.submit(time.sleep, IN_FLIGHT_SECONDS, pure=False)
            futures.append(client.submit(operator.getitem, [total, gate], 0, pure=False))
        return futures

    def check_in_flight(self, futures: list[Future]) -> None:
        for i, future in enumerate(futures):
            assert future.result(timeout=60) == square_sum(100 + i)

    def check_clusters(self) -> None:
        """Every cluster RUNNING and computing, with its processes exactly once."""
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
    embedded = EmbeddedStack(str(config))
    # A child gets SIGTERM when the *thread* that started it ends (PR_SET_PDEATHSIG), so
    # the supervisor thread outlives the stack.
    with supervised(embedded):
        try:
            embedded.start()
            with Gateway(address, auth=BasicAuth("chaos")) as gateway:
                chaos = Chaos(Stack(address, embedded, tmp_path), gateway, launcher_health)
                try:
                    yield chaos
                finally:
                    for client in chaos.clients:
                        client.close()
        finally:
            embedded.stop()
            leftover = reap_leftover_cluster_processes(tmp_path)
            show_logs(tmp_path / "logs")
            assert not leftover, f"cluster processes left after the gateway stopped: {leftover}"


def step(
    chaos: Chaos,
    service: str,
    before_kill: Callable[[], object] = lambda: None,
    while_down: Callable[[], object] = lambda: None,
) -> None:
    """One service SIGKILLed while a computation is in flight on every cluster."""
    started = time.monotonic()
    futures = chaos.start_in_flight()
    before_kill()
    pid = chaos.kill(service)
    while_down()
    chaos.wait_back(service, pid)
    chaos.check_in_flight(futures)
    chaos.check_clusters()
    print(f"{service}: killed and recovered in {time.monotonic() - started:.1f}s")


def test_each_service_killed_once_loses_nothing(chaos: Chaos) -> None:
    gateway = chaos.gateway
    # Submitted together, so their schedulers start side by side.
    names = [gateway.submit() for _ in range(CLUSTERS)]
    for name in names:
        cluster = gateway.connect(name)
        cluster.scale(WORKERS)
        chaos.clusters.append(cluster)
        chaos.workers[cluster.name] = WORKERS
    for cluster in chaos.clusters:
        client = cluster.get_client(set_as_default=False)
        client.wait_for_workers(WORKERS, timeout=120)
        chaos.clients.append(client)
    chaos.check_clusters()

    kill_auth(chaos)
    kill_registry(chaos)
    kill_launcher(chaos)
    kill_proxy_config(chaos)
    kill_envoy(chaos)

    for client in chaos.clients:
        client.close()
    for cluster in chaos.clusters:
        cluster.shutdown()
    wait_for(
        lambda: {c.name for c in gateway.list_clusters(status="STOPPED")} == set(names),
        30,
        "every cluster STOPPED",
    )
    assert {n: pids for n in names if (pids := cluster_pids(n))} == {}


def kill_auth(chaos: Chaos) -> None:
    """A session cookie issued before the restart still logs in. (The schedulers' tokens
    are checked by the launcher step: its new workers come from heartbeats.)"""
    status, headers, _ = chaos.stack.request("GET", "/api/v1/clusters/", user="chaos")
    assert status == 200
    cookie = {k.lower(): v for k, v in headers.items()}["set-cookie"].split(";", 1)[0]
    step(chaos, "auth")
    status, _, body = chaos.stack.request(
        "GET", "/api/v1/clusters/", user=None, headers={"Cookie": cookie}
    )
    assert status == 200 and set(body) == set(chaos.workers)


def kill_registry(chaos: Chaos) -> None:
    """State comes back from SQLite; the launcher, proxy-config and auth reconnect, and
    the heartbeats missed meanwhile fail no cluster."""
    step(chaos, "registry")
    # The launcher follows the new registry: it starts a worker asked for now.
    cluster, client = chaos.clusters[0], chaos.clients[0]
    chaos.workers[cluster.name] += 1
    cluster.scale(chaos.workers[cluster.name])
    chaos.check_processes(cluster.name, client)


def kill_launcher(chaos: Chaos) -> None:
    """Killed while it starts new workers: the next launcher adopts what runs and starts
    what is missing, each worker once."""

    def scale_up() -> None:
        before = dict(chaos.workers)
        for cluster in chaos.clusters:
            chaos.workers[cluster.name] += 1
            cluster.scale(chaos.workers[cluster.name])
        wait_for(
            lambda: any(
                len(cluster_process_groups(name).workers) > count for name, count in before.items()
            ),
            60,
            "a new worker process",
            interval=0.01,
        )

    step(chaos, "launcher-local", before_kill=scale_up)


def kill_proxy_config(chaos: Chaos) -> None:
    """Envoy reconnects to the new proxy-config and keeps its listener, its clusters and
    the clients' live connections through them."""
    comms = [client.scheduler_comm.comm for client in chaos.clients]
    churn_before = {name: chaos.envoy_stat(name) for name in ENVOY_CHURN}

    def envoy_notices() -> None:
        wait_for(
            lambda: chaos.envoy_stat("control_plane.connected_state") == 0,
            10,
            "Envoy to lose proxy-config",
        )

    step(chaos, "proxy-config", while_down=envoy_notices)
    wait_for(
        lambda: chaos.envoy_stat("control_plane.connected_state") == 1,
        30,
        "Envoy to reconnect to proxy-config",
    )
    assert {name: chaos.envoy_stat(name) for name in ENVOY_CHURN} == churn_before
    for client, comm in zip(chaos.clients, comms, strict=True):
        assert client.scheduler_comm.comm is comm and not comm.closed()


def kill_envoy(chaos: Chaos) -> None:
    """Connections through Envoy die with it (dask cancels what their clients awaited);
    the clients reconnect through the new Envoy and compute again."""
    started = time.monotonic()
    futures = chaos.start_in_flight()
    comms = [client.scheduler_comm.comm for client in chaos.clients]
    pid = chaos.kill("envoy")
    chaos.wait_back("envoy", pid)
    for client, comm in zip(chaos.clients, comms, strict=True):

        def reconnected(client: Client = client, comm: object = comm) -> bool:
            batched = client.scheduler_comm
            return client.status == "running" and batched is not None and batched.comm is not comm

        wait_for(reconnected, 60, "the client to reconnect through the new Envoy")
    for i, future in enumerate(futures):
        assert future.cancelled() or future.result(timeout=60) == square_sum(100 + i)
    chaos.check_in_flight(chaos.start_in_flight())
    chaos.check_clusters()
    print(f"envoy: killed and recovered in {time.monotonic() - started:.1f}s")
