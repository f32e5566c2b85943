"""A throwaway PostgreSQL server for tests, from Debian's packages.

``postgres_server()`` installs the ``postgresql`` package when it is missing (apt, as root),
runs ``initdb`` and ``postgres`` as the ``postgres`` Unix user (PostgreSQL refuses to run as
root) in a temporary directory, listening on 127.0.0.1 and a free port, waits until a real
connection succeeds, and stops the server by PID when the block ends::

    with postgres_server() as pg:
        url = pg.new_database()    # postgresql://postgres:<password>@127.0.0.1:<port>/<db>

Where PostgreSQL cannot be installed (not root, no network) it skips the test with a
one-line reason, except with CI=true, where it fails instead. ``tests/conftest.py`` wraps it
in the session fixture ``postgres``.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import pytest
from helpers import apt_install, free_port

__all__ = ["PostgresServer", "postgres_server"]

T = TypeVar("T")

START_TIMEOUT = 60.0


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"PostgreSQL unavailable: {reason}")


def _in_thread(make: Callable[[], Awaitable[T]]) -> T:
    """Run an asyncpg coroutine from sync code, even inside a running event loop."""

    async def run() -> T:
        return await make()

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result()


def _bindir() -> Path | None:
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(found[-1]).parent if found else None


def _install() -> Path:
    """Debian's postgresql package, installed if missing; returns its bin directory."""
    bindir = _bindir()
    if bindir is not None:
        return bindir
    failed = apt_install(("postgresql",))
    if failed:
        _unavailable(failed)
    bindir = _bindir()
    if bindir is None:
        _unavailable("installed postgresql but found no /usr/lib/postgresql/*/bin/initdb")
    return bindir


class PostgresServer:
    """One running PostgreSQL; ``url`` is its ``postgres`` maintenance database."""

    def __init__(self, bindir: Path, directory: Path, uid: int, gid: int) -> None:
        self.bindir = bindir
        self.directory = directory
        self.uid = uid
        self.gid = gid
        self.password = secrets.token_hex(16)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.start_seconds = 0.0

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("PostgreSQL is not running")
        return self.proc.pid

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.url_for("postgres")

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    def _owner(self) -> dict[str, Any]:
        """subprocess arguments that run a command as the server's owner, here."""
        switch: dict[str, Any] = {}
        if os.geteuid() == 0:
            switch = {"user": self.uid, "group": self.gid, "extra_groups": []}
        return {
            **switch,
            "cwd": self.directory,
            "env": {"PATH": "/usr/bin:/bin", "LC_ALL": "C.UTF-8"},
        }

    def _as_owner(self, argv: list[str]) -> None:
        done = subprocess.run(argv, capture_output=True, text=True, **self._owner())
        if done.returncode != 0:
            raise RuntimeError(f"{argv[0]} failed: {done.stderr.strip()}")

    def initdb(self) -> None:
        pwfile = self.directory / "pwfile"
        pwfile.write_text(self.password)
        os.chown(pwfile, self.uid, self.gid)
        self._as_owner(
            [
                str(self.bindir / "initdb"), "-D", str(self.directory / "data"),
                "-U", "postgres", f"--pwfile={pwfile}", "--auth-local=trust",
                "--auth-host=scram-sha-256", "-E", "UTF8", "--locale=C.UTF-8", "--no-sync",
            ]
        )  # fmt: skip
        pwfile.unlink()

    def start(self) -> None:
        """Start (again) and wait until a connection succeeds; keeps the port once chosen."""
        started = time.monotonic()
        for _attempt in range(5):
            self.port = self.port or free_port()
            with open(self.log_path, "ab") as log:
                self.proc = subprocess.Popen(
                    [
                        str(self.bindir / "postgres"), "-D", str(self.directory / "data"),
                        "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
                        "-c", f"unix_socket_directories={self.directory}",
                        # Test speed over durability; crash safety is not under test here.
                        "-c", "fsync=off", "-c", "synchronous_commit=off",
                        "-c", "full_page_writes=off", "-c", "max_connections=300",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    **self._owner(),
                )  # fmt: skip
            if self._wait_ready():
                self.start_seconds = time.monotonic() - started
                return
            log_tail = self.log_path.read_text(errors="replace")[-2000:]
            if "could not bind" not in log_tail and "already in use" not in log_tail:
                raise RuntimeError(f"PostgreSQL did not start:\n{log_tail}")
            self.port = 0  # someone took the port: try another
        raise RuntimeError("PostgreSQL found no free port")

    def _wait_ready(self) -> bool:
        assert self.proc is not None
        deadline = time.monotonic() + START_TIMEOUT
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                _in_thread(self._probe)
                return True
            except Exception as exc:  # not accepting connections yet
                last = exc
            time.sleep(0.05)  # poll interval of a readiness loop with a deadline
        self.stop()
        raise RuntimeError(f"PostgreSQL not ready after {START_TIMEOUT:.0f}s: {last!r}")

    async def _probe(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.url, timeout=2)
        try:
            await conn.fetchval("SELECT 1")
        finally:
            await conn.close()

    def new_database(self) -> str:
        """A fresh, empty database; returns its postgresql:// URL."""
        name = f"t_{uuid.uuid4().hex[:16]}"

        async def create() -> None:
            import asyncpg

            conn = await asyncpg.connect(self.url, timeout=10)
            try:
                await conn.execute(f'CREATE DATABASE "{name}"')
            finally:
                await conn.close()

        _in_thread(create)
        return self.url_for(name)

    def stop(self) -> None:
        """Fast shutdown (SIGINT) by PID; SIGQUIT, then SIGKILL if it hangs."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig, wait in ((signal.SIGINT, 30), (signal.SIGQUIT, 10), (signal.SIGKILL, 10)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Install if needed, start, yield, stop (see the module docstring)."""
    bindir = _install()
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            _unavailable("there is no `postgres` Unix user to run the server as")
        uid, gid = owner.pw_uid, owner.pw_gid
    else:
        uid, gid = os.getuid(), os.getgid()  # PostgreSQL refuses only root
    # Under /tmp when switching users: $TMPDIR may sit where `postgres` cannot reach.
    directory = Path(
        tempfile.mkdtemp(prefix="flotilla-pg-", dir="/tmp" if os.geteuid() == 0 else None)
    )
    os.chown(directory, uid, gid)
    directory.chmod(0o700)
    server = PostgresServer(bindir, directory, uid, gid)
    try:
        server.initdb()
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(directory, ignore_errors=True)
