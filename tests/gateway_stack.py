"""A whole gateway behind the real Envoy on free ports, and helpers to inspect it."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flotilla_common.embedded import EmbeddedStack
from helpers import free_ports, process_environ
from prometheus_client.parser import text_string_to_metric_families

# An options spec with every field type, so clients can round-trip it.
OPTIONS = """
from flotilla_registry.options import Bool, Float, Integer, Mapping, Options, Select, String

def _handler(options, user):
    env = dict(options.environment)
    env["FLOTILLA_TEST_USER"] = user.name
    env["FLOTILLA_TEST_LABEL"] = options.label
    return {
        "worker_cores": options.worker_cores,
        "worker_memory": int(options.worker_memory * 2**30),
        "environment": env,
        "idle_timeout": 0 if options.keep_alive else 600,
    }

c.Registry.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=2, label="Worker cores"),
    Float("worker_memory", default=0.5, min=0.25, max=2, label="Worker memory (GiB)"),
    String("label", default="none", label="Label"),
    Bool("keep_alive", default=True, label="Keep alive"),
    Select("profile", ["small", "large"], default="small", label="Profile"),
    Mapping("environment", default={}, label="Environment"),
    handler=_handler,
)
"""


@dataclass
class Gateway:
    """A running gateway: where to reach it and the stack behind it."""

    address: str
    stack: EmbeddedStack
    state_dir: Path

    def request(
        self,
        method: str,
        path: str,
        user: str | None = "alice",
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        password: str = "",
    ) -> tuple[int, dict[str, str], Any]:
        """One raw HTTP request; returns (status, headers, parsed JSON body or text)."""
        import base64

        hdrs = dict(headers or {})
        if user is not None:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            hdrs.setdefault("Authorization", f"Basic {token}")
        if body is not None:
            hdrs.setdefault("Content-Type", "application/json")
        req = urllib.request.Request(self.address + path, data=body, method=method, headers=hdrs)
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, rheaders, raw = resp.status, dict(resp.headers), resp.read()
        except urllib.error.HTTPError as exc:
            status, rheaders, raw = exc.code, dict(exc.headers), exc.read()
        try:
            parsed: Any = json.loads(raw) if raw else None
        except ValueError:
            parsed = raw.decode(errors="replace")
        return status, rheaders, parsed

    def metrics(self, service: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """``service``'s metrics as scraped now: (sample name, sorted labels) → value."""
        port = self.stack.deployment.metrics_ports[service]
        url = f"http://{self.stack.deployment.metrics_host}:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as resp:
            text = resp.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }


#: The services that serve metrics, as c.Deployment.metrics_ports names them.
METRICS_SERVICES = (
    "registry", "auth", "proxy-config",
    "launcher-local", "launcher-slurm", "launcher-pbs", "launcher-yarn",
)  # fmt: skip


#: How many ports internal_addresses() puts listeners on.
INTERNAL_PORTS = 5 + len(METRICS_SERVICES)


def internal_addresses(ports: list[int] | None = None) -> str:
    """Configuration lines putting every internal listener (and every service's metrics)
    on a loopback port: the INTERNAL_PORTS ``ports`` given, or free ones. Take them from
    the same free_ports() call as any other port of the stack: ports of separate calls
    may coincide."""
    registry_grpc, registry_http, auth, xds, admin, *rest = ports or free_ports(INTERNAL_PORTS)
    metrics = dict(zip(METRICS_SERVICES, rest, strict=True))
    return textwrap.dedent(
        f"""
        c.Deployment.registry_grpc_address = "127.0.0.1:{registry_grpc}"
        c.Deployment.registry_http_address = "127.0.0.1:{registry_http}"
        c.Deployment.auth_grpc_address = "127.0.0.1:{auth}"
        c.Deployment.xds_address = "127.0.0.1:{xds}"
        c.Deployment.envoy_admin_port = {admin}
        c.Deployment.metrics_ports = {metrics!r}
        c.Embedded.log_to_files = True
        """
    )


