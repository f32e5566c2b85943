"""Per-cluster configuration: administrator defaults, user overrides, resource limits.

``c.ClusterConfig.<option>`` in the configuration file sets the defaults for every cluster.
When a cluster is created, the option handler's overrides (see :mod:`.options`) are applied
on top, validated, and frozen into a :class:`ResolvedClusterConfig`, which is stored as the
cluster's ``config_json`` (``docs/internals.md``) and read by launchers.

Limits are per cluster (dask-gateway removed per-user limits): ``cluster_max_workers``,
``cluster_max_cores`` and ``cluster_max_memory`` give the effective worker limit
:attr:`ResolvedClusterConfig.max_workers`, which :func:`clamp_scale` and
:func:`clamp_adapt` apply to scale and adapt requests.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from traitlets import Dict, Float, Integer, List, TraitError, TraitType, Unicode, default
from traitlets.config import Config, LoggingConfigurable

from ._units import parse_bytes
from .options import OptionsError

__all__ = [
    "WORKERS_CEILING",
    "ClusterConfig",
    "PBSClusterConfig",
    "ResolvedClusterConfig",
    "SlurmClusterConfig",
    "clamp_adapt",
    "clamp_scale",
    "config_class_for",
    "resolve_cluster_config",
]

log = logging.getLogger(__name__)

_GiB = 2**30

#: The most workers any cluster gets, whatever its limits (or without any). Without a
#: ceiling, one ``scale(10**9)`` on a cluster with no limit has the registry create a
#: billion worker records in one heartbeat, stalling it for every user.
WORKERS_CEILING = 10_000


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


class _BatchName(Unicode[str, str]):
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


def _batch_name(what: str, setting: str) -> _BatchName:
    return _BatchName(
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

    partition = _batch_name("Slurm partition (--partition)", "c.SlurmBackend.partition")
    account = _batch_name("Slurm account (--account)", "c.SlurmBackend.account")
    qos = _batch_name("Slurm quality of service (--qos)", "c.SlurmBackend.qos")
    reservation = _batch_name("Slurm reservation (--reservation)", "c.SlurmBackend.reservation")


class PBSClusterConfig(ClusterConfig):
    """``ClusterConfig`` of clusters on the ``pbs`` backend (``c.PBSClusterConfig``).

    Queue and account per cluster; empty values leave ``c.PBSBackend``'s in force.
    """

    queue = _batch_name("PBS queue (-q)", "c.PBSBackend.queue")
    account = _batch_name("PBS account (-A)", "c.PBSBackend.account")


#: The configuration class of each backend's clusters; other backends use ClusterConfig.
_BACKEND_CONFIG_CLASSES: dict[str, type[ClusterConfig]] = {
    "slurm": SlurmClusterConfig,
    "pbs": PBSClusterConfig,
}


def config_class_for(backend: str) -> type[ClusterConfig]:
    """The ``ClusterConfig`` (sub)class whose fields configure ``backend``'s clusters."""
    return _BACKEND_CONFIG_CLASSES.get(backend, ClusterConfig)


