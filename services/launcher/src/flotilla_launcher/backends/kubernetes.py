"""The ``kubernetes`` backend: every scheduler and worker is a pod, made through the API.

Per cluster, in ``c.KubeBackend.namespace``:

* an *owner*, a ConfigMap named after the cluster, that every other object of the cluster
  lists in ``metadata.ownerReferences`` (``blockOwnerDeletion``): stopping a cluster deletes
  the owner (``propagationPolicy=Background``) and the scheduler pod, and the
  controller-manager's garbage collector removes the rest;
* a Secret holding the cluster's TLS certificate and key (as ``CERT_FILE``/``KEY_FILE``)
  and its API token, mounted at :data:`CREDENTIALS_DIR` in every pod;
* the scheduler pod and a Service in front of it;
* one pod per worker.

Every object carries the labels of :func:`labels` (the launcher's
``c.KubeBackend.instance``, the cluster, the owner's name made a valid label value, the
component); the owner's real name is an annotation. Pods run with ``restartPolicy: Never``:
a worker pod that ends or is deleted is reported not running and the reconciler replaces
it; a scheduler pod that ends fails its cluster.

Status: one list-then-watch of the instance's pods for the whole launcher, kept in memory
(relisted on ``410 Gone``, reconnected with backoff); :meth:`KubeBackend.check` answers
from it without a call, and every watch event calls :meth:`~KubeBackend.changed`.

Every other API call goes through one semaphore (``c.KubeBackend.max_concurrent_requests``):
a cluster scaled from 0 to 500 workers has at most that many requests in flight.

Checkpoints: ``{"namespace": ..., "pod": ...}`` for a scheduler and for a worker.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import hashlib
import json
import logging
import math
import os
import re
import ssl
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from traitlets import Dict, Enum, Float, Integer, Unicode, default

from .base import (
    Backend,
    BackendError,
    ChecksAtOnce,
    ClusterConfig,
    ClusterSpec,
    ProcessStatus,
    WorkerSpec,
)
from .commands import CERT_FILE, KEY_FILE, gateway_environment, scheduler_command, worker_command

__all__ = [
    "KubeBackend",
    "KubeSettings",
    "label_value",
    "labels",
    "merge",
    "pod_status",
    "scheduler_manifests",
    "worker_pod",
]

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Where every pod finds the cluster's certificate and key.
CREDENTIALS_DIR = "/etc/dask-credentials"
TOKEN_KEY = "api-token"
#: Ports of the scheduler in its pod (each pod has its own network namespace).
#: The variable flotilla.scheduler_preload reports as its host instead of the pod's IP
#: (``ADVERTISE_HOST`` there; named here to keep distributed out of the launcher).
ADVERTISE_HOST = "FLOTILLA_SCHEDULER_HOST"
SCHEDULER_PORT = 8786
DASHBOARD_PORT = 8787
API_PORT = 8788
SCHEDULER = "dask-scheduler"
WORKER = "dask-worker"
CONTAINER = {SCHEDULER: "dask-scheduler", WORKER: "dask-worker"}

L_NAME = "app.kubernetes.io/name"
L_MANAGED = "app.kubernetes.io/managed-by"
L_INSTANCE = "app.kubernetes.io/instance"
L_COMPONENT = "app.kubernetes.io/component"
L_GATEWAY = "gateway.dask.org/instance"
L_CLUSTER = "gateway.dask.org/cluster"
L_WORKER = "flotilla.dev/worker"
L_OWNER = "flotilla.dev/owner"
A_OWNER = "flotilla.dev/owner"
A_CLUSTER = "flotilla.dev/cluster"
A_WORKER = "flotilla.dev/worker"

LABEL_VALUE_RE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")
#: A label or annotation key: an optional DNS-subdomain prefix and "/", then a name.
_KEY_NAME_RE = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
_KEY_PREFIX_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")
#: Keys the backend sets itself: common_labels / common_annotations may not change them.
_OWN_KEYS = frozenset(
    {L_NAME, L_MANAGED, L_INSTANCE, L_COMPONENT, L_GATEWAY, L_CLUSTER, L_WORKER, L_OWNER}
    | {A_OWNER, A_CLUSTER, A_WORKER}
)
_DNS_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_IMAGE_PULL = ("ErrImagePull", "ImagePullBackOff", "InvalidImageName", "ErrImageNeverPull")
_CONTAINER_CONFIG = ("CreateContainerConfigError", "CreateContainerError", "RunContainerError")


class KubeUnavailable(RuntimeError):
    """The API server did not answer, or answered 5xx: the reconciler retries later."""


class KubeRefused(BackendError):
    """A 4xx answer: ``status`` and the API server's message (safe to show the owner)."""

    def __init__(self, message: str, status: int, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


# -- names and labels -----------------------------------------------------------------------


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def label_value(text: str) -> str:
    """``text`` as a label value: lowercased, characters outside ``[a-z0-9_.-]`` replaced by
    ``-``, at most 63 characters; a short hash of the original is appended whenever that
    changed anything, so distinct names stay distinct."""
    safe = re.sub(r"[^a-z0-9_.-]", "-", text.lower())
    if safe == text and len(safe) <= 63 and LABEL_VALUE_RE.match(safe):
        return safe
    stem = safe[: 63 - 9].strip("-_.")
    return f"{stem}-{_digest(text)}" if stem else _digest(text)


def dns_name(*parts: str, limit: int = 63) -> str:
    """An object name (a DNS label: lowercase alphanumerics and ``-``) from ``parts``."""
    text = "-".join(parts)
    safe = re.sub(r"[^a-z0-9-]", "-", text.lower()).strip("-")
    if safe == text and len(safe) <= limit and _DNS_RE.match(safe):
        return safe
    stem = safe[: limit - 9].strip("-")
    return f"{stem}-{_digest(text)}" if stem else f"x{_digest(text)}"


def labels(instance: str, cluster: ClusterSpec, component: str | None = None) -> dict[str, str]:
    """The labels of every object of ``cluster`` (``component``: pods and the Service)."""
    out = {
        L_NAME: "flotilla",
        L_MANAGED: "flotilla",
        L_INSTANCE: label_value(instance),
        L_GATEWAY: label_value(instance),
        L_CLUSTER: label_value(cluster.name),
        L_OWNER: label_value(cluster.owner),
    }
    if component:
        out[L_COMPONENT] = component
    return out


def common_metadata(setting: str, values: Mapping[str, str], are_labels: bool) -> dict[str, str]:
    """``values`` checked as the labels (or annotations) of every object; raises
    ``SystemExit`` naming ``setting`` for a key or value Kubernetes would refuse, or a key
    the backend sets itself."""
    out: dict[str, str] = {}
    for key, value in values.items():
        prefix, _, name = str(key).rpartition("/")
        if not _KEY_NAME_RE.match(name) or (prefix and not _KEY_PREFIX_RE.match(prefix)):
            raise SystemExit(
                f"c.KubeBackend.{setting}: {key!r} is not a valid key ([prefix/]name, the "
                "name at most 63 letters, digits, '-', '_', '.')"
            )
        if key in _OWN_KEYS:
            raise SystemExit(f"c.KubeBackend.{setting}: {key!r} is set by Flotilla itself")
        if not isinstance(value, str):
            raise SystemExit(f"c.KubeBackend.{setting}[{key!r}] must be a string, got {value!r}")
        if are_labels and (len(value) > 63 or not LABEL_VALUE_RE.match(value)):
            raise SystemExit(
                f"c.KubeBackend.{setting}[{key!r}]: {value!r} is not a valid label value (at "
                "most 63 letters, digits, '-', '_', '.', starting and ending with a letter "
                "or digit)"
            )
        out[str(key)] = value
    return out


def instance_selector(instance: str) -> str:
    return f"{L_GATEWAY}={label_value(instance)},{L_MANAGED}=flotilla"


def merge(base: Any, extra: Any) -> Any:
    """``extra`` deep-merged into ``base`` (a copy): dicts key by key, lists appended,
    anything else replaced; dask-gateway's rule for its ``*_extra_*_config``."""
    if isinstance(base, dict) and isinstance(extra, dict):
        out = dict(base)
        for key, value in extra.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if isinstance(base, list) and isinstance(extra, list):
        return [*base, *copy.deepcopy(extra)]
    return copy.deepcopy(extra)


# -- per-cluster settings -------------------------------------------------------------------


def _dict(extra: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = extra.get(key) or {}
    if not isinstance(value, dict):
        raise BackendError(f"c.KubeClusterConfig.{key} must be a dict, got {value!r}")
    return value


def _strings(extra: Mapping[str, Any], key: str) -> dict[str, str]:
    value = _dict(extra, key)
    return {str(k): str(v) for k, v in value.items()}


def _number(extra: Mapping[str, Any], key: str, fallback: float) -> float:
    value = extra.get(key)
    if value is None:
        return fallback
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise BackendError(f"c.KubeClusterConfig.{key} must be a number >= 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class KubeSettings:
    """The ``c.KubeClusterConfig`` fields of one cluster (``ClusterConfig.extra``)."""

    image: str = "daskgateway/dask-gateway:latest"
    image_pull_policy: str | None = None
    image_pull_secrets: tuple[Mapping[str, Any], ...] = ()
    scheduler_cores_limit: float = 1.0
    scheduler_memory_limit: int = 2**30
    worker_cores_limit: float = 1.0
    worker_memory_limit: int = 2**30
    scheduler_extra_container_config: Mapping[str, Any] = field(default_factory=dict)
    scheduler_extra_pod_config: Mapping[str, Any] = field(default_factory=dict)
    scheduler_extra_pod_annotations: Mapping[str, str] = field(default_factory=dict)
    scheduler_extra_pod_labels: Mapping[str, str] = field(default_factory=dict)
    worker_extra_container_config: Mapping[str, Any] = field(default_factory=dict)
    worker_extra_pod_config: Mapping[str, Any] = field(default_factory=dict)
    worker_extra_pod_annotations: Mapping[str, str] = field(default_factory=dict)
    worker_extra_pod_labels: Mapping[str, str] = field(default_factory=dict)
    worker_start_timeout: float = 60.0
    cluster_start_timeout: float = 60.0

    @classmethod
    def of(cls, config: ClusterConfig) -> KubeSettings:
        extra = config.extra
        image = extra.get("image") or cls.image
        if not isinstance(image, str):
            raise BackendError(f"c.KubeClusterConfig.image must be a string, got {image!r}")
        policy = extra.get("image_pull_policy")
        if policy is not None and policy not in ("Always", "IfNotPresent", "Never"):
            raise BackendError(
                "c.KubeClusterConfig.image_pull_policy must be Always, IfNotPresent or "
                f"Never, got {policy!r}"
            )
        secrets = extra.get("image_pull_secrets") or []
        if not isinstance(secrets, list) or not all(isinstance(s, dict) for s in secrets):
            raise BackendError(
                "c.KubeClusterConfig.image_pull_secrets must be a list of {'name': ...} dicts"
            )
        for key in ("scheduler_extra_pod_labels", "worker_extra_pod_labels"):
            for name, value in _strings(extra, key).items():
                if len(value) > 63 or not LABEL_VALUE_RE.match(value):
                    raise BackendError(
                        f"c.KubeClusterConfig.{key}[{name!r}]: {value!r} is not a valid "
                        "label value (at most 63 letters, digits, '-', '_', '.', starting "
                        "and ending with a letter or digit)"
                    )
        return cls(
            image=image,
            image_pull_policy=policy,
            image_pull_secrets=tuple(secrets),
            scheduler_cores_limit=_number(
                extra, "scheduler_cores_limit", float(config.scheduler_cores)
            ),
            scheduler_memory_limit=int(
                _number(extra, "scheduler_memory_limit", config.scheduler_memory)
            ),
            worker_cores_limit=_number(extra, "worker_cores_limit", float(config.worker_cores)),
            worker_memory_limit=int(_number(extra, "worker_memory_limit", config.worker_memory)),
            scheduler_extra_container_config=_dict(extra, "scheduler_extra_container_config"),
            scheduler_extra_pod_config=_dict(extra, "scheduler_extra_pod_config"),
            scheduler_extra_pod_annotations=_strings(extra, "scheduler_extra_pod_annotations"),
            scheduler_extra_pod_labels=_strings(extra, "scheduler_extra_pod_labels"),
            worker_extra_container_config=_dict(extra, "worker_extra_container_config"),
            worker_extra_pod_config=_dict(extra, "worker_extra_pod_config"),
            worker_extra_pod_annotations=_strings(extra, "worker_extra_pod_annotations"),
            worker_extra_pod_labels=_strings(extra, "worker_extra_pod_labels"),
            worker_start_timeout=_number(extra, "worker_start_timeout", 60.0),
            cluster_start_timeout=_number(extra, "cluster_start_timeout", 60.0),
        )


# -- manifests ------------------------------------------------------------------------------


def _cpu(cores: float) -> str:
    return f"{max(1, round(cores * 1000))}m"


def owner_name(cluster: ClusterSpec) -> str:
    return dns_name("flotilla", cluster.name)


def secret_name(cluster: ClusterSpec) -> str:
    return dns_name("flotilla", cluster.name)


def service_name(cluster: ClusterSpec) -> str:
    return dns_name("flotilla", cluster.name)


def scheduler_pod_name(cluster: ClusterSpec) -> str:
    return dns_name("flotilla", cluster.name, "scheduler", limit=253)


def worker_pod_name(worker: WorkerSpec) -> str:
    return dns_name("flotilla", worker.cluster.name, "worker", worker.name, limit=253)


def owner_reference(owner: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "blockOwnerDeletion": True,
    }


def _annotations(cluster: ClusterSpec) -> dict[str, str]:
    return {A_OWNER: cluster.owner, A_CLUSTER: cluster.name}


def owner_manifest(instance: str, cluster: ClusterSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": owner_name(cluster),
            "labels": labels(instance, cluster),
            "annotations": _annotations(cluster),
        },
        "data": {"cluster": cluster.name, "owner": cluster.owner},
    }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret_manifest(
    instance: str, cluster: ClusterSpec, owner: Mapping[str, Any]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name(cluster),
            "labels": labels(instance, cluster),
            "annotations": _annotations(cluster),
            "ownerReferences": [owner_reference(owner)],
        },
        "data": {
            CERT_FILE: _b64(cluster.tls_cert),
            KEY_FILE: _b64(cluster.tls_key),
            TOKEN_KEY: _b64(cluster.token),
        },
    }


def service_manifest(
    instance: str, cluster: ClusterSpec, owner: Mapping[str, Any]
) -> dict[str, Any]:
    selector = labels(instance, cluster, SCHEDULER)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name(cluster),
            "labels": labels(instance, cluster, SCHEDULER),
            "annotations": _annotations(cluster),
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": {
            "selector": {k: selector[k] for k in (L_GATEWAY, L_CLUSTER, L_COMPONENT)},
            "ports": [
                {"name": "tls", "port": SCHEDULER_PORT, "targetPort": SCHEDULER_PORT},
                {"name": "dashboard", "port": DASHBOARD_PORT, "targetPort": DASHBOARD_PORT},
                {"name": "api", "port": API_PORT, "targetPort": API_PORT},
            ],
        },
    }


