"""Run the whole gateway on one machine: every service, a launcher per backend and Envoy.

``flotilla-embedded [--config FILE]`` starts each service as a child process, waits until
``GET <public_url>/api/health`` answers through Envoy, restarts a child that crashes, and
stops every child by PID on Ctrl-C / SIGTERM. Tests use ``EmbeddedStack`` directly.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from traitlets import Bool, Float, List, Unicode
from traitlets.config import Config, Configurable

from .config import Deployment, add_config_argument, load_config
from .logs import setup_logging

__all__ = ["DB_KEY_ENV", "Embedded", "EmbeddedStack", "main"]

log = logging.getLogger(__name__)

# The registry reads its database encryption keys from here when its config sets none.
DB_KEY_ENV = "FLOTILLA_DB_ENCRYPT_KEYS"


class Embedded(Configurable):
    """How ``flotilla-embedded`` runs the stack."""

    restart_crashed = Bool(
        True, help="Restart a service that exits unexpectedly (with backoff).", config=True
    )
    log_to_files = Bool(
        False,
        help="Write each service's output to <state_dir>/logs/<service>.log, not the terminal.",
        config=True,
    )
    stop_clusters_on_exit = Bool(
        True,
        help=(
            "On Ctrl-C / SIGTERM, stop every cluster (schedulers and workers) before the "
            "services. False leaves clusters running; a restarted gateway adopts them."
        ),
        config=True,
    )
    stop_clusters_timeout_seconds = Float(
        30.0, help="How long to wait for clusters to stop on exit.", config=True
    )
    start_timeout_seconds = Float(
        60.0, help="How long to wait for the gateway to answer /api/health.", config=True
    )
    launchers = List(
        Unicode(),
        help=(
            "Backends to run a launcher for (`flotilla-launcher --backend NAME` each). "
            "Empty: every backend of c.Registry.backends."
        ),
        config=True,
    )

    def launcher_backends(self) -> list[str]:
        """The backends to start a launcher for."""
        if self.launchers:
            return list(self.launchers)
        # Read from the raw configuration: services never import each other's settings.
        registry = self.config.get("Registry", {})
        backends = registry.get("backends", ["local"]) if hasattr(registry, "get") else ["local"]
        return [str(b) for b in backends]


# Runs in each child: asks for SIGTERM when the runner dies (even by SIGKILL), then execs
# the service. Doing this here rather than in a subprocess ``preexec_fn`` lets the child
# be started with vfork: a fork() of a process with gRPC threads (the runner once it has
# called the registry, or a test) runs gRPC's atfork handlers, which now and then abort
# the child before it execs.
_EXEC_DYING_WITH_RUNNER = (
    "import ctypes, os, signal, sys\n"
    "PR_SET_PDEATHSIG = 1\n"
    "try:\n"
    "    ctypes.CDLL('libc.so.6', use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)\n"
    "except (OSError, AttributeError):\n"
    "    pass\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit('flotilla-embedded exited before this service started')\n"
    "os.execvp(sys.argv[2], sys.argv[2:])\n"
)


def _configures_db_keys(config: Config) -> bool:
    return "Registry" in config and bool(config.Registry.get("db_encrypt_keys"))


def _bin(name: str) -> str:
    """A console script installed beside this interpreter."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else name


@dataclass
class _Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started: float = 0.0
    log_file: IO[bytes] | None = field(default=None, repr=False)


