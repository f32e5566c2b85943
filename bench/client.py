"""The orchestrator's handle on one ``agent.py`` process (one per gateway)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any

__all__ = ["Agent", "AgentError"]


class AgentError(RuntimeError):
    def __init__(self, message: str, *, fatal: bool = False) -> None:
        super().__init__(message)
        #: The agent is stuck or gone and must be replaced.
        self.fatal = fatal


class Agent:
    """One ``agent.py`` process driving one gateway (JSON lines over its stdin/stdout)."""

    def __init__(self, python: str, address: str, log_path: Path) -> None:
        self._log = open(log_path, "ab")
        env = {**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "60s"}
        env.pop("PYTHONPATH", None)
        self.proc = subprocess.Popen(
            [python, str(Path(__file__).with_name("agent.py")), address],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            env=env,
            cwd=tempfile.gettempdir(),  # never import anything from this repository
        )
        self._lines: queue.Queue[bytes] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(b"")

    def call(self, command: str, timeout: float = 600.0, **kwargs: Any) -> Any:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"command": command, **kwargs}) + "\n").encode())
        self.proc.stdin.flush()
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise AgentError(f"{command}: no answer after {timeout:.0f}s", fatal=True) from None
        if not line:
            raise AgentError(f"{command}: the agent exited ({self.proc.poll()})", fatal=True)
        reply = json.loads(line)
        if not reply["ok"]:
            raise AgentError(f"{command}: {reply['error']}")
        return reply["result"]

    def close(self, timeout: float = 120.0) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(OSError):
                self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