def _env(cluster: ClusterSpec, worker_name: str | None) -> list[dict[str, Any]]:
    cert, key = f"{CREDENTIALS_DIR}/{CERT_FILE}", f"{CREDENTIALS_DIR}/{KEY_FILE}"
    values = {**cluster.config.environment, **gateway_environment(cluster, cert, key, worker_name)}
    env: list[dict[str, Any]] = [
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}
    ]
    for name, value in values.items():
        if name == "POD_IP":
            continue
        if name == "DASK_GATEWAY_API_TOKEN":
            ref = {"secretKeyRef": {"name": secret_name(cluster), "key": TOKEN_KEY}}
            env.append({"name": name, "valueFrom": ref})
        else:
            env.append({"name": name, "value": value})
    return env


def _fixed_ports(argv: list[str]) -> list[str]:
    """The scheduler's command line with fixed ports instead of ``0`` (its pod is its own)."""
    out = list(argv)
    ports = {"--port": str(SCHEDULER_PORT)}
    addresses = {"--dashboard-address": DASHBOARD_PORT, "--dg-api-address": API_PORT}
    for i in range(len(out) - 1):
        flag, value = out[i], out[i + 1]
        if flag in ports and value == "0":
            out[i + 1] = ports[flag]
        elif flag in addresses and value.endswith(":0"):
            out[i + 1] = f"{value[:-2]}:{addresses[flag]}"
    return out