class EmbeddedStack:
    """The services of one gateway as child processes."""

    def __init__(self, config_path: str | None) -> None:
        # A file, not a Config object: every child process reads the same file.
        self.config_path = str(Path(config_path).resolve()) if config_path else None
        self.config = load_config(config_path)
        self.deployment = Deployment(config=self.config)
        self.settings = Embedded(config=self.config)
        self.children: list[_Child] = []
        self._stopping = False

    @property
    def public_url(self) -> str:
        return self.deployment.resolved_public_url

    def _argv(self) -> list[tuple[str, list[str]]]:
        cfg = ["--config", self.config_path] if self.config_path else []
        launchers = [
            (f"launcher-{name}", [_bin("flotilla-launcher"), "--backend", name, *cfg])
            for name in self.settings.launcher_backends()
        ]
        return [
            ("registry", [_bin("flotilla-registry"), *cfg]),
            ("auth", [_bin("flotilla-auth"), *cfg]),
            ("proxy-config", [_bin("flotilla-proxy-config"), "serve", *cfg]),
            *launchers,
            # Envoy: proxy-config writes its bootstrap and execs it (same PID).
            ("envoy", [_bin("flotilla-proxy-config"), "envoy", *cfg]),
        ]

    def _spawn(self, child: _Child) -> None:
        out: IO[bytes] | int | None = None
        if self.settings.log_to_files:
            logs = self.deployment.state_path / "logs"
            logs.mkdir(parents=True, exist_ok=True)
            if child.log_file is None:
                child.log_file = open(logs / f"{child.name}.log", "ab")
            out = child.log_file
        env = dict(os.environ)
        if self.config_path:
            env["FLOTILLA_CONFIG"] = self.config_path
        if child.name == "registry" and not _configures_db_keys(self.config):
            env.setdefault(DB_KEY_ENV, self.db_encrypt_key())
        runner = [sys.executable, "-I", "-c", _EXEC_DYING_WITH_RUNNER, str(os.getpid())]
        child.proc = subprocess.Popen(
            [*runner, *child.argv],
            stdout=out,
            stderr=subprocess.STDOUT if out is not None else None,
            env=env,
            start_new_session=True,  # Ctrl-C reaches us, not the children directly
        )
        child.started = time.monotonic()
        log.info("started %s (pid %d)", child.name, child.proc.pid)

    def start(self) -> None:
        # Traversable but not listable: cluster owners reach their own directories below
        # it; secrets and the database inside are readable by the gateway only.
        self.deployment.state_path.mkdir(parents=True, exist_ok=True)
        self.deployment.state_path.chmod(0o711)
        # Secrets are created once, here, before the services read them.
        for name in ("identity_key", "internal_token", "cookie_key"):
            self.deployment.secret(name)
        self.db_encrypt_key()
        for name, argv in self._argv():
            child = _Child(name, argv)
            self.children.append(child)
            self._spawn(child)
        self.wait_healthy(self.settings.start_timeout_seconds)

    def db_encrypt_key(self) -> str:
        """The key the registry encrypts tokens and TLS keys with, generated once.

        A state directory from before encryption existed gets a key on its first start;
        the registry then encrypts the plaintext rows it finds.
        """
        # A Fernet key is 32 random bytes, URL-safe base64 (written out here so the
        # runner, resident for the gateway's lifetime, need not load cryptography).
        return self.deployment.generated_secret(
            "db_encrypt_key", lambda: base64.urlsafe_b64encode(os.urandom(32)).decode()
        )

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        url = f"{self.public_url}/api/health"
        last = "no answer"
        while time.monotonic() < deadline:
            for child in self.children:
                if child.proc is not None and child.proc.poll() is not None:
                    raise RuntimeError(
                        f"{child.name} exited with {child.proc.returncode} during start-up"
                        + self._log_tail(child)
                    )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError) as exc:
                last = str(exc)
            time.sleep(0.05)  # poll interval of a readiness loop with a deadline
        raise TimeoutError(f"gateway not healthy at {url} after {timeout:.0f}s: {last}")

    def _log_tail(self, child: _Child, lines: int = 5) -> str:
        if child.log_file is None:
            return ""
        child.log_file.flush()
        text = Path(child.log_file.name).read_text(errors="replace").strip().splitlines()
        return ":\n  " + "\n  ".join(text[-lines:]) if text else ""

    def check_children(self) -> None:
        """Restart any child that exited while we are not stopping.

        A child gets SIGTERM when the thread that started it ends (PR_SET_PDEATHSIG is
        per thread): call this from a thread that lives as long as the stack.
        """
        for child in self.children:
            proc = child.proc
            if self._stopping or proc is None or proc.poll() is None:
                continue
            log.warning("%s (pid %d) exited with %s", child.name, proc.pid, proc.returncode)
            if not self.settings.restart_crashed:
                continue
            # Back off when a service keeps crashing right after start.
            quick = time.monotonic() - child.started < 10
            child.restarts = child.restarts + 1 if quick else 0
            if child.restarts > 5:
                log.error("%s keeps crashing; not restarting it", child.name)
                child.proc = None
                continue
            self._spawn(child)

    def stop_clusters(self) -> None:
        """Ask the registry to stop every cluster and wait for the launcher to finish."""
        import grpc
        from flotilla.registry.v1 import internal_pb2, internal_pb2_grpc

        from .grpcserver import internal_metadata

        wait = self.settings.stop_clusters_timeout_seconds
        try:
            with grpc.insecure_channel(self.deployment.registry_grpc_address) as channel:
                reply = internal_pb2_grpc.ControlServiceStub(channel).StopAllClusters(
                    internal_pb2.StopAllClustersRequest(
                        reason="The gateway shut down", wait_seconds=wait
                    ),
                    metadata=internal_metadata(self.deployment.secret("internal_token")),
                    timeout=wait + 5,
                    # The registry may be restarting (it crashed a moment ago): wait for it
                    # rather than leave every cluster running.
                    wait_for_ready=True,
                )
        except grpc.RpcError as exc:
            log.warning("could not stop clusters: %s", exc)
            return
        if reply.stopped:
            log.info("stopped %d clusters", reply.stopped - reply.remaining)
        if reply.remaining:
            log.warning("%d clusters had not stopped after %.0fs", reply.remaining, wait)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the clusters (if configured), then SIGTERM every child (launcher first,
        Envoy last), then SIGKILL stragglers."""
        alive = {c.name for c in self.children if c.proc is not None and c.proc.poll() is None}
        launchers_alive = any(name.startswith("launcher-") for name in alive)
        if self.settings.stop_clusters_on_exit and "registry" in alive and launchers_alive:
            self.stop_clusters()
        self._stopping = True
        # Launchers first (they may be mid-report), Envoy last.
        order = ["proxy-config", "auth", "registry", "envoy"]
        children = sorted(
            self.children, key=lambda c: order.index(c.name) + 1 if c.name in order else 0
        )
        for child in children:
            if child.proc is not None and child.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in children:
            if child.proc is None:
                continue
            try:
                child.proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop; killing pid %d", child.name, child.proc.pid)
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                child.proc.wait()
            if child.log_file is not None:
                child.log_file.close()
                child.log_file = None

    def pid(self, name: str) -> int:
        for child in self.children:
            if child.name == name and child.proc is not None:
                return child.proc.pid
        raise KeyError(name)


async def _supervise(stack: EmbeddedStack) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    while not stop.is_set():
        stack.check_children()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="flotilla-embedded", description=__doc__)
    add_config_argument(parser)
    args = parser.parse_args(argv)
    setup_logging("embedded")
    started = time.monotonic()
    stack = EmbeddedStack(args.config)
    try:
        stack.start()
    except BaseException:
        stack.stop()
        raise
    log.info(
        "Flotilla is up at %s (%.1fs). Ctrl-C stops everything.",
        stack.public_url,
        time.monotonic() - started,
    )
    try:
        asyncio.run(_supervise(stack))
    finally:
        stack.stop()
        log.info("stopped")
