"""Kerberos through SPNEGO (``Authorization: Negotiate <base64 token>``).

The client's token is accepted with the service's keys from ``c.KerberosAuthenticator.keytab``
in one step (the dask-gateway client sends a complete Kerberos AP-REQ, so no second round
is needed); the acceptor's reply token goes back as ``WWW-Authenticate: Negotiate <token>``
on the success response, which the dask-gateway client (pykerberos) requires to finish
mutual authentication. The principal becomes a user name by ``principal_rules``, and the
groups are the user's local Unix groups.

GSSAPI calls block (keytab reads, replay cache), so they run in a thread.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import grp
import logging
import os
import pwd
import re
from collections.abc import Mapping
from typing import Any

import gssapi
from gssapi.raw.misc import GSSError

from . import config
from .authenticator import (
    Authenticator,
    AuthenticatorConfigError,
    AuthenticatorError,
    AuthResult,
    split_authorization,
)

__all__ = ["KerberosAuthenticator", "map_principal", "unix_groups"]

log = logging.getLogger(__name__)

UNAVAILABLE = "Kerberos authentication is unavailable"

_USER_NAME = re.compile(r"[^\s/@:]+")


def map_principal(principal: str, rules: list[tuple[re.Pattern[str], str]]) -> str | None:
    """The user name for ``principal``, or ``None`` if it is refused.

    The first rule whose pattern matches the whole principal decides (an empty template
    refuses); without one, ``name@REALM`` maps to ``name`` and anything with an instance
    part (``name/instance@REALM``) is refused.
    """
    for pattern, template in rules:
        match = pattern.fullmatch(principal)
        if match is not None:
            user = match.expand(template) if template else ""
            break
    else:
        name = principal.rpartition("@")[0] or principal
        user = "" if "/" in name else name
    return user if _USER_NAME.fullmatch(user) else None


def unix_groups(user: str) -> frozenset[str]:
    """Names of the local Unix groups of ``user`` (primary included); none if no such user."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        return frozenset()
    names = set()
    for gid in os.getgrouplist(user, entry.pw_gid):
        try:
            names.add(grp.getgrgid(gid).gr_name)
        except KeyError:  # a gid without a group entry has no name to report
            continue
    return frozenset(names)


class KerberosAuthenticator(config.KerberosAuthenticator, Authenticator):
    """Users present a Kerberos ticket for ``<service_name>/<host>`` (SPNEGO).

    The keytab is checked when the authenticator is created: a missing or unusable one
    raises ``AuthenticatorConfigError`` naming ``c.KerberosAuthenticator.keytab``.
    """

    challenge = "Negotiate"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._rules = self._compile_rules()
        self._service = gssapi.Name(self.service_name, gssapi.NameType.hostbased_service)
        self._check_keytab()

    @property
    def cookie_max_age_seconds(self) -> int | None:
        """``cache_max_age`` when set."""
        return self.cache_max_age or None

    def _compile_rules(self) -> list[tuple[re.Pattern[str], str]]:
        rules = []
        for pattern, template in self.principal_rules:
            try:
                rules.append((re.compile(pattern), template))
            except re.error as exc:
                raise AuthenticatorConfigError(
                    f"c.KerberosAuthenticator.principal_rules: bad regex {pattern!r}: {exc}"
                ) from None
        return rules

    def _check_keytab(self) -> None:
        setting = f"c.KerberosAuthenticator.keytab = {self.keytab!r}"
        if not os.path.isfile(self.keytab):
            raise AuthenticatorConfigError(f"{setting}: no such file")
        if not os.access(self.keytab, os.R_OK):
            raise AuthenticatorConfigError(f"{setting}: not readable by this process")
        try:
            self._credentials()
        except GSSError as exc:
            raise AuthenticatorConfigError(
                f"{setting}: no usable key for service {self.service_name!r}: " + _one_line(exc)
            ) from None

    def _credentials(self) -> gssapi.Credentials:
        # Acquired from the configured keytab only (not $KRB5_KTNAME), for any host of
        # ``service_name`` it holds keys for.
        return gssapi.Credentials(
            name=self._service, usage="accept", store={"keytab": f"FILE:{self.keytab}"}
        )

    def _accept(self, token: bytes) -> tuple[str, bytes] | None:
        """``(principal, reply token)``, or ``None`` if the token is not acceptable."""
        try:
            credentials = self._credentials()
        except GSSError as exc:
            # Nothing the client sent has been looked at yet: the keytab broke since start.
            log.error("cannot use the keytab %s: %s", self.keytab, _one_line(exc))
            raise AuthenticatorError(UNAVAILABLE) from None
        context = gssapi.SecurityContext(creds=credentials, usage="accept")
        try:
            reply = context.step(token)
        except GSSError as exc:
            # Defective, forged, replayed or expired tokens, tickets for another service.
            log.info("rejected Negotiate token: %s", _one_line(exc))
            return None
        if not context.complete:
            log.info("rejected Negotiate token: the client wanted another round")
            return None
        return str(context.initiator_name), reply or b""

    async def authenticate(self, headers: Mapping[str, str]) -> AuthResult | None:
        """The user whose valid Negotiate token the request carries, else ``None``."""
        parts = split_authorization(headers)
        if parts is None or parts[0] != "negotiate":
            return None
        try:
            token = base64.b64decode(parts[1].encode("ascii"), validate=True)
        except (UnicodeEncodeError, binascii.Error, ValueError):
            log.info("malformed Negotiate credentials")
            return None
        if not token:
            return None
        accepted = await asyncio.to_thread(self._accept, token)
        if accepted is None:
            return None
        principal, reply = accepted
        user = map_principal(principal, self._rules)
        if user is None:
            log.info("principal %s maps to no user; refused", principal)
            return None
        log.debug("principal %s is user %s", principal, user)
        groups = await asyncio.to_thread(unix_groups, user)
        headers_out: tuple[tuple[str, str], ...] = ()
        if reply:
            headers_out = (("www-authenticate", "Negotiate " + base64.b64encode(reply).decode()),)
        return AuthResult(user=user, groups=groups, response_headers=headers_out)

    async def refresh(self, user: str) -> AuthResult | None:
        """The user's Unix groups now (none if the Unix user is gone)."""
        return AuthResult(user=user, groups=await asyncio.to_thread(unix_groups, user))


def _one_line(exc: GSSError) -> str:
    return " ".join(str(exc).split())
