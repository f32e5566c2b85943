"""The ``flotilla`` command: a Flotilla gateway's clusters from a shell.

``flotilla login`` stores the gateway's address and a session cookie (never a password)
in ``$XDG_CONFIG_HOME/flotilla/cli.json``; every other verb uses them, and takes
``--address``/``--auth`` to override them. ``--json`` prints one JSON document on stdout.
A failure prints one line (``flotilla: error: ...``) on stderr and exits 1; bad usage
exits 2 (as argparse does); Ctrl-C exits 130.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import getpass
import itertools
import json
import os
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TextIO

import dask.config

from . import config as _config  # registers the gateway.* dask config defaults
from ._version import __version__
from .auth import BasicAuth, GatewayAuth, get_auth
from .errors import GatewayAuthError, GatewayError, GatewayWarning
from .options import Field, Options
from .utils import format_template

if TYPE_CHECKING:
    # Imported when a verb runs: distributed and grpc take a second, --help need not.
    from .client import ClusterReport, Gateway, UsageReport, WorkerReport

del _config

__all__ = [
    "CLIError",
    "StoredLogin",
    "coerce_option",
    "config_path",
    "format_table",
    "load_login",
    "main",
    "new_output",
    "parse_option",
    "save_login",
]

#: Environment variable holding the password (instead of a prompt).
PASSWORD_ENV = "FLOTILLA_PASSWORD"
#: Seconds between two polls of ``flotilla logs --follow``.
FOLLOW_INTERVAL_SECONDS = 2.0
#: Exit codes: a failed request or bad input, bad usage (argparse's), Ctrl-C.
EXIT_FAILURE, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130

_STATUS_NAMES = ("pending", "running", "stopping", "stopped", "failed")
_ENDED = ("STOPPED", "FAILED")


class CLIError(Exception):
    """A failure to report on one line and exit 1 for."""


# ----------------------------------------------------------------------------------
# The stored login


@dataclasses.dataclass(frozen=True)
class StoredLogin:
    """What ``flotilla login`` keeps for later commands.

    Attributes
    ----------
    address : str
        The gateway's address.
    auth : str
        The auth type (``basic`` or a dotted path).
    username : str or None
        The user name (basic auth).
    cookie : str or None
        The session cookie (``name=value``) the gateway handed out, if any.
    expires : float or None
        When the cookie expires (seconds since the epoch), None if the gateway said not.
    """

    address: str
    auth: str
    username: str | None = None
    cookie: str | None = None
    expires: float | None = None

    def session(self, now: float) -> str | None:
        """The cookie, unless it has expired by ``now``."""
        if self.cookie and (self.expires is None or self.expires > now):
            return self.cookie
        return None


def config_path() -> Path:
    """``$XDG_CONFIG_HOME/flotilla/cli.json``, or ``~/.config/flotilla/cli.json``."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "flotilla" / "cli.json"


def save_login(login: StoredLogin, path: Path | None = None) -> Path:
    """Write ``login`` to ``path`` (default :func:`config_path`), readable only by its owner.

    The file is written whole to a temporary file (mode 0600) and renamed into place, so
    it is never readable by others, not even half-written.
    """
    path = path or config_path()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cli-", suffix=".json")
    try:
        os.fchmod(fd, 0o600)  # mkstemp's default, said out loud
        with os.fdopen(fd, "w") as f:
            json.dump(dataclasses.asdict(login), f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def load_login(path: Path | None = None) -> StoredLogin | None:
    """The stored login, or None if there is none."""
    path = path or config_path()
    try:
        data = json.loads(path.read_text())
        return StoredLogin(**data)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, TypeError) as exc:
        raise CLIError(f"cannot read {path}: {exc}; run `flotilla login` again") from None


# ----------------------------------------------------------------------------------
# Authentication


def _make_auth(kind: str, username: str | None, password: str | None) -> GatewayAuth:
    if kind == "basic":
        kwargs = _auth_kwargs()
        return BasicAuth(
            username=username or kwargs.get("username"),
            password=password if password is not None else kwargs.get("password"),
        )
    return get_auth(kind)