def _pod(
    *,
    name: str,
    component: str,
    instance: str,
    cluster: ClusterSpec,
    owner: Mapping[str, Any],
    argv: list[str],
    worker_name: str | None,
    settings: KubeSettings,
) -> dict[str, Any]:
    config = cluster.config
    if component == SCHEDULER:
        cores, memory = float(config.scheduler_cores), config.scheduler_memory
        cores_limit, memory_limit = settings.scheduler_cores_limit, settings.scheduler_memory_limit
        extra_container = settings.scheduler_extra_container_config
        extra_pod = settings.scheduler_extra_pod_config
        extra_labels = settings.scheduler_extra_pod_labels
        extra_annotations = settings.scheduler_extra_pod_annotations
    else:
        cores, memory = float(config.worker_cores), config.worker_memory
        cores_limit, memory_limit = settings.worker_cores_limit, settings.worker_memory_limit
        extra_container = settings.worker_extra_container_config
        extra_pod = settings.worker_extra_pod_config
        extra_labels = settings.worker_extra_pod_labels
        extra_annotations = settings.worker_extra_pod_annotations
    container: dict[str, Any] = {
        "name": CONTAINER[component],
        "image": settings.image,
        "command": argv,
        "env": _env(cluster, worker_name),
        "resources": {
            "requests": {"cpu": _cpu(cores), "memory": str(memory)},
            "limits": {"cpu": _cpu(cores_limit), "memory": str(memory_limit)},
        },
        "volumeMounts": [
            {"name": "dask-credentials", "mountPath": CREDENTIALS_DIR, "readOnly": True}
        ],
    }
    if settings.image_pull_policy:
        container["imagePullPolicy"] = settings.image_pull_policy
    if component == SCHEDULER:
        container["ports"] = [
            {"name": "tls", "containerPort": SCHEDULER_PORT},
            {"name": "dashboard", "containerPort": DASHBOARD_PORT},
            {"name": "api", "containerPort": API_PORT},
        ]
    spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "containers": [merge(container, dict(extra_container))],
        "volumes": [
            {
                "name": "dask-credentials",
                "secret": {
                    "secretName": secret_name(cluster),
                    "items": [
                        {"key": CERT_FILE, "path": CERT_FILE},
                        {"key": KEY_FILE, "path": KEY_FILE},
                    ],
                },
            }
        ],
    }
    if settings.image_pull_secrets:
        spec["imagePullSecrets"] = [dict(s) for s in settings.image_pull_secrets]
    annotations = {**extra_annotations, **_annotations(cluster)}
    if worker_name is not None:
        annotations[A_WORKER] = worker_name
    pod_labels = {**extra_labels, **labels(instance, cluster, component)}
    if worker_name is not None:
        pod_labels[L_WORKER] = label_value(worker_name)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": pod_labels,
            "annotations": annotations,
            "ownerReferences": [owner_reference(owner)],
        },
        "spec": merge(spec, dict(extra_pod)),
    }


