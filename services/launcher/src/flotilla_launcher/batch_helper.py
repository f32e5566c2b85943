"""``flotilla-batch-helper``: what a batch backend does *as the cluster's owner*.

A batch launcher (Slurm, PBS) submits jobs as the requesting user. When the launcher runs
as a service account it runs this helper through ``sudo -u <user>`` (one sudoers line
names this program); when it already runs as the owner it calls :func:`handle` directly.
Either way the files it writes belong to the owner and the jobs are the owner's.

The helper reads one JSON request on stdin and writes one JSON reply on stdout:

``{"action": "submit", "directory": D, "files": {name: {"text": T, "mode": M}},
"command": [...], "environment": {...}, "record": R, "replace": false}``
    Create ``D`` (0700) and ``D/logs``, write each file (``mode`` 0o600 by default), then
    run ``command`` in ``D``. Reply ``{"returncode", "stdout", "stderr"}``. With
    ``record``, a successful command's output (the job id) is kept in ``D/R``, and if
    ``D/R`` already exists (a launcher died before reporting that job) nothing is run
    unless ``replace``: the reply is ``{"recorded": its text}``.
``{"action": "recorded", "directory": D, "names": [glob, ...]}``
    Reply ``{"recorded": {name: text}}`` for the files of ``D`` matching the globs.
``{"action": "cancel", "directory": D, "command": [...], "remove": [glob, ...],
"environment": {...}}``
    Run ``command`` (may be empty), then delete the files of ``D`` matching the globs.
``{"action": "logs", "directory": D, "tail_bytes": N, "total_bytes": M}``
    Reply ``{"logs": {process: text}}``: the tails of ``D/logs/*.log`` (see
    :func:`flotilla_launcher.logtail.read_log_dir`), the scheduler first.

A request may carry ``"timeout"``: seconds its command may take (default 60).

It imports nothing but the standard library (and the launcher's stdlib-only ``logtail``)
so it starts fast, and it never follows a symlink when it writes or reads. It grants
nothing the sudoers rule did not already grant: whoever may run it as a user may submit
any job as that user.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .logtail import read_log_dir

__all__ = ["HelperError", "handle", "main"]

#: How long a submit or cancel command may take unless the request says (``timeout``).
COMMAND_TIMEOUT_SECONDS = 60.0


class HelperError(Exception):
    """A malformed request; the message is safe to show."""


def _strings(value: Any, what: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HelperError(f"{what} must be a list of strings")
    return value


def _environment(request: dict[str, Any]) -> dict[str, str]:
    extra = request.get("environment") or {}
    if not isinstance(extra, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in extra.items()
    ):
        raise HelperError("environment must be an object of strings")
    return {**os.environ, **extra}


def _directory(request: dict[str, Any]) -> Path:
    raw = request.get("directory")
    if not isinstance(raw, str) or not os.path.isabs(raw):
        raise HelperError("directory must be an absolute path")
    return Path(raw)


def _timeout(request: dict[str, Any]) -> float:
    value = request.get("timeout", COMMAND_TIMEOUT_SECONDS)
    if not isinstance(value, int | float) or value <= 0:
        raise HelperError("timeout must be a positive number of seconds")
    return float(value)


def _run(
    command: list[str], cwd: Path | None, env: dict[str, str], timeout: float
) -> dict[str, Any]:
    try:
        proc = subprocess.run(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except FileNotFoundError:
        return {"returncode": 127, "stdout": "", "stderr": f"{command[0]}: command not found"}
    except subprocess.TimeoutExpired:
        return {
            "returncode": 124,
            "stdout": "",
            "stderr": f"{command[0]} did not answer within {timeout:.0f}s",
        }
    return {"returncode": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr}


def _make_dirs(directory: Path) -> None:
    """Create ``directory`` and its missing parents, private to the owner (0700)."""
    missing = []
    d = directory
    while not d.exists():
        missing.append(d)
        d = d.parent
    for d in reversed(missing):
        d.mkdir(mode=0o700, exist_ok=True)
    (directory / "logs").mkdir(mode=0o700, exist_ok=True)


def _write(path: Path, text: str, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _submit(request: dict[str, Any]) -> dict[str, Any]:
    directory = _directory(request)
    command = _strings(request.get("command"), "command")
    if not command:
        raise HelperError("command must not be empty")
    files = request.get("files") or {}
    if not isinstance(files, dict):
        raise HelperError("files must be an object")
    env = _environment(request)
    timeout = _timeout(request)
    record = request.get("record")
    if record is not None:
        _check_name(record)
        recorded = _read_small(directory / record)
        if recorded is not None and not request.get("replace"):
            return {"recorded": recorded}
    _make_dirs(directory)
    for name, spec in files.items():
        _check_name(name)
        if not isinstance(spec, dict) or not isinstance(spec.get("text"), str):
            raise HelperError(f"file {name!r} needs a text")
        mode = spec.get("mode", 0o600)
        if not isinstance(mode, int) or mode & ~0o700:
            raise HelperError(f"file {name!r}: mode must be private to the owner")
        _write(directory / name, spec["text"], mode)
    result = _run(command, directory, env, timeout)
    if record is not None and result["returncode"] == 0:
        _write(directory / record, result["stdout"], 0o600)
    return result


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise HelperError(f"invalid file name {name!r}")
    return name


def _read_small(path: Path, limit: int = 4096) -> str | None:
    """The text of a small regular file of ours, None if there is none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