def _auth_kwargs() -> dict[str, Any]:
    kwargs = dask.config.get("gateway.auth.kwargs", None) or {}
    return {k: format_template(v) for k, v in kwargs.items()}


class SessionAuth(GatewayAuth):
    """Sends a stored session cookie (``name=value``) instead of credentials."""

    def __init__(self, cookie: str) -> None:
        super().__init__()
        self.cookie = cookie

    def metadata(self) -> list[tuple[str, str]]:
        return [("cookie", self.cookie)]


class RecordingAuth(GatewayAuth):
    """Another auth's credentials, keeping the session cookies the gateway sets in reply.

    Attributes
    ----------
    cookies : dict
        Cookie name to ``(value, Max-Age or None)``.
    """

    def __init__(self, inner: GatewayAuth) -> None:
        super().__init__()
        self.inner = inner
        self.cookies: dict[str, tuple[str, float | None]] = {}

    def metadata(self) -> list[tuple[str, str]]:
        return self.inner.metadata()

    def post_response(self, metadata: list[tuple[str, str]]) -> None:
        from ._rpc import _parse_set_cookie

        self.inner.post_response(metadata)
        for key, value in metadata:
            parsed = _parse_set_cookie(value) if key.lower() == "set-cookie" else None
            if parsed is not None:
                name, val, max_age = parsed
                self.cookies[name] = (val, max_age)


def _default_auth_type() -> str:
    value = dask.config.get("gateway.auth.type", "basic")
    return value if isinstance(value, str) else "basic"


def _default_address() -> str | None:
    value = format_template(dask.config.get("gateway.address", None))
    return value if isinstance(value, str) else None


def _no_address() -> CLIError:
    return CLIError(
        "no gateway address: pass --address URL, run `flotilla login --address URL`, "
        "or set DASK_GATEWAY__ADDRESS"
    )


@dataclasses.dataclass
class _Connection:
    address: str
    auth: GatewayAuth
    session: bool  # the auth is a stored session cookie


def _connection(args: argparse.Namespace) -> _Connection:
    stored = load_login()
    address: str | None = args.address or (stored.address if stored else None)
    address = address or _default_address()
    if not address:
        raise _no_address()
    kind: str = args.auth or (stored.auth if stored else None) or _default_auth_type()
    password = os.environ.get(PASSWORD_ENV)  # set: use it rather than the session
    username = None
    if stored is not None and stored.address == address and stored.auth == kind:
        cookie = stored.session(time.time())
        if cookie is not None and password is None:
            return _Connection(address, SessionAuth(cookie), session=True)
        username = stored.username
    return _Connection(address, _make_auth(kind, username, password), session=False)


@contextlib.contextmanager
def _gateway(conn: _Connection) -> Iterator[Gateway[Literal[False]]]:
    from .client import Gateway

    try:
        with Gateway(conn.address, auth=conn.auth) as gw:
            yield gw
    except GatewayAuthError as exc:
        hint = (
            "the saved session was not accepted (it may have expired); run `flotilla login`"
            if conn.session
            else f"run `flotilla login` or set {PASSWORD_ENV}"
        )
        raise CLIError(f"{_one_line(exc)} ({hint})") from None


# ----------------------------------------------------------------------------------
# Cluster options


