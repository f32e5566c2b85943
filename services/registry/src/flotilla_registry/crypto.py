"""Encryption at rest of the secrets in cluster records (tokens and TLS private keys).

Keys are Fernet keys (32 random bytes, URL-safe base64). The first key encrypts; every
key decrypts, so an administrator rotates by putting a new key first, restarting (each
registry re-encrypts the rows not under its first key when it opens the store), and
dropping the old key later.

A stored value reads ``fernet:<key id>:<Fernet token>``. The key id (a short hash of the
key) tells which key to decrypt with, lets the store find rows under an old key with a
plain SQL ``LIKE``, and names a missing key in the error. Anything without the prefix is
plaintext from before encryption was configured: it is read as it is and rewritten
encrypted when the store opens.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable

from cryptography.fernet import Fernet, InvalidToken

__all__ = [
    "PREFIX",
    "FieldCipher",
    "KeyConfigError",
    "UndecryptableValue",
    "decrypt_or_plain",
    "encrypt_or_plain",
    "generate_key",
]

PREFIX = "fernet:"


class KeyConfigError(ValueError):
    """A configured key is not a Fernet key (the message never contains key material)."""


class UndecryptableValue(ValueError):
    """A stored value was encrypted with a key that is not configured (or is corrupt)."""


def generate_key() -> str:
    """A new random key, as ``flotilla-registry generate-key`` prints it."""
    return Fernet.generate_key().decode()


def _key_id(raw: bytes) -> str:
    return hashlib.sha256(b"flotilla-db-key\0" + raw).hexdigest()[:12]


def _decode_key(text: str, position: int) -> bytes:
    key = text.strip()
    try:
        # Accept the key with or without its trailing base64 padding.
        raw = base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise KeyConfigError(
            f"encryption key #{position} is not a Fernet key (32 bytes in URL-safe base64; "
            "make one with `flotilla-registry generate-key`)"
        )
    return raw


class FieldCipher:
    """Encrypts and decrypts single text values with a list of keys (first one encrypts)."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._fernets: dict[str, Fernet] = {}
        self._order: list[str] = []
        for i, text in enumerate(keys, 1):
            raw = _decode_key(text, i)
            kid = _key_id(raw)
            if kid not in self._fernets:
                self._fernets[kid] = Fernet(base64.urlsafe_b64encode(raw))
                self._order.append(kid)
        if not self._order:
            raise KeyConfigError("no encryption keys given")

    @property
    def current_prefix(self) -> str:
        """What every value encrypted with the first key starts with."""
        return f"{PREFIX}{self._order[0]}:"

    @property
    def key_ids(self) -> list[str]:
        return list(self._order)

    def encrypt(self, value: str) -> str:
        token = self._fernets[self._order[0]].encrypt(value.encode()).decode()
        return self.current_prefix + token

    def decrypt(self, stored: str) -> str:
        if not stored.startswith(PREFIX):
            return stored  # plaintext from before encryption was configured
        kid, _, token = stored[len(PREFIX) :].partition(":")
        fernet = self._fernets.get(kid)
        if fernet is None:
            raise UndecryptableValue(
                f"encrypted with key id {kid}, which is not among the configured keys "
                f"({', '.join(self._order)}); add that key back to db_encrypt_keys"
            )
        try:
            return fernet.decrypt(token.encode()).decode()
        except InvalidToken:
            raise UndecryptableValue(f"value under key id {kid} is corrupt") from None

    def is_current(self, stored: str) -> bool:
        return stored.startswith(self.current_prefix)


def decrypt_or_plain(cipher: FieldCipher | None, stored: str) -> str:
    """Decrypt with ``cipher``; without one, only plaintext values can be read."""
    if cipher is not None:
        return cipher.decrypt(stored)
    if stored.startswith(PREFIX):
        raise UndecryptableValue(
            "the database holds encrypted values but no db_encrypt_keys are configured"
        )
    return stored


def encrypt_or_plain(cipher: FieldCipher | None, value: str) -> str:
    """Encrypt with ``cipher``; without one (in-memory store) keep the value as it is."""
    return cipher.encrypt(value) if cipher is not None else value
