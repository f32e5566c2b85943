"""A TEST-ONLY stand-in for a kubelet: it runs a real API server's pods as local processes.

    python tests/k8s_node_agent.py --api-url URL --ca-file F --token-file F --node NAME \
        --state-dir DIR --image NAME=PREFIX [--image ...] [--cpu 8 --memory 32Gi --pods 600]

There is no kubelet (nor a container runtime) on the test machines, so this process plays
the node's part against the REAL kube-apiserver (it is not a fake API server: every read
and write goes to the API server, and the real kube-scheduler binds pods to this node):

* it registers a Node (capacity = allocatable = ``--cpu``/``--memory``/``--pods``, one
  address, InternalIP 127.0.0.1), heartbeats its Ready condition and renews its Lease in
  ``kube-node-lease`` every few seconds, so the node lifecycle controller keeps it Ready,
  and lifts the ``node.kubernetes.io/not-ready`` taint the API server puts on a new node
  (that controller would, but the test control plane may run without it);
* it lists, then watches, the pods with ``spec.nodeName=<node>`` (relisting on 410 Gone);
  each new pod gets a loopback address of its own (127.0.X.Y, never 127.0.0.1) as its
  podIP, and each container's command + args runs as a local process in its own process
  group, in the pod's sandbox directory ``<state-dir>/pods/<ns>_<name>_<uid>/``, its stdout
  and stderr in ``logs/<container>.log`` there;
* an "image" is a prefix directory (e.g. a virtualenv) whose ``bin/`` comes first on the
  container's PATH; an image not given with ``--image`` cannot be pulled (ErrImagePull,
  then ImagePullBackOff, as the kubelet reports them);
* env is resolved as the kubelet does (``value``, ``fieldRef``, ``secretKeyRef``,
  ``configMapKeyRef``, ``envFrom``; ``$(VAR)`` expansion in values, command and args);
* secret, configMap and emptyDir volumes are directories under ``volumes/`` in the sandbox.
  Processes cannot mount anything at an absolute path here, so a container's mountPath is
  REWRITTEN to its volume's directory wherever it starts a word-or-path in the container's
  env values, command and args (``/etc/creds/token`` -> ``<sandbox>/volumes/creds/token``).
  A program that builds the path some other way will not find the files;
* ``securityContext.runAsUser``/``runAsGroup`` are honoured when the agent runs as root;
* ``resources.limits.memory`` is enforced by polling the RSS of the container's process
  tree: over the limit, the tree is SIGKILLed and the container terminated OOMKilled (137);
* pod status goes through the ``pods/status`` subresource: ContainerCreating, Running
  (ready and started at once: probes are not run), terminated with exitCode and reason
  Completed/Error, phase per restartPolicy (Always/OnFailure restart the container with
  restartCount + 1 after a CrashLoopBackOff);
* deletion (deletionTimestamp, or the pod gone): SIGTERM to the process groups, SIGKILL
  after terminationGracePeriodSeconds (capped at ``--max-grace``), the sandbox is removed,
  then the final DELETE with gracePeriodSeconds=0 that ends a graceful deletion;
* ``GET /containerLogs/<ns>/<pod>/<container>?tailLines=&follow=`` is served over HTTPS
  on 127.0.0.1, on a free port published as ``status.daemonEndpoints.kubeletEndpoint.Port``,
  so the API server's ``pods/log`` works. Its certificate (SAN IP:127.0.0.1) is signed by
  the cluster CA when ``--ca-key-file`` is given, so kube-apiserver may run with
  ``--kubelet-certificate-authority=<ca> --kubelet-preferred-address-types=InternalIP``;
  without it the certificate is self-signed and kube-apiserver must run without
  ``--kubelet-certificate-authority`` (it then does not verify the node's certificate).
  Client certificates are not asked for;
* on SIGTERM/SIGINT it kills every process group it started and exits 0.

All pods share the host network namespace: 127/8 is all loopback on Linux, so a process
listening on 0.0.0.0 is reachable at its pod's address, and two pods listening on the same
port of 0.0.0.0 collide. Only the standard library is needed, plus psutil when a container
has a memory limit.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import datetime as dt
import http.server
import json
import logging
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

log = logging.getLogger("k8s_node_agent")

LEASE_NAMESPACE = "kube-node-lease"
HEARTBEAT_SECONDS = 5.0
LEASE_DURATION_SECONDS = 40
MEMORY_POLL_SECONDS = 0.1
NOT_READY_TAINTS = ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")
BASE_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class KubeError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status
        self.body = body


class Api:
    """A tiny synchronous JSON client for the API server (bearer token, CA-verified TLS)."""

    def __init__(self, url: str, ca_file: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.ssl = ssl.create_default_context(cafile=ca_file)

    def _open(
        self,
        method: str,
        path: str,
        params: dict[str, Any] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float = 30,
    ) -> Any:
        url = self.url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        req.add_header("Authorization", f"Bearer {self.token}")
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            return urllib.request.urlopen(req, context=self.ssl, timeout=timeout)
        except urllib.error.HTTPError as exc:
            raise KubeError(exc.code, exc.read().decode(errors="replace")) from None

    def request(self, method: str, path: str, **kw: Any) -> Any:
        with self._open(method, path, **kw) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def get(self, path: str, params: dict[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body=body)

    def patch(self, path: str, body: Any) -> Any:
        return self.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    def delete(self, path: str, body: Any = None) -> Any:
        return self.request("DELETE", path, body=body)

    def watch(self, path: str, params: dict[str, Any], timeout: float) -> Any:
        """The open response of a watch: one JSON event per line."""
        return self._open("GET", path, params={**params, "watch": "1"}, timeout=timeout)


def now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def now_micro() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_SUFFIXES = {
    "Ki": 2**10,
    "Mi": 2**20,
    "Gi": 2**30,
    "Ti": 2**40,
    "Pi": 2**50,
    "Ei": 2**60,
    "n": 1e-9,
    "u": 1e-6,
    "m": 1e-3,
    "k": 1e3,
    "K": 1e3,
    "M": 1e6,
    "G": 1e9,
    "T": 1e12,
    "P": 1e15,
    "E": 1e18,
}


def parse_quantity(text: str) -> float:
    """A Kubernetes resource quantity (``512Mi``, ``1.5G``, ``250m``, ``1e9``) as a number."""
    match = re.fullmatch(r"([+-]?[0-9.]+(?:[eE][+-]?[0-9]+)?)([A-Za-z]*)", str(text).strip())
    if not match or match.group(2) not in ("", *_SUFFIXES):
        raise ValueError(f"not a quantity: {text!r}")
    return float(match.group(1)) * _SUFFIXES.get(match.group(2), 1)


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$$`` is ``$``, an unknown ``$(VAR)`` stays."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env.get(name, text[i : end + 1]))
                    i = end + 1
                    continue
        out.append(text[i])
        i += 1
    return "".join(out)


def rewrite_mounts(text: str, mounts: list[tuple[str, str]]) -> str:
    """Replace each mountPath (longest first) where it starts a path in ``text``."""
    for mount, local in mounts:
        pattern = r"(?<![\w./-])" + re.escape(mount.rstrip("/")) + r"(?=/|$|[^\w.-])"
        text = re.sub(pattern, local.replace("\\", "\\\\"), text)
    return text


def tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            total += proc.memory_info().rss
    return total


def killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


class Container:
    """One container of a pod: its spec, process and the status the kubelet reports."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.name: str = spec["name"]
        self.proc: subprocess.Popen[bytes] | None = None
        self.restart_count = 0
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.oom_killed = False
        self.limit_bytes: float | None = None
        limit = (spec.get("resources") or {}).get("limits", {}).get("memory")
        if limit:
            self.limit_bytes = parse_quantity(limit)

    def status(self, image: str) -> dict[str, Any]:
        running = "running" in self.state
        return {
            "name": self.name,
            "image": image,
            "imageID": f"node-agent://{image}",
            "containerID": f"process://{self.proc.pid}" if self.proc else "",
            "ready": running,
            "started": running,
            "restartCount": self.restart_count,
            "state": self.state,
            "lastState": self.last_state,
        }


