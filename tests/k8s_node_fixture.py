"""The ``kube_node`` fixture: the test-only node agent (tests/k8s_node_agent.py) started
once per session against ``kube``, so the real kube-scheduler has a node to bind pods to
and those pods run as local processes.

Its one image, ``flotilla-test/dask:dev``, is the project's .venv: a container's ``dask``
(``dask scheduler``, ``dask worker``) and ``python`` are the venv's. The venv's distributed
installs no ``dask-scheduler``/``dask-worker`` executables, only the ``dask`` command.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import wait_for
from k8s_cluster import KubeControlPlane, KubeError

__all__ = ["DASK_IMAGE", "KubeNode", "kube_node"]

PROJECT = Path(__file__).resolve().parents[1]
AGENT = Path(__file__).resolve().parent / "k8s_node_agent.py"
DASK_IMAGE = "flotilla-test/dask:dev"
NODE_NAME = "flotilla-test-node"


@dataclass
class KubeNode:
    """The running node agent: its Node's name, process and state directory."""

    name: str
    process: subprocess.Popen[bytes]
    state_dir: Path

    @property
    def log_file(self) -> Path:
        return self.state_dir / "agent.log"

    def sandbox(self, namespace: str, pod: str, uid: str) -> Path:
        """The directory a pod's containers run in (removed when the pod is deleted)."""
        return self.state_dir / "pods" / f"{namespace}_{pod}_{uid}"


def _node_ready(kube: KubeControlPlane, name: str, process: subprocess.Popen[bytes]) -> bool:
    if process.poll() is not None:
        raise RuntimeError(f"the node agent exited with {process.returncode}")
    try:
        node = kube.client().get(f"/api/v1/nodes/{name}")
    except KubeError as exc:
        if exc.status == 404:
            return False
        raise
    ready = any(
        c["type"] == "Ready" and c["status"] == "True"
        for c in node.get("status", {}).get("conditions", [])
    )
    untainted = not any(
        t["key"] == "node.kubernetes.io/not-ready" for t in node["spec"].get("taints") or []
    )
    port = node["status"].get("daemonEndpoints", {}).get("kubeletEndpoint", {}).get("Port")
    return ready and untainted and bool(port)


def start_node_agent(
    kube: KubeControlPlane, state_dir: Path, *extra: str
) -> subprocess.Popen[bytes]:
    """Start the node agent (its files in the new ``state_dir``, ``extra`` arguments such
    as ``--cpu=32``) and return it once its Node is Ready; stop it by PID."""
    state_dir.mkdir(parents=True)
    token_file = state_dir / "token"
    token_file.write_text(kube.admin_token)
    token_file.chmod(0o600)
    argv = [
        sys.executable,
        str(AGENT),
        f"--api-url={kube.api_url}",
        f"--ca-file={kube.ca_file}",
        f"--ca-key-file={kube.ca_key_file}",
        f"--token-file={token_file}",
        f"--node={NODE_NAME}",
        f"--state-dir={state_dir}",
        f"--image={DASK_IMAGE}={PROJECT / '.venv'}",
        *extra,
    ]
    with (state_dir / "agent.log").open("wb") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _node_ready(kube, NODE_NAME, process), 60, f"node {NODE_NAME} Ready")
    except BaseException:
        stop_node_agent(kube, process)
        raise
    return process


def stop_node_agent(kube: KubeControlPlane, process: subprocess.Popen[bytes]) -> None:
    """Stop the agent by PID (it stops its pods' processes) and delete its Node."""
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    try:
        kube.client().delete(f"/api/v1/nodes/{NODE_NAME}")
    except KubeError as exc:
        if exc.status != 404:
            raise


@pytest.fixture(scope="session")
def kube_node(kube: KubeControlPlane) -> Iterator[KubeNode]:
    """One node agent for the whole run, Ready before the first test; stopped by PID."""
    state_dir = kube.state_dir / "node-agent"
    process = start_node_agent(kube, state_dir)
    try:
        yield KubeNode(NODE_NAME, process, state_dir)
    finally:
        stop_node_agent(kube, process)
