"""The test-only node agent (tests/k8s_node_agent.py) runs the real API server's pods as
the kubelet would: pods the real kube-scheduler binds to its node run as local processes,
report their status, logs (through the API server's pods/log), exit codes, OOM kills and
deletion."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from helpers import wait_for
from k8s_cluster import KubeControlPlane, KubeError
from k8s_node_fixture import AGENT, DASK_IMAGE, PROJECT, KubeNode

pytestmark = [pytest.mark.integration, pytest.mark.k8s, pytest.mark.timeout(300)]


def _pod(name: str, command: list[str], **container: Any) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 5,
            "containers": [{"name": "main", "image": DASK_IMAGE, "command": command, **container}],
        },
    }


def _phase(phase: str) -> Any:
    return lambda pod: pod.get("status", {}).get("phase") == phase


def _state(pod: dict[str, Any]) -> dict[str, Any]:
    statuses = pod.get("status", {}).get("containerStatuses") or [{}]
    return dict(statuses[0].get("state") or {})


def _create(kube: KubeControlPlane, namespace: str, pod: dict[str, Any]) -> str:
    kube.client().post(f"/api/v1/namespaces/{namespace}/pods", pod)
    return f"/api/v1/namespaces/{namespace}/pods/{pod['metadata']['name']}"


def test_a_pod_runs_then_succeeds_and_its_log_is_read_through_the_api_server(
    kube: KubeControlPlane, kube_node: KubeNode, kube_namespace: str
) -> None:
    # The container prints, then waits for a file the test writes in its sandbox, so the
    # test sees it Running before it exits.
    script = (
        "import os, pathlib, sys, time\n"
        "print('pod', os.environ['POD_NAME'], 'ip', os.environ['POD_IP'], flush=True)\n"
        "print('python', sys.executable, flush=True)\n"
        "while not pathlib.Path('go').exists(): time.sleep(0.05)\n"
        "print('done', flush=True)\n"
    )
    env = [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
    ]
    path = _create(kube, kube_namespace, _pod("hello", ["python", "-c", script], env=env))
    api = kube.client()
    pod = api.wait_for(path, _phase("Running"), 60, "pod hello Running")
    assert pod["spec"]["nodeName"] == kube_node.name  # bound by the real kube-scheduler
    status = pod["status"]
    (container,) = status["containerStatuses"]
    assert container["ready"] and container["started"] and container["restartCount"] == 0
    assert "startedAt" in container["state"]["running"]
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    for kind in ("PodScheduled", "Initialized", "ContainersReady", "Ready"):
        assert conditions[kind] == "True", kind
    assert status["hostIP"] == "127.0.0.1"

    log = ""

    def printed() -> bool:
        nonlocal log
        log = api.get(f"{path}/log")
        return "python" in log

    wait_for(printed, 30, "the pod's first lines in pods/log")
    assert f"pod hello ip {status['podIP']}" in log
    assert f"python {PROJECT / '.venv' / 'bin' / 'python'}\n" in log  # the image's python

    sandbox = kube_node.sandbox(kube_namespace, "hello", pod["metadata"]["uid"])
    (sandbox / "go").write_text("")
    pod = api.wait_for(path, _phase("Succeeded"), 60, "pod hello Succeeded")
    terminated = _state(pod)["terminated"]
    assert (terminated["exitCode"], terminated["reason"]) == (0, "Completed")
    assert api.get(f"{path}/log", {"tailLines": "1"}) == "done\n"


def test_the_pod_ip_field_ref_is_the_pods_own_loopback_address(
    kube: KubeControlPlane, kube_node: KubeNode, kube_namespace: str
) -> None:
    env = [{"name": "MY_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    # $(MY_IP) in args is expanded by the node, as Kubernetes does.
    pod = _pod("ip", ["python", "-c", "import sys; print(sys.argv[1])", "ip=$(MY_IP)"], env=env)
    path = _create(kube, kube_namespace, pod)
    done = kube.client().wait_for(path, _phase("Succeeded"), 60, "pod ip Succeeded")
    ip = done["status"]["podIP"]
    assert ip.startswith("127.0.") and ip != "127.0.0.1"
    assert done["status"]["podIPs"] == [{"ip": ip}]
    assert kube.client().get(f"{path}/log") == f"ip={ip}\n"


def test_a_secret_volume_is_read_at_its_rewritten_mount_path(
    kube: KubeControlPlane, kube_node: KubeNode, kube_namespace: str
) -> None:
    api = kube.client()
    api.post(
        f"/api/v1/namespaces/{kube_namespace}/secrets",
        {"metadata": {"name": "creds"}, "stringData": {"token": "s3cr3t"}},
    )
    pod = _pod(
        "secret",
        ["python", "-c", "import os, sys; print(open(sys.argv[1]).read(), os.environ['F'])"],
        args=["/etc/creds/token"],
        env=[{"name": "F", "value": "/etc/creds/token"}],
        volumeMounts=[{"name": "creds", "mountPath": "/etc/creds", "readOnly": True}],
    )
    pod["spec"]["volumes"] = [{"name": "creds", "secret": {"secretName": "creds"}}]
    path = _create(kube, kube_namespace, pod)
    done = api.wait_for(path, _phase("Succeeded"), 60, "pod secret Succeeded")
    value, rewritten = api.get(f"{path}/log").split()
    assert value == "s3cr3t"
    sandbox = kube_node.sandbox(kube_namespace, "secret", done["metadata"]["uid"])
    assert rewritten == str(sandbox / "volumes" / "creds" / "token")


def test_an_image_the_node_does_not_have_cannot_be_pulled(
    kube: KubeControlPlane, kube_node: KubeNode, kube_namespace: str
) -> None:
    pod = _pod("noimage", ["true"])
    pod["spec"]["containers"][0]["image"] = "flotilla-test/missing:dev"
    path = _create(kube, kube_namespace, pod)

    def pull_failed(p: dict[str, Any]) -> bool:
        waiting = _state(p).get("waiting", {})
        return waiting.get("reason") in ("ErrImagePull", "ImagePullBackOff")

    stuck = kube.client().wait_for(path, pull_failed, 60, "pod noimage ErrImagePull")
    assert "flotilla-test/missing:dev" in _state(stuck)["waiting"]["message"]
    assert stuck["status"]["phase"] == "Pending"
    backoff = kube.client().wait_for(
        path,
        lambda p: _state(p).get("waiting", {}).get("reason") == "ImagePullBackOff",
        60,
        "pod noimage ImagePullBackOff",
    )
    assert backoff["status"]["phase"] == "Pending"


def test_a_container_over_its_memory_limit_is_oom_killed(
    kube: KubeControlPlane, kube_node: KubeNode, kube_namespace: str
) -> None:
    hog = "import time; b = b'x' * (400 << 20); time.sleep(120)"
    pod = _pod("hog", ["python", "-c", hog], resources={"limits": {"memory": "100Mi"}})
    path = _create(kube, kube_namespace, pod)
    done = kube.client().wait_for(path, _phase("Failed"), 60, "pod hog Failed")
    terminated = _state(done)["terminated"]
    assert (terminated["reason"], terminated["exitCode"]) == ("OOMKilled", 137)


def test_deleting_a_running_pod_kills_its_process_and_the_pod_goes(
    kube: KubeControlPlane, kube_node: KubeNode, kube_namespace: str
) -> None:
    api = kube.client()
    path = _create(kube, kube_namespace, _pod("sleeper", ["sleep", "600"]))
    pod = api.wait_for(path, _phase("Running"), 60, "pod sleeper Running")
    pid = int(pod["status"]["containerStatuses"][0]["containerID"].removeprefix("process://"))
    os.kill(pid, 0)  # it runs
    sandbox = kube_node.sandbox(kube_namespace, "sleeper", pod["metadata"]["uid"])
    assert sandbox.is_dir()
    api.delete(path)

    wait_for(lambda: not api.exists(path), 60, "pod sleeper gone")
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert not sandbox.exists()


def test_a_pod_no_node_can_hold_stays_pending_unschedulable(
    kube: KubeControlPlane, kube_node: KubeNode, kube_namespace: str
) -> None:
    pod = _pod("huge", ["true"], resources={"requests": {"cpu": "1000"}})
    path = _create(kube, kube_namespace, pod)

    def unschedulable(p: dict[str, Any]) -> bool:
        return any(
            c["type"] == "PodScheduled"
            and c["status"] == "False"
            and c.get("reason") == "Unschedulable"
            for c in p.get("status", {}).get("conditions", [])
        )

    stuck = kube.client().wait_for(path, unschedulable, 60, "pod huge Unschedulable")
    assert stuck["status"]["phase"] == "Pending"
    assert "nodeName" not in stuck["spec"]
    assert "Insufficient cpu" in next(
        c["message"] for c in stuck["status"]["conditions"] if c["type"] == "PodScheduled"
    )


def test_a_container_that_exits_is_restarted_under_restart_policy_on_failure(
    kube: KubeControlPlane, kube_node: KubeNode, kube_namespace: str
) -> None:
    # It fails until it has failed twice (a count kept in its sandbox), then succeeds.
    script = (
        "import pathlib, sys\n"
        "count = pathlib.Path('count')\n"
        "n = int(count.read_text()) if count.exists() else 0\n"
        "count.write_text(str(n + 1))\n"
        "print('run', n, flush=True)\n"
        "sys.exit(3 if n < 2 else 0)\n"
    )
    pod = _pod("flaky", ["python", "-c", script])
    pod["spec"]["restartPolicy"] = "OnFailure"
    path = _create(kube, kube_namespace, pod)
    done = kube.client().wait_for(path, _phase("Succeeded"), 60, "pod flaky Succeeded")
    (container,) = done["status"]["containerStatuses"]
    assert container["restartCount"] == 2
    assert container["lastState"]["terminated"]["exitCode"] == 3
    assert container["lastState"]["terminated"]["reason"] == "Error"
    assert container["state"]["terminated"]["reason"] == "Completed"
    assert kube.client().get(f"{path}/log") == "run 0\nrun 1\nrun 2\n"


def test_the_agent_stopped_by_sigterm_kills_the_processes_it_started(
    kube: KubeControlPlane, kube_node: KubeNode, kube_namespace: str, tmp_path: Path
) -> None:
    # A second agent of its own, so that stopping it leaves the session's node alone.
    token = tmp_path / "token"
    token.write_text(kube.admin_token)
    node = "flotilla-test-node-stop"
    argv = [
        sys.executable,
        str(AGENT),
        f"--api-url={kube.api_url}",
        f"--ca-file={kube.ca_file}",
        f"--token-file={token}",
        f"--node={node}",
        f"--state-dir={tmp_path / 'state'}",
        f"--image={DASK_IMAGE}={PROJECT / '.venv'}",
    ]
    with (tmp_path / "agent.log").open("wb") as log:
        agent = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    api = kube.client()
    path = f"/api/v1/namespaces/{kube_namespace}/pods/bound"
    try:
        pod = _pod("bound", ["sleep", "600"])
        pod["spec"]["nodeSelector"] = {"kubernetes.io/hostname": node}
        _create(kube, kube_namespace, pod)
        running = api.wait_for(path, _phase("Running"), 60, f"pod bound Running on {node}")
        assert running["spec"]["nodeName"] == node
        status = running["status"]["containerStatuses"][0]
        pid = int(status["containerID"].removeprefix("process://"))
        os.kill(pid, 0)
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(30) == 0
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        # No agent is left to finish a graceful deletion of the pod it ran.
        for gone in (path, f"/api/v1/nodes/{node}"):
            with contextlib.suppress(KubeError):
                api.delete(gone, {"gracePeriodSeconds": "0"})


@pytest.mark.skipif(os.geteuid() != 0, reason="the agent honours runAsUser only as root")
def test_run_as_user_and_group_are_honoured_when_the_agent_is_root(
    kube: KubeControlPlane, kube_node: KubeNode, kube_namespace: str
) -> None:
    script = "import os; print(os.getuid(), os.getgid(), os.getgroups())"
    pod = _pod("nobody", ["python", "-c", script])
    pod["spec"]["securityContext"] = {"runAsUser": 65534, "runAsGroup": 65534}
    path = _create(kube, kube_namespace, pod)
    done = kube.client().wait_for(
        path, lambda p: _phase("Succeeded")(p) or _phase("Failed")(p), 60, "pod nobody done"
    )
    assert kube.client().get(f"{path}/log") == "65534 65534 []\n", done["status"]


def test_the_dask_image_runs_dask_scheduler_reachable_at_the_pod_ip(
    kube: KubeControlPlane, kube_node: KubeNode, kube_namespace: str
) -> None:
    env = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    # Even with --no-dashboard the scheduler serves HTTP (health, metrics) on its dashboard
    # address, 0.0.0.0:8787 by default: a free port of the pod IP instead, so nothing later
    # finds 8787 taken.
    command = ["dask", "scheduler", "--host", "$(POD_IP)", "--port", "8786",
               "--no-dashboard", "--dashboard-address", "$(POD_IP):0"]  # fmt: skip
    api = kube.client()
    path = _create(kube, kube_namespace, _pod("scheduler", command, env=env))
    try:
        running = api.wait_for(path, _phase("Running"), 60, "pod scheduler Running")
        pid = int(
            running["status"]["containerStatuses"][0]["containerID"].removeprefix("process://")
        )
        address = (running["status"]["podIP"], 8786)

        def listening() -> bool:
            with socket.create_connection(address, timeout=1):
                return True

        wait_for(listening, 60, f"dask-scheduler listening on {address}")
        assert f"tcp://{address[0]}:8786" in api.get(f"{path}/log")
    finally:
        if api.exists(path):
            api.delete(path)
        wait_for(lambda: not api.exists(path), 60, "pod scheduler gone")

    def exited() -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        return False

    wait_for(exited, 30, f"the scheduler's process {pid} to exit")
