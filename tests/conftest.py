"""Fixtures every test tier may use."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from krb5_realm import Krb5Realm, krb5_realm
from postgres import PostgresServer, postgres_server
from yarn_cluster import YarnCluster, yarn_cluster

# The Envoy `make setup` installs, unless FLOTILLA_ENVOY names another (`make test` sets
# it; this serves a bare `pytest`).
_ENVOY = (
    Path(__file__).resolve().parents[1]
    / ".cache/envoy/lib/python3.11/site-packages/envoy/_bin/envoy"
)
if not os.environ.get("FLOTILLA_ENVOY") and _ENVOY.exists():
    os.environ["FLOTILLA_ENVOY"] = str(_ENVOY)

# A private Slurm and its users (tests/slurm_fixtures.py), started once per session by
# whichever tier asks first.
pytest_plugins = ["slurm_fixtures"]


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the whole run; ``postgres.new_database()`` per test."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def kdc() -> Iterator[Krb5Realm]:
    """One private Kerberos KDC for the whole run (tests/krb5_realm.py), stopped by PID."""
    with krb5_realm() as realm:
        yield realm


@pytest.fixture(scope="session")
def yarn() -> Iterator[YarnCluster]:
    """One private single-node YARN for the whole run (tests/yarn_cluster.py), stopped by
    PID. Hadoop's jars are resolved once into .cache/yarn/."""
    with yarn_cluster() as cluster:
        yield cluster