def write_config(
    state_dir: Path, extra: str = "", public_port: int | None = None
) -> tuple[Path, str]:
    """The configuration file of a gateway on free ports, and its address; its public
    listener on ``public_port`` if given (one chosen earlier, e.g. for a hub's OAuth
    redirect URI: the other ports are never that one)."""
    if public_port is None:
        public, *internal = free_ports(1 + INTERNAL_PORTS)
    else:
        public = public_port
        internal = [p for p in free_ports(1 + INTERNAL_PORTS) if p != public][:INTERNAL_PORTS]
    config = state_dir / "flotilla_config.py"
    config.write_text(
        internal_addresses(internal)
        + textwrap.dedent(
            f"""
            c.Deployment.public_port = {public}
            c.Deployment.state_dir = {str(state_dir)!r}
            c.LocalBackend.run_as = "self"
            c.ClusterConfig.scheduler_memory = "512 M"
            c.ClusterConfig.cluster_max_workers = 4
            """
        )
        + OPTIONS
        + extra
    )
    return config, f"http://127.0.0.1:{public}"


@contextlib.contextmanager
def running_gateway(
    state_dir: Path, extra: str = "", public_port: int | None = None
) -> Iterator[Gateway]:
    """A whole gateway configured by :func:`write_config` (plus ``extra``), stopped on exit;
    a cluster process it left behind is killed by PID and fails the test."""
    config, address = write_config(state_dir, extra, public_port)
    with running_stack(config, address, state_dir) as gateway:
        yield gateway


@contextlib.contextmanager
def running_stack(config: Path, address: str, state_dir: Path) -> Iterator[Gateway]:
    """:func:`running_gateway` of a configuration file written some other way."""
    stack = EmbeddedStack(str(config))
    try:
        stack.start()
        yield Gateway(address, stack, state_dir)
    finally:
        stack.stop()
        leftover = reap_leftover_cluster_processes(state_dir)
        show_logs(state_dir / "logs")
        assert not leftover, f"cluster processes left after the gateway stopped: {leftover}"


def cluster_pids(name: str) -> list[int]:
    """PIDs of processes started for cluster ``name`` (found by their environment)."""
    marker = f"DASK_GATEWAY_CLUSTER_NAME={name}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes()
        except OSError:
            continue
        if marker in env.split(b"\0"):
            pids.append(int(entry.name))
    return pids


@dataclass
class ProcessGroups:
    """A cluster's processes by process group (each scheduler and worker leads its own)."""

    schedulers: list[int] = field(default_factory=list)
    workers: dict[str, list[int]] = field(default_factory=dict)  # worker name -> leaders
    strays: list[int] = field(default_factory=list)  # in no scheduler's or worker's group


def cluster_process_groups(name: str) -> ProcessGroups:
    """The live processes of cluster ``name``, grouped by their process group leader."""
    groups = ProcessGroups()
    members: dict[int, int] = {}  # pid -> pgid
    for pid in cluster_pids(name):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] in ("Z", "X"):
            continue
        members[pid] = int(fields[2])
    for pid, pgid in sorted(members.items()):
        if pid != pgid:
            continue
        worker = process_environ(pid).get("DASK_GATEWAY_WORKER_NAME")
        if worker is None:
            groups.schedulers.append(pid)
        else:
            groups.workers.setdefault(worker, []).append(pid)
    groups.strays = [pid for pid, pgid in sorted(members.items()) if pgid not in members]
    return groups


def leftover_cluster_pids(state_dir: Path) -> dict[str, list[int]]:
    """Processes still running for any cluster this gateway's launcher ever started."""
    clusters = state_dir / "clusters"
    names = [d.name for d in clusters.iterdir()] if clusters.exists() else []
    return {n: pids for n in names if (pids := cluster_pids(n))}


def reap_leftover_cluster_processes(state_dir: Path) -> dict[str, list[int]]:
    """SIGKILL (by PID) every cluster process that outlived its gateway, so a failing test
    leaves nothing running; returns what was found, for the caller to assert on."""
    leftover = leftover_cluster_pids(state_dir)
    for pids in leftover.values():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    return leftover


def show_logs(directory: Path) -> None:
    """With ``FLOTILLA_TEST_SHOW_LOGS`` set, print the tail of every ``*.log`` in
    ``directory`` (pytest shows it for a failed test)."""
    if os.environ.get("FLOTILLA_TEST_SHOW_LOGS"):
        for log in sorted(directory.glob("*.log")):
            print(f"==== {log}\n{log.read_text(errors='replace')[-8000:]}")


def upstream_python() -> str:
    """The interpreter of the upstream virtualenv: only the PyPI dask-gateway and dask."""
    python = os.environ.get("FLOTILLA_UPSTREAM_PYTHON", "")
    if not python or not Path(python).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("FLOTILLA_UPSTREAM_PYTHON is not set; run the tests with `make test`")
        pytest.skip("no upstream dask-gateway virtualenv (run through `make test`)")
    return python