def scheduler_pod(
    instance: str, cluster: ClusterSpec, owner: Mapping[str, Any], advertise_host: str = ""
) -> dict[str, Any]:
    """The scheduler's pod: listens on its pod IP at fixed ports, and tells the gateway
    ``advertise_host`` (its Service's name) instead of that IP when one is given."""
    argv = _fixed_ports(scheduler_command(cluster.config, host="$(POD_IP)"))
    pod = _pod(
        name=scheduler_pod_name(cluster),
        component=SCHEDULER,
        instance=instance,
        cluster=cluster,
        owner=owner,
        argv=argv,
        worker_name=None,
        settings=KubeSettings.of(cluster.config),
    )
    if advertise_host:
        env = pod["spec"]["containers"][0]["env"]
        env.append({"name": ADVERTISE_HOST, "value": advertise_host})
    return pod


def scheduler_manifests(
    instance: str, cluster: ClusterSpec, owner: Mapping[str, Any], advertise_host: str = ""
) -> list[dict[str, Any]]:
    """The Secret, scheduler pod and Service of ``cluster`` (``owner``: its ConfigMap)."""
    return [
        secret_manifest(instance, cluster, owner),
        scheduler_pod(instance, cluster, owner, advertise_host),
        service_manifest(instance, cluster, owner),
    ]


def worker_pod(
    instance: str,
    worker: WorkerSpec,
    owner: Mapping[str, Any],
    scheduler_address: str,
) -> dict[str, Any]:
    """A worker's pod, connecting to ``scheduler_address`` (``host:port`` or a URL)."""
    cluster = worker.cluster
    argv = worker_command(
        cluster.config, worker.name, scheduler_address, host="$(POD_IP)", dashboard=False
    )
    return _pod(
        name=worker_pod_name(worker),
        component=WORKER,
        instance=instance,
        cluster=cluster,
        owner=owner,
        argv=argv,
        worker_name=worker.name,
        settings=KubeSettings.of(cluster.config),
    )


# -- status ---------------------------------------------------------------------------------


def _timestamp(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return datetime.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _limit_text(nbytes: str | int | None) -> str:
    if nbytes is None:
        return "unknown"
    try:
        value = int(nbytes)
    except ValueError:
        return str(nbytes)
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:g} {unit}"
    return f"{value} bytes"


