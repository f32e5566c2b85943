"""Fixtures of the auth integration tests (the session KDC ``kdc`` is in tests/conftest.py)."""

from __future__ import annotations

import pytest
from krb5_realm import Krb5Realm


@pytest.fixture
def krb5_env(kdc: Krb5Realm, monkeypatch: pytest.MonkeyPatch) -> Krb5Realm:
    """The realm, with this process's GSSAPI (client and acceptor) pointed at it."""
    for name, value in kdc.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("KRB5CCNAME", raising=False)
    monkeypatch.delenv("KRB5_KTNAME", raising=False)
    return kdc
