"""One gateway stack per registry store (SQLite, PostgreSQL) behind the real Envoy.

The ``compat`` fixture is session-scoped and parametrized by store, so pytest runs every
test of the suite against the SQLite stack, stops it, then against the PostgreSQL one.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from compat.harness import CompatGateway, running_gateway


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
    with running_gateway(state_dir, request.param, store_settings) as gateway:
        yield gateway
