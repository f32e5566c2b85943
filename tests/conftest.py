"""Fixtures every test tier may use."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from postgres import PostgresServer, postgres_server


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run; ``postgres.new_database()`` per test."""
    with postgres_server() as server:
        yield server