def _matching(directory: Path, patterns: list[str]) -> list[Path]:
    if not patterns or not directory.is_dir():
        return []
    return sorted(
        entry
        for entry in directory.iterdir()
        if any(fnmatch.fnmatchcase(entry.name, p) for p in patterns) and not entry.is_dir()
    )


def _recorded(request: dict[str, Any]) -> dict[str, Any]:
    directory = _directory(request)
    patterns = _strings(request.get("names", []), "names")
    found = {}
    for path in _matching(directory, patterns):
        text = _read_small(path)
        if text is not None:
            found[path.name] = text
    return {"recorded": found}


def _cancel(request: dict[str, Any]) -> dict[str, Any]:
    directory = _directory(request)
    command = _strings(request.get("command", []), "command")
    patterns = _strings(request.get("remove", []), "remove")
    result = (
        _run(command, None, _environment(request), _timeout(request))
        if command
        else {"returncode": 0, "stdout": "", "stderr": ""}
    )
    for path in _matching(directory, patterns):
        path.unlink(missing_ok=True)
    return result


def _logs(request: dict[str, Any]) -> dict[str, Any]:
    directory = _directory(request)
    sizes = [request.get("tail_bytes"), request.get("total_bytes")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        raise HelperError("tail_bytes and total_bytes must be positive integers")
    tail_bytes, total_bytes = sizes
    assert isinstance(tail_bytes, int) and isinstance(total_bytes, int)
    return {"logs": read_log_dir(directory, "logs", tail_bytes, total_bytes)}


_ACTIONS = {"submit": _submit, "recorded": _recorded, "cancel": _cancel, "logs": _logs}


def handle(request: Any) -> dict[str, Any]:
    """Carry out one request (see the module docstring) and return its reply."""
    if not isinstance(request, dict):
        raise HelperError("the request must be a JSON object")
    action = _ACTIONS.get(request.get("action", ""))
    if action is None:
        raise HelperError(f"unknown action {request.get('action')!r}")
    return action(request)


def main() -> None:
    """Console entry point: one request on stdin, one reply on stdout."""
    try:
        reply = handle(json.load(sys.stdin))
    except (HelperError, ValueError, OSError) as exc:
        reply = {"error": f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc)}
    json.dump(reply, sys.stdout)
    sys.stdout.write("\n")
    sys.exit(1 if "error" in reply else 0)


if __name__ == "__main__":
    main()
