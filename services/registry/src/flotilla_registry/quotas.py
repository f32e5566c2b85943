"""Per-user quotas over all of a user's active clusters, and what they use.

A user's quota (``c.Quotas``) limits, summed over every cluster of theirs whose target is
RUNNING (pending ones too, on every backend): how many clusters, the cores and memory
reserved for their schedulers and workers, and the workers. Each field of a user's quota
is taken from ``c.Quotas.users[user]`` if set there, else the most generous value among
``c.Quotas.groups`` of the groups they belong to, else ``c.Quotas.default``; an absent
(or None) value is no limit.

What a cluster uses is what it reserves: its scheduler's ``scheduler_cores`` and
``scheduler_memory`` plus ``count`` times ``worker_cores`` and ``worker_memory``, where
``count`` is the worker count the registry granted (on ``scale``, or when a scheduler's
heartbeat asks for more). Stopping a cluster frees its share at once.

Creating a cluster over a quota raises :class:`QuotaExceeded`; a scale request or a
scheduler asking for more workers is clamped to what the quota leaves (see
:func:`workers_allowed`). The registry makes these checks while holding the owner's lock
(across replicas: a PostgreSQL advisory lock in the same transaction), so concurrent
requests never pass a quota together.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from flotilla_common.units import parse_bytes
from traitlets import Dict, TraitError, validate
from traitlets.config import Configurable

from .errors import QuotaExceeded

__all__ = [
    "QUOTA_FIELDS",
    "Quota",
    "Quotas",
    "Shape",
    "Usage",
    "clamp_message",
    "format_bytes",
    "quota_limit",
    "quota_refusal",
    "workers_allowed",
]

#: Every quota field, with the unit it is shown in.
QUOTA_FIELDS = {
    "max_clusters": "clusters",
    "max_cores": "cores",
    "max_memory": "bytes",
    "max_workers": "workers",
}


def format_bytes(n: float) -> str:
    """``429496729600`` → ``'400 GiB'`` (binary units, as the memory settings)."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:.4g} {unit}"
    return f"{n:.0f} B"


def _parse_quota(where: str, value: Any) -> dict[str, float | None]:
    if not isinstance(value, Mapping):
        raise TraitError(f"{where} must be a dict of quota fields, got {value!r}")
    out: dict[str, float | None] = {}
    for key, amount in value.items():
        if key not in QUOTA_FIELDS:
            raise TraitError(f"{where}: unknown quota {key!r} (known: {', '.join(QUOTA_FIELDS)})")
        if amount is None:
            out[key] = None
        elif key == "max_memory":
            try:
                out[key] = parse_bytes(amount)
            except ValueError as exc:
                raise TraitError(f"{where}.max_memory: {exc}") from None
        elif isinstance(amount, bool) or not isinstance(amount, int | float) or amount < 0:
            raise TraitError(f"{where}.{key} must be a non-negative number, got {amount!r}")
        else:
            out[key] = amount
    return out


class Quotas(Configurable):
    """Per-user limits over all of a user's active clusters (see :mod:`.quotas`)."""

    default = Dict(
        help=(
            "Quota of every user not otherwise configured: a dict with any of max_clusters "
            "(concurrent active clusters), max_cores (cores of schedulers and workers), "
            "max_memory (bytes or a string like '400 G', binary units) and max_workers. "
            "A missing key or None: no limit. Example: {'max_cores': 100, 'max_memory': "
            "'400 G'}."
        ),
        config=True,
    )
    groups = Dict(
        help=(
            "Group -> quota dict (keys as in default). A user in several groups gets, for "
            "each key, the most generous value among their groups that set it; keys no "
            "group of theirs sets come from default."
        ),
        config=True,
    )
    users = Dict(
        help=(
            "User name -> quota dict (keys as in default); a key set here wins over the "
            "user's groups and the default."
        ),
        config=True,
    )

    @validate("default")
    def _check_default(self, proposal: Any) -> dict[str, Any]:
        _parse_quota("c.Quotas.default", proposal["value"])
        return dict(proposal["value"])

    @validate("groups", "users")
    def _check_table(self, proposal: Any) -> dict[str, Any]:
        name = proposal["trait"].name
        for key, value in proposal["value"].items():
            _parse_quota(f"c.Quotas.{name}[{key!r}]", value)
        return dict(proposal["value"])

    def for_user(self, user: str, groups: Iterable[str]) -> Quota:
        """The quota of ``user``, member of ``groups``."""
        values = dict(_parse_quota("default", self.default))
        from_groups: dict[str, float | None] = {}
        for group in sorted(set(groups)):
            if group not in self.groups:
                continue
            for key, amount in _parse_quota(group, self.groups[group]).items():
                if key not in from_groups:
                    from_groups[key] = amount
                else:
                    held = from_groups[key]
                    from_groups[key] = None if held is None or amount is None else max(held, amount)
        values.update(from_groups)
        if user in self.users:
            values.update(_parse_quota(user, self.users[user]))
        return Quota(**{k: values.get(k) for k in QUOTA_FIELDS})