def parse_option(text: str) -> tuple[str, str]:
    """Split ``key=value`` (for ``--option``); an argparse type function."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return key.strip(), value


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def coerce_option(field: Field, raw: str) -> Any:
    """``raw`` as the type ``field`` takes, or ``raw`` itself when it is not one (the
    field's validation then says what is wrong, in the gateway's words)."""
    kind = field.type_name
    try:
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            low = raw.strip().lower()
            if low in _TRUE or low in _FALSE:
                return low in _TRUE
            return raw
        if kind in ("string", "select"):
            return raw
        return json.loads(raw)  # mapping, or a type this client does not know
    except ValueError:
        return raw


def apply_options(options: Options, pairs: Sequence[tuple[str, str]]) -> None:
    """Set each ``(key, raw value)`` on ``options``, parsed against its field.

    Raises
    ------
    CLIError
        For an unknown key (naming those there are) or a value the field refuses.
    """
    fields = options.fields
    for key, raw in pairs:
        field = fields.get(key)
        if field is None:
            known = ", ".join(fields) or "none"
            raise CLIError(f"No option {key!r} available (options: {known})")
        try:
            options[key] = coerce_option(field, raw)
        except ValueError as exc:
            raise CLIError(_one_line(exc)) from None


def _field_row(field: Field) -> dict[str, Any]:
    # spec["spec"] is {"type": ..., plus "min"/"max" or "options" for the types with them}
    return {"field": field.field, "label": field.label, "default": field.get()} | dict(
        field.to_spec()["spec"]
    )


def _constraint(row: Mapping[str, Any]) -> str:
    if "options" in row:
        return ", ".join(row["options"])
    low, high = row.get("min"), row.get("max")
    if low is not None and high is not None:
        return f"{low}..{high}"
    if low is not None:
        return f">= {low}"
    if high is not None:
        return f"<= {high}"
    return ""


# ----------------------------------------------------------------------------------
# Output


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
    text = " ".join(part.strip() for part in str(text).splitlines() if part.strip())
    return text or type(exc).__name__


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows under headers, columns left-aligned and two spaces apart, no trailing blanks."""
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    return "\n".join(lines)


def format_age(seconds: float) -> str:
    """``42s``, ``5m``, ``3h``, ``2d``: the largest unit, rounded down."""
    seconds = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _bytes(n: float | None) -> str:
    from dask.utils import format_bytes

    return format_bytes(int(n)) if n else "-"


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone().isoformat() if dt is not None else None


def cluster_document(report: ClusterReport) -> dict[str, Any]:
    """A cluster as ``--json`` prints it (no TLS credentials)."""
    return {
        "name": report.name,
        "owner": report.owner,
        "status": report.status.name,
        "running_workers": report.running_workers,
        "requested_workers": report.requested_workers,
        "cores": report.cores,
        "memory": report.memory,
        "start_time": _iso(report.start_time),
        "stop_time": _iso(report.stop_time),
        "dashboard_link": report.dashboard_link,
        "backend": report.backend,
        "reason": report.reason,
        "options": report.options,
    }


def cluster_table(reports: Sequence[ClusterReport], owners: bool, now: datetime) -> str:
    """The ``flotilla list`` table."""
    headers = ["NAME", *(["OWNER"] if owners else []), "STATUS", "WORKERS", "CORES"]
    headers += ["MEMORY", "AGE", "DASHBOARD"]
    rows = []
    for r in reports:
        age = format_age((now - r.start_time).total_seconds()) if r.start_time else "-"
        rows.append(
            [
                r.name,
                *([r.owner or "-"] if owners else []),
                r.status.name.lower(),
                f"{r.running_workers or 0}/{r.requested_workers or 0}",
                f"{r.cores:g}" if r.cores else "-",
                _bytes(r.memory),
                age,
                r.dashboard_link or "-",
            ]
        )
    return format_table(headers, rows)


def worker_document(report: WorkerReport) -> dict[str, Any]:
    """A worker as ``flotilla workers --json`` prints it."""
    return {
        "name": report.name,
        "status": report.status.name,
        "reason": report.reason,
        "start_time": _iso(report.start_time),
        "stop_time": _iso(report.stop_time),
    }


def worker_table(reports: Sequence[WorkerReport], now: datetime) -> str:
    """The ``flotilla workers`` table: the reason last, whole (it is what one looks for)."""
    rows = []
    for r in reports:
        end = r.stop_time or now
        ran = format_age((end - r.start_time).total_seconds()) if r.start_time else "-"
        rows.append([r.name, r.status.name.lower(), ran, r.reason or ""])
    return format_table(["NAME", "STATUS", "RAN", "REASON"], rows)


