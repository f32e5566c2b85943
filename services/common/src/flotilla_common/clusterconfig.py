"""The cluster configuration classes: ``c.ClusterConfig`` and each backend's subclass.

The registry resolves a cluster's configuration with the class of the cluster's backend
(:func:`config_class_for`) and stores the result as ``config_json``; launchers read it
back. Both sides take the core keys from :data:`CORE_KEYS`.

A backend with options of its own (a partition, a queue, an image...) declares a subclass
of :class:`ClusterConfig` and registers it in the entry-point group
:data:`ENTRY_POINT_GROUP` (``flotilla.cluster_configs``) under the backend's name, in the
distribution that ships the backend. The registry imports that class, so its module must
import no launcher code: only this package and traitlets. A backend without an entry
point gets the plain :class:`ClusterConfig`.
"""

from __future__ import annotations

import logging
import math
import re
from functools import cache
from importlib.metadata import entry_points
from typing import Any

from traitlets import Dict, Float, Integer, List, TraitError, TraitType, Unicode, default
from traitlets.config import LoggingConfigurable

from .units import parse_bytes

__all__ = [
    "CORE_KEYS",
    "ENTRY_POINT_GROUP",
    "BatchName",
    "ClusterConfig",
    "KubeClusterConfig",
    "PBSClusterConfig",
    "SlurmClusterConfig",
    "YarnClusterConfig",
    "batch_name",
    "config_class_for",
]

log = logging.getLogger(__name__)

#: The entry-point group of backends' cluster-configuration classes (name: the backend).
ENTRY_POINT_GROUP = "flotilla.cluster_configs"

_GiB = 2**30

# ---------------------------------------------------------------------------------------------
# Trait types


class _Int(Integer[Any, Any]):
    """An Integer that refuses booleans (traitlets accepts True as 1)."""

    def validate(self, obj: Any, value: Any) -> Any:
        if isinstance(value, bool):
            self.error(obj, value)
        return super().validate(obj, value)


