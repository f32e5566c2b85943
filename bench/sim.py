"""Control-plane scale: Flotilla with thousands of simulated clusters.

A Flotilla stack whose only launcher runs the ``sim`` backend (one shared stub plays
every cluster's scheduler, see ``flotilla_launcher.backends.sim``) is filled with
clusters through its public API, then, at each size:

- ``list_clusters()`` latency for a user who has 20 of them (the upstream client);
- route propagation: a new cluster's first accepted heartbeat (RUNNING) → the first
  TLS handshake with SNI ``daskgateway-<name>`` that Envoy passes to the stub;
- the memory (RSS) of every service.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import ssl
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

from bench.client import Agent
from bench.gateways import GatewayProcess, free_ports, start_flotilla
from bench.report import Check, summary

__all__ = ["checks", "run", "table_rows"]

MIB = 2**20
#: The user whose list_clusters() is timed, and how many clusters they own.
LIST_USER = "bench"
LIST_USER_CLUSTERS = 20
#: Clusters per simulated user of the filler population.
PER_USER = 2
CREATE_CONCURRENCY = 32

_SERVICES = {
    "flotilla-regist": "registry",
    "flotilla-auth": "auth",
    "flotilla-proxy-": "proxy-config",
    "flotilla-launch": "launcher (sim)",
    "envoy": "envoy",
    "flotilla-embedd": "embedded runner",
}


class _Creator:
    """Creates clusters through the public REST API, one cookie session per user."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        # The sessions belong to one event loop, used for every call.
        self._loop = asyncio.new_event_loop()

    def run(self, coro: Any) -> Any:
        return self._loop.run_until_complete(coro)

    async def create(self, user: str) -> str:
        session = self._sessions.get(user)
        if session is None:
            session = self._sessions[user] = aiohttp.ClientSession(
                cookie_jar=aiohttp.CookieJar(unsafe=True),
                timeout=aiohttp.ClientTimeout(total=120),
            )
        basic = base64.b64encode(f"{user}:".encode()).decode()
        headers = {} if len(session.cookie_jar) else {"Authorization": f"Basic {basic}"}
        async with session.post(
            f"{self.address}/api/v1/clusters/", json={"cluster_options": {}}, headers=headers
        ) as resp:
            if resp.status != 201:
                raise RuntimeError(f"create as {user}: HTTP {resp.status} {await resp.text()}")
            return str((await resp.json())["name"])

    async def create_many(self, users: list[str]) -> list[str]:
        semaphore = asyncio.Semaphore(CREATE_CONCURRENCY)

        async def one(user: str) -> str:
            async with semaphore:
                return await self.create(user)

        return await asyncio.gather(*(one(u) for u in users))

    def close(self) -> None:
        async def close_all() -> None:
            for session in self._sessions.values():
                await session.close()

        self.run(close_all())
        self._loop.close()


def _envoy_active_clusters(admin_port: int) -> int:
    url = f"http://127.0.0.1:{admin_port}/stats?filter=^cluster_manager.active_clusters$"
    with urllib.request.urlopen(url, timeout=10) as resp:
        text = resp.read().decode()
    return int(text.split(":")[1])


def _client_context() -> ssl.SSLContext:
    # Made once: a context loads the system's CA store, which takes milliseconds.
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


_CONTEXT = _client_context()


def _sni_handshake(port: int, name: str) -> bool:
    """True if Envoy passes a TLS handshake with SNI ``daskgateway-<name>`` through."""
    context = _CONTEXT
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as sock,
            context.wrap_socket(sock, server_hostname=f"daskgateway-{name}"),
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


def _stub_running_at(stub_port: int, name: str) -> float | None:
    url = f"http://127.0.0.1:{stub_port}/sim/clusters/{name}"
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            value = json.loads(resp.read())["running_at"]
    except OSError:
        return None
    return float(value) if value is not None else None


def _wait(check: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)  # polling a condition, with a deadline
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


