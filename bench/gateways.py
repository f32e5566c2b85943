"""Start, measure and stop the two gateways the benchmark compares.

Both run on this machine on free ports, each as the process tree an operator would
start: Flotilla's ``flotilla-embedded`` (what ``make run`` runs: every service and Envoy)
and the reference ``dask-gateway-server`` (its API server plus its Go proxy), with the
reference's local-process backend. Both serve one public port for the API, the
dashboards and scheduler TLS, and run clusters as the benchmark's own Unix user.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "GatewayProcess",
    "free_ports",
    "process_tree_rss",
    "start_flotilla",
    "start_reference",
]

REPO = Path(__file__).resolve().parents[1]

#: Cluster limits both gateways get, so every scenario is allowed on both.
MAX_WORKERS = 16


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (bound together, so distinct)."""
    held = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            held.append(s)
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _rss_bytes(pid: int) -> int:
    for line in _read(f"/proc/{pid}/status").splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def _pss_bytes(pid: int) -> int:
    """Proportional set size: shared pages (libraries) split among their users."""
    for line in _read(f"/proc/{pid}/smaps_rollup").splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read(f"/proc/{entry}/stat")
        if not stat:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] == "Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def _cwd(pid: int) -> str:
    try:
        return os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return ""


def _comm(pid: int) -> str:
    return _read(f"/proc/{pid}/comm").strip()


def process_tree_rss(root: int, clusters_dir: Path) -> tuple[dict[str, int], int]:
    """RSS of the gateway's own processes, and of its cluster processes.

    The gateway's processes are ``root`` and its descendants; a process working in a
    directory under ``clusters_dir`` (a scheduler or worker: both gateways start them
    there) and everything below it count as cluster processes instead.
    """
    children = _children_map()
    clusters_prefix = str(clusters_dir.resolve()) + os.sep
    own: dict[str, int] = {}
    cluster_rss = 0
    stack = [(root, False)]
    while stack:
        pid, in_cluster = stack.pop()
        in_cluster = in_cluster or _cwd(pid).startswith(clusters_prefix)
        rss = _rss_bytes(pid)
        if in_cluster:
            cluster_rss += rss
        else:
            key = f"{_comm(pid)}[{pid}]"
            own[key] = rss
        stack.extend((child, in_cluster) for child in children.get(pid, []))
    return own, cluster_rss


def _pids_under(clusters_dir: Path) -> list[int]:
    prefix = str(clusters_dir.resolve()) + os.sep
    return [int(e) for e in os.listdir("/proc") if e.isdigit() and _cwd(int(e)).startswith(prefix)]


