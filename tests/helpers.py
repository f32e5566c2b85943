"""Helpers every test tier uses (tests/ is on sys.path: `from helpers import ...`)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def free_ports(count: int) -> list[int]:
    """``count`` distinct free TCP ports on 127.0.0.1, below Linux's ephemeral range.

    Outgoing connections take their source port from the ephemeral range (32768+), so a
    port picked there can be taken between the test choosing it and a server binding it.
    The sockets stay bound until all are chosen, so the ports are distinct.
    """
    held: list[socket.socket] = []
    try:
        for _ in range(100 * count):
            if len(held) == count:
                break
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", random.randint(20000, 32000)))
            except OSError:
                s.close()
                continue
            held.append(s)
        if len(held) < count:
            raise RuntimeError("not enough free ports between 20000 and 32000")
        return [int(s.getsockname()[1]) for s in held]
    finally:
        for s in held:
            s.close()


def free_port() -> int:
    """One free port (see ``free_ports``)."""
    return free_ports(1)[0]


def wait_for(check: Callable[[], T | None], timeout: float, what: str, interval: float = 0.05) -> T:
    """Poll ``check`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except Exception as exc:  # the condition may raise until it holds
            last_exc = exc
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout}s waiting for {what} (last error: {last_exc!r})"
    )


def apt_install(packages: Sequence[str]) -> str | None:
    """Install Debian ``packages`` (waiting for a held dpkg lock); ``None`` when done, else
    one line saying why not (not root, no apt-get, or apt-get's last error line)."""
    names = " and ".join(packages)
    if os.geteuid() != 0:
        return f"{names} are missing and installing them needs root"
    if shutil.which("apt-get") is None:
        return f"{names} are missing and there is no apt-get"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    lock = ["-o", "DPkg::Lock::Timeout=900"]
    for argv in (
        ["apt-get", "update", "-q", *lock],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *lock, *packages],
    ):
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=1200)
        if done.returncode != 0:
            last = ((done.stderr or done.stdout).strip().splitlines() or ["no output"])[-1]
            return f"`{' '.join(argv[:2])}` failed: {last}"
    return None


def process_environ(pid: int) -> dict[str, str]:
    """The environment of process ``pid`` (empty once it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(
        item.decode(errors="replace").partition("=")[::2] for item in raw.split(b"\0") if item
    )
