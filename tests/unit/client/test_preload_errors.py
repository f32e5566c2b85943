"""The scheduler preload says why the gateway refused a heartbeat, in the scheduler's log."""

from __future__ import annotations

import pytest
from flotilla.scheduler_preload import _error_text


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (b'{"error": "scheduler_address tls://10.0.0.5:4000 is not reachable"}',
         ": scheduler_address tls://10.0.0.5:4000 is not reachable"),
        (b'{"error": ""}', ""),
        (b"<html>bad gateway</html>", ""),
        (b"[1, 2]", ""),
        (b"", ""),
        (None, ""),
    ],
)  # fmt: skip
def test_error_text(body: bytes | None, shown: str) -> None:
    assert _error_text(body) == shown
