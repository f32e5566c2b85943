"""A fork server: schedulers and workers without Python's start-up on the critical path.

Starting ``dask scheduler`` or ``dask worker`` costs about a second of CPU before it does
anything: the interpreter starts and imports ``distributed`` (and bokeh for the
dashboard). The fork server is a process that pays this once: it imports those modules,
then waits. For each process the launcher wants, it forks; the child

1. reads its request (command, environment, working directory, account) and its log
   file descriptor from a socket pair the launcher made for it alone,
2. starts its own session, points stdin at /dev/null and stdout/stderr at the log,
   changes to the working directory and drops to the owner's uid, gid and groups,
3. replaces its environment, re-reads the dask configuration for it, and runs the
   command's Python script in place (``runpy``), never exec'ing.

Per-user isolation is the same as with ``exec``: the child runs as the owner before it
runs anything the owner controls. The server itself never reads a request, so the
memory every child inherits holds no other cluster's secrets; it starts from a clean
environment for the same reason. Only the launcher can talk to it (a socket pair, no
address on the file system).

A command is forked only when that is equivalent to running it: its script is a Python
script of the server's own interpreter, and nothing in its environment that Python,
the C library or BLAS read at start-up differs from the server's (otherwise the
launcher runs it normally). Forked workers' nannies fork their worker process too
(``distributed.worker.multiprocessing-method: fork``) unless the cluster's environment
chooses a method.

The server reaps its children and reports each exit status to the launcher; when the
launcher goes, the server goes, and its children (the clusters) keep running, adopted
by a restarted launcher like any other process.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_PRELOAD",
    "ForkServer",
    "ForkServerUnavailable",
    "SpawnRequest",
    "fork_environment",
    "forkable",
    "main",
]

log = logging.getLogger(__name__)

#: Modules the server imports before forking (those missing are skipped).
DEFAULT_PRELOAD = (
    "dask",
    "dask.cli",
    "distributed",
    "distributed.cli.dask_scheduler",
    "distributed.cli.dask_worker",
    "distributed.dashboard.scheduler",
    "distributed.dashboard.worker",
    "flotilla.scheduler_preload",
)

#: Environment of the server itself: what a forked process starts with before its own
#: environment replaces it. The BLAS and malloc settings are those distributed gives a
#: nanny's worker process (``distributed.nanny.pre-spawn-environ``); they are read once,
#: at start-up, so a forked process keeps them.
_SERVER_ENVIRONMENT = {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MALLOC_TRIM_THRESHOLD_": "65536",
}
_KEPT_FOR_SERVER = ("PATH", "LANG", "LC_ALL", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")

#: Environment variables read when a process starts (interpreter, loader, libc, BLAS):
#: a command whose environment sets one of them differently from the server is exec'd.
_STARTUP_PREFIXES = ("PYTHON", "LD_", "GLIBC_", "MALLOC_")
_STARTUP_KEYS = frozenset(_SERVER_ENVIRONMENT) | {"VIRTUAL_ENV"}

#: How a forked worker's nanny starts its worker process (unless the cluster chooses).
MULTIPROCESSING_METHOD_KEY = "DASK_DISTRIBUTED__WORKER__MULTIPROCESSING_METHOD"

_READY = b"ready\n"
# The kernel would not let a child show its own command and environment in /proc: the
# launcher (and a restarted one, which finds unreported processes by their environment)
# must then see exec'd processes only.
_UNSUPPORTED = b"unsupported\n"
_GO = b"g"
_MAX_REQUEST = 4 * 2**20

# prctl(2)
_PR_SET_NAME = 15
_PR_SET_DUMPABLE = 4
_PR_SET_MM = 35
_PR_SET_MM_MAP = 14


def _read_at_startup(key: str) -> bool:
    return key in _STARTUP_KEYS or key.startswith(_STARTUP_PREFIXES)


def server_environment(inherited: Mapping[str, str]) -> dict[str, str]:
    """The environment the server starts with (nothing secret, nothing per cluster)."""
    env = {k: inherited[k] for k in _KEPT_FOR_SERVER if k in inherited}
    env.update(_SERVER_ENVIRONMENT)
    return env


def _script_interpreter(path: str) -> str | None:
    """The interpreter named by the ``#!`` line of ``path``, if it is a script."""
    try:
        with open(path, "rb") as f:
            first = f.readline(4096)
    except OSError:
        return None
    if not first.startswith(b"#!"):
        return None
    parts = first[2:].strip().split()
    return parts[0].decode(errors="replace") if len(parts) == 1 else None