def _quota_text(quota: Mapping[str, Any]) -> str:
    parts = []
    for key, label in (
        ("max_clusters", "clusters"),
        ("max_cores", "cores"),
        ("max_memory", "memory"),
        ("max_workers", "workers"),
    ):
        value = quota.get(key)
        if value is not None:
            shown = _bytes(value) if key == "max_memory" else f"{value:g}"
            parts.append(f"{label}<={shown}")
    return " ".join(parts) or "none"


def usage_table(usage: Sequence[UsageReport]) -> str:
    """The ``flotilla usage`` table."""
    headers = ["USER", "CLUSTERS", "WORKERS", "CORES", "MEMORY", "CORE-HOURS"]
    headers += ["GIB-HOURS", "QUOTA"]
    rows = [
        [
            u["user"],
            u["clusters"],
            u["workers"],
            f"{u['cores']:g}",
            _bytes(u["memory"]) if u["memory"] else "0",
            f"{u['core_hours']:.2f}",
            f"{u['memory_gib_hours']:.2f}",
            _quota_text(u["quota"]),
        ]
        for u in usage
    ]
    return format_table(headers, rows)


def _print_json(doc: Any) -> None:
    json.dump(doc, sys.stdout, indent=2, default=str)
    sys.stdout.write("\n")


def _warn(message: str) -> None:
    print(f"flotilla: warning: {message}", file=sys.stderr)


@contextlib.contextmanager
def _collect_warnings() -> Iterator[list[str]]:
    """Gateway warnings (e.g. a clamped scale request) as strings, to print once each."""
    collected: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", GatewayWarning)
        yield collected
    for w in caught:
        if issubclass(w.category, GatewayWarning):
            collected.append(_one_line(w.message))  # type: ignore[arg-type]
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


