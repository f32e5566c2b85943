"""Bounded tails of log files in a directory the cluster's owner can write to.

The launcher (often root) reads files in a directory owned by the user whose processes
write them, and hands their text to that user. So nothing here follows a symbolic link
(a user could point ``logs`` or ``scheduler.log`` at a file only root may read), opens a
FIFO or device (which could block or leak), or reads a file with other hard links.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

__all__ = ["decode_tail", "read_log_dir"]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
#: Directory entries looked at, at most (a user could fill the directory).
MAX_ENTRIES = 10_000


def decode_tail(data: bytes, omitted: int) -> str:
    """``data`` (the end of a file) as text; ``omitted`` bytes came before it.

    When something was omitted, the partial first line is dropped too and a line saying
    how much is missing starts the text.
    """
    if omitted:
        cut = data.find(b"\n")
        if 0 <= cut < len(data) - 1:
            omitted += cut + 1
            data = data[cut + 1 :]
    text = data.decode("utf-8", errors="replace")
    if omitted:
        text = f"[... {omitted} earlier bytes not kept ...]\n{text}"
    return text


def _read_tail(fd: int, size: int, tail_bytes: int) -> str:
    # One byte before the tail too: if it is a newline, the tail starts with a whole line.
    start = max(0, size - tail_bytes - 1)
    chunks: list[bytes] = []
    remaining = size - start
    offset = start
    while remaining > 0:
        chunk = os.pread(fd, min(remaining, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        remaining -= len(chunk)
    return decode_tail(b"".join(chunks), start)


@contextlib.contextmanager
def _opened(path: str, flags: int, dir_fd: int | None = None) -> Iterator[int]:
    fd = os.open(path, flags, dir_fd=dir_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def read_log_dir(
    base: Path, subdir: str, tail_bytes: int, total_bytes: int, first: str = "scheduler"
) -> dict[str, str]:
    """The tails of the ``*.log`` files in ``base/subdir``: name without ``.log`` -> text.

    ``base`` is trusted (the launcher's own directory tree); ``subdir`` and the files are
    not, and are opened without following links. Returns the ``first`` process, then the
    others most recently written first, each at most ``tail_bytes`` bytes, until
    ``total_bytes`` are used. A missing directory gives ``{}``.
    """
    try:
        base_fd = os.open(base, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError:
        return {}
    with contextlib.ExitStack() as stack:
        stack.callback(os.close, base_fd)
        try:
            dir_fd = stack.enter_context(_opened(subdir, _DIR_FLAGS, base_fd))
        except OSError:
            return {}
        found: list[tuple[bool, float, str]] = []
        with os.scandir(dir_fd) as entries:
            for i, entry in enumerate(entries):
                if i >= MAX_ENTRIES:
                    break
                name = entry.name.removesuffix(".log")
                if not name or name == entry.name:
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    found.append((name != first, -st.st_mtime, name))
        found.sort()
        out: dict[str, str] = {}
        budget = total_bytes
        for _, _, name in found:
            if budget <= 0:
                break
            try:
                with _opened(f"{name}.log", _FILE_FLAGS, dir_fd) as fd:
                    st = os.fstat(fd)
                    # Checked again on what was opened: the entry may have been replaced.
                    if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                        continue
                    take = min(tail_bytes, budget)
                    out[name] = _read_tail(fd, st.st_size, take)
            except OSError:
                continue
            budget -= min(st.st_size, take)
        return out
