"""Helpers every test tier uses (tests/ is on sys.path: `from helpers import ...`)."""

from __future__ import annotations

import random
import socket
import time
from collections.abc import Callable
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
