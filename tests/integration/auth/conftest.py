"""Fixtures of the auth integration tests: a real Kerberos realm (tests/krb5_realm.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from krb5_realm import Krb5Realm, krb5_realm


@pytest.fixture(scope="session")
def kdc() -> Iterator[Krb5Realm]:
    """One KDC for the whole run, stopped by PID at the end."""
    with krb5_realm() as realm:
        yield realm


@pytest.fixture
def krb5_env(kdc: Krb5Realm, monkeypatch: pytest.MonkeyPatch) -> Krb5Realm:
    """The realm, with this process's GSSAPI (client and acceptor) pointed at it."""
    for name, value in kdc.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KRB5CCNAME", raising=False)
    monkeypatch.delenv("KRB5_KTNAME", raising=False)
    return kdc