def _cpu_seconds(gw: GatewayProcess) -> float:
    """CPU time used so far by the gateway's processes."""
    total = 0.0
    for key in gw.rss()["processes"]:  # type: ignore[union-attr]
        pid = key.rsplit("[", 1)[1].rstrip("]")
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def _settle(gw: GatewayProcess, timeout: float = 120.0) -> None:
    """Wait until the gateway has digested the clusters just made (its processes use
    under a tenth of a core for a second), so measurements see it at rest."""
    deadline = time.monotonic() + timeout
    before = _cpu_seconds(gw)
    while time.monotonic() < deadline:
        time.sleep(1.0)  # the sampling interval of the CPU measurement
        after = _cpu_seconds(gw)
        if after - before < 0.1:
            return
        before = after


def _rss_by_service(gw: GatewayProcess) -> dict[str, float]:
    processes = gw.rss()["processes"]
    assert isinstance(processes, dict)
    out: dict[str, float] = {}
    for key, rss in processes.items():
        comm = key.split("[", 1)[0]
        out[_SERVICES.get(comm, comm)] = out.get(_SERVICES.get(comm, comm), 0.0) + rss / MIB
    return out


def _propagation(
    gw: GatewayProcess, creator: _Creator, stub_port: int, port: int, count: int
) -> tuple[list[float], list[float]]:
    """Milliseconds RUNNING → first SNI handshake through Envoy, and create → handshake."""
    propagation: list[float] = []
    end_to_end: list[float] = []
    for _ in range(count):
        start = time.monotonic()
        name = creator.run(creator.create("bench-propagation"))
        deadline = start + 60
        while not _sni_handshake(port, name):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no route for {name} after 60s")
            time.sleep(0.002)  # probe interval: the measurement's resolution
        routed = time.monotonic()
        running_at = _wait(lambda n=name: _stub_running_at(stub_port, n), 30, "RUNNING time")
        propagation.append(max(0.0, (routed - running_at) * 1000))
        end_to_end.append((routed - start) * 1000)
    return propagation, end_to_end


def run(
    workdir: Path,
    *,
    sizes: list[int],
    list_requests: int,
    propagations: int,
    client_python: str,
) -> dict[str, Any]:
    """Fill a sim-backed Flotilla up to each of ``sizes`` clusters and measure."""
    tls_port, http_port = free_ports(2)
    extra = textwrap.dedent(
        f"""
        c.SimBackend.tls_port = {tls_port}
        c.SimBackend.http_port = {http_port}
        # Stopping 10,000 clusters on exit is not what is measured here.
        c.Embedded.stop_clusters_on_exit = False
        # The stub heartbeats every cluster as a scheduler does; at the default period
        # 10,000 clusters would be 670 heartbeats a second on 2 cores, which is not what
        # this measures either. The registry still fails a cluster that goes quiet.
        c.ClusterConfig.heartbeat_period = 600
        c.ClusterConfig.heartbeat_timeout = 1800
        # Filling to 10,000 as fast as the API takes creates can leave the one stub
        # (every cluster's scheduler, TLS handshakes included) a minute behind; that
        # backlog is the stub's, not a start that failed.
        c.ClusterConfig.cluster_start_timeout = 1800
        """
    )
    gw = start_flotilla(workdir / "sim", backend="sim", extra_config=extra)
    admin_port = int(
        next(
            line.split("=")[1]
            for line in (gw.log_path.parent / "flotilla_config.py").read_text().splitlines()
            if "envoy_admin_port" in line
        )
    )
    public_port = int(gw.address.rsplit(":", 1)[1])
    creator = _Creator(gw.address)
    agent = Agent(client_python, gw.address, workdir / "agent-sim.log")
    result: dict[str, Any] = {"sizes": {}, "rss_idle": _rss_by_service(gw)}
    baseline = _envoy_active_clusters(admin_port)
    created = 0
    try:
        for size in sorted(sizes):
            users = [LIST_USER] * LIST_USER_CLUSTERS if created == 0 else []
            filler = max(0, size - created - len(users))
            users += [f"sim-user-{(created + i) // PER_USER}" for i in range(filler)]
            start = time.monotonic()
            names = creator.run(creator.create_many(users))
            created += len(names)
            expected = baseline + 2 * created
            _wait(
                lambda e=expected: _envoy_active_clusters(admin_port) >= e,
                600,
                f"{created} clusters routed in Envoy",
                interval=0.2,
            )
            rate = len(names) / (time.monotonic() - start) if names else 0.0
            _settle(gw)
            cpu_before = _cpu_seconds(gw)
            latency = agent.call("list_latency", requests=list_requests)
            list_cpu_ms = (_cpu_seconds(gw) - cpu_before) * 1000 / (list_requests + 1)
            if latency["clusters"] != LIST_USER_CLUSTERS:
                raise AssertionError(f"{LIST_USER} lists {latency['clusters']} clusters")
            propagation, end_to_end = _propagation(
                gw, creator, http_port, public_port, propagations
            )
            created += propagations
            result["sizes"][str(size)] = {
                "clusters": created,
                "create_per_second": rate,
                "list_ms": latency["ms"],
                # The gateway's CPU per request: what load on the machine does not blur.
                "list_cpu_ms": list_cpu_ms,
                "propagation_ms": propagation,
                "create_to_route_ms": end_to_end,
                "rss_mib": _rss_by_service(gw),
            }
            print(
                f"[bench] simulation at {created} clusters: list p50 "
                f"{summary(latency['ms'])['median']:.1f} ms, propagation p50 "
                f"{summary(propagation)['median']:.1f} ms, {rate:.0f} creates/s",
                flush=True,
            )
    finally:
        creator.close()
        agent.close()
        gw.stop()
    return result