@dataclass(frozen=True)
class Quota:
    """One user's limits; None is no limit."""

    max_clusters: float | None = None
    max_cores: float | None = None
    max_memory: float | None = None
    max_workers: float | None = None

    @property
    def limited(self) -> bool:
        return any(getattr(self, k) is not None for k in QUOTA_FIELDS)

    def to_dict(self) -> dict[str, float | None]:
        return {k: getattr(self, k) for k in QUOTA_FIELDS}


@dataclass(frozen=True)
class Shape:
    """What one cluster's scheduler and each of its workers reserve."""

    scheduler_cores: int = 1
    scheduler_memory: int = 0
    worker_cores: int = 1
    worker_memory: int = 0

    @classmethod
    def from_config_json(cls, text: str) -> Shape:
        try:
            config = json.loads(text) if text else {}
        except ValueError:
            config = {}
        if not isinstance(config, dict):
            config = {}
        return cls(
            scheduler_cores=int(config.get("scheduler_cores") or 0),
            scheduler_memory=int(config.get("scheduler_memory") or 0),
            worker_cores=int(config.get("worker_cores") or 0),
            worker_memory=int(config.get("worker_memory") or 0),
        )

    def usage(self, count: int) -> Usage:
        """What the cluster reserves with ``count`` workers."""
        return Usage(
            clusters=1,
            cores=self.scheduler_cores + count * self.worker_cores,
            memory=self.scheduler_memory + count * self.worker_memory,
            workers=count,
        )


@dataclass(frozen=True)
class Usage:
    """What some clusters reserve together."""

    clusters: int = 0
    cores: float = 0
    memory: float = 0
    workers: int = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.clusters + other.clusters,
            self.cores + other.cores,
            self.memory + other.memory,
            self.workers + other.workers,
        )

    def get(self, quota_field: str) -> float:
        return float(getattr(self, quota_field.removeprefix("max_")))


def _amount(quota_field: str, value: float) -> str:
    if QUOTA_FIELDS[quota_field] == "bytes":
        return format_bytes(value)
    return f"{value:g} {QUOTA_FIELDS[quota_field]}"


def quota_refusal(user: str, quota: Quota, used: Usage, new: Usage) -> QuotaExceeded | None:
    """The error refusing a new cluster that reserves ``new`` to ``user``, who already
    uses ``used``, or None if it fits."""
    for key in QUOTA_FIELDS:
        limit = getattr(quota, key)
        if limit is None or used.get(key) + new.get(key) <= limit:
            continue
        needs = (
            "" if key == "max_clusters" else f"; the new cluster needs {_amount(key, new.get(key))}"
        )
        return QuotaExceeded(
            f"Cannot create the cluster: it would exceed quota {key} of {_amount(key, limit)} "
            f"for user {user} (in use: {_amount(key, used.get(key))}{needs})"
        )
    return None


def workers_allowed(
    count: int, quota: Quota, others: Usage, shape: Shape
) -> tuple[int, str | None, str]:
    """How many of ``count`` requested workers a cluster of ``shape`` may have when the
    owner's other clusters use ``others``.

    Returns the count, the quota that clamped it (None if none did) and a description of
    the use it was clamped against, for the warning.
    """
    base = others + shape.usage(0)
    allowed = count
    binding: str | None = None
    for key, per_worker in (
        ("max_workers", 1),
        ("max_cores", shape.worker_cores),
        ("max_memory", shape.worker_memory),
    ):
        limit = getattr(quota, key)
        if limit is None or per_worker <= 0:
            continue
        room = max(0, math.floor((limit - base.get(key)) / per_worker))
        if room < allowed:
            allowed, binding = room, key
    if binding is None:
        return count, None, ""
    return allowed, binding, _amount(binding, base.get(binding))


def quota_limit(quota: Quota, quota_field: str) -> str:
    """``quota``'s limit ``quota_field`` with its unit, e.g. ``'400 GiB'``."""
    return _amount(quota_field, getattr(quota, quota_field))


def clamp_message(count: int, allowed: int, quota: Quota, binding: str, in_use: str) -> str:
    """The warning for a scale request clamped by quota ``binding`` (the form of the
    per-cluster limit warnings)."""
    return (
        f"Scale request of {count} workers would exceed quota {binding} of "
        f"{quota_limit(quota, binding)} "
        f"(in use by your other clusters and this scheduler: {in_use}). "
        f"Scaling to {allowed} instead."
    )
