"""Cluster tokens: schedulers authenticate heartbeats and stops with ``Authorization: token``.

The registry owns the tokens; ``RegistryTokenVerifier`` asks it, ``CachingTokenVerifier``
remembers positive answers briefly so every heartbeat does not cost a registry call.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from typing import Protocol

import grpc
from flotilla.registry.v1 import internal_pb2, internal_pb2_grpc
from flotilla_common.grpcserver import internal_metadata

__all__ = [
    "CachingTokenVerifier",
    "RegistryTokenVerifier",
    "TokenVerificationUnavailable",
    "TokenVerifier",
]

log = logging.getLogger(__name__)


class TokenVerificationUnavailable(Exception):
    """The registry could not be asked (down, timed out, refused the internal token)."""


class TokenVerifier(Protocol):
    """Checks a cluster token; returns the cluster owner's name when it is valid."""

    async def verify(self, cluster: str, token: str) -> str | None:
        """Owner of ``cluster`` if ``token`` is its token, else ``None``."""
        ...


class RegistryTokenVerifier:
    """Asks the registry's ``ClusterTokenService.VerifyClusterToken``.

    Parameters
    ----------
    channel
        A channel to the registry's gRPC address (owned by the caller).
    internal_token
        The deployment's internal token, sent as metadata.
    timeout_seconds
        Deadline of each call.
    """

    def __init__(
        self, channel: grpc.aio.Channel, internal_token: str, timeout_seconds: float = 5.0
    ) -> None:
        self._stub = internal_pb2_grpc.ClusterTokenServiceStub(channel)
        self._metadata = internal_metadata(internal_token)
        self._timeout = timeout_seconds

    async def verify(self, cluster: str, token: str) -> str | None:
        """Owner of ``cluster`` if the registry confirms ``token``."""
        try:
            response = await self._stub.VerifyClusterToken(
                internal_pb2.VerifyClusterTokenRequest(cluster_name=cluster, token=token),
                metadata=self._metadata,
                timeout=self._timeout,
            )
        except grpc.aio.AioRpcError as exc:
            log.warning(
                "cannot verify token of cluster %s: registry answered %s: %s",
                cluster,
                exc.code().name,
                exc.details(),
            )
            raise TokenVerificationUnavailable(exc.code().name) from exc
        if not response.valid:
            return None
        owner: str = response.owner
        return owner or None


class CachingTokenVerifier:
    """Remembers confirmed tokens for ``ttl_seconds``; rejections are always re-checked.

    Entries are keyed by a hash of the token, so the cache holds no usable secrets.
    """

    def __init__(
        self,
        inner: TokenVerifier,
        ttl_seconds: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._ttl = ttl_seconds
        self._max_entries = max_entries
        self._clock = clock
        self._entries: dict[tuple[str, bytes], tuple[float, str]] = {}

    async def verify(self, cluster: str, token: str) -> str | None:
        """Owner of ``cluster`` from the cache, or from ``inner`` (cached when valid)."""
        if self._ttl <= 0:
            return await self._inner.verify(cluster, token)
        key = (cluster, hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest())
        now = self._clock()
        hit = self._entries.get(key)
        if hit is not None:
            if hit[0] > now:
                return hit[1]
            del self._entries[key]
        owner = await self._inner.verify(cluster, token)
        if owner is not None:
            if len(self._entries) >= self._max_entries:
                self._prune(now)
            self._entries[key] = (now + self._ttl, owner)
        return owner

    def _prune(self, now: float) -> None:
        self._entries = {k: v for k, v in self._entries.items() if v[0] > now}
        while len(self._entries) >= self._max_entries:
            # Dicts keep insertion order: drop the oldest entry.
            del self._entries[next(iter(self._entries))]

    def forget(self, cluster: str) -> None:
        """Drop every cached token of ``cluster``."""
        self._entries = {k: v for k, v in self._entries.items() if k[0] != cluster}
