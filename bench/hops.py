"""Where the time of a Flotilla ``new_cluster()`` goes, hop by hop, from the services' logs.

Every service logs one line per step of the create path with a millisecond timestamp;
this module finds those lines for a cluster and turns them into hop durations:

=====================  =====================================================
``accept``             client call → registry stored the cluster (Envoy, auth)
``watch``              registry stored → launcher starts reconciling it
``spawn``              launcher reconciling → scheduler process started
``scheduler``          scheduler started → registry saw its first heartbeat
``route``              registry RUNNING → proxy-config has the route
``connect``            route in proxy-config → the client is connected
=====================  =====================================================
"""

from __future__ import annotations

import datetime
import itertools
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["HOPS", "hop_durations"]

HOPS = ("accept", "watch", "spawn", "scheduler", "route", "connect")

# (log file, event, pattern with the cluster name substituted)
_EVENTS = (
    ("registry.log", "created", r"cluster {name}: created for"),
    ("launcher-local.log", "reconciling", r"cluster {name} \(user .*\): starting scheduler"),
    ("launcher-local.log", "spawned", r"cluster {name}: started scheduler pid"),
    ("registry.log", "running", r"cluster {name}: running at"),
    ("proxy-config.log", "routed", r"route set: cluster {name} "),
)
_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) ")


def _stamp(line: str) -> float | None:
    m = _STAMP.match(line)
    if not m:
        return None
    when = datetime.datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f")
    return when.timestamp()


def _events(logs: Path, name: str) -> dict[str, float]:
    found: dict[str, float] = {}
    texts: dict[str, list[str]] = {}
    for filename, event, pattern in _EVENTS:
        lines = texts.setdefault(
            filename,
            (logs / filename).read_text(errors="replace").splitlines()
            if (logs / filename).exists()
            else [],
        )
        regex = re.compile(pattern.format(name=re.escape(name)))
        for line in lines:
            if regex.search(line):
                when = _stamp(line)
                if when is not None:
                    found[event] = when
                    break
    return found


def hop_durations(
    logs: Path, samples: Sequence[Mapping[str, float | str]]
) -> dict[str, list[float]]:
    """Milliseconds of each hop over ``samples`` (each with ``name``, ``started_at`` and
    ``finished_at``: the client's wall-clock times around ``new_cluster()``)."""
    out: dict[str, list[float]] = {hop: [] for hop in HOPS}
    for sample in samples:
        ev = _events(logs, str(sample["name"]))
        if len(ev) != len(_EVENTS):
            continue
        points = [
            float(sample["started_at"]),
            ev["created"],
            ev["reconciling"],
            ev["spawned"],
            ev["running"],
            ev["routed"],
            float(sample["finished_at"]),
        ]
        for hop, (a, b) in zip(HOPS, itertools.pairwise(points), strict=True):
            out[hop].append(max(0.0, (b - a) * 1000))
    return out