def pod_status(
    pod: Mapping[str, Any] | None,
    what: str,
    *,
    start_timeout: float = 60.0,
    now: float | None = None,
) -> ProcessStatus:
    """``what`` (``"the scheduler"``, ``"worker w1"``)'s status from its pod, with a
    reason in words when it has ended or cannot start; ``None``: the pod is gone."""
    if pod is None:
        return ProcessStatus(False, f"the pod of {what} was deleted")
    metadata, status = pod.get("metadata") or {}, pod.get("status") or {}
    name = metadata.get("name", "?")
    if metadata.get("deletionTimestamp"):
        return ProcessStatus(False, f"the pod {name} of {what} was deleted")
    phase = status.get("phase", "Pending")
    containers = status.get("containerStatuses") or []
    spec_containers = (pod.get("spec") or {}).get("containers") or [{}]
    image = spec_containers[0].get("image", "?")
    memory_limit = ((spec_containers[0].get("resources") or {}).get("limits") or {}).get("memory")
    for cs in containers:
        state = cs.get("state") or {}
        waiting = state.get("waiting") or {}
        terminated = state.get("terminated") or {}
        reason, message = (
            waiting.get("reason", ""),
            " ".join(str(waiting.get("message", "")).split()),
        )
        if reason in _IMAGE_PULL:
            return ProcessStatus(
                False, f"image {cs.get('image') or image} could not be pulled: {message or reason}"
            )
        if reason in _CONTAINER_CONFIG:
            return ProcessStatus(
                False, f"the container of {what} could not start: {message or reason}"
            )
        if terminated:
            t_reason = terminated.get("reason", "")
            code = terminated.get("exitCode")
            if t_reason == "OOMKilled":
                return ProcessStatus(
                    False,
                    f"{what} exceeded its memory limit of {_limit_text(memory_limit)} (OOMKilled)",
                )
            if phase in ("Succeeded", "Failed") or code is not None:
                detail = " ".join(str(terminated.get("message", "")).split())
                text = f"{what} exited with code {code}"
                if t_reason and t_reason not in ("Error", "Completed"):
                    text += f" ({t_reason})"
                return ProcessStatus(False, text + (f": {detail}" if detail else ""))
    if phase == "Failed":
        reason = status.get("reason", "")
        message = " ".join(str(status.get("message", "")).split())
        if reason == "Evicted":
            return ProcessStatus(False, f"the pod {name} of {what} was evicted: {message}")
        return ProcessStatus(
            False, f"the pod {name} of {what} failed: {message or reason or 'no reason given'}"
        )
    if phase == "Succeeded":
        return ProcessStatus(False, f"{what} exited with code 0")
    if phase == "Pending":
        for condition in status.get("conditions") or []:
            if (
                condition.get("type") == "PodScheduled"
                and condition.get("status") == "False"
                and condition.get("reason") == "Unschedulable"
            ):
                created = _timestamp(metadata.get("creationTimestamp"))
                waited = (now if now is not None else time.time()) - (created or 0.0)
                if created is not None and waited > start_timeout:
                    message = " ".join(str(condition.get("message", "")).split())
                    return ProcessStatus(
                        False,
                        f"the pod {name} of {what} could not be scheduled within "
                        f"{start_timeout:g}s: {message}",
                    )
    return ProcessStatus(True)


# -- the backend ----------------------------------------------------------------------------


