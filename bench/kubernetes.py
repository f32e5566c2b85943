"""The kubernetes section of ``make bench``: Flotilla's ``kubernetes`` launcher backend next
to its ``local`` one, on this machine.

A private control plane (the test suite's: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler, real binaries, ``tests/k8s_cluster.py``) and the test-only node agent
(``tests/k8s_node_agent.py``: it plays the kubelet and runs each pod's containers as local
processes of the project's virtualenv, image ``flotilla-test/dask:dev``) serve one more
``flotilla-embedded``, configured as the e2e tests' gateway is (``tests/kube_gateway.py``:
the Helm chart's launcher RBAC, a ServiceAccount token, a namespace of its own). The
benchmark's local Flotilla gateway is the other side of the comparison.

:class:`PodWatch` watches the namespace's pods for the whole section and notes, in this
machine's clock (milliseconds; the API server's own timestamps have whole seconds), when
each pod was first seen (created), bound to the node (``spec.nodeName``: the
kube-scheduler), reported Running (the agent's status update) and deleted. The agent's own
log says when it started each container's process (its ``startedAt`` has whole seconds
too). ``breakdown()`` turns those into the stages of SCALE_STAGES.
"""

from __future__ import annotations

import contextlib
import datetime
import re
import shutil
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.gateways import REPO, GatewayProcess, start_flotilla

sys.path.insert(0, str(REPO / "tests"))

from k8s_cluster import KubeClient, KubeControlPlane, KubeError, kube_control_plane
from k8s_node_fixture import start_node_agent, stop_node_agent
from kube_gateway import apply_launcher_rbac, launcher_settings

__all__ = ["STAGES", "KubeSection", "PodWatch", "breakdown", "kube_gateway"]

#: The node's capacity: a scheduler and 8 workers of one core each must fit.
NODE_CPU = "32"
NODE_MEMORY = "64Gi"

#: The stages of a pod's start, in order, and who does each.
STAGES = {
    "created": "the launcher's pod is in the API server",
    "scheduled": "kube-scheduler bound it to the node",
    "started": "the node agent started its process",
    "running": "the node agent's Running status is in the API server",
    "ready": "dask: the scheduler RUNNING / the worker connected",
}

_AGENT_START = re.compile(
    r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) INFO \S+ pod (\S+)/(\S+): container \S+ pid \d+"
)


@dataclass
class PodRecord:
    name: str
    component: str
    cluster: str
    #: Stage -> first time seen (seconds since the epoch, this machine's clock).
    times: dict[str, float] = field(default_factory=dict)


class PodWatch:
    """Every pod of ``namespace`` seen while it runs, with when it reached each stage."""

    def __init__(self, api: KubeClient, namespace: str) -> None:
        self.api = api
        self.path = f"/api/v1/namespaces/{namespace}/pods"
        self.pods: dict[str, PodRecord] = {}
        self.changed = threading.Condition()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pod-watch", daemon=True)

    def __enter__(self) -> PodWatch:
        self._version = self._list()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _list(self) -> str:
        listing = self.api.get(self.path)
        for item in listing["items"]:
            self._note("MODIFIED", item)
        return str(listing["metadata"]["resourceVersion"])

    def _note(self, kind: str, pod: dict[str, Any]) -> None:
        now = time.time()
        meta = pod["metadata"]
        labels = meta.get("labels") or {}
        with self.changed:
            record = self.pods.setdefault(
                meta["uid"],
                PodRecord(
                    meta["name"],
                    labels.get("app.kubernetes.io/component", ""),
                    labels.get("gateway.dask.org/cluster", ""),
                ),
            )
            record.times.setdefault("created", now)
            if pod.get("spec", {}).get("nodeName"):
                record.times.setdefault("scheduled", now)
            if pod.get("status", {}).get("phase") == "Running":
                record.times.setdefault("running", now)
            if kind == "DELETED":
                record.times.setdefault("deleted", now)
            self.changed.notify_all()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for event in self.api.watch(self.path, self._version, timeout=5):
                    if event["type"] in ("ADDED", "MODIFIED", "DELETED"):
                        self._note(event["type"], event["object"])
                        self._version = event["object"]["metadata"]["resourceVersion"]
                    elif event["type"] == "ERROR":
                        raise KubeError("WATCH", self.path, 410, event["object"])
                    if self._stop.is_set():
                        return
            except (KubeError, OSError, ValueError):
                if self._stop.is_set():
                    return
                self._version = self._list()

    def of(self, cluster: str) -> list[PodRecord]:
        with self.changed:
            return [p for p in self.pods.values() if p.cluster == cluster]

    def wait_deleted(self, cluster: str, timeout: float) -> float:
        """When the last pod of ``cluster`` was deleted (all of them, within ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while True:
                pods = [p for p in self.pods.values() if p.cluster == cluster]
                if pods and all("deleted" in p.times for p in pods):
                    return max(p.times["deleted"] for p in pods)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"pods of cluster {cluster} not deleted in {timeout}s")
                self.changed.wait(left)


def _log_time(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def agent_starts(log: Path) -> dict[str, float]:
    """Pod name -> when the node agent started its (last) container's process."""
    starts: dict[str, float] = {}
    if log.is_file():
        for line in log.read_text(errors="replace").splitlines():
            if m := _AGENT_START.match(line):
                starts[m[3]] = _log_time(m[1])
    return starts