def forkable(
    script: str | None, env: Mapping[str, str], server_env: Mapping[str, str], python: str
) -> bool:
    """Whether running ``script`` with ``env`` may be replaced by forking a server that
    runs ``python`` with ``server_env``.

    ``script`` is the resolved path of the command's first word: it must be a script of
    that very interpreter. Variables read at start-up must match, except the server's
    own BLAS/malloc settings, which a command may leave unset.
    """
    if script is None or _script_interpreter(script) != python:
        return False
    for key in {k for k in (*env, *server_env) if _read_at_startup(k)}:
        if key in _SERVER_ENVIRONMENT and key not in env:
            continue
        if env.get(key) != server_env.get(key):
            return False
    return True


def fork_environment(env: Mapping[str, str], *, worker: bool) -> dict[str, str]:
    """``env`` for a forked process: a worker's nanny forks its worker process too."""
    out = dict(env)
    if worker:
        out.setdefault(MULTIPROCESSING_METHOD_KEY, "fork")
    return out


@dataclass(frozen=True)
class SpawnRequest:
    """What one forked process runs, where, as whom."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: str
    uid: int | None = None
    gid: int | None = None
    groups: Sequence[int] = ()
    #: Short process name (``/proc/<pid>/comm``), e.g. ``dask-scheduler``.
    name: str = ""

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "argv": list(self.argv),
                "env": dict(self.env),
                "cwd": self.cwd,
                "uid": self.uid,
                "gid": self.gid,
                "groups": list(self.groups),
                "name": self.name,
            }
        ).encode()


class ForkServerUnavailable(Exception):
    """The server is not running (yet, or any more): run the command normally."""


class ForkServer:
    """The launcher's side: starts the server, asks it for processes, learns exits.

    The server starts in the background; until it is ready (and while it is being
    restarted after a crash) :meth:`spawn` raises :class:`ForkServerUnavailable` and the
    launcher runs commands the ordinary way, so the fork server never delays anything.
    """

    def __init__(
        self,
        preload: Sequence[str] = DEFAULT_PRELOAD,
        *,
        python: str = sys.executable,
        inherited: Mapping[str, str] | None = None,
        spawn_timeout: float = 10.0,
    ) -> None:
        self.preload = tuple(preload)
        self.python = python
        self.environment = server_environment(os.environ if inherited is None else inherited)
        self.spawn_timeout = spawn_timeout
        self._proc: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self._ready = threading.Event()
        self._lock = threading.Lock()
        self._closed = False
        self._exits: dict[int, int] = {}
        self._restarts = 0
        #: The kernel refuses what forked processes need (``PR_SET_MM_MAP``): no forking.
        self.unsupported = False

    # -- lifecycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server process; returns at once (it becomes ready in the background)."""
        with self._lock:
            if self._closed or self._proc is not None:
                return
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                self._proc = subprocess.Popen(
                    [
                        self.python,
                        "-P",  # no working directory on sys.path
                        "-m",
                        "flotilla_launcher.forkserver",
                        str(theirs.fileno()),
                        *self.preload,
                    ],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    env=self.environment,
                    pass_fds=[theirs.fileno()],
                    start_new_session=True,
                    cwd="/",
                )
            finally:
                theirs.close()
            self._control = ours
            self._ready.clear()
            proc = self._proc
        threading.Thread(target=self._follow, args=(proc,), name="forkserver", daemon=True).start()

    def wait_ready(self, timeout: float) -> bool:
        """Block until the server is ready (tests, benchmarks); False on timeout."""
        return self._ready.wait(timeout)

    @property
    def ready(self) -> bool:
        return self._ready.is_set()

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs."""
        proc = self._proc
        return proc.pid if proc is not None else None

    def close(self) -> None:
        """Stop the server; the processes it forked keep running."""
        with self._lock:
            self._closed = True
            self._ready.clear()
            proc, control = self._proc, self._control
            self._proc, self._control = None, None
        if control is not None:
            control.close()  # the server exits when its control socket closes
        if proc is not None:
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _follow(self, proc: subprocess.Popen[bytes]) -> None:
        """Read the server's output: ``ready`` once, then ``exit <pid> <code>`` lines."""
        assert proc.stdout is not None
        started = time.monotonic()
        for line in proc.stdout:
            if line == _UNSUPPORTED:
                self.unsupported = True
                log.warning(
                    "fork server: this kernel does not let a forked process show its own "
                    "environment in /proc (prctl PR_SET_MM_MAP); processes are exec'd"
                )
            elif line == _READY:
                self._ready.set()
                log.info(
                    "fork server pid %d ready after %.1fs", proc.pid, time.monotonic() - started
                )
            elif line.startswith(b"exit "):
                _, pid, code = line.split()
                self._exits[int(pid)] = int(code)
                if len(self._exits) > 10000:  # nobody asked about the oldest ones
                    for old in list(self._exits)[:5000]:
                        del self._exits[old]
        proc.wait()
        with self._lock:
            if self._proc is not proc:
                return
            self._ready.clear()
            self._proc = None
            if self._control is not None:
                self._control.close()
                self._control = None
            closed = self._closed
        if closed or self.unsupported:
            return
        self._restarts += 1
        delay = min(30.0, 0.5 * 2 ** min(self._restarts, 6))
        log.warning(
            "fork server pid %d exited with %s; restarting it in %.0fs (meanwhile processes "
            "start the ordinary way)",
            proc.pid,
            proc.returncode,
            delay,
        )
        time.sleep(delay)
        self.start()

    # -- spawning -------------------------------------------------------------------------

    def exit_code(self, pid: int) -> int | None:
        """The exit code of a process this server forked, once it has exited."""
        return self._exits.get(pid)

    def spawn(self, request: SpawnRequest, log_fd: int) -> int:
        """Fork a process for ``request`` with ``log_fd`` as its stdout/stderr; its pid.

        Raises :class:`ForkServerUnavailable` when the server cannot take it, and
        ``OSError`` (with the child's message) when the child could not set itself up.
        """
        with self._lock:
            control = self._control if self._ready.is_set() else None
            if control is None:
                raise ForkServerUnavailable("fork server not ready")
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                # The server forks one child per descriptor it receives.
                socket.send_fds(control, [b"f"], [theirs.fileno()])
            except OSError as exc:
                ours.close()
                raise ForkServerUnavailable(f"fork server unreachable: {exc}") from exc
            finally:
                theirs.close()
        with ours:
            ours.settimeout(self.spawn_timeout)
            payload = request.to_json()
            socket.send_fds(ours, [struct.pack("!I", len(payload))], [log_fd])
            ours.sendall(payload)
            data = json.loads(_read_message(ours))
            if data.get("fallback"):
                raise ForkServerUnavailable(data.get("error", "the child cannot be forked"))
            if "error" in data:
                raise OSError(data.get("errno") or 0, data["error"])
            # The child runs its command only after this: a child whose launcher gave
            # up waiting (and so never learnt its pid) exits instead of running unseen.
            ours.sendall(_GO)
        return int(data["pid"])