def _default_namespace() -> str:
    try:
        return (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip() or "default"
    except OSError:
        return "default"


def _rv(obj: Mapping[str, Any]) -> int:
    try:
        return int((obj.get("metadata") or {}).get("resourceVersion", "0"))
    except ValueError:
        return 0


class KubeBackend(ChecksAtOnce, Backend):
    """The ``kubernetes`` backend: schedulers and workers as pods of one namespace."""

    backend_name = "kubernetes"
    stops_workers_with_cluster = True

    namespace = Unicode(
        help=(
            "Namespace of every cluster's objects. Default: the launcher's own namespace "
            "(its service account's namespace file), else 'default'."
        ),
        config=True,
    )
    instance = Unicode(
        "flotilla",
        help=(
            "Marks this launcher's objects (label gateway.dask.org/instance): its watch, "
            "adoption and stops see only objects carrying it. Distinct per deployment "
            "sharing a namespace."
        ),
        config=True,
    )
    kube_api_url = Unicode(
        "",
        help=(
            "URL of the Kubernetes API server. Empty: in-cluster "
            "(https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT). Not api_url: "
            "dask-gateway-server's c.KubeBackend.api_url is the gateway's own API address, "
            "read as c.Deployment.api_url."
        ),
        config=True,
    )
    api_token_file = Unicode(
        str(SERVICE_ACCOUNT_DIR / "token"),
        help="File holding the bearer token of API calls (re-read every minute).",
        config=True,
    )
    ca_file = Unicode(
        str(SERVICE_ACCOUNT_DIR / "ca.crt"),
        help="CA bundle the API server's certificate is checked against.",
        config=True,
    )
    max_concurrent_requests = Integer(
        16,
        min=1,
        help=(
            "API requests in flight at most (the watch aside): a cluster scaled to "
            "hundreds of workers creates their pods this many at a time."
        ),
        config=True,
    )
    scheduler_address = Enum(
        ["pod-ip", "service"],
        "pod-ip",
        help=(
            "How workers and the gateway (Envoy, the registry) reach a scheduler: "
            "'pod-ip', its pod's IP, or 'service', its Service's DNS name, which the "
            "scheduler then reports as its address (needs cluster DNS where Envoy runs)."
        ),
        config=True,
    )
    request_timeout = Float(
        30.0, help="Seconds any one API request (the watch aside) may take.", config=True
    )
    watch_timeout = Integer(
        300, min=1, help="Seconds each watch request lasts before it is renewed.", config=True
    )
    common_labels = Dict(
        help=(
            "Labels of every object of every cluster (its ConfigMap, Secret, Service and "
            "pods), as in dask-gateway. The *_extra_pod_labels of c.KubeClusterConfig win "
            "on pods; the keys Flotilla sets itself (app.kubernetes.io/name, managed-by, "
            "instance and component, gateway.dask.org/instance and cluster, "
            "flotilla.dev/owner, cluster and worker) cannot be set."
        ),
        config=True,
    )
    common_annotations = Dict(
        help=(
            "Annotations of every object of every cluster, as in dask-gateway; the "
            "*_extra_pod_annotations of c.KubeClusterConfig win on pods."
        ),
        config=True,
    )
    stopped_logs_kept = Integer(
        100,
        min=0,
        help=(
            "Clusters whose logs are kept in memory between their stop (which deletes the "
            "pods, and with them their logs) and the launcher's read of them; the oldest "
            "are dropped beyond this many."
        ),
        config=True,
    )

    @default("namespace")
    def _default_namespace(self) -> str:
        return _default_namespace()

    def __init__(self, transport: httpx.AsyncBaseTransport | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._transport = transport
        self._common_labels = common_metadata("common_labels", self.common_labels, True)
        self._common_annotations = common_metadata(
            "common_annotations", self.common_annotations, False
        )
        self._client: httpx.AsyncClient | None = None
        self._semaphore = asyncio.Semaphore(self.max_concurrent_requests)
        self._token = ""
        self._token_read = 0.0
        self._pods: dict[str, dict[str, Any]] = {}
        self._synced = asyncio.Event()
        self._watch_task: asyncio.Task[None] | None = None
        self._owners: dict[str, dict[str, Any]] = {}
        self._owner_locks: dict[str, asyncio.Lock] = {}
        #: Cluster name -> its logs as read just before stop_cluster deleted its pods, until
        #: the next read_logs of it (oldest first, at most ``stopped_logs_kept``).
        self._stopped_logs: OrderedDict[str, dict[str, str]] = OrderedDict()
        #: The sizes of the last read_logs (the launcher's settings), used by stop_cluster.
        self._log_sizes = (256 * 1024, 4 * 1024 * 1024)
        #: Requests in flight now and at most (tests read them).
        self.in_flight = 0
        self.max_in_flight = 0

    # -- plumbing ---------------------------------------------------------------------------

    def _base_url(self) -> str:
        if self.kube_api_url:
            return self.kube_api_url.rstrip("/")
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        if not host:
            raise SystemExit(
                "c.KubeBackend.kube_api_url is empty and KUBERNETES_SERVICE_HOST is not set "
                "(not running in a pod)"
            )
        if ":" in host:
            host = f"[{host}]"
        return f"https://{host}:{port}"

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            verify: ssl.SSLContext | bool = True
            if self._transport is None and self.ca_file and os.path.exists(self.ca_file):
                verify = ssl.create_default_context(cafile=self.ca_file)
            self._client = httpx.AsyncClient(
                base_url=self._base_url(),
                verify=verify,
                transport=self._transport,
                timeout=httpx.Timeout(self.request_timeout),
                limits=httpx.Limits(max_connections=self.max_concurrent_requests + 2),
            )
        return self._client

    def _headers(self) -> dict[str, str]:
        if self.api_token_file and time.monotonic() - self._token_read > 60:
            try:
                self._token = Path(self.api_token_file).read_text().strip()
            except OSError as exc:
                if self._transport is None:
                    log.warning("c.KubeBackend.api_token_file: %s", exc)
            self._token_read = time.monotonic()
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        return headers

    def _path(self, kind: str, name: str = "") -> str:
        base = f"/api/v1/namespaces/{self.namespace}/{kind}"
        return f"{base}/{name}" if name else base

    async def _request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        *,
        text: bool = False,
    ) -> Any:
        """One API call through the semaphore; 4xx -> :class:`KubeRefused`, no answer or
        5xx -> :class:`KubeUnavailable`."""
        async with self._semaphore:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                answer = await self._http().request(
                    method, path, json=body, params=params, headers=self._headers()
                )
            except httpx.HTTPError as exc:
                raise KubeUnavailable(f"Kubernetes API {method} {path}: {exc!r}") from None
            finally:
                self.in_flight -= 1
        if answer.status_code >= 500:
            raise KubeUnavailable(
                f"Kubernetes API {method} {path}: {answer.status_code} {answer.text[:300]}"
            )
        if answer.status_code >= 400:
            try:
                data = answer.json()
            except ValueError:
                data = {}
            message = data.get("message") if isinstance(data, dict) else None
            reason = data.get("reason", "") if isinstance(data, dict) else ""
            raise KubeRefused(
                " ".join(str(message or answer.text[:300]).split()), answer.status_code, reason
            )
        if text:
            return answer.text
        return answer.json()

    async def _create(
        self, kind: str, manifest: dict[str, Any], cluster: ClusterSpec
    ) -> dict[str, Any]:
        """Create an object, or get the one of that name that exists (409): adoption.
        The common labels and annotations go under the object's own."""
        meta = manifest["metadata"]
        name = meta["name"]
        if self._common_labels:
            meta["labels"] = {**self._common_labels, **meta.get("labels", {})}
        if self._common_annotations:
            meta["annotations"] = {**self._common_annotations, **meta.get("annotations", {})}
        try:
            created: dict[str, Any] = await self._request("POST", self._path(kind), manifest)
            return created
        except KubeRefused as exc:
            if exc.status == 409:
                existing: dict[str, Any] = await self._request("GET", self._path(kind, name))
                return existing
            raise BackendError(
                f"Kubernetes refused the {manifest['kind']} {name} of cluster {cluster.name} "
                f"in namespace {self.namespace}: {exc}"
            ) from None

    async def _delete(self, kind: str, name: str, **params: str) -> None:
        """Delete an object; one that is gone already (404) is no error."""
        try:
            await self._request("DELETE", self._path(kind, name), params=params or None)
        except KubeRefused as exc:
            if exc.status != 404:
                raise BackendError(
                    f"Kubernetes refused to delete {kind}/{name} in namespace "
                    f"{self.namespace}: {exc}"
                ) from None

    # -- the watch --------------------------------------------------------------------------

    def _remember(self, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        known = self._pods.get(name)
        if known is None or _rv(pod) >= _rv(known):
            self._pods[name] = pod

    async def _list(self) -> str:
        listing = await self._request(
            "GET", self._path("pods"), params={"labelSelector": instance_selector(self.instance)}
        )
        version = str(listing["metadata"]["resourceVersion"])
        fresh = {p["metadata"]["name"]: p for p in listing.get("items") or []}
        # Objects this launcher created after the list was taken stay.
        for name, pod in self._pods.items():
            if name not in fresh and _rv(pod) > int(version or 0):
                fresh[name] = pod
        self._pods = fresh
        self._synced.set()
        self.changed()
        return version

    async def _watch(self) -> None:
        delay = 0.5
        version = ""
        while True:
            try:
                if not version:
                    version = await self._list()
                params = {
                    "watch": "1",
                    "resourceVersion": version,
                    "allowWatchBookmarks": "true",
                    "timeoutSeconds": str(self.watch_timeout),
                    "labelSelector": instance_selector(self.instance),
                }
                timeout = httpx.Timeout(self.request_timeout, read=self.watch_timeout + 30)
                async with self._http().stream(
                    "GET",
                    self._path("pods"),
                    params=params,
                    headers=self._headers(),
                    timeout=timeout,
                ) as stream:
                    if stream.status_code == 410:
                        version = ""
                        continue
                    if stream.status_code >= 400:
                        body = (await stream.aread()).decode(errors="replace")[:300]
                        raise KubeUnavailable(f"watch of pods: {stream.status_code} {body}")
                    async for line in stream.aiter_lines():
                        if not line.strip():
                            continue
                        event = json.loads(line)
                        obj = event.get("object") or {}
                        kind = event.get("type")
                        if kind == "ERROR":
                            if obj.get("code") == 410:
                                version = ""  # expired: list again
                            else:
                                log.warning("watch of pods: %s", obj.get("message"))
                            break
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                        if kind == "BOOKMARK":
                            continue
                        name = obj["metadata"]["name"]
                        if kind == "DELETED":
                            self._pods.pop(name, None)
                        else:
                            self._remember(obj)
                        self.changed()
                delay = 0.5
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the watch outlives any one failure
                log.warning(
                    "watch of pods in %s failed (%s); again in %.1fs", self.namespace, exc, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
                if isinstance(exc, KubeRefused) and exc.status == 410:
                    version = ""

    async def _ensure_watch(self) -> None:
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(self._watch(), name="kubernetes-pod-watch")
        try:
            await asyncio.wait_for(self._synced.wait(), self.request_timeout)
        except TimeoutError:
            raise KubeUnavailable(
                f"no list of pods from the Kubernetes API within {self.request_timeout:g}s"
            ) from None

    async def start(self) -> None:
        """Check the API server answers (a one-line SystemExit when not), start the watch."""
        try:
            await self._request("GET", self._path("pods"), params={"limit": "1"})
        except (KubeUnavailable, KubeRefused) as exc:
            raise SystemExit(
                f"Kubernetes API at {self._base_url()} (namespace {self.namespace}) does not "
                f"answer as needed: {exc}"
            ) from None
        await self._ensure_watch()

    async def close(self) -> None:
        if self._watch_task is not None:
            self._watch_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._watch_task
            self._watch_task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _pods_of(
        self, cluster: ClusterSpec, component: str, worker: str | None = None
    ) -> list[dict[str, Any]]:
        found = []
        for pod in self._pods.values():
            meta = pod.get("metadata") or {}
            lab = meta.get("labels") or {}
            if lab.get(L_CLUSTER) != label_value(cluster.name) or lab.get(L_COMPONENT) != component:
                continue
            if (meta.get("annotations") or {}).get(A_CLUSTER, cluster.name) != cluster.name:
                continue
            if worker is not None and (meta.get("annotations") or {}).get(A_WORKER) != worker:
                continue
            if meta.get("deletionTimestamp"):
                continue
            found.append(pod)
        return found

    async def _adopt(
        self, found: list[dict[str, Any]], name: str, what: str
    ) -> dict[str, Any] | None:
        """Keep one live pod of ``found`` (the one named ``name``, else the oldest), delete
        the others."""
        live = [p for p in found if pod_status(p, what, start_timeout=math.inf).running]
        if not live:
            return None
        live.sort(
            key=lambda p: (
                p["metadata"]["name"] != name,
                p["metadata"].get("creationTimestamp", ""),
            )
        )
        keep, *duplicates = live
        for dup in duplicates:
            log.warning("%s: deleting duplicate pod %s", what, dup["metadata"]["name"])
            await self._delete("pods", dup["metadata"]["name"])
            self._pods.pop(dup["metadata"]["name"], None)
        return keep

    async def _owner(self, cluster: ClusterSpec, create: bool) -> dict[str, Any]:
        lock = self._owner_locks.setdefault(cluster.name, asyncio.Lock())
        async with lock:
            owner = self._owners.get(cluster.name)
            if owner is not None:
                return owner
            if create:
                owner = await self._create(
                    "configmaps", owner_manifest(self.instance, cluster), cluster
                )
            else:
                try:
                    owner = await self._request(
                        "GET", self._path("configmaps", owner_name(cluster))
                    )
                except KubeRefused as exc:
                    if exc.status == 404:
                        raise BackendError(
                            f"cluster {cluster.name} has no owner ConfigMap "
                            f"{owner_name(cluster)} in namespace {self.namespace} (stopped?)"
                        ) from None
                    raise
            assert owner is not None
            if (owner.get("metadata") or {}).get("deletionTimestamp"):
                raise BackendError(f"cluster {cluster.name} is being deleted")
            self._owners[cluster.name] = owner
            return owner

    # -- clusters ---------------------------------------------------------------------------

    async def start_cluster(self, cluster: ClusterSpec) -> AsyncIterator[dict[str, Any]]:
        KubeSettings.of(cluster.config)  # bad settings fail before anything is created
        await self._ensure_watch()
        name = scheduler_pod_name(cluster)
        state = {"namespace": self.namespace, "pod": name}
        owner = await self._owner(cluster, create=True)
        advertise = self._service_host(cluster) if self.scheduler_address == "service" else ""
        secret, pod, service = scheduler_manifests(self.instance, cluster, owner, advertise)
        await self._create("secrets", secret, cluster)
        kept = await self._adopt(self._pods_of(cluster, SCHEDULER), name, "the scheduler")
        if kept is not None:
            log.info(
                "cluster %s: adopting scheduler pod %s", cluster.name, kept["metadata"]["name"]
            )
            state["pod"] = kept["metadata"]["name"]
        else:
            created = await self._create("pods", pod, cluster)
            self._remember(created)
            log.info(
                "cluster %s of %s: created scheduler pod %s", cluster.name, cluster.owner, name
            )
        yield state
        await self._create("services", service, cluster)

    async def stop_cluster(self, cluster: ClusterSpec, state: Mapping[str, Any]) -> None:
        """Delete the scheduler pod(s) and the owner (the garbage collector does the rest).

        The pods' logs go with them: they are read first and kept for the next
        :meth:`read_logs` of the cluster (the launcher's, once it has stopped)."""
        await self._ensure_watch()
        if cluster.name not in self._stopped_logs:  # a retried stop keeps the first read
            logs = await self._read_pod_logs(cluster, state, *self._log_sizes)
            self._stopped_logs[cluster.name] = logs
            while len(self._stopped_logs) > self.stopped_logs_kept:
                dropped, _ = self._stopped_logs.popitem(last=False)
                log.info("cluster %s: logs read at its stop dropped, never asked for", dropped)
        names = {p["metadata"]["name"] for p in self._pods_of(cluster, SCHEDULER)}
        names.add(str(state.get("pod") or scheduler_pod_name(cluster)))
        for name in names:
            await self._delete("pods", name)
        await self._delete("configmaps", owner_name(cluster), propagationPolicy="Background")
        self._owners.pop(cluster.name, None)
        self._owner_locks.pop(cluster.name, None)
        log.info("cluster %s of %s: deleted its owner ConfigMap", cluster.name, cluster.owner)

    async def check(
        self,
        clusters: Sequence[tuple[ClusterSpec, Mapping[str, Any]]],
        workers: Sequence[tuple[WorkerSpec, Mapping[str, Any]]],
    ) -> tuple[list[ProcessStatus], list[ProcessStatus]]:
        """Every status from the watch's cache: no API call."""
        await self._ensure_watch()
        now = time.time()
        schedulers = [
            pod_status(
                self._pods.get(str(state.get("pod", ""))),
                "the scheduler",
                start_timeout=KubeSettings.of(spec.config).cluster_start_timeout,
                now=now,
            )
            for spec, state in clusters
        ]
        statuses = [
            pod_status(
                self._pods.get(str(state.get("pod", ""))),
                f"worker {spec.name}",
                start_timeout=KubeSettings.of(spec.cluster.config).worker_start_timeout,
                now=now,
            )
            for spec, state in workers
        ]
        return schedulers, statuses

    # -- workers ----------------------------------------------------------------------------

    def _service_host(self, cluster: ClusterSpec) -> str:
        """The DNS name of the cluster's scheduler Service, for ``scheduler_address="service"``."""
        return f"{service_name(cluster)}.{self.namespace}.svc"

    def _scheduler_address(self, worker: WorkerSpec) -> str:
        if self.scheduler_address == "service":
            return f"tls://{self._service_host(worker.cluster)}:{SCHEDULER_PORT}"
        return worker.scheduler_address

    async def start_worker(self, worker: WorkerSpec) -> AsyncIterator[dict[str, Any]]:
        await self._ensure_watch()
        name = worker_pod_name(worker)
        what = f"worker {worker.name} of cluster {worker.cluster.name}"
        kept = await self._adopt(self._pods_of(worker.cluster, WORKER, worker.name), name, what)
        if kept is not None:
            yield {"namespace": self.namespace, "pod": kept["metadata"]["name"]}
            return
        owner = await self._owner(worker.cluster, create=False)
        pod = worker_pod(self.instance, worker, owner, self._scheduler_address(worker))
        created = await self._create("pods", pod, worker.cluster)
        self._remember(created)
        yield {"namespace": self.namespace, "pod": name}

    async def stop_worker(self, worker: WorkerSpec, state: Mapping[str, Any]) -> None:
        await self._delete("pods", str(state.get("pod") or worker_pod_name(worker)))

    # -- logs -------------------------------------------------------------------------------

    async def _log(self, pod: str, container: str, tail_bytes: int) -> str | None:
        params = {
            "container": container,
            # limitBytes counts from the first line asked for: ask for enough lines, keep the
            # last tail_bytes.
            "tailLines": str(max(1, tail_bytes // 32)),
            "limitBytes": str(tail_bytes * 4),
        }
        try:
            text: str = await self._request(
                "GET", self._path("pods", pod) + "/log", params=params, text=True
            )
        except (KubeRefused, KubeUnavailable) as exc:
            log.info("logs of pod %s: %s", pod, exc)
            return None
        raw = text.encode()
        return raw[-tail_bytes:].decode(errors="replace") if len(raw) > tail_bytes else text

    async def read_logs(
        self, cluster: ClusterSpec, state: Mapping[str, Any], tail_bytes: int, total_bytes: int
    ) -> dict[str, str]:
        """The scheduler's and the workers' container logs (pods/log), newest workers first,
        for pods that still exist; for a cluster this launcher stopped, those read just
        before :meth:`stop_cluster` deleted its pods."""
        self._log_sizes = (tail_bytes, total_bytes)
        kept = self._stopped_logs.pop(cluster.name, None)
        if kept is not None:
            return kept
        await self._ensure_watch()
        return await self._read_pod_logs(cluster, state, tail_bytes, total_bytes)

    async def _read_pod_logs(
        self, cluster: ClusterSpec, state: Mapping[str, Any], tail_bytes: int, total_bytes: int
    ) -> dict[str, str]:
        out: dict[str, str] = {}
        left = total_bytes
        scheduler = str(state.get("pod") or scheduler_pod_name(cluster))
        workers = sorted(
            (
                p
                for p in self._pods.values()
                if (p["metadata"].get("labels") or {}).get(L_CLUSTER) == label_value(cluster.name)
                and (p["metadata"].get("labels") or {}).get(L_COMPONENT) == WORKER
            ),
            key=lambda p: str(
                (p.get("status") or {}).get("startTime")
                or p["metadata"].get("creationTimestamp", "")
            ),
            reverse=True,
        )
        targets = [("scheduler", scheduler, CONTAINER[SCHEDULER])]
        for pod in workers:
            name = (pod["metadata"].get("annotations") or {}).get(A_WORKER, pod["metadata"]["name"])
            targets.append((f"worker-{name}", pod["metadata"]["name"], CONTAINER[WORKER]))
        for key, pod_name, container in targets:
            if left <= 0:
                break
            text = await self._log(pod_name, container, min(tail_bytes, left))
            if text is None:
                continue
            out[key] = text
            left -= len(text.encode())
        return out