class _Float(Float[Any, Any]):
    """A finite Float that refuses booleans, optionally with an exclusive lower bound."""

    def __init__(self, *args: Any, positive: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.positive = positive

    def validate(self, obj: Any, value: Any) -> Any:
        if isinstance(value, bool):
            self.error(obj, value)
        value = super().validate(obj, value)
        if value is None:
            return value
        if not math.isfinite(value):
            raise TraitError(f"{self.name} must be a finite number, got {value!r}")
        if self.positive and value <= 0:
            raise TraitError(f"{self.name} must be greater than 0, got {value!r}")
        return value


class _Memory(TraitType[int | None, int | float | str | None]):
    """A number of bytes: an int, or a string with a binary unit (``"2 G"``, ``"512 M"``)."""

    info_text = "a number of bytes or a string with a binary unit (K, M, G, T), e.g. '2 G'"

    def __init__(self, default_value: Any = None, *, minimum: int = 0, **kwargs: Any) -> None:
        super().__init__(default_value, **kwargs)
        self.minimum = minimum

    def validate(self, obj: Any, value: Any) -> int | None:
        if value is None and self.allow_none:
            return None
        try:
            parsed = parse_bytes(value)
        except ValueError as exc:
            raise TraitError(f"{self.name}: {exc}") from None
        if parsed < self.minimum:
            raise TraitError(f"{self.name} must be at least {self.minimum} bytes, got {value!r}")
        return parsed


class _Environment(Dict):
    """Environment variables: names and values a process environment can hold.

    Checked here so a bad name is a 422 when the cluster is requested, rather than a
    cluster that fails when its launcher cannot spawn the scheduler.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(value_trait=Unicode(), key_trait=Unicode(), **kwargs)

    def validate(self, obj: Any, value: Any) -> Any:
        value = super().validate(obj, value)
        for name, text in value.items():
            if not name or "=" in name or "\0" in name:
                raise TraitError(
                    f"environment variable names must be non-empty, without '=' or NUL; "
                    f"got {name!r}"
                )
            if "\0" in text:
                raise TraitError(f"environment variable {name} must not contain NUL")
        return value


class _Command(List[str]):
    """A command as a list of arguments; a single string is one argument (not shell-split)."""

    def __init__(self, default_value: list[str], **kwargs: Any) -> None:
        super().__init__(Unicode(), default_value=default_value, minlen=1, **kwargs)

    def validate(self, obj: Any, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        elif isinstance(value, tuple):
            value = list(value)
        return super().validate(obj, value)


# ---------------------------------------------------------------------------------------------
# ClusterConfig


class ClusterConfig(LoggingConfigurable):
    """What each cluster runs and how much it may use (``c.ClusterConfig``).

    Backends may subclass it to add their own options (an image, a queue...); those are
    overridable by option handlers and serialised into ``config_json`` like the rest.
    """

    scheduler_cmd = _Command(
        ["dask", "scheduler"],
        help=(
            "Command that starts a cluster's scheduler, as a list of arguments (a single "
            "string is taken as one argument, not split). Flotilla appends its own flags."
        ),
        config=True,
    )
    worker_cmd = _Command(
        ["dask", "worker"],
        help=(
            "Command that starts a worker, as a list of arguments (a single string is "
            "taken as one argument, not split). Flotilla appends its own flags."
        ),
        config=True,
    )
    scheduler_preload = Unicode(
        "flotilla.scheduler_preload",
        help=(
            "Module the scheduler preloads (--preload) to talk to the gateway: heartbeats, "
            "scale and adapt requests, idle timeout."
        ),
        config=True,
    )
    environment = _Environment(
        help="Environment variables (name -> string value) for the scheduler and the workers.",
        config=True,
    )
    worker_cores = _Int(
        1,
        min=1,
        help="Cores reserved for each worker (count). Also the default of worker_threads.",
        config=True,
    )
    worker_threads = _Int(
        0,
        min=0,
        help="Threads per worker (--nthreads, count). 0: the same as worker_cores.",
        config=True,
    )
    worker_memory = _Memory(
        2 * _GiB,
        minimum=1,
        help=(
            "Memory limit of each worker (--memory-limit), in bytes. Accepts an int or a "
            "string with a binary unit: '512 M', '1.5 G', '2 G' (K=2**10 ... T=2**40)."
        ),
        config=True,
    )
    scheduler_cores = _Int(1, min=1, help="Cores reserved for the scheduler (count).", config=True)
    scheduler_memory = _Memory(
        2 * _GiB,
        minimum=1,
        help="Memory reserved for the scheduler, in bytes (int or '2 G'-style string).",
        config=True,
    )
    adaptive_period = _Float(
        3.0,
        positive=True,
        help="Seconds between adaptive-scaling decisions of the scheduler (--dg-adaptive-period).",
        config=True,
    )
    idle_timeout = _Float(
        0.0,
        min=0.0,
        help=(
            "Seconds a cluster may stay idle (no tasks, no clients) before it is shut "
            "down. 0 disables the timeout."
        ),
        config=True,
    )
    heartbeat_period = _Float(
        15.0,
        positive=True,
        help="Seconds between the scheduler's heartbeats to the gateway (--dg-heartbeat-period).",
        config=True,
    )
    heartbeat_timeout = _Float(
        None,
        allow_none=True,
        positive=True,
        help=(
            "Seconds a running cluster's scheduler may go without a heartbeat before the "
            "cluster is failed ('heartbeat timed out'). Must exceed heartbeat_period. "
            "None: twice heartbeat_period (dask-gateway's cluster_heartbeat_timeout)."
        ),
        config=True,
    )
    busy_timeout = _Float(
        3600.0,
        min=0.0,
        help=(
            "Seconds a running cluster's scheduler may go without a heartbeat while its "
            "launcher still sees the scheduler's process alive (an event loop stalled by "
            "a long task or a heavy dashboard page is busy, not dead) before the cluster "
            "is failed as for heartbeat_timeout. At most heartbeat_timeout: no such grace. "
            "0: as long as the process lives."
        ),
        config=True,
    )
    cluster_start_timeout = _Float(
        60.0,
        positive=True,
        help=(
            "Seconds from a cluster's creation to its scheduler's first heartbeat before the "
            "cluster is failed (a scheduler that hangs, a launcher that never starts it)."
        ),
        config=True,
    )
    worker_start_timeout = _Float(
        60.0,
        positive=True,
        help=(
            "Seconds from a worker's creation until its scheduler reports it connected; a "
            "worker later than that is stopped and counts as a failed start. The gateway "
            "learns of connected workers from heartbeats, so this is checked at the first "
            "heartbeat after the deadline."
        ),
        config=True,
    )
    worker_start_failure_limit = _Int(
        3,
        min=0,
        help=(
            "Fail the cluster after this many consecutive workers failed to start (exited "
            "or timed out before connecting). 0: never."
        ),
        config=True,
    )
    max_lifetime = _Float(
        0.0,
        min=0.0,
        help=(
            "Seconds from a cluster's creation after which the registry stops it (STOPPED, "
            "reason 'Cluster reached its max_lifetime of N s'), however busy it is. "
            "0: no limit."
        ),
        config=True,
    )
    no_client_timeout = _Float(
        0.0,
        min=0.0,
        help=(
            "Seconds a running cluster may go without any Dask client connected before the "
            "registry stops it (its owner's notebook is gone); counted from the last "
            "client's disconnection, or from the cluster becoming RUNNING if none ever "
            "connected. Needs a scheduler preload that reports its clients "
            "(flotilla.scheduler_preload); clusters whose preload does not (dask-gateway's) "
            "are never stopped by it. 0: never."
        ),
        config=True,
    )
    cluster_max_workers = _Int(
        None,
        allow_none=True,
        min=0,
        help=(
            "Maximum number of workers per cluster (count). None: no explicit limit; "
            "cluster_max_cores and cluster_max_memory may still imply one. No cluster ever "
            "gets more than 10000 workers."
        ),
        config=True,
    )
    cluster_max_cores = _Float(
        None,
        allow_none=True,
        min=0.0,
        help=(
            "Maximum cores per cluster, scheduler included (count). Limits the workers to "
            "(cluster_max_cores - scheduler_cores) // worker_cores. None: no limit."
        ),
        config=True,
    )
    cluster_max_memory = _Memory(
        None,
        allow_none=True,
        help=(
            "Maximum memory per cluster, scheduler included, in bytes (int or '16 G'-style "
            "string). Limits the workers to (cluster_max_memory - scheduler_memory) // "
            "worker_memory. None: no limit."
        ),
        config=True,
    )

    @default("log")
    def _default_log(self) -> logging.Logger:
        # Unknown c.ClusterConfig keys are logged here (rather than raised as warnings).
        return log


# A name a batch system knows: a partition, queue, account, QOS, reservation.
_BATCH_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}$")


class BatchName(Unicode[str, str]):
    """A partition, queue or account name, or empty for the launcher's own setting.

    It ends up on a submit command line or in a job script's ``#PBS`` lines, so anything
    but letters, digits and ``_.@+-`` (a space, a newline, a leading dash) is a 422 here.
    """

    def validate(self, obj: Any, value: Any) -> Any:
        value = super().validate(obj, value)
        if value and not _BATCH_NAME_RE.match(value):
            raise TraitError(
                f"{self.name} must be empty or a name of at most 128 letters, digits and "
                f"'_.@+-' (not starting with '.@+-'), got {value!r}"
            )
        return value


def batch_name(what: str, setting: str) -> BatchName:
    return BatchName(
        "",
        help=f"{what} of this cluster's jobs; empty: the launcher's {setting}.",
        config=True,
    )


class SlurmClusterConfig(ClusterConfig):
    """``ClusterConfig`` of clusters on the ``slurm`` backend (``c.SlurmClusterConfig``).

    Where each cluster's jobs run, per cluster: an option handler can return
    ``{"partition": "gpu"}``. Empty values leave the launcher's ``c.SlurmBackend``
    settings in force. Slurm itself decides whether the owner may use what they chose.
    """

    partition = batch_name("Slurm partition (--partition)", "c.SlurmBackend.partition")
    account = batch_name("Slurm account (--account)", "c.SlurmBackend.account")
    qos = batch_name("Slurm quality of service (--qos)", "c.SlurmBackend.qos")
    reservation = batch_name("Slurm reservation (--reservation)", "c.SlurmBackend.reservation")


class PBSClusterConfig(ClusterConfig):
    """``ClusterConfig`` of clusters on the ``pbs`` backend (``c.PBSClusterConfig``).

    Queue and account per cluster; empty values leave ``c.PBSBackend``'s in force.
    """

    queue = batch_name("PBS queue (-q)", "c.PBSBackend.queue")
    account = batch_name("PBS account (-A)", "c.PBSBackend.account")


class _LocalizeFiles(Dict):
    """``localize_files``: local name -> a path string, or a dict of ``skein.File`` fields.

    Checked here for shape only (the registry has no skein): a value is a non-empty string
    or a dict with a non-empty string ``source``; names are plain file names.
    """

    def validate(self, obj: Any, value: Any) -> Any:
        value = super().validate(obj, value)
        for name, item in value.items():
            if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
                raise TraitError(f"localize_files: {name!r} is not a plain file name")
            if isinstance(item, str) and item:
                continue
            if isinstance(item, dict) and isinstance(item.get("source"), str) and item["source"]:
                continue
            raise TraitError(
                f"localize_files[{name!r}] must be a path or a dict with a 'source' path"
            )
        return value


class YarnClusterConfig(ClusterConfig):
    """``ClusterConfig`` of clusters on the ``yarn`` backend (``c.YarnClusterConfig``).

    The names and meanings of dask-gateway-server's ``YarnClusterConfig``: each cluster
    is one YARN application in ``queue``; ``localize_files`` are made available in every
    container's working directory (archives ``.tar.gz``/``.zip`` unpacked as a directory);
    ``scheduler_setup``/``worker_setup`` are shell run before the scheduler's or a
    worker's command (activating an environment, say).
    """

    queue = BatchName(
        "default",
        help="The YARN queue this cluster's application is submitted to.",
        config=True,
    )
    localize_files = _LocalizeFiles(
        help=(
            "Files to localize into every container: local name -> path (on the cluster's "
            "filesystem or the launcher's host), or a dict of skein.File fields "
            "({'source': ..., 'type': 'archive', 'visibility': ...}). Archives "
            "(.tar.gz, .zip) are unpacked as a directory of that name."
        ),
        config=True,
    )
    scheduler_setup = Unicode(
        "", help="Shell commands run before the scheduler starts.", config=True
    )
    worker_setup = Unicode("", help="Shell commands run before each worker starts.", config=True)


def _kube_dict(what: str) -> Dict[Any, Any]:
    return Dict(help=what, config=True)


class KubeClusterConfig(ClusterConfig):
    """``ClusterConfig`` of clusters on the ``kubernetes`` backend (``c.KubeClusterConfig``).

    The names and meanings of dask-gateway-server's ``KubeClusterConfig`` (its namespace
    is the launcher's, ``c.KubeBackend.namespace``). The ``*_extra_*_config`` dicts are
    deep-merged into the pod spec or container Flotilla generates (dicts key by key, lists
    appended), in the API's camelCase: tolerations, a node selector or a service account
    go in ``*_extra_pod_config``.
    """

    image = Unicode(
        "daskgateway/dask-gateway:latest",
        help=(
            "Container image of the scheduler and workers; it must hold dask, distributed "
            "and the module named by scheduler_preload (flotilla's, by default)."
        ),
        config=True,
    )
    image_pull_policy = Unicode(
        None,
        allow_none=True,
        help="imagePullPolicy of the containers (Always, IfNotPresent, Never); None: the API's.",
        config=True,
    )
    image_pull_secrets = List(
        Dict(),
        help="imagePullSecrets of the pods: a list of {'name': <Secret name>}.",
        config=True,
    )
    scheduler_cores_limit = _Float(
        None,
        allow_none=True,
        min=0.0,
        help="CPU limit of the scheduler's container (cores); None: scheduler_cores.",
        config=True,
    )
    scheduler_memory_limit = _Memory(
        None,
        allow_none=True,
        help="Memory limit of the scheduler's container (bytes); None: scheduler_memory.",
        config=True,
    )
    worker_cores_limit = _Float(
        None,
        allow_none=True,
        min=0.0,
        help="CPU limit of each worker's container (cores); None: worker_cores.",
        config=True,
    )
    worker_memory_limit = _Memory(
        None,
        allow_none=True,
        help="Memory limit of each worker's container (bytes); None: worker_memory.",
        config=True,
    )
    scheduler_extra_container_config = _kube_dict(
        "Deep-merged into the scheduler's container (camelCase keys of a Container)."
    )
    scheduler_extra_pod_config = _kube_dict(
        "Deep-merged into the scheduler pod's spec (camelCase keys of a PodSpec)."
    )
    scheduler_extra_pod_annotations = _kube_dict("Extra annotations of the scheduler's pod.")
    scheduler_extra_pod_labels = _kube_dict("Extra labels of the scheduler's pod.")
    worker_extra_container_config = _kube_dict(
        "Deep-merged into each worker's container (camelCase keys of a Container)."
    )
    worker_extra_pod_config = _kube_dict(
        "Deep-merged into each worker pod's spec (camelCase keys of a PodSpec), e.g. "
        "{'tolerations': [...], 'nodeSelector': {...}}."
    )
    worker_extra_pod_annotations = _kube_dict("Extra annotations of each worker's pod.")
    worker_extra_pod_labels = _kube_dict("Extra labels of each worker's pod.")


#: The keys of every cluster's ``config_json``, in the order of ``docs/internals.md``: the
#: options of :class:`ClusterConfig`. A backend's subclass adds its own after them. The
#: registry writes them, launchers read them; both take the list from here.
CORE_KEYS = (
    "scheduler_cmd",
    "worker_cmd",
    "scheduler_preload",
    "environment",
    "worker_cores",
    "worker_threads",
    "worker_memory",
    "scheduler_cores",
    "scheduler_memory",
    "adaptive_period",
    "idle_timeout",
    "heartbeat_period",
    "heartbeat_timeout",
    "busy_timeout",
    "cluster_max_workers",
    "cluster_max_cores",
    "cluster_max_memory",
    "cluster_start_timeout",
    "worker_start_timeout",
    "worker_start_failure_limit",
    "max_lifetime",
    "no_client_timeout",
)


@cache
def config_class_for(backend: str) -> type[ClusterConfig]:
    """The ``ClusterConfig`` (sub)class whose fields configure ``backend``'s clusters.

    The class registered under ``backend`` in :data:`ENTRY_POINT_GROUP`, or
    :class:`ClusterConfig` when there is none. An entry point that is not a
    ``ClusterConfig`` subclass is a deployment error (``TypeError``). Looked up once per
    backend and process (``config_class_for.cache_clear()`` forgets).
    """
    for ep in entry_points(group=ENTRY_POINT_GROUP, name=backend):
        cls = ep.load()
        if not (isinstance(cls, type) and issubclass(cls, ClusterConfig)):
            raise TypeError(
                f"cluster configuration of backend {backend!r} ({ep.value}) is not a "
                "ClusterConfig subclass"
            )
        return cls
    return ClusterConfig