# The keys of config_json, in the order of docs/internals.md.
_CORE_KEYS = (
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


def _config_traits(cls: type[ClusterConfig]) -> list[str]:
    return sorted(cls.class_trait_names(config=True))


def _frozen(value: Any) -> Any:
    """A read-only copy of JSON-like data (dicts become mapping proxies, lists tuples)."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: _frozen(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    return value


def _thawed(value: Any) -> Any:
    """The JSON-ready form of :func:`_frozen` data."""
    if isinstance(value, Mapping):
        return {k: _thawed(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thawed(v) for v in value]
    return value


def _number(value: float) -> str:
    """``2`` for 2 and 2.0, ``2.5`` for 2.5: for messages."""
    return str(int(value)) if float(value).is_integer() else repr(value)


@dataclass(frozen=True)
class ResolvedClusterConfig:
    """One cluster's validated configuration: what ``config_json`` holds.

    ``worker_threads`` and ``heartbeat_timeout`` are resolved (never 0 or None); memory
    values are bytes. ``extra`` holds
    the options of ``ClusterConfig`` subclasses, by name.
    """

    scheduler_cmd: tuple[str, ...] = ("dask", "scheduler")
    worker_cmd: tuple[str, ...] = ("dask", "worker")
    scheduler_preload: str = "flotilla.scheduler_preload"
    environment: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    worker_cores: int = 1
    worker_threads: int = 1
    worker_memory: int = 2 * _GiB
    scheduler_cores: int = 1
    scheduler_memory: int = 2 * _GiB
    adaptive_period: float = 3.0
    idle_timeout: float = 0.0
    heartbeat_period: float = 15.0
    heartbeat_timeout: float = 30.0
    busy_timeout: float = 3600.0
    cluster_max_workers: int | None = None
    cluster_max_cores: float | None = None
    cluster_max_memory: int | None = None
    cluster_start_timeout: float = 60.0
    worker_start_timeout: float = 60.0
    worker_start_failure_limit: int = 3
    max_lifetime: float = 0.0
    no_client_timeout: float = 0.0
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def max_workers(self) -> int:
        """The effective worker limit: the tightest of the limits that are set.

        ``cluster_max_workers``, ``(cluster_max_cores - scheduler_cores) // worker_cores``
        and ``(cluster_max_memory - scheduler_memory) // worker_memory``, never below 0,
        and never above :data:`WORKERS_CEILING` (which is the limit when none is set).
        """
        limits: list[int] = [WORKERS_CEILING]
        if self.cluster_max_workers is not None:
            limits.append(self.cluster_max_workers)
        if self.cluster_max_cores is not None:
            limits.append(int((self.cluster_max_cores - self.scheduler_cores) // self.worker_cores))
        if self.cluster_max_memory is not None:
            limits.append((self.cluster_max_memory - self.scheduler_memory) // self.worker_memory)
        return max(0, min(limits))

    def to_dict(self) -> dict[str, Any]:
        """The ``config_json`` object: the keys of ``docs/internals.md``, then ``extra``."""
        data: dict[str, Any] = {key: _thawed(getattr(self, key)) for key in _CORE_KEYS}
        for key in sorted(self.extra):
            data[key] = _thawed(self.extra[key])
        return data

    def to_json(self) -> str:
        """:meth:`to_dict` as JSON text (the registry's ``config_json`` column)."""
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ResolvedClusterConfig:
        """Rebuild from :meth:`to_dict` output; unknown keys go to ``extra``.

        Does not re-validate: the input is trusted stored output of :meth:`to_dict`.
        """
        core = {key: _frozen(data[key]) for key in _CORE_KEYS if key in data}
        extra = {key: _frozen(value) for key, value in data.items() if key not in _CORE_KEYS}
        return cls(**core, extra=MappingProxyType(extra))

    @classmethod
    def from_json(cls, text: str) -> ResolvedClusterConfig:
        """Rebuild from :meth:`to_json` output."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("config_json must hold a JSON object")
        return cls.from_dict(data)


def resolve_cluster_config(
    config: Config,
    overrides: Mapping[str, Any],
    *,
    config_class: type[ClusterConfig] = ClusterConfig,
) -> ResolvedClusterConfig:
    """Apply a cluster's ``overrides`` on the administrator's ``c.ClusterConfig`` values.

    ``overrides`` are what :meth:`.options.Options.get_configuration` returned. Every key
    must be a configurable trait of ``config_class`` (a backend's subclass adds its own).
    Raises :class:`.options.OptionsError` (a 422) for unknown keys, invalid values, and a
    scheduler that alone exceeds ``cluster_max_cores`` or ``cluster_max_memory``.

    An invalid ``c.ClusterConfig`` value in ``config`` raises ``traitlets.TraitError``:
    that is a deployment error, which callers should surface at start-up by resolving
    once with no overrides.
    """
    if not isinstance(overrides, Mapping):
        raise OptionsError(
            f"cluster configuration overrides must be a dict, got {type(overrides).__name__!r}"
        )
    cluster_config = config_class(config=config)
    allowed = set(config_class.class_trait_names(config=True))
    unknown = sorted(str(key) for key in overrides if key not in allowed)
    if unknown:
        raise OptionsError(
            f"Unknown cluster configuration field{'s' if len(unknown) > 1 else ''} "
            f"{', '.join(map(repr, unknown))}"
        )
    for key, value in overrides.items():
        try:
            setattr(cluster_config, key, value)
        except TraitError as exc:
            # traitlets' messages name the field ("The 'worker_cores' trait of ...").
            raise OptionsError(str(exc)) from None
        except (ArithmeticError, ValueError) as exc:
            # e.g. an int too large for a float trait: still the request's fault.
            raise OptionsError(f"Invalid value for {key}: {exc}") from None

    values = {name: getattr(cluster_config, name) for name in allowed}
    if values["worker_threads"] == 0:
        values["worker_threads"] = values["worker_cores"]
    if values["heartbeat_timeout"] is None:
        values["heartbeat_timeout"] = 2 * values["heartbeat_period"]
    elif values["heartbeat_timeout"] <= values["heartbeat_period"]:
        raise OptionsError(
            f"heartbeat_timeout ({_number(values['heartbeat_timeout'])} s) must exceed "
            f"heartbeat_period ({_number(values['heartbeat_period'])} s)"
        )

    max_cores = values["cluster_max_cores"]
    if max_cores is not None and values["scheduler_cores"] > max_cores:
        raise OptionsError(
            f"Scheduler cores request of {_number(values['scheduler_cores'])} exceeds "
            f"cluster cores limit of {_number(max_cores)}"
        )
    max_memory = values["cluster_max_memory"]
    if max_memory is not None and values["scheduler_memory"] > max_memory:
        raise OptionsError(
            f"Scheduler memory request of {values['scheduler_memory']} exceeds "
            f"cluster memory limit of {max_memory}"
        )

    extra = {name: values[name] for name in sorted(allowed) if name not in _CORE_KEYS}
    for name, value in extra.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise OptionsError(f"Invalid value for {name}: not JSON-serialisable") from None
    core = {name: _frozen(values[name]) for name in _CORE_KEYS}
    return ResolvedClusterConfig(
        **core, extra=MappingProxyType({k: _frozen(v) for k, v in extra.items()})
    )


def clamp_scale(count: int, max_workers: int | None) -> tuple[int, str | None]:
    """Clamp a scale request to the cluster's worker limit.

    Returns the count to use and, if it was clamped, the warning the client shows
    (``{"ok": false, "msg": ...}``).
    """
    if max_workers is None or count <= max_workers:
        return count, None
    return max_workers, (
        f"Scale request of {count} workers would exceed resource limit of "
        f"{max_workers} workers. Scaling to {max_workers} instead."
    )


def clamp_adapt(
    minimum: int | None, maximum: int | None, max_workers: int | None
) -> tuple[int | None, int | None, str | None]:
    """Clamp an adapt request to the cluster's worker limit.

    Without a limit the request passes unchanged. With one, a missing ``maximum`` becomes
    the limit and a missing ``minimum`` 0 (no message for that); a value above the limit is
    clamped to it, and then the message reports the request (after the filling-in) and
    what is used instead.
    """
    if max_workers is None:
        return minimum, maximum, None
    if maximum is None:
        maximum = max_workers
    if minimum is None:
        minimum = 0
    if maximum <= max_workers and minimum <= max_workers:
        return minimum, maximum, None
    new_maximum = min(maximum, max_workers)
    new_minimum = min(minimum, max_workers)
    return (
        new_minimum,
        new_maximum,
        (
            f"Adapt with `maximum={maximum}, minimum={minimum}` workers would exceed resource "
            f"limit of {max_workers} workers. Using `maximum={new_maximum}, minimum={new_minimum}` "
            "instead."
        ),
    )