def checks(result: dict[str, Any]) -> list[Check]:
    """Issue 5's targets at the largest size, and growth from the smallest."""
    sizes = sorted(result.get("sizes", {}), key=int)
    if not sizes:
        return []
    small, large = result["sizes"][sizes[0]], result["sizes"][sizes[-1]]
    list_large = summary(large["list_ms"])["median"]
    prop_large = summary(large["propagation_ms"])["median"]
    out = [
        Check(f"sim: list_clusters p50 at {sizes[-1]} clusters (ms)", list_large, "<=", 20),
        Check(f"sim: route propagation p50 at {sizes[-1]} routes (ms)", prop_large, "<=", 100),
    ]
    if len(sizes) > 1:
        out += [
            Check(
                f"sim: list p50 growth {sizes[0]} -> {sizes[-1]}",
                list_large / summary(small["list_ms"])["median"],
                "<=",
                2,
            ),
            Check(
                f"sim: propagation p50 growth {sizes[0]} -> {sizes[-1]}",
                prop_large / summary(small["propagation_ms"])["median"],
                "<=",
                2,
            ),
        ]
    return out


def table_rows(result: dict[str, Any]) -> list[tuple[str, str, list[float]]]:
    rows: list[tuple[str, str, list[float]]] = []
    for size, data in sorted(result.get("sizes", {}).items(), key=lambda kv: int(kv[0])):
        rows += [
            (f"sim {size}: list_clusters() of a user with 20", "ms", data["list_ms"]),
            (f"sim {size}: ... gateway CPU per list_clusters()", "ms", [data["list_cpu_ms"]]),
            (f"sim {size}: route propagation (RUNNING -> SNI)", "ms", data["propagation_ms"]),
            (f"sim {size}: create -> SNI route", "ms", data["create_to_route_ms"]),
            (f"sim {size}: creates per second while filling", "1/s", [data["create_per_second"]]),
        ]
        rows += [
            (f"sim {size}: RSS {service}", "MiB", [mib])
            for service, mib in sorted(data["rss_mib"].items())
        ]
    for service, mib in sorted(result.get("rss_idle", {}).items()):
        rows.append((f"sim 0: RSS {service}", "MiB", [mib]))
    return rows
