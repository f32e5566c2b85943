"""Identities the auth service vouches for, signed so services can check them.

Envoy forwards the auth service's ``x-flotilla-identity`` header (and strips any the
client sent); services accept an identity only if its HMAC verifies with the shared
identity key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field

__all__ = ["IDENTITY_HEADER", "Identity", "InvalidIdentity", "sign_identity", "verify_identity"]

IDENTITY_HEADER = "x-flotilla-identity"
# Identities are minted per request; a short validity bounds replay of a leaked header.
_MAX_AGE_SECONDS = 300


class InvalidIdentity(Exception):
    """The identity header is missing, malformed, expired or not signed by auth."""


@dataclass(frozen=True)
class Identity:
    """Who is calling: a user (with groups and admin flag), or a cluster's scheduler."""

    user: str
    groups: frozenset[str] = field(default_factory=frozenset)
    admin: bool = False
    # Set when the caller authenticated with a cluster token: it may act on that
    # cluster only (heartbeats, stop).
    cluster: str = ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign_identity(identity: Identity, key: str, now: float | None = None) -> str:
    payload = json.dumps(
        {
            "u": identity.user,
            "g": sorted(identity.groups),
            "a": identity.admin,
            "c": identity.cluster,
            "t": int(now if now is not None else time.time()),
        },
        separators=(",", ":"),
    ).encode()
    mac = hmac.new(key.encode(), payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify_identity(value: str | None, key: str, now: float | None = None) -> Identity:
    if not value:
        raise InvalidIdentity("no identity")
    try:
        payload_b64, mac_b64 = value.split(".", 1)
        payload = _unb64(payload_b64)
        mac = _unb64(mac_b64)
    except ValueError as exc:
        raise InvalidIdentity("malformed identity") from exc
    expected = hmac.new(key.encode(), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise InvalidIdentity("identity signature does not verify")
    try:
        data = json.loads(payload)
        issued = float(data["t"])
        identity = Identity(
            user=str(data["u"]),
            groups=frozenset(str(g) for g in data["g"]),
            admin=bool(data["a"]),
            cluster=str(data["c"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise InvalidIdentity("malformed identity") from exc
    current = now if now is not None else time.time()
    if not (issued - 5 <= current <= issued + _MAX_AGE_SECONDS):
        raise InvalidIdentity("identity expired")
    return identity