class PodWorker(threading.Thread):
    """Everything about one pod, in one thread: the only writer of that pod's status."""

    def __init__(self, agent: NodeAgent, pod: dict[str, Any], pod_ip: str) -> None:
        meta = pod["metadata"]
        super().__init__(name=f"pod-{meta['namespace']}/{meta['name']}", daemon=True)
        self.agent = agent
        self.pod = pod
        self.ns: str = meta["namespace"]
        self.pod_name: str = meta["name"]
        self.uid: str = meta["uid"]
        self.pod_ip = pod_ip
        self.sandbox = agent.state_dir / "pods" / f"{self.ns}_{self.pod_name}_{self.uid}"
        self.containers = [Container(c) for c in pod["spec"].get("containers", [])]
        self.deleting = threading.Event()  # deletionTimestamp seen: stop and finish deletion
        self.gone = threading.Event()  # the pod no longer exists: stop, nothing to delete
        self.start_time = now()
        self.phase = "Pending"
        self.lock = threading.Lock()  # guards the processes against the agent's shutdown
        self.transitions: dict[str, tuple[str, str]] = {}  # condition -> (status, since)

    @property
    def path(self) -> str:
        return f"/api/v1/namespaces/{self.ns}/pods/{self.pod_name}"

    # ------------------------------------------------------------------ status
    def post_status(self) -> None:
        t = now()
        all_running = bool(self.containers) and all("running" in c.state for c in self.containers)
        ready = "True" if all_running and self.phase == "Running" else "False"

        def cond(kind: str, status: str, reason: str | None = None) -> dict[str, Any]:
            if self.transitions.get(kind, ("", ""))[0] != status:
                self.transitions[kind] = (status, t)
            since = self.transitions[kind][1]
            c: dict[str, Any] = {"type": kind, "status": status, "lastTransitionTime": since}
            if reason and status == "False":
                c["reason"] = reason
            return c

        status = {
            "phase": self.phase,
            "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}],
            "podIP": self.pod_ip,
            "podIPs": [{"ip": self.pod_ip}],
            "startTime": self.start_time,
            "conditions": [
                cond("PodReadyToStartContainers", "True"),
                cond("Initialized", "True"),
                cond("Ready", ready, "ContainersNotReady"),
                cond("ContainersReady", ready, "ContainersNotReady"),
                cond("PodScheduled", "True"),
            ],
            "containerStatuses": [c.status(c.spec.get("image", "")) for c in self.containers],
        }
        try:
            self.agent.api.patch(self.path + "/status", {"status": status})
        except KubeError as exc:
            if exc.status != 404:
                log.warning("pod %s/%s: status update failed: %s", self.ns, self.pod_name, exc)
        except OSError as exc:
            log.warning("pod %s/%s: status update failed: %s", self.ns, self.pod_name, exc)

    # ------------------------------------------------------------------ setup
    def lookup_secret(self, name: str) -> dict[str, str] | None:
        try:
            secret = self.agent.api.get(f"/api/v1/namespaces/{self.ns}/secrets/{name}")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return {
            k: base64.b64decode(v).decode(errors="replace")
            for k, v in (secret.get("data") or {}).items()
        }

    def lookup_configmap(self, name: str) -> dict[str, str] | None:
        try:
            cm = self.agent.api.get(f"/api/v1/namespaces/{self.ns}/configmaps/{name}")
        except KubeError as exc:
            if exc.status == 404:
                return None
            raise
        return dict(cm.get("data") or {})

    def field(self, path: str) -> str:
        meta = self.pod["metadata"]
        simple = {
            "metadata.name": self.pod_name,
            "metadata.namespace": self.ns,
            "metadata.uid": self.uid,
            "spec.nodeName": self.agent.node,
            "spec.serviceAccountName": str(self.pod["spec"].get("serviceAccountName", "")),
            "status.podIP": self.pod_ip,
            "status.podIPs": self.pod_ip,
            "status.hostIP": "127.0.0.1",
            "status.hostIPs": "127.0.0.1",
        }
        if path in simple:
            return simple[path]
        match = re.fullmatch(r"metadata\.(labels|annotations)\['(.*)'\]", path)
        if match:
            return str((meta.get(match.group(1)) or {}).get(match.group(2), ""))
        raise ValueError(f"unsupported fieldRef {path}")

    def materialize_volumes(self, uid: int | None, gid: int | None) -> dict[str, Path]:
        dirs: dict[str, Path] = {}
        for vol in self.pod["spec"].get("volumes") or []:
            vdir = self.sandbox / "volumes" / vol["name"]
            vdir.mkdir(parents=True, exist_ok=True)
            dirs[vol["name"]] = vdir
            for kind, lookup, ref in (
                ("secret", self.lookup_secret, "secretName"),
                ("configMap", self.lookup_configmap, "name"),
            ):
                source = vol.get(kind)
                if source is None:
                    continue
                data = lookup(source[ref])
                if data is None:
                    if source.get("optional"):
                        continue
                    raise RuntimeError(f'{kind} "{source[ref]}" not found')
                items = source.get("items") or [{"key": k, "path": k} for k in data]
                mode = source.get("defaultMode", 0o644)
                for item in items:
                    target = vdir / item["path"]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_text(data[item["key"]])
                    target.chmod(item.get("mode", mode))
            if uid is not None:
                for path in [vdir, *vdir.rglob("*")]:
                    os.chown(path, uid, gid if gid is not None else -1)
        return dirs

    def container_env(self, spec: dict[str, Any]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            if "secretRef" in source:
                data = self.lookup_secret(source["secretRef"]["name"])
                ref = source["secretRef"]
            else:
                data = self.lookup_configmap(source["configMapRef"]["name"])
                ref = source["configMapRef"]
            if data is None and not ref.get("optional"):
                raise RuntimeError(f'envFrom "{ref["name"]}" not found')
            env.update({prefix + k: v for k, v in (data or {}).items()})
        for var in spec.get("env") or []:
            name = var["name"]
            if "valueFrom" not in var:
                env[name] = expand(var.get("value", ""), env)
                continue
            src = var["valueFrom"]
            if "fieldRef" in src:
                env[name] = self.field(src["fieldRef"]["fieldPath"])
            elif "secretKeyRef" in src or "configMapKeyRef" in src:
                is_secret = "secretKeyRef" in src
                ref = src["secretKeyRef" if is_secret else "configMapKeyRef"]
                found = (self.lookup_secret if is_secret else self.lookup_configmap)(ref["name"])
                if found is None or ref["key"] not in found:
                    if ref.get("optional"):
                        continue
                    raise RuntimeError(f'couldn\'t find key {ref["key"]} in "{ref["name"]}"')
                env[name] = found[ref["key"]]
            elif "resourceFieldRef" in src:
                res = src["resourceFieldRef"]["resource"]  # e.g. limits.memory
                kind, _, what = res.partition(".")
                value = (spec.get("resources") or {}).get(kind, {}).get(what)
                env[name] = str(int(parse_quantity(value))) if value else "0"
        return env

    # ------------------------------------------------------------------ run
    def run(self) -> None:
        try:
            self.main()
        except Exception:
            log.exception("pod %s/%s: worker failed", self.ns, self.pod_name)
        finally:
            self.kill_all()
            self.finish()

    def main(self) -> None:
        self.post_status()
        images = []
        for c in self.containers:
            image = c.spec.get("image", "")
            if image not in self.agent.images:
                c.state = {
                    "waiting": {
                        "reason": "ErrImagePull",
                        "message": f'failed to pull image "{image}": image not in the node '
                        f"agent's --image list",
                    }
                }
            images.append(image)
        if any(img not in self.agent.images for img in images):
            self.post_status()
            if self.stopped(1.0):
                return
            for c, image in zip(self.containers, images, strict=True):
                if image not in self.agent.images:
                    c.state = {
                        "waiting": {
                            "reason": "ImagePullBackOff",
                            "message": f'Back-off pulling image "{image}"',
                        }
                    }
            self.post_status()
            self.stopped(None)
            return

        self.sandbox.mkdir(parents=True, exist_ok=True)
        (self.sandbox / "logs").mkdir(exist_ok=True)
        pod_sc = self.pod["spec"].get("securityContext") or {}
        try:
            for c in self.containers:
                self.start_container(c, pod_sc)
        except Exception as exc:
            log.exception("pod %s/%s: cannot start", self.ns, self.pod_name)
            for c in self.containers:
                if c.proc is None:
                    c.state = {
                        "waiting": {"reason": "CreateContainerConfigError", "message": str(exc)}
                    }
            self.post_status()
            self.stopped(None)
            return
        self.phase = "Running"
        self.post_status()
        self.supervise(pod_sc)

    def stopped(self, timeout: float | None) -> bool:
        """Wait up to ``timeout`` (None: for ever) for the pod to be deleted or gone."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not (self.deleting.is_set() or self.gone.is_set() or self.agent.stopping.is_set()):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            self.deleting.wait(0.1 if left is None else min(left, 0.1))
        return True

    def start_container(self, c: Container, pod_sc: dict[str, Any]) -> None:
        sc = {**pod_sc, **(c.spec.get("securityContext") or {})}
        uid = sc.get("runAsUser") if os.geteuid() == 0 else None
        gid = sc.get("runAsGroup") if os.geteuid() == 0 else None
        if uid is not None:
            os.chown(self.sandbox, uid, gid if gid is not None else -1)
        dirs = self.materialize_volumes(uid, gid)
        mounts = sorted(
            (
                (m["mountPath"], str(dirs[m["name"]] / m.get("subPath", "")).rstrip("/"))
                for m in c.spec.get("volumeMounts") or []
                if m["name"] in dirs
            ),
            key=lambda pair: -len(pair[0]),
        )
        env = {k: rewrite_mounts(v, mounts) for k, v in self.container_env(c.spec).items()}
        argv = [
            rewrite_mounts(expand(a, env), mounts)
            for a in [*(c.spec.get("command") or []), *(c.spec.get("args") or [])]
        ]
        if not c.spec.get("command"):
            raise RuntimeError("container has no command (the node agent knows no entrypoints)")
        prefix = self.agent.images[c.spec.get("image", "")]
        full_env = {
            "PATH": f"{prefix}/bin:{BASE_PATH}",
            "HOME": str(self.sandbox),
            "HOSTNAME": self.pod_name,
            "LANG": "C.UTF-8",
            **env,
        }
        logfile = self.sandbox / "logs" / f"{c.name}.log"
        with open(logfile, "ab") as out, self.lock:
            if self.agent.stopping.is_set():
                return
            try:
                c.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.sandbox,
                    env=full_env,
                    start_new_session=True,
                    user=uid,
                    group=gid,
                    extra_groups=[] if uid is not None else None,
                )
            except OSError as exc:
                c.proc = None
                c.state = {
                    "terminated": {
                        "exitCode": 128,
                        "reason": "StartError",
                        "message": str(exc),
                        "startedAt": now(),
                        "finishedAt": now(),
                    }
                }
                return
        c.oom_killed = False
        c.state = {"running": {"startedAt": now()}}
        log.info(
            "pod %s/%s: container %s pid %d: %s", self.ns, self.pod_name, c.name, c.proc.pid, argv
        )

    def supervise(self, pod_sc: dict[str, Any]) -> None:
        policy = self.pod["spec"].get("restartPolicy", "Always")
        backoff_until: dict[str, float] = {}
        while not self.stopped(MEMORY_POLL_SECONDS):
            changed = False
            for c in self.containers:
                if c.name in backoff_until:
                    if time.monotonic() >= backoff_until[c.name]:
                        del backoff_until[c.name]
                        c.restart_count += 1
                        self.start_container(c, pod_sc)
                        changed = True
                    continue
                if c.proc is None or "running" not in c.state:
                    continue
                code = c.proc.poll()
                if code is None and c.limit_bytes and tree_rss(c.proc.pid) > c.limit_bytes:
                    log.info(
                        "pod %s/%s: container %s over its memory limit: SIGKILL",
                        self.ns,
                        self.pod_name,
                        c.name,
                    )
                    c.oom_killed = True
                    killpg(c.proc.pid, signal.SIGKILL)
                    code = c.proc.wait()
                if code is None:
                    continue
                killpg(c.proc.pid, signal.SIGKILL)  # what the main process left behind
                if c.oom_killed:
                    code, reason = 137, "OOMKilled"
                elif code < 0:
                    code, reason = 128 - code, "Error"
                else:
                    reason = "Completed" if code == 0 else "Error"
                c.state = {
                    "terminated": {
                        "exitCode": code,
                        "reason": reason,
                        "startedAt": c.state["running"]["startedAt"],
                        "finishedAt": now(),
                        "containerID": f"process://{c.proc.pid}",
                    }
                }
                changed = True
                if policy == "Always" or (policy == "OnFailure" and code != 0):
                    c.last_state = c.state
                    c.state = {
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off restarting {c.name}",
                        }
                    }
                    backoff_until[c.name] = time.monotonic() + min(10.0, 0.5 * 2**c.restart_count)
            if not backoff_until and all("terminated" in c.state for c in self.containers):
                codes = [c.state["terminated"]["exitCode"] for c in self.containers]
                self.phase = "Succeeded" if all(x == 0 for x in codes) else "Failed"
                self.post_status()
                self.stopped(None)
                return
            if changed:
                self.post_status()

    # ------------------------------------------------------------------ stop
    def grace_seconds(self) -> float:
        meta = self.pod["metadata"]
        grace = meta.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = self.pod["spec"].get("terminationGracePeriodSeconds", 30)
        return float(min(max(grace, 0), self.agent.max_grace))

    def kill_all(self, grace: float | None = None) -> None:
        with self.lock:
            procs = [c.proc for c in self.containers if c.proc is not None]
            if grace is None:
                grace = self.grace_seconds()
            for p in procs:
                if p.poll() is None:
                    killpg(p.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace
            for p in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.wait(max(0.0, deadline - time.monotonic()))
            for p in procs:
                killpg(p.pid, signal.SIGKILL)
                p.wait()

    def finish(self) -> None:
        if self.agent.stopping.is_set() and not (self.deleting.is_set() or self.gone.is_set()):
            return  # the agent stops: the pod stays, as it does when a kubelet restarts
        # The sandbox goes before the final delete, as a kubelet reclaims a pod's volumes
        # before it lets the object go: whoever sees the pod gone sees its files gone.
        shutil.rmtree(self.sandbox, ignore_errors=True)
        if self.deleting.is_set() and not self.gone.is_set():
            body = {"gracePeriodSeconds": 0, "preconditions": {"uid": self.uid}}
            try:
                self.agent.api.delete(self.path, body)
            except KubeError as exc:
                if exc.status not in (404, 409):
                    log.warning("pod %s/%s: final delete failed: %s", self.ns, self.pod_name, exc)
        self.agent.forget(self)


class LogHandler(http.server.BaseHTTPRequestHandler):
    """``GET /containerLogs/<ns>/<pod>/<container>``, as the API server asks the kubelet."""

    agent: NodeAgent
    protocol_version = "HTTP/1.0"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("logs: " + format, *args)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        parts = url.path.strip("/").split("/")
        if len(parts) != 4 or parts[0] != "containerLogs":
            self.send_error(404, "not found")
            return
        _, ns, name, container = parts
        worker = self.agent.worker_named(ns, name)
        if worker is None:
            self.send_error(404, f"pod {ns}/{name} not on this node")
            return
        logfile = worker.sandbox / "logs" / f"{container}.log"
        try:
            data = logfile.read_bytes()
        except FileNotFoundError:
            self.send_error(400, f'container "{container}" in pod "{name}" is waiting to start')
            return
        if "tailLines" in query:
            n = int(query["tailLines"][0])
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-n:]) if n > 0 else b""
        if "limitBytes" in query:
            data = data[: int(query["limitBytes"][0])]
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(data)
        if query.get("follow", ["false"])[0] != "true":
            return
        offset = logfile.stat().st_size
        proc = next((c.proc for c in worker.containers if c.name == container), None)
        while proc is not None and not self.agent.stopping.is_set():
            done = proc.poll() is not None
            with contextlib.suppress(FileNotFoundError), open(logfile, "rb") as f:
                f.seek(offset)
                chunk = f.read()
                offset += len(chunk)
                if chunk:
                    self.wfile.write(chunk)
                    self.wfile.flush()
            if done:
                return
            self.agent.stopping.wait(0.2)


class NodeAgent:
    def __init__(self, args: argparse.Namespace, token: str) -> None:
        self.api = Api(args.api_url, args.ca_file, token)
        self.ca_file: str = args.ca_file
        self.ca_key_file: str | None = args.ca_key_file
        self.node: str = args.node
        self.state_dir = Path(args.state_dir).resolve()
        self.images: dict[str, str] = {}
        for item in args.image:
            name, sep, prefix = item.partition("=")
            if not sep:
                raise SystemExit(f"--image wants NAME=PREFIX, not {item!r}")
            self.images[name] = str(Path(prefix).resolve())
        self.capacity = {"cpu": args.cpu, "memory": args.memory, "pods": str(args.pods)}
        self.max_grace: float = args.max_grace
        self.stopping = threading.Event()
        self.workers: dict[str, PodWorker] = {}  # uid -> worker
        self.ips: dict[str, str] = {}  # uid -> pod IP
        self.lock = threading.Lock()
        self.port = 0
        self.server: http.server.ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ node
    def serve_logs(self) -> None:
        pki = self.state_dir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        cert, key = pki / "node.crt", pki / "node.key"
        if not cert.exists():
            ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
            ext = pki / "node.ext"
            ext.write_text(
                "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"
                "keyUsage=critical,digitalSignature,keyEncipherment\n"
            )
            subject = ["-subj", f"/O=system:nodes/CN=system:node:{self.node}"]
            if self.ca_key_file:  # signed by the cluster's CA (--kubelet-certificate-authority)
                csr = pki / "node.csr"
                run = ["openssl", "req", "-new", *ec, *subject, "-keyout", str(key)]
                subprocess.run([*run, "-out", str(csr)], check=True, capture_output=True)
                sign = ["openssl", "x509", "-req", "-in", str(csr), "-days", "7"]
                sign += ["-CA", self.ca_file, "-CAkey", self.ca_key_file]
                sign += ["-set_serial", f"0x{os.urandom(8).hex()}", "-extfile", str(ext)]
                subprocess.run([*sign, "-out", str(cert)], check=True, capture_output=True)
            else:  # self-signed: the API server must not verify it (no kubelet CA flag)
                run = ["openssl", "req", "-x509", *ec, "-days", "7", *subject]
                run += ["-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key)]
                subprocess.run([*run, "-out", str(cert)], check=True, capture_output=True)
        handler = type("Handler", (LogHandler,), {"agent": self})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, name="logs", daemon=True).start()

    def node_status(self) -> dict[str, Any]:
        t = now()
        return {
            "capacity": self.capacity,
            "allocatable": self.capacity,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "test node agent is posting ready status",
                    "lastHeartbeatTime": t,
                    "lastTransitionTime": self.ready_since,
                },
                *(
                    {
                        "type": kind,
                        "status": "False",
                        "reason": f"KubeletHasNo{kind[:-8]}",
                        "lastHeartbeatTime": t,
                        "lastTransitionTime": self.ready_since,
                    }
                    for kind in ("MemoryPressure", "DiskPressure", "PIDPressure")
                ),
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": self.port}},
            "nodeInfo": {
                "kubeletVersion": "v0.0.0-test-node-agent",
                "kubeProxyVersion": "",
                "architecture": "amd64",
                "operatingSystem": "linux",
                "containerRuntimeVersion": "process://0",
                "kernelVersion": os.uname().release,
                "osImage": "flotilla test node agent",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        }

    def register(self) -> None:
        self.ready_since = now()
        body = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": self.node,
                "labels": {
                    "kubernetes.io/hostname": self.node,
                    "kubernetes.io/os": "linux",
                    "kubernetes.io/arch": "amd64",
                },
            },
        }
        try:
            self.api.post("/api/v1/nodes", body)
        except KubeError as exc:
            if exc.status != 409:
                raise
        self.api.patch(f"/api/v1/nodes/{self.node}/status", {"status": self.node_status()})
        # The NodeRestriction/TaintNodesByCondition admission taints a new node not-ready;
        # the node lifecycle controller lifts that once the node is Ready, but the test
        # control plane may run without it, so the agent lifts it itself.
        node = self.api.get(f"/api/v1/nodes/{self.node}")
        taints = node["spec"].get("taints") or []
        kept = [t for t in taints if t["key"] not in NOT_READY_TAINTS]
        if kept != taints:
            self.api.patch(f"/api/v1/nodes/{self.node}", {"spec": {"taints": kept or None}})
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.node},
            "spec": {
                "holderIdentity": self.node,
                "leaseDurationSeconds": LEASE_DURATION_SECONDS,
                "renewTime": now_micro(),
            },
        }
        try:
            self.api.post(self.lease_path(""), lease)
        except KubeError as exc:
            if exc.status != 409:
                raise
            self.renew_lease()

    def lease_path(self, name: str) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{LEASE_NAMESPACE}/leases" + (
            f"/{name}" if name else ""
        )

    def renew_lease(self) -> None:
        self.api.patch(
            self.lease_path(self.node),
            {"spec": {"holderIdentity": self.node, "renewTime": now_micro()}},
        )

    def heartbeat(self) -> None:
        while not self.stopping.wait(HEARTBEAT_SECONDS):
            try:
                self.renew_lease()
                self.api.patch(f"/api/v1/nodes/{self.node}/status", {"status": self.node_status()})
            except (KubeError, OSError) as exc:
                log.warning("node %s: heartbeat failed: %s", self.node, exc)

    # ------------------------------------------------------------------ pods
    def allocate_ip(self, uid: str) -> str:
        with self.lock:
            if uid in self.ips:
                return self.ips[uid]
            used = set(self.ips.values())
            n = 0
            while True:
                ip = f"127.0.{1 + n // 254}.{1 + n % 254}"
                if ip not in used:
                    self.ips[uid] = ip
                    return ip
                n += 1

    def forget(self, worker: PodWorker) -> None:
        with self.lock:
            if self.workers.get(worker.uid) is worker:
                del self.workers[worker.uid]
                self.ips.pop(worker.uid, None)

    def worker_named(self, ns: str, name: str) -> PodWorker | None:
        with self.lock:
            return next(
                (w for w in self.workers.values() if (w.ns, w.pod_name) == (ns, name)), None
            )

    def on_pod(self, kind: str, pod: dict[str, Any]) -> None:
        uid = pod["metadata"]["uid"]
        with self.lock:
            worker = self.workers.get(uid)
        if kind == "DELETED":
            if worker is not None:
                worker.gone.set()
            return
        if worker is None:
            if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                if pod["metadata"].get("deletionTimestamp"):
                    with contextlib.suppress(KubeError):
                        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
                        self.api.delete(
                            f"/api/v1/namespaces/{ns}/pods/{name}",
                            {"gracePeriodSeconds": 0, "preconditions": {"uid": uid}},
                        )
                return  # finished before this agent started: nothing to run
            worker = PodWorker(self, pod, self.allocate_ip(uid))
            with self.lock:
                if self.stopping.is_set():
                    return
                self.workers[uid] = worker
            worker.start()
        if pod["metadata"].get("deletionTimestamp"):
            worker.pod = pod
            worker.deleting.set()

    def watch_pods(self) -> None:
        path = "/api/v1/pods"
        selector = {"fieldSelector": f"spec.nodeName={self.node}"}
        rv = None
        while not self.stopping.is_set():
            try:
                if rv is None:
                    listing = self.api.get(path, selector)
                    rv = listing["metadata"]["resourceVersion"]
                    seen = set()
                    for pod in listing["items"]:
                        seen.add(pod["metadata"]["uid"])
                        self.on_pod("ADDED", pod)
                    with self.lock:
                        missing = [w for uid, w in self.workers.items() if uid not in seen]
                    for w in missing:
                        w.gone.set()
                params = {
                    **selector,
                    "resourceVersion": rv,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": "60",
                }
                with self.api.watch(path, params, timeout=90) as resp:
                    for line in resp:
                        if self.stopping.is_set():
                            return
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            if obj.get("code") == 410:
                                rv = None  # too old: relist
                                break
                            raise KubeError(obj.get("code", 500), json.dumps(obj))
                        rv = obj["metadata"]["resourceVersion"]
                        if event["type"] != "BOOKMARK":
                            self.on_pod(event["type"], obj)
            except KubeError as exc:
                if exc.status == 410:
                    rv = None
                else:
                    log.warning("pod watch: %s", exc)
                    self.stopping.wait(1)
            except (OSError, ValueError) as exc:
                if not self.stopping.is_set():
                    log.warning("pod watch: %s", exc)
                    self.stopping.wait(1)

    # ------------------------------------------------------------------ lifecycle
    def run(self) -> None:
        self.serve_logs()
        self.register()
        threading.Thread(target=self.heartbeat, name="heartbeat", daemon=True).start()
        threading.Thread(target=self.watch_pods, name="pods", daemon=True).start()
        log.info("node %s registered, logs on port %d", self.node, self.port)
        self.stopping.wait()
        self.shutdown()

    def shutdown(self) -> None:
        with self.lock:
            workers = list(self.workers.values())
        for w in workers:
            w.kill_all(grace=min(2.0, self.max_grace))
        if self.server is not None:
            self.server.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--api-url", required=True)
    parser.add_argument("--ca-file", required=True)
    parser.add_argument("--token-file", required=True)
    parser.add_argument(
        "--ca-key-file",
        help="the cluster CA's key: sign the log endpoint's certificate with --ca-file's CA "
        "(for kube-apiserver --kubelet-certificate-authority); else it is self-signed",
    )
    parser.add_argument("--node", required=True)
    parser.add_argument("--state-dir", required=True)
    parser.add_argument("--image", action="append", default=[], metavar="NAME=PREFIX")
    parser.add_argument("--cpu", default="8")
    parser.add_argument("--memory", default="32Gi")
    parser.add_argument("--pods", type=int, default=600)
    parser.add_argument(
        "--max-grace",
        type=float,
        default=10.0,
        help="cap on a pod's termination grace period, in seconds",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(threadName)s %(message)s"
    )
    token = Path(args.token_file).read_text().strip()
    agent = NodeAgent(args, token)

    def on_signal(signum: int, _frame: Any) -> None:
        agent.stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    agent.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