def breakdown(
    watch: PodWatch, agent_log: Path, samples: list[dict[str, Any]]
) -> dict[str, dict[str, list[float]]]:
    """Per measured step (``new_cluster``: the scheduler pod; ``scale``: the last of the n
    worker pods), the seconds from the client's call to each stage of STAGES; and per pod,
    the seconds each stage took after the one before (``<step>_pod_<stage>``).

    ``samples``: ``{"step", "cluster", "at" (the call, epoch seconds), "ready"
    (seconds after it)}``."""
    starts = agent_starts(agent_log)
    out: dict[str, dict[str, list[float]]] = {}
    for sample in samples:
        component = "dask-scheduler" if sample["step"] == "new_cluster" else "dask-worker"
        pods = [p for p in watch.of(sample["cluster"]) if p.component == component]
        for pod in pods:
            if pod.name in starts:
                pod.times.setdefault("started", starts[pod.name])
        if not pods:
            continue
        cumulative = out.setdefault(sample["step"], {})
        per_pod = out.setdefault(f"{sample['step']}_per_pod", {})
        for stage in STAGES:
            if stage == "ready":
                cumulative.setdefault(stage, []).append(sample["ready"])
                continue
            if all(stage in p.times for p in pods):
                last = max(p.times[stage] for p in pods)
                cumulative.setdefault(stage, []).append(last - sample["at"])
        previous = "call"
        for stage in ("created", "scheduled", "started", "running"):
            for pod in pods:
                begin = sample["at"] if previous == "call" else pod.times.get(previous)
                if begin is not None and stage in pod.times:
                    per_pod.setdefault(f"{previous}->{stage}", []).append(pod.times[stage] - begin)
            previous = stage
    return out


@dataclass
class KubeSection:
    """What the section runs on: the control plane, the node agent and the gateway."""

    kube: KubeControlPlane
    namespace: str
    agent_log: Path
    gateway: GatewayProcess
    watch: PodWatch


@contextlib.contextmanager
def kube_gateway(workdir: Path) -> Iterator[KubeSection]:
    """The control plane, the node agent and a kubernetes-backend Flotilla on them; all
    stopped (by PID) afterwards, the agent's log copied into ``workdir/kubernetes``."""
    root = workdir / "kubernetes"
    root.mkdir(parents=True, exist_ok=True)
    with kube_control_plane() as kube:
        agent_state = kube.state_dir / "node-agent"
        agent = start_node_agent(kube, agent_state, f"--cpu={NODE_CPU}", f"--memory={NODE_MEMORY}")
        gateway: GatewayProcess | None = None
        try:
            namespace = kube.create_namespace("bench")
            token_file = root / "launcher.token"
            token_file.write_text(apply_launcher_rbac(kube, namespace))
            token_file.chmod(0o600)
            with PodWatch(kube.client(), namespace) as watch:
                gateway = start_flotilla(
                    root,
                    backend="kubernetes",
                    extra_config=launcher_settings(kube, namespace, token_file),
                )
                yield KubeSection(kube, namespace, agent_state / "agent.log", gateway, watch)
        finally:
            if gateway is not None:
                gateway.stop()
            stop_node_agent(kube, agent)
            with contextlib.suppress(OSError):
                shutil.copy(agent_state / "agent.log", root / "agent.log")
            with contextlib.suppress(OSError):
                shutil.copytree(kube.state_dir / "logs", root / "kube-logs", dirs_exist_ok=True)
