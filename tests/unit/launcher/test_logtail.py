"""Reading bounded log tails from a directory the cluster's owner controls."""

from __future__ import annotations

import os
from pathlib import Path

from flotilla_launcher.logtail import decode_tail, read_log_dir


def write(path: Path, data: bytes, mtime: float) -> None:
    path.write_bytes(data)
    os.utime(path, (mtime, mtime))


def test_decode_tail_marks_what_was_cut() -> None:
    assert decode_tail(b"whole\nfile\n", 0) == "whole\nfile\n"
    # The partial first line goes, and the marker counts it.
    assert decode_tail(b"tial line\nlast\n", 100) == "[... 110 earlier bytes not kept ...]\nlast\n"
    # A tail without a newline is kept whole.
    assert decode_tail(b"no newline", 5) == "[... 5 earlier bytes not kept ...]\nno newline"
    assert decode_tail(b"\xff\xfeok", 0) == "\ufffd\ufffdok"


def test_scheduler_first_then_most_recent_workers_within_the_budget(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    write(logs / "worker-old.log", b"old\n", 1000)
    write(logs / "worker-new.log", b"new\n", 3000)
    write(logs / "scheduler.log", b"line1\nline2\nline3\n", 2000)
    write(logs / "notes.txt", b"ignored", 4000)
    out = read_log_dir(tmp_path, "logs", tail_bytes=1024, total_bytes=1024)
    assert list(out) == ["scheduler", "worker-new", "worker-old"]
    assert out["worker-new"] == "new\n"
    # Each file is cut to tail_bytes; the total stops at total_bytes.
    out = read_log_dir(tmp_path, "logs", tail_bytes=12, total_bytes=16)
    assert out == {
        "scheduler": "[... 6 earlier bytes not kept ...]\nline2\nline3\n",
        "worker-new": "new\n",
    }


def test_links_fifos_and_hard_links_are_not_read(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root only")
    logs = tmp_path / "work" / "logs"
    logs.mkdir(parents=True)
    (logs / "scheduler.log").symlink_to(secret)
    os.link(secret, logs / "worker-hard.log")
    os.mkfifo(logs / "worker-fifo.log")
    (logs / "worker-dir.log").mkdir()
    (logs / "worker-ok.log").write_text("fine")
    assert read_log_dir(tmp_path / "work", "logs", 1024, 1 << 20) == {"worker-ok": "fine"}


def test_a_logs_directory_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "scheduler.log").write_text("not this cluster's")
    work = tmp_path / "work"
    work.mkdir()
    (work / "logs").symlink_to(elsewhere)
    assert read_log_dir(work, "logs", 1024, 1024) == {}
    assert read_log_dir(tmp_path / "missing", "logs", 1024, 1024) == {}