def _read_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(min(n, 65536))
        if not chunk:
            raise ConnectionError("peer closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _read_message(sock: socket.socket) -> bytes:
    (size,) = struct.unpack("!I", _read_exact(sock, 4))
    if size > _MAX_REQUEST:
        raise ValueError("message too large")
    return _read_exact(sock, size)


def _send_message(sock: socket.socket, data: dict[str, Any]) -> None:
    payload = json.dumps(data).encode()
    sock.sendall(struct.pack("!I", len(payload)) + payload)


# -- the server process ---------------------------------------------------------------------


def _libc() -> Any:
    return ctypes.CDLL(None, use_errno=True)


#: Buffers /proc/<pid>/cmdline and /environ point at; they must live as long as the process.
_KEEP_ALIVE: list[Any] = []


class _MMMap(ctypes.Structure):
    """``struct prctl_mm_map`` (linux/prctl.h)."""

    _fields_ = [
        (name, ctypes.c_uint64)
        for name in (
            "start_code",
            "end_code",
            "start_data",
            "end_data",
            "start_brk",
            "brk",
            "start_stack",
            "arg_start",
            "arg_end",
            "env_start",
            "env_end",
            "auxv",
        )
    ] + [("auxv_size", ctypes.c_uint32), ("exe_fd", ctypes.c_uint32)]


def _show_command(argv: Sequence[str], env: Mapping[str, str]) -> bool:
    """Make /proc/<pid>/cmdline and /environ show this process's command and environment,
    as after exec, so ``ps`` and operators see what runs (``PR_SET_MM_MAP``)."""
    libc = _libc()
    with open("/proc/self/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()

    def field(n: int) -> int:  # proc(5) numbers fields from 1; fields[0] is field 3
        return int(fields[n - 3])

    args = "\0".join(argv).encode(errors="surrogateescape") + b"\0"
    environ = "".join(f"{k}={v}\0" for k, v in env.items()).encode(errors="surrogateescape")
    args_buf = ctypes.create_string_buffer(args, len(args))
    env_buf = ctypes.create_string_buffer(environ, max(1, len(environ)))
    _KEEP_ALIVE.extend((args_buf, env_buf))
    libc.sbrk.restype = ctypes.c_void_p
    mm = _MMMap(
        start_code=field(26),
        end_code=field(27),
        start_data=field(45),
        end_data=field(46),
        start_brk=field(47),
        brk=libc.sbrk(0),
        start_stack=field(28),
        arg_start=ctypes.addressof(args_buf),
        arg_end=ctypes.addressof(args_buf) + len(args),
        env_start=ctypes.addressof(env_buf),
        env_end=ctypes.addressof(env_buf) + len(environ),
        auxv=0,
        auxv_size=0,
        exe_fd=0xFFFFFFFF,  # keep /proc/<pid>/exe
    )
    return bool(libc.prctl(_PR_SET_MM, _PR_SET_MM_MAP, ctypes.byref(mm), ctypes.sizeof(mm), 0) == 0)


def _refresh_runtime_state() -> None:
    """Re-read what imported modules took from the server's environment or account."""
    import tempfile

    tempfile.tempdir = None
    if "dask.config" in sys.modules:
        import dask.config

        # refresh() reads the list object bound at import: update it in place.
        dask.config.paths[:] = dask.config._get_paths()  # type: ignore[no-untyped-call]
        dask.config.PATH = os.environ.get("DASK_CONFIG") or os.path.join(
            os.path.expanduser("~"), ".config", "dask"
        )
        dask.config.refresh()
        distributed_config = sys.modules.get("distributed.config")
        if distributed_config is not None:
            # Undo the logging set-up made from the server's configuration, then redo it.
            for name in list(logging.root.manager.loggerDict):
                logger = logging.getLogger(name)
                if logger.handlers and not logger.propagate:
                    logger.handlers.clear()
                    logger.propagate = True
            distributed_config.initialize_logging(dask.config.config)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        # Forked processes would otherwise share numpy's global random state.
        numpy.random.seed()


def _fresh_signal_handlers() -> None:
    """Signal handling as a new interpreter starts with.

    Registered to run in every process a forked process forks in turn (a nanny's
    worker process): otherwise it inherits its parent's Python handlers, e.g. the
    nanny's SIGTERM handler, which only wakes the parent's event loop, so the worker
    would outlive a SIGTERM that kills it when it is exec'd.
    """
    with contextlib.suppress(ValueError, OSError):
        signal.set_wakeup_fd(-1)  # the parent's event loop's, not ours
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _become(request: dict[str, Any]) -> None:
    uid, gid = request.get("uid"), request.get("gid")
    if uid is None or uid == os.geteuid():
        return
    os.setgroups([int(g) for g in request.get("groups") or []])
    os.setgid(int(gid if gid is not None else uid))
    os.setuid(int(uid))
    # As after exec: the owner may inspect (ptrace, /proc) their own process.
    _libc().prctl(_PR_SET_DUMPABLE, 1, 0, 0, 0)


def _max_fd() -> int:
    try:
        return int(os.sysconf("SC_OPEN_MAX"))
    except (ValueError, OSError):
        return 65536


def _child(conn_fd: int, inherited: Sequence[int]) -> None:
    """Runs in the forked child; never returns."""
    code = 127
    conn = socket.socket(fileno=conn_fd)
    try:
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        conn.settimeout(30)
        header, fds, _, _ = socket.recv_fds(conn, 4, 1)
        if len(header) != 4 or len(fds) != 1:
            raise ConnectionError("malformed request")
        (size,) = struct.unpack("!I", header)
        if size > _MAX_REQUEST:
            raise ValueError("request too large")
        request = json.loads(_read_exact(conn, size))
        log_fd = fds[0]
        argv = [str(a) for a in request["argv"]]
        env = {str(k): str(v) for k, v in request["env"].items()}
        os.setsid()
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        # Nothing of the server's (another request's socket above all) stays open.
        os.closerange(3, conn_fd)
        os.closerange(conn_fd + 1, _max_fd())
        os.chdir(request["cwd"])
        if not _show_command(argv, env):
            # Without it a restarted launcher could not find this process: exec instead.
            _send_message(conn, {"error": "cannot set /proc environment", "fallback": True})
            os._exit(127)
        if request.get("name"):
            _libc().prctl(_PR_SET_NAME, request["name"].encode()[:15], 0, 0, 0)
        _become(request)
        _send_message(conn, {"pid": os.getpid()})
        if conn.recv(1) != _GO:
            raise ConnectionError("the launcher did not confirm")
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            errno = exc.errno if isinstance(exc, OSError) else 0
            _send_message(conn, {"error": f"{type(exc).__name__}: {exc}", "errno": errno})
        os._exit(127)
    conn.close()
    try:
        os.environ.clear()
        os.environ.update(env)
        os.register_at_fork(after_in_child=_fresh_signal_handlers)
        sys.argv = list(argv)
        # As when Python runs a script: its directory first on the path.
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
        _refresh_runtime_state()
        import runpy

        runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except KeyboardInterrupt:
        code = 130
    except BaseException:
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        # What the interpreter does at exit: wait for threads, run atexit, flush.
        with contextlib.suppress(BaseException):
            threading._shutdown()  # type: ignore[attr-defined]
        with contextlib.suppress(BaseException):
            import atexit

            atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        os._exit(code)


def _reap(out: Any) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        out.write(f"exit {pid} {os.waitstatus_to_exitcode(status)}\n".encode())
        out.flush()


def serve(control_fd: int, preload: Sequence[str]) -> None:
    """The server's main loop: fork one child per descriptor received on ``control_fd``."""
    import importlib

    with contextlib.suppress(Exception):  # ps shows what this process is
        _libc().prctl(_PR_SET_NAME, b"flotilla-forksrv", 0, 0, 0)
    for module in preload:
        try:
            importlib.import_module(module)
        except Exception as exc:
            print(f"fork server: not preloading {module}: {exc}", file=sys.stderr)
    # Everything imported so far stays put: the collector never walks (and so never
    # copies, page by page) these objects in a forked child.
    gc.collect()
    gc.freeze()
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        print(f"fork server: {threads} threads after preloading", file=sys.stderr)
    out = sys.stdout.buffer
    try:
        # The server shows what it already is: only a check that children can.
        supported = _show_command(sys.argv, dict(os.environ))
    except (OSError, ValueError, AttributeError):
        supported = False
    if not supported:
        out.write(_UNSUPPORTED)
        out.flush()
        return
    control = socket.socket(fileno=control_fd)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w, warn_on_full_buffer=False)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the launcher decides when we stop
    out.write(_READY)
    out.flush()
    inherited = [control_fd, wake_r, wake_w, sys.stdout.fileno()]
    while True:
        try:
            ready, _, _ = select.select([control.fileno(), wake_r], [], [])
        except InterruptedError:
            continue
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(out)
        if control.fileno() in ready:
            try:
                msg, fds, _, _ = socket.recv_fds(control, 16, 4)
            except OSError:
                return
            if not msg:
                return  # the launcher is gone
            for fd in fds:
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    _child(fd, inherited)
                os.close(fd)


def main() -> None:
    """``python -m flotilla_launcher.forkserver <control fd> [module ...]``."""
    serve(int(sys.argv[1]), sys.argv[2:])


if __name__ == "__main__":
    main()
