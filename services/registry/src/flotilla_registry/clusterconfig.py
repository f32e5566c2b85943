"""Per-cluster configuration: administrator defaults, user overrides, resource limits.

``c.ClusterConfig.<option>`` in the configuration file sets the defaults for every cluster.
When a cluster is created, the option handler's overrides (see :mod:`.options`) are applied
on top, validated, and frozen into a :class:`ResolvedClusterConfig`, which is stored as the
cluster's ``config_json`` (``docs/internals.md``) and read by launchers. The configuration
classes themselves, and which one a backend's clusters use, are
:mod:`flotilla_common.clusterconfig`'s (re-exported here).

Limits are per cluster (dask-gateway removed per-user limits): ``cluster_max_workers``,
``cluster_max_cores`` and ``cluster_max_memory`` give the effective worker limit
:attr:`ResolvedClusterConfig.max_workers`, which :func:`clamp_scale` and
:func:`clamp_adapt` apply to scale and adapt requests.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from flotilla_common.clusterconfig import (
    CORE_KEYS,
    ClusterConfig,
    PBSClusterConfig,
    SlurmClusterConfig,
    config_class_for,
)
from traitlets import TraitError
from traitlets.config import Config

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

_GiB = 2**30

#: The most workers any cluster gets, whatever its limits (or without any). Without a
#: ceiling, one ``scale(10**9)`` on a cluster with no limit has the registry create a
#: billion worker records in one heartbeat, stalling it for every user.
WORKERS_CEILING = 10_000


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
        data: dict[str, Any] = {key: _thawed(getattr(self, key)) for key in CORE_KEYS}
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
        core = {key: _frozen(data[key]) for key in CORE_KEYS if key in data}
        extra = {key: _frozen(value) for key, value in data.items() if key not in CORE_KEYS}
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

    extra = {name: values[name] for name in sorted(allowed) if name not in CORE_KEYS}
    for name, value in extra.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise OptionsError(f"Invalid value for {name}: not JSON-serialisable") from None
    core = {name: _frozen(values[name]) for name in CORE_KEYS}
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
