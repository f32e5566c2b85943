"""Ending the clusters of users the authenticator says are gone (``owners_to_stop``).

Every ``Authenticator.owner_check_period_seconds`` auth lists the active clusters of all
users from the registry's public API, asks the authenticator which owners' clusters must
end, and stops those clusters through the same API. It calls as an admin identity of its
own (``flotilla-auth``), signed with the identity key like every identity it issues, so
the registry needs nothing new: the stop is an admin's, recorded as such.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict

import grpc
from flotilla.registry.v1 import registry_pb2, registry_pb2_grpc
from flotilla_common.identity import IDENTITY_HEADER, Identity, sign_identity

from .authenticator import Authenticator
from .metrics import AuthMetrics

__all__ = ["OWNER_WATCH_USER", "OwnerWatch"]

log = logging.getLogger(__name__)

#: The admin identity auth stops clusters as.
OWNER_WATCH_USER = "flotilla-auth"


class OwnerWatch:
    """The periodic check; ``start()`` it, ``stop()`` it at shutdown."""

    def __init__(
        self,
        authenticator: Authenticator,
        channel: grpc.aio.Channel,
        identity_key: str,
        period_seconds: float,
        timeout_seconds: float,
        metrics: AuthMetrics | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        self._identity_key = identity_key
        self._period = period_seconds
        self._timeout = timeout_seconds
        self._metrics = metrics
        self._task: asyncio.Task[None] | None = None

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        identity = Identity(user=OWNER_WATCH_USER, admin=True)
        return ((IDENTITY_HEADER, sign_identity(identity, self._identity_key)),)

    async def check_once(self) -> list[str]:
        """One round; the names of the clusters it stopped."""
        listed = await self._stub.ListClusters(
            registry_pb2.ListClustersRequest(all_users=True),
            metadata=self._metadata(),
            timeout=self._timeout,
        )
        by_owner: dict[str, list[str]] = defaultdict(list)
        for cluster in listed.clusters:
            by_owner[cluster.owner].append(cluster.name)
        due = await self._authenticator.owners_to_stop(set(by_owner))
        stopped = []
        for owner in sorted(due & set(by_owner)):
            for name in by_owner[owner]:
                await self._stub.StopCluster(
                    registry_pb2.StopClusterRequest(name=name),
                    metadata=self._metadata(),
                    timeout=self._timeout,
                )
                log.info("stopped cluster %s of user %s: the authenticator says so", name, owner)
                stopped.append(name)
                if self._metrics is not None:
                    self._metrics.owner_clusters_stopped.inc()
        return stopped

    async def _run(self) -> None:
        while True:
            try:
                await self.check_once()
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning("cannot check cluster owners: registry %s", exc.code().name)
            except Exception:
                log.exception("checking cluster owners failed")
            await asyncio.sleep(self._period)

    def start(self) -> None:
        """Run the check every period in the background."""
        self._task = asyncio.create_task(self._run(), name="owner-watch")

    async def stop(self) -> None:
        """Cancel the background check and wait until it has ended."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
