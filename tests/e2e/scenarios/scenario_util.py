"""What the upstream-client scenarios share. They run in a Python that has only the
upstream client, so they cannot import ``tests/helpers.py``; each scenario's own directory
is first on ``sys.path``, so they import this module by name."""

import time


def until(check, timeout, what):
    """``check()``'s first true value, polled every 0.2 s; raises after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")