@contextlib.contextmanager
def _progress(message: str, stream: TextIO) -> Iterator[None]:
    """A spinner with the elapsed time on ``stream`` while the block runs, if it is a TTY."""
    if not stream.isatty():
        yield
        return
    done = threading.Event()
    started = time.monotonic()

    def spin() -> None:
        for frame in itertools.cycle("|/-\\"):
            elapsed = format_age(time.monotonic() - started)
            stream.write(f"\r{frame} {message} ({elapsed})\x1b[K")
            stream.flush()
            if done.wait(0.1):
                break
        stream.write("\r\x1b[K")
        stream.flush()

    thread = threading.Thread(target=spin, name="flotilla-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


# ----------------------------------------------------------------------------------
# Logs


_CUT_PREFIX = "[... "


def _without_cut_line(text: str) -> str:
    """``text`` without the ``[... N earlier bytes not kept ...]`` line a cut log starts with."""
    if text.startswith(_CUT_PREFIX):
        _, _, rest = text.partition("\n")
        return rest
    return text


def new_output(old: str, new: str) -> str:
    """What ``new`` adds after ``old``: both are the end of the same growing output, so the
    longest end of ``old`` (from a line start) that ``new`` starts with is where it resumes."""
    old, new = _without_cut_line(old), _without_cut_line(new)
    if new.startswith(old):
        return new[len(old) :]
    start = 0
    while True:
        start = old.find("\n", start) + 1
        if start == 0 or start >= len(old):
            return new  # nothing in common: all of it is new
        if new.startswith(old[start:]):
            return new[len(old) - start :]


def _print_logs(logs: Mapping[str, str]) -> None:
    for i, (process, text) in enumerate(logs.items()):
        if i:
            print()
        print(f"==> {process} <==")
        sys.stdout.write(text if text.endswith("\n") or not text else text + "\n")
    sys.stdout.flush()


def _follow_logs(gw: Gateway[Literal[False]], name: str, interval: float) -> None:
    """Print complete new lines of every process, prefixed with its name, until the cluster
    has ended (then what is left) or Ctrl-C."""
    seen: dict[str, str] = {}
    pending: dict[str, str] = {}  # a process's last line, not yet complete

    def emit(logs: Mapping[str, str], final: bool) -> None:
        for process, text in logs.items():
            chunk = pending.pop(process, "") + new_output(seen.get(process, ""), text)
            seen[process] = text
            lines = chunk.split("\n")
            tail = lines.pop()  # "" when the chunk ends with a newline
            if tail and not final:
                pending[process] = tail
            elif tail:
                lines.append(tail)
            for line in lines:
                print(f"{process} | {line}")
        sys.stdout.flush()

    while True:
        status = gw.get_cluster(name).status.name
        logs = gw.get_cluster_logs(name)
        if status in _ENDED:
            emit(logs, final=True)
            return
        emit(logs, final=False)
        time.sleep(interval)


# ----------------------------------------------------------------------------------
# Verbs


def _cmd_login(args: argparse.Namespace) -> int:
    address: str | None = args.address or _default_address()
    if not address:
        stored = load_login()
        address = stored.address if stored else None
    if not address:
        raise _no_address()
    kind: str = args.auth or _default_auth_type()
    username: str | None = None
    password: str | None = None
    if kind == "basic":
        username = args.user or _auth_kwargs().get("username") or getpass.getuser()
        password = _read_password(args, username, address)
    auth = RecordingAuth(_make_auth(kind, username, password))
    with _gateway(_Connection(address, auth, session=False)) as gw:
        gw.list_clusters()  # any call proves the credentials, and brings the session
    cookie, expires = None, None
    if auth.cookies:
        name, (value, max_age) = next(iter(auth.cookies.items()))
        cookie = f"{name}={value}"
        expires = time.time() + max_age if max_age is not None else None
    path = save_login(StoredLogin(address, kind, username, cookie, expires))
    if args.json:
        _print_json(
            {
                "address": address,
                "auth": kind,
                "user": username,
                "session": bool(cookie),
                "config": str(path),
            }
        )
    else:
        who = f" as {username}" if username else ""
        print(f"Logged in to {address}{who}")
        if cookie is None:
            _warn(f"the gateway gave no session; later commands need {PASSWORD_ENV}")
    return 0


def _read_password(args: argparse.Namespace, username: str, address: str) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\r\n")
    env = os.environ.get(PASSWORD_ENV)
    if env is not None:
        return env
    if sys.stdin.isatty():
        return getpass.getpass(f"Password for {username} at {address}: ")
    return ""


def _cmd_logout(args: argparse.Namespace) -> int:
    path = config_path()
    existed = path.exists()
    path.unlink(missing_ok=True)
    if args.json:
        _print_json({"logged_out": existed, "config": str(path)})
    elif existed:
        print("Logged out")
    return 0


def _statuses(args: argparse.Namespace) -> list[str] | None:
    statuses: list[str] | None = args.status
    return [s.upper() for s in statuses] if statuses else None


def _cmd_list(args: argparse.Namespace, all_users: bool | None = None) -> int:
    all_users = args.all_users if all_users is None else all_users
    with _gateway(_connection(args)) as gw:
        reports = gw.list_clusters(status=_statuses(args), all_users=all_users)
    if args.json:
        _print_json([cluster_document(r) for r in reports])
    elif reports:
        print(cluster_table(reports, owners=bool(all_users), now=datetime.now()))
    else:
        print("No clusters")
    return 0


def _cmd_create(args: argparse.Namespace) -> int:
    with _gateway(_connection(args)) as gw:
        options = gw.cluster_options()
        apply_options(options, args.option or [])
        name: str = gw.submit(options)
        if args.no_wait:
            report = gw.get_cluster(name)
        else:
            try:
                with _progress(f"Starting cluster {name}", sys.stderr):
                    report = gw.wait_for_start(name)
            except KeyboardInterrupt:
                print(
                    f"flotilla: interrupted; cluster {name} is still starting "
                    f"(`flotilla stop {name}` stops it)",
                    file=sys.stderr,
                )
                raise
    if args.json:
        _print_json(cluster_document(report))
    else:
        print(name)
    return 0


def _cmd_scale(args: argparse.Namespace) -> int:
    with _gateway(_connection(args)) as gw, _collect_warnings() as warned:
        gw.scale_cluster(args.name, args.n)
        report = gw.get_cluster(args.name)
    return _changed(args, report, warned, f"Scaled cluster {args.name} to {args.n} workers")


def _cmd_adapt(args: argparse.Namespace) -> int:
    with _gateway(_connection(args)) as gw, _collect_warnings() as warned:
        gw.adapt_cluster(args.name, minimum=args.minimum, maximum=args.maximum)
        report = gw.get_cluster(args.name)
    low = args.minimum if args.minimum is not None else 0
    high = args.maximum if args.maximum is not None else "unbounded"
    return _changed(
        args, report, warned, f"Cluster {args.name} adapts between {low} and {high} workers"
    )


def _changed(
    args: argparse.Namespace, report: ClusterReport, warned: list[str], message: str
) -> int:
    for w in warned:
        _warn(w)
    if args.json:
        _print_json(cluster_document(report) | {"warnings": warned})
    else:
        print(message)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    with _gateway(_connection(args)) as gw:
        # Stopping is idempotent (an unknown name is no error to the gateway); looking
        # the cluster up first says so when the name is wrong, or not the caller's.
        before = gw.get_cluster(args.name)
        if before.status.name not in _ENDED:
            gw.stop_cluster(args.name)
        report = gw.get_cluster(args.name)
    if args.json:
        _print_json(cluster_document(report))
    elif before.status.name in _ENDED:
        print(f"Cluster {args.name} had already ended ({before.status.name.lower()})")
    else:
        owner = f" of user {report.owner}" if args.show_owner and report.owner else ""
        print(f"Stopped cluster {args.name}{owner}")
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    with _gateway(_connection(args)) as gw:
        if args.follow:
            _follow_logs(gw, args.name, args.interval)
            return 0
        logs: dict[str, str] = gw.get_cluster_logs(args.name)
    if args.json:
        _print_json({"name": args.name, "logs": logs})
    elif logs:
        _print_logs(logs)
    else:
        print(f"No output kept for cluster {args.name}", file=sys.stderr)
    return 0


def _cmd_workers(args: argparse.Namespace) -> int:
    with _gateway(_connection(args)) as gw:
        reports: list[WorkerReport] = gw.list_workers(args.name)
    if args.failed:
        reports = [r for r in reports if r.status.name == "FAILED"]
    if args.json:
        _print_json([worker_document(r) for r in reports])
    elif reports:
        print(worker_table(reports, now=datetime.now()))
    else:
        which = "failed workers" if args.failed else "workers"
        print(f"No {which} recorded for cluster {args.name}", file=sys.stderr)
    return 0


def _cmd_options(args: argparse.Namespace) -> int:
    with _gateway(_connection(args)) as gw:
        options = gw.cluster_options()
    rows = [_field_row(f) for f in options.fields.values()]
    if args.json:
        _print_json(rows)
    elif rows:
        table = [
            [r["field"], r["type"], json.dumps(r["default"]), _constraint(r), r["label"]]
            for r in rows
        ]
        print(format_table(["FIELD", "TYPE", "DEFAULT", "CHOICES/BOUNDS", "LABEL"], table))
    else:
        print("No options")
    return 0


def _cmd_usage(args: argparse.Namespace, all_users: bool | None = None) -> int:
    all_users = args.all_users if all_users is None else all_users
    with _gateway(_connection(args)) as gw:
        usage = gw.usage(all_users=all_users)
    if args.json:
        _print_json(usage)
    else:
        print(usage_table(usage))
    return 0


# ----------------------------------------------------------------------------------
# Parser


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _common() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--address", help="the gateway's address (default: the stored login, then gateway.address)"
    )
    common.add_argument(
        "--auth",
        help="basic, or the dotted path of a GatewayAuth subclass (default: the stored login)",
    )
    common.add_argument("--json", action="store_true", help="print one JSON document on stdout")
    return common


