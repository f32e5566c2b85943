"""The benchmark's client side: runs under a Python with only the PyPI ``dask-gateway``
client and dask, exactly what a new user has, and drives one gateway.

``python agent.py <gateway address>`` reads one JSON command per line on stdin and answers
one JSON line on stdout (``{"ok": true, "result": ...}`` or ``{"ok": false, "error": ...}``).
The orchestrator (``run.py``) keeps one agent per gateway and alternates between them, so
both gateways see the same client, the same machine load and the same order of work.

Only the standard library, ``dask_gateway``, ``dask`` and ``distributed`` are imported:
this file must never depend on Flotilla.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import subprocess
import sys
import time
import traceback
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dask_gateway import BasicAuth, Gateway, GatewayCluster
from distributed import Client

#: How often the agent looks at what it waits for (seconds). Measurement granularity.
POLL = 0.01
#: The longest any single step may take before the sample counts as failed.
STEP_TIMEOUT = 180.0


def _elapsed(start: float) -> float:
    return time.perf_counter() - start


def _poll(check: Callable[[], bool], what: str, timeout: float = STEP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(POLL)


def _inc(x: int) -> int:
    return x + 1


def _worker_count(dask_scheduler: Any) -> int:
    return len(dask_scheduler.workers)


def _payload(nbytes: int) -> bytes:
    return b"\x5a" * nbytes


class Agent:
    """Commands the orchestrator can send; each returns a JSON-serialisable result."""

    def __init__(self, address: str) -> None:
        self.address = address
        #: Every client object ever made. The upstream client's ``__del__`` calls
        #: ``close()``, which deadlocks when garbage collection happens to run it on the
        #: client's own event-loop thread; objects that are never collected cannot.
        self._keep: list[Any] = []
        self.gateway = self._gateway()
        #: Clusters kept running between commands (``keep_clusters``).
        self.kept: list[GatewayCluster] = []

    def _gateway(self, user: str | None = None, asynchronous: bool = False) -> Gateway:
        gateway = Gateway(
            self.address, auth=BasicAuth(user or self.user), asynchronous=asynchronous
        )
        self._keep.append(gateway)
        return gateway

    def _hold(self, obj: Any) -> Any:
        self._keep.append(obj)
        return obj

    user = "bench"
    #: Wait for every cluster a sample started to be STOPPED before answering.
    settle = True

    def configure(self, settle: bool) -> dict[str, Any]:
        """``settle=False`` (smoke runs): do not wait for teardowns nobody measures."""
        self.settle = settle
        return {"settle": self.settle}

    # -- helpers --------------------------------------------------------------------------

    def _wait_stopped(self, gateway: Gateway, name: str) -> float:
        """Seconds until ``name`` reports STOPPED (after its shutdown was asked for)."""
        start = time.perf_counter()
        _poll(
            lambda: gateway.get_cluster(name).status.name in ("STOPPED", "FAILED"),
            f"cluster {name} to stop",
        )
        return _elapsed(start)

    def _shutdown(self, gateway: Gateway, cluster: GatewayCluster, *, wait: bool = False) -> float:
        """Stop ``cluster``; wait until it is STOPPED if asked to, or if ``settle`` (so
        the next sample does not share the machine with its teardown)."""
        start = time.perf_counter()
        name = cluster.name
        cluster.shutdown()
        if wait or self.settle:
            self._wait_stopped(gateway, name)
        return _elapsed(start)

    def _scheduler_workers(self, client: Client) -> int:
        return int(client.run_on_scheduler(_worker_count))

    # -- commands -------------------------------------------------------------------------

    def ping(self) -> dict[str, Any]:
        return {"version": self.gateway.get_versions()["server"]}

    def new_cluster(self) -> dict[str, Any]:
        """Cold ``new_cluster()``: a fresh Gateway (its first request authenticates)."""
        gateway = self._gateway()
        try:
            started_at = time.time()
            start = time.perf_counter()
            cluster = self._hold(gateway.new_cluster(shutdown_on_close=False))
            seconds = _elapsed(start)
            finished_at = time.time()
            name = cluster.name
            stop_seconds = self._shutdown(gateway, cluster, wait=True)
            cluster.close()
        finally:
            gateway.close()
        return {
            "seconds": seconds,
            "stop_seconds": stop_seconds,
            "name": name,
            "started_at": started_at,
            "finished_at": finished_at,
        }

    def first_task(self) -> dict[str, Any]:
        """``new_cluster()`` + ``scale(1)`` + the first task's result."""
        start = time.perf_counter()
        cluster = self._hold(self.gateway.new_cluster(shutdown_on_close=False))
        cluster.scale(1)
        client = self._hold(cluster.get_client(set_as_default=False))
        result = client.submit(_inc, 1, pure=False).result(timeout=STEP_TIMEOUT)
        seconds = _elapsed(start)
        if result != 2:
            raise AssertionError(f"the first task returned {result!r}")
        client.close()
        self._shutdown(self.gateway, cluster)
        cluster.close()
        return {"seconds": seconds}

    def scale(self, workers: int, cycles: int) -> dict[str, Any]:
        """On one cluster, ``cycles`` times: scale(workers) until connected, then to 0.
        ``create_seconds``: its new_cluster() and get_client() before that."""
        start = time.perf_counter()
        cluster = self._hold(self.gateway.new_cluster(shutdown_on_close=False))
        client = self._hold(cluster.get_client(set_as_default=False))
        create = _elapsed(start)
        name = cluster.name
        up: list[float] = []
        down: list[float] = []
        scaled_at: list[float] = []  # wall clock, for the YARN logs' times
        try:
            for _ in range(cycles):
                start = time.perf_counter()
                scaled_at.append(time.time())
                cluster.scale(workers)
                _poll(
                    lambda: self._scheduler_workers(client) >= workers,
                    f"{workers} workers to connect",
                )
                up.append(_elapsed(start))
                start = time.perf_counter()
                cluster.scale(0)
                _poll(lambda: self._scheduler_workers(client) == 0, "workers to leave")
                down.append(_elapsed(start))
        finally:
            client.close()
            self._shutdown(self.gateway, cluster)
            cluster.close()
        return {
            "up_seconds": up,
            "down_seconds": down,
            "create_seconds": create,
            "scaled_at": scaled_at,
            "name": name,
        }

    def proxy_throughput(self, mib: int, repeats: int) -> dict[str, Any]:
        """MiB/s of ``mib`` MiB scheduler → client: through the gateway, directly, and
        through ``relay.py`` (the cheapest relay the machine can run, as a control)."""
        nbytes = mib * 2**20
        cluster = self._hold(self.gateway.new_cluster(shutdown_on_close=False))
        proxied = self._hold(cluster.get_client(set_as_default=False))
        direct_address = proxied.scheduler_info()["address"]
        host, port = urllib.parse.urlsplit(direct_address).netloc.rsplit(":", 1)
        relay = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("relay.py")), host, port],
            stdout=subprocess.PIPE,
            text=True,
        )
        paths: dict[str, Client] = {"proxied": proxied}
        try:
            assert relay.stdout is not None
            relayed_address = f"tls://127.0.0.1:{int(relay.stdout.readline())}"
            for key, address in (("direct", direct_address), ("relay", relayed_address)):
                paths[key] = self._hold(
                    Client(address, security=cluster.security, set_as_default=False)
                )
            out: dict[str, list[float]] = {f"{key}_mib_s": [] for key in paths}
            out.update(ratio=[], relay_ratio=[])
            order = list(paths.items())
            for i in range(repeats):
                # Rotate which path goes first, so none always runs on a warm cache.
                for key, client in order[i % 3 :] + order[: i % 3]:
                    start = time.perf_counter()
                    data = client.run_on_scheduler(_payload, nbytes)
                    seconds = _elapsed(start)
                    if len(data) != nbytes:
                        raise AssertionError(f"got {len(data)} bytes, expected {nbytes}")
                    out[f"{key}_mib_s"].append(mib / seconds)
                # Back to back, so all saw the same machine: the round's ratios.
                direct_mib_s = out["direct_mib_s"][-1]
                out["ratio"].append(out["proxied_mib_s"][-1] / direct_mib_s)
                out["relay_ratio"].append(out["relay_mib_s"][-1] / direct_mib_s)
        finally:
            for client in paths.values():
                client.close()
            relay.terminate()
            relay.wait()
            self._shutdown(self.gateway, cluster)
            cluster.close()
        return out

    def dashboard(self, requests: int) -> dict[str, Any]:
        """GET latency (ms) of the dashboard page and of its /health, on a kept-alive
        connection, as a browser would."""
        cluster = self._hold(self.gateway.new_cluster(shutdown_on_close=False))
        try:
            link = urllib.parse.urlparse(cluster.dashboard_link)
            base = link.path.rsplit("/", 1)[0]
            conn = http.client.HTTPConnection(link.hostname, link.port, timeout=30)
            out: dict[str, list[float]] = {"page_ms": [], "health_ms": []}
            for key, path in (("page_ms", link.path), ("health_ms", f"{base}/health")):
                for i in range(requests + 2):
                    start = time.perf_counter()
                    conn.request("GET", path)
                    resp = conn.getresponse()
                    body = resp.read()
                    ms = _elapsed(start) * 1000
                    if resp.status != 200 or not body:
                        raise AssertionError(f"GET {path}: HTTP {resp.status}")
                    if i >= 2:  # the first requests warm up the dashboard's caches
                        out[key].append(ms)
            conn.close()
        finally:
            self._shutdown(self.gateway, cluster)
            cluster.close()
        return out

    def keep_clusters(self, count: int) -> dict[str, Any]:
        """Start ``count`` more clusters one after another and keep them running."""
        seconds = []
        for _ in range(count):
            start = time.perf_counter()
            self.kept.append(self._hold(self.gateway.new_cluster(shutdown_on_close=False)))
            seconds.append(_elapsed(start))
        return {"seconds": seconds, "running": len(self.kept)}

    def stop_kept(self) -> dict[str, Any]:
        """Stop every kept cluster at once and wait until all are STOPPED."""
        start = time.perf_counter()
        names = [c.name for c in self.kept]
        for cluster in self.kept:
            cluster.shutdown()
            cluster.close()
        for name in names:
            self._wait_stopped(self.gateway, name)
        self.kept = []
        return {"seconds": _elapsed(start), "stopped": len(names)}

    def list_latency(self, requests: int) -> dict[str, Any]:
        """Latency (ms) of ``list_clusters()`` with the clusters that exist now."""
        self.gateway.list_clusters()  # authenticated (cookie) from here on
        samples = []
        count = 0
        for _ in range(requests):
            start = time.perf_counter()
            count = len(self.gateway.list_clusters())
            samples.append(_elapsed(start) * 1000)
        return {"ms": samples, "clusters": count}

    def list_throughput(self, concurrency: int, seconds: float) -> dict[str, Any]:
        """Completed ``list_clusters()`` per second with ``concurrency`` in flight."""
        return asyncio.run(self._list_throughput(concurrency, seconds))

    async def _list_throughput(self, concurrency: int, seconds: float) -> dict[str, Any]:
        async with self._gateway(asynchronous=True) as gw:
            expected = len(await gw.list_clusters())
            done = 0
            errors = 0
            stop_at = time.perf_counter() + seconds

            async def loop() -> None:
                nonlocal done, errors
                while time.perf_counter() < stop_at:
                    try:
                        got = await gw.list_clusters()
                    except Exception:
                        errors += 1
                        continue
                    if len(got) == expected:
                        done += 1
                    else:
                        errors += 1

            start = time.perf_counter()
            await asyncio.gather(*(loop() for _ in range(concurrency)))
            elapsed = _elapsed(start)
        return {"per_second": done / elapsed, "errors": errors, "clusters": expected}

    def many_users(self, users: int, per_user: int) -> dict[str, Any]:
        """``users`` users each start ``per_user`` clusters, all at once."""
        return asyncio.run(self._many_users(users, per_user))

    async def _many_users(self, users: int, per_user: int) -> dict[str, Any]:
        gateways = [self._gateway(f"bench-user-{i}", asynchronous=True) for i in range(users)]
        latencies: list[float] = []
        clusters: list[tuple[Gateway, Any]] = []

        async def one(gw: Gateway) -> None:
            start = time.perf_counter()
            cluster = self._hold(await gw.new_cluster(shutdown_on_close=False))
            latencies.append(_elapsed(start))
            clusters.append((gw, cluster))

        start = time.perf_counter()
        try:
            await asyncio.gather(*(one(gw) for gw in gateways for _ in range(per_user)))
            total = _elapsed(start)
        finally:
            for _, cluster in clusters:
                await cluster.shutdown()
            for gw, cluster in clusters:
                deadline = time.monotonic() + STEP_TIMEOUT
                while (await gw.get_cluster(cluster.name)).status.name not in (
                    "STOPPED",
                    "FAILED",
                ):
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"cluster {cluster.name} did not stop")
                    await asyncio.sleep(POLL * 5)
            for gw in gateways:
                await gw.close()
        return {"seconds": latencies, "total_seconds": total}

    def close(self) -> None:
        for cluster in self.kept:
            cluster.shutdown()
        self.gateway.close()


def main() -> None:
    agent = Agent(sys.argv[1])
    out = sys.stdout
    # Anything the client libraries print must not corrupt the protocol on stdout.
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        command = json.loads(line)
        name = command.pop("command")
        try:
            result = getattr(agent, name)(**command)
            reply: dict[str, Any] = {"ok": True, "result": result}
        except Exception as exc:
            traceback.print_exc()
            reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()
    agent.close()
    sys.stderr.flush()
    os._exit(0)  # no garbage collection of client objects at exit (see Agent._keep)


if __name__ == "__main__":
    main()