@dataclass
class GatewayProcess:
    """One running gateway: its public address and the process tree behind it."""

    name: str
    address: str
    proc: subprocess.Popen[bytes]
    clusters_dir: Path
    log_path: Path
    started_seconds: float = 0.0
    service_names: dict[int, str] = field(default_factory=dict)

    def rss(self) -> dict[str, int | dict[str, int]]:
        """RSS of the gateway's own processes (and PSS, which counts shared libraries
        once), and RSS of its cluster processes."""
        own, clusters = process_tree_rss(self.proc.pid, self.clusters_dir)
        pss = sum(_pss_bytes(int(key.rsplit("[", 1)[1].rstrip("]"))) for key in own)
        return {
            "gateway_bytes": sum(own.values()),
            "gateway_pss_bytes": pss,
            "cluster_processes_bytes": clusters,
            "processes": own,
        }

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self.proc.returncode} during start-up; "
                    f"see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(f"{self.address}/api/health", timeout=2) as r:
                    if r.status == 200:
                        return
                    last = f"HTTP {r.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except OSError as exc:
                last = str(exc)
            time.sleep(0.05)  # readiness poll with a deadline
        raise TimeoutError(f"{self.name} not healthy after {timeout:.0f}s: {last}")

    def stop(self, timeout: float = 60.0) -> None:
        """SIGINT (both stop their clusters on it), then SIGKILL to the gateway's process
        group (its own session); then any cluster process still alive is killed by PID
        so nothing outlives the benchmark."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        for pid in _pids_under(self.clusters_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _popen(argv: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,  # Ctrl-C of the benchmark reaches us, not them
        )


def _launch(
    name: str,
    argv: list[str],
    public_port: int,
    clusters_dir: Path,
    log_path: Path,
    env: dict[str, str],
    timeout: float,
) -> GatewayProcess:
    """Start one gateway and wait until its public /api/health answers (stopped if not)."""
    started = time.monotonic()
    proc = _popen(argv, log_path, env)
    gw = GatewayProcess(name, f"http://127.0.0.1:{public_port}", proc, clusters_dir, log_path)
    try:
        gw.wait_healthy(timeout)
    except BaseException:
        gw.stop()
        raise
    gw.started_seconds = time.monotonic() - started
    return gw


def start_flotilla(
    workdir: Path,
    *,
    backend: str = "local",
    extra_config: str = "",
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> GatewayProcess:
    """``flotilla-embedded`` with its own state directory on free ports (``env``: extra
    variables for every service)."""
    state = workdir / "flotilla"
    state.mkdir(parents=True, exist_ok=True)
    public, grpc, http, auth, xds, admin = free_ports(6)
    config = state / "flotilla_config.py"
    config.write_text(
        textwrap.dedent(
            f"""
            c.Deployment.public_port = {public}
            c.Deployment.state_dir = {str(state / "state")!r}
            c.Deployment.registry_grpc_address = "127.0.0.1:{grpc}"
            c.Deployment.registry_http_address = "127.0.0.1:{http}"
            c.Deployment.auth_grpc_address = "127.0.0.1:{auth}"
            c.Deployment.xds_address = "127.0.0.1:{xds}"
            c.Deployment.envoy_admin_port = {admin}
            c.Embedded.log_to_files = True
            c.Registry.backends = [{backend!r}]
            c.Registry.default_backend = {backend!r}
            # As the reference's UnsafeLocalBackend: clusters run as the gateway's user.
            c.LocalBackend.run_as = "self"
            c.ClusterConfig.cluster_max_workers = {MAX_WORKERS}
            """
        )
        + extra_config
    )
    env = {**os.environ, **(env or {})}
    env.setdefault(
        "FLOTILLA_ENVOY", str(REPO / ".cache/envoy/lib/python3.11/site-packages/envoy/_bin/envoy")
    )
    return _launch(
        "flotilla",
        [str(REPO / ".venv/bin/flotilla-embedded"), "--config", str(config)],
        public,
        state / "state" / "clusters",
        state / "embedded.log",
        env,
        timeout,
    )


def start_reference(
    workdir: Path,
    venv: Path,
    *,
    backend_config: str = "",
    env: Mapping[str, str] | None = None,
    timeout: float = 120.0,
) -> GatewayProcess:
    """``dask-gateway-server`` on free ports: its API, and its proxy for everything else.

    The backend is its local-process one unless ``backend_config`` names another. The
    defaults ``dask-scheduler``/``dask-worker`` no longer exist in current
    ``distributed``, so the local commands are ``dask scheduler``/``dask worker`` from
    its venv.
    """
    state = workdir / "reference"
    clusters = state / "clusters"
    clusters.mkdir(parents=True, exist_ok=True)
    public, api = free_ports(2)
    config = state / "dask_gateway_config.py"
    local_backend = f"""
        c.DaskGateway.backend_class = (
            "dask_gateway_server.backends.local.UnsafeLocalBackend"
        )
        c.LocalClusterConfig.scheduler_cmd = ["dask", "scheduler"]
        c.LocalClusterConfig.worker_cmd = ["dask", "worker"]
        c.LocalBackend.clusters_directory = {str(clusters)!r}
        """
    config.write_text(
        textwrap.dedent(
            f"""
            c.DaskGateway.address = "127.0.0.1:{api}"
            c.Proxy.address = "127.0.0.1:{public}"
            c.Proxy.tcp_address = "127.0.0.1:{public}"
            c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
            c.ClusterConfig.cluster_max_workers = {MAX_WORKERS}
            """
        )
        + textwrap.dedent(backend_config or local_backend)
    )
    env = {**os.environ, **(env or {})}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', os.defpath)}"
    env.pop("VIRTUAL_ENV", None)
    return _launch(
        "reference",
        [str(venv / "bin/dask-gateway-server"), "-f", str(config)],
        public,
        clusters,
        state / "server.log",
        env,
        timeout,
    )
