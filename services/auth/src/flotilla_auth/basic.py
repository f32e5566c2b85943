"""HTTP Basic authentication (``Authorization: Basic base64(user:password)``)."""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Mapping

from . import config
from .authenticator import Authenticator, AuthResult, split_authorization

__all__ = ["BasicAuthenticator", "decode_basic_credentials"]

log = logging.getLogger(__name__)


def _decode_text(raw: bytes) -> str:
    # The dask-gateway client encodes latin-1; browsers and curl usually send UTF-8.
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def decode_basic_credentials(credentials: str) -> tuple[str, str] | None:
    """``(user, password)`` from the base64 part of a Basic header, or ``None`` if malformed."""
    try:
        raw = base64.b64decode(credentials.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, ValueError):
        return None
    user, sep, password = _decode_text(raw).partition(":")
    if not sep or not user or not user.isprintable() or user != user.strip():
        return None
    return user, password


class BasicAuthenticator(config.BasicAuthenticator, Authenticator):
    """Users name themselves; an optional shared password keeps strangers out.

    Groups come from the static ``user_groups`` mapping.
    """

    challenge = "Basic"

    async def authenticate(self, headers: Mapping[str, str]) -> AuthResult | None:
        """The user named by valid Basic credentials, else ``None``."""
        parts = split_authorization(headers)
        if parts is None or parts[0] != "basic":
            return None
        decoded = decode_basic_credentials(parts[1])
        if decoded is None:
            log.info("malformed Basic credentials")
            return None
        user, password = decoded
        if self.password and not hmac.compare_digest(
            password.encode("utf-8"), self.password.encode("utf-8")
        ):
            log.info("wrong password for user %s", user)
            return None
        return self._result(user)

    async def refresh(self, user: str) -> AuthResult | None:
        """Users name themselves, so anyone who once passed is still ``user``; the
        groups are the configured ones now."""
        return self._result(user)

    def _result(self, user: str) -> AuthResult:
        return AuthResult(user=user, groups=frozenset(self.user_groups.get(user, ())))
