"""FieldCipher: key parsing, the stored format, and which key decrypts what."""

from __future__ import annotations

import pytest
from flotilla_registry.crypto import (
    FieldCipher,
    KeyConfigError,
    UndecryptableValue,
    decrypt_or_plain,
    generate_key,
)
from flotilla_registry.pgstore import describe_url
from flotilla_registry.store import StoreSetupError, is_persistent, open_store


def test_first_key_encrypts_every_key_decrypts() -> None:
    a, b = generate_key(), generate_key()
    under_a = FieldCipher([a]).encrypt("secret")
    assert under_a.startswith(FieldCipher([a]).current_prefix) and "secret" not in under_a
    rotated = FieldCipher([b, a])
    assert rotated.decrypt(under_a) == "secret"
    assert not rotated.is_current(under_a)
    assert rotated.is_current(rotated.encrypt("secret"))
    with pytest.raises(UndecryptableValue, match="not among the configured keys"):
        FieldCipher([b]).decrypt(under_a)


def test_plaintext_passes_and_tampering_is_caught() -> None:
    cipher = FieldCipher([generate_key()])
    assert cipher.decrypt("token-from-before") == "token-from-before"
    stored = cipher.encrypt("secret")
    with pytest.raises(UndecryptableValue, match="corrupt"):
        cipher.decrypt(stored[:-4] + "AAAA")
    with pytest.raises(UndecryptableValue, match="no db_encrypt_keys"):
        decrypt_or_plain(None, stored)


def test_keys_are_checked_without_showing_them() -> None:
    key = generate_key()
    assert FieldCipher([key.rstrip("=")]).key_ids == FieldCipher([key]).key_ids
    for bad in ("short", key[:-8], "!" * 44):
        with pytest.raises(KeyConfigError, match="key #1 is not a Fernet key") as err:
            FieldCipher([bad])
        assert bad not in str(err.value)
    with pytest.raises(KeyConfigError):
        FieldCipher([])


def test_urls() -> None:
    assert not is_persistent("sqlite:///:memory:") and is_persistent("sqlite:///x.db")
    assert describe_url("postgresql://u:secret@db.example:6543/reg") == "db.example:6543/reg"
    for url, message in [
        ("postgresql://u:p@h:port/db", "bad port"),
        ("postgresql://u:p@h:5432/", "must name one database"),
        ("postgres:///db", "malformed database URL"),
        ("mysql://h/db", "unsupported"),
        ("sqlite://relative", "SQLite URLs look like"),
    ]:
        with pytest.raises(StoreSetupError, match=message) as err:
            open_store(url)
        assert "secret" not in str(err.value) and "p@" not in str(err.value)