def _status_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--status",
        action="append",
        type=str.lower,
        choices=_STATUS_NAMES,
        help="only clusters with this status (repeatable; default: pending and running)",
    )


def build_parser() -> argparse.ArgumentParser:
    """The ``flotilla`` argument parser; each verb sets ``func`` to its handler."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="flotilla", description="Manage Dask clusters on a Flotilla gateway."
    )
    parser.add_argument("--version", action="version", version=f"flotilla {__version__}")
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", required=True)

    def verb(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sub = verbs.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(func=func)
        return sub

    p = verb("login", _cmd_login, "store the gateway address and a session for later commands")
    p.add_argument("--user", help="user name (basic auth; default: the current user)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    verb("logout", _cmd_logout, "forget the stored login")

    p = verb("list", _cmd_list, "list clusters")
    p.add_argument("--all-users", action="store_true", help="every user's clusters (admins)")
    _status_options(p)

    p = verb("create", _cmd_create, "create a cluster and wait for it to start; prints its name")
    p.add_argument(
        "-o",
        "--option",
        action="append",
        type=parse_option,
        metavar="KEY=VALUE",
        help="a cluster option (repeatable); see `flotilla options`",
    )
    p.add_argument("--no-wait", action="store_true", help="do not wait for the cluster to start")

    p = verb("scale", _cmd_scale, "set a cluster's worker count (turns adaptive scaling off)")
    p.add_argument("name")
    p.add_argument("n", type=_non_negative, metavar="N")

    p = verb("adapt", _cmd_adapt, "let the gateway scale a cluster between bounds")
    p.add_argument("name")
    p.add_argument("--minimum", type=_non_negative, help="fewest workers (default 0)")
    p.add_argument("--maximum", type=_non_negative, help="most workers (default: no bound)")

    p = verb("stop", _cmd_stop, "stop a cluster")
    p.add_argument("name")
    p.set_defaults(show_owner=False)

    p = verb("logs", _cmd_logs, "print a cluster's scheduler and worker output")
    p.add_argument("name")
    p.add_argument(
        "-f", "--follow", action="store_true", help="keep printing new lines until it ends"
    )
    p.add_argument(
        "--interval",
        type=_positive_float,
        default=FOLLOW_INTERVAL_SECONDS,
        help=f"seconds between polls with --follow (default {FOLLOW_INTERVAL_SECONDS:g})",
    )

    p = verb(
        "workers", _cmd_workers, "list a cluster's workers, ended ones too, with why they failed"
    )
    p.add_argument("name")
    p.add_argument("--failed", action="store_true", help="only the workers that failed")

    verb("options", _cmd_options, "show the cluster options you may set")

    p = verb("usage", _cmd_usage, "what your clusters reserve, your quota, and usage so far")
    p.add_argument("--all-users", action="store_true", help="every user's usage (admins)")

    admin = verbs.add_parser("admin", help="act on every user's clusters (admins)")
    admin_verbs = admin.add_subparsers(dest="admin_verb", metavar="VERB", required=True)

    def admin_verb(
        name: str, func: Callable[[argparse.Namespace], int], help: str
    ) -> argparse.ArgumentParser:
        sub = admin_verbs.add_parser(name, parents=[common], help=help, description=help)
        sub.set_defaults(func=func)
        return sub

    p = admin_verb("list", lambda a: _cmd_list(a, all_users=True), "list every user's clusters")
    _status_options(p)
    p = admin_verb("stop", _cmd_stop, "stop any user's cluster")
    p.add_argument("name")
    p.set_defaults(show_owner=True)
    admin_verb("usage", lambda a: _cmd_usage(a, all_users=True), "every user's usage")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``flotilla`` command; returns its exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "follow", False) and args.json:
        parser.error("--json cannot be combined with --follow")
    try:
        status: int = args.func(args)
        return status
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``flotilla logs NAME | head``): not a failure of ours.
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")
        return EXIT_FAILURE
    except Exception as exc:
        known = (CLIError, GatewayError, ValueError, TimeoutError, OSError)
        message = _one_line(exc)
        if not isinstance(exc, known):
            message = f"unexpected {type(exc).__name__}: {message}"
        print(f"flotilla: error: {message}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
