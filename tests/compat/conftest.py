"""One gateway stack per registry store (SQLite, PostgreSQL) behind the real Envoy.

The ``compat`` fixture is session-scoped and parametrized by store, so pytest runs every
test of the suite against the SQLite stack, stops it, then against the PostgreSQL one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from compat.harness import CompatGateway, compat_config
from flotilla_common.embedded import EmbeddedStack
from gateway_stack import leftover_cluster_pids, write_config

_ENVOY = (
    Path(__file__).resolve().parents[2]
    / ".cache/envoy/lib/python3.11/site-packages/envoy/_bin/envoy"
)
if not os.environ.get("FLOTILLA_ENVOY") and _ENVOY.exists():
    os.environ["FLOTILLA_ENVOY"] = str(_ENVOY)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "/compat/" in str(item.path):
            item.add_marker(pytest.mark.compat)


def _store_settings(request: pytest.FixtureRequest) -> str:
    """Configuration lines that select the store under test."""
    if request.param == "sqlite":
        return ""  # the embedded default: <state_dir>/registry.sqlite
    try:
        postgres = request.getfixturevalue("postgres")
    except pytest.FixtureLookupError:
        reason = "no `postgres` fixture (tests/postgres.py) in this tree"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    from cryptography.fernet import Fernet

    url = postgres.new_database()
    key = Fernet.generate_key().decode()
    return f"\nc.Registry.db_url = {url!r}\nc.Registry.db_encrypt_keys = [{key!r}]\n"


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def compat(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CompatGateway]:
    """The whole gateway on free ports, with the suite's options, on one store."""
    store_settings = _store_settings(request)
    state_dir = tmp_path_factory.mktemp(f"compat-{request.param}")
    password = secrets.token_urlsafe(12)
    config, address = write_config(state_dir, compat_config(password, store_settings))
    stack = EmbeddedStack(str(config))
    try:
        stack.start()
        yield CompatGateway(address, stack, state_dir, store=request.param, password=password)
    finally:
        stack.stop()
        leftover = leftover_cluster_pids(state_dir)
        for pids in leftover.values():
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if os.environ.get("FLOTILLA_TEST_SHOW_LOGS"):
            for log in sorted((state_dir / "logs").glob("*.log")):
                print(f"==== {log.name}\n{log.read_text()[-5000:]}")
        assert not leftover, f"cluster processes left after the gateway stopped: {leftover}"
