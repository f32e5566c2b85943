"""Process identity from ``/proc``: tell a live process from a reused pid.

A pid alone does not identify a process across a launcher restart: the kernel reuses
pids. A checkpoint therefore stores the pid *and* its start time (field 22 of
``/proc/<pid>/stat``, clock ticks since boot), and a process is "ours" only when both
match. A process whose checkpoint never reached the registry (its launcher died right
after starting it) is found by the environment it was started with instead.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = [
    "ProcStat",
    "find_by_environment",
    "group_members",
    "read_stat",
    "read_uid",
    "same_process",
]


@dataclass(frozen=True)
class ProcStat:
    """The fields of ``/proc/<pid>/stat`` the launcher needs."""

    pid: int
    state: str
    pgid: int
    start_time: int

    @property
    def alive(self) -> bool:
        """False for zombies (exited, not yet reaped) and dead entries."""
        return self.state not in ("Z", "X", "x")

    @property
    def stopped(self) -> bool:
        """Stopped by a signal (SIGSTOP, a terminal's ^Z) or by a tracer: it cannot run."""
        return self.state in ("T", "t")


def parse_stat(text: str) -> ProcStat:
    """Parse the text of ``/proc/<pid>/stat``.

    The command name (field 2) is in parentheses and may itself contain spaces and
    parentheses, so fields are counted from the *last* ``)``.
    """
    pid_part, _, rest = text.partition(" (")
    fields = rest[rest.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state); field N is fields[N - 3].
    return ProcStat(
        pid=int(pid_part),
        state=fields[0],
        pgid=int(fields[2]),
        start_time=int(fields[19]),
    )


def read_stat(pid: int, proc: str = "/proc") -> ProcStat | None:
    """The stat of ``pid``, or None if there is no such process."""
    try:
        with open(f"{proc}/{int(pid)}/stat") as f:
            return parse_stat(f.read())
    except (FileNotFoundError, ProcessLookupError, ValueError, IndexError):
        return None


def read_uid(pid: int, proc: str = "/proc") -> int | None:
    """The real uid of ``pid``, or None if there is no such process."""
    try:
        with open(f"{proc}/{int(pid)}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, ValueError):
        return None
    return None


def same_process(pid: int, start_time: int, uid: int | None = None, proc: str = "/proc") -> bool:
    """True if ``pid`` is alive (not a zombie) and is the process started at ``start_time``.

    With ``uid``, the process must also run as that user.
    """
    st = read_stat(pid, proc)
    if st is None or not st.alive or st.start_time != start_time:
        return False
    return uid is None or read_uid(pid, proc) == uid


def _pids(proc: str) -> list[int]:
    """Every pid ``proc`` lists now (none without a procfs)."""
    try:
        return [int(entry) for entry in os.listdir(proc) if entry.isdigit()]
    except FileNotFoundError:
        return []


def group_members(pgid: int, proc: str = "/proc") -> list[int]:
    """Pids of the live (non-zombie) processes in process group ``pgid``."""
    members = []
    for pid in _pids(proc):
        st = read_stat(pid, proc)
        if st is not None and st.pgid == pgid and st.alive:
            members.append(st.pid)
    return members


def _parse_environ(raw: bytes) -> dict[str, str]:
    env = {}
    for item in raw.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep:
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def find_by_environment(
    marker: Mapping[str, str], proc: str = "/proc"
) -> list[tuple[ProcStat, dict[str, str]]]:
    """Live processes whose environment holds every ``marker`` pair, with that environment.

    Reads the environment of every process this one may inspect (all of them as root),
    so it is for rare recoveries, not for every status check.
    """
    wanted = [f"{k}={v}".encode() for k, v in marker.items()]
    found = []
    for pid in _pids(proc):
        try:
            with open(f"{proc}/{pid}/environ", "rb") as f:
                raw = f.read()
        except OSError:
            continue  # gone, a kernel thread, or not ours to read
        items = set(raw.split(b"\0"))
        if not all(w in items for w in wanted):
            continue
        st = read_stat(pid, proc)
        if st is not None and st.alive:
            found.append((st, _parse_environ(raw)))
    return found
