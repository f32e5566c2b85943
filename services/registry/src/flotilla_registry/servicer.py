"""gRPC adapters: protobuf in, domain calls, protobuf out. No logic of their own."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from flotilla.registry.v1 import (
    internal_pb2,
    internal_pb2_grpc,
    registry_pb2,
    registry_pb2_grpc,
    types_pb2,
)
from flotilla_common.identity import IDENTITY_HEADER, Identity, InvalidIdentity, verify_identity

from . import __version__
from .clusters import ClusterService, RouteInfo
from .convert import cluster_message, launch_message, worker_message
from .errors import InvalidRequest, NotAuthenticated
from .model import ClusterRecord, Observed, Status

__all__ = [
    "ClusterTokenServicer",
    "ControlServicer",
    "LauncherServicer",
    "RegistryServicer",
    "RouteServicer",
]

log = logging.getLogger(__name__)


def _identity(context: grpc.aio.ServicerContext, key: str) -> Identity:
    metadata = dict(context.invocation_metadata() or ())
    try:
        return verify_identity(metadata.get(IDENTITY_HEADER), key)
    except InvalidIdentity as exc:
        raise NotAuthenticated("Authentication required", log_message=str(exc)) from exc


def _options_json(text: str) -> object:
    if not text:
        return {}
    try:
        return json.loads(text)
    except ValueError as exc:
        raise InvalidRequest(f"options_json is not valid JSON: {exc}") from exc
    except RecursionError:
        raise InvalidRequest("options_json is nested too deeply") from None


class RegistryServicer(registry_pb2_grpc.RegistryServiceServicer):  # type: ignore[misc]
    def __init__(self, service: ClusterService, identity_key: str) -> None:
        self.service = service
        self.key = identity_key

    async def GetVersion(
        self, request: registry_pb2.GetVersionRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetVersionResponse:
        return registry_pb2.GetVersionResponse(version=__version__)

    async def GetOptions(
        self, request: registry_pb2.GetOptionsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetOptionsResponse:
        spec = await self.service.options_spec(_identity(context, self.key))
        return registry_pb2.GetOptionsResponse(
            fields=[
                types_pb2.OptionField(
                    field=f["field"],
                    label=f["label"],
                    default_json=json.dumps(f["default"]),
                    spec_json=json.dumps(f["spec"]),
                )
                for f in spec.get_specification()
            ]
        )

    async def CreateCluster(
        self, request: registry_pb2.CreateClusterRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.CreateClusterResponse:
        identity = _identity(context, self.key)
        c = await self.service.create(identity, _options_json(request.options_json))
        return registry_pb2.CreateClusterResponse(name=c.name)

    async def GetCluster(
        self, request: registry_pb2.GetClusterRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetClusterResponse:
        identity = _identity(context, self.key)
        c = await self.service.get(identity, request.name, request.wait_seconds)
        return registry_pb2.GetClusterResponse(cluster=cluster_message(c))

    async def ListClusters(
        self, request: registry_pb2.ListClustersRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListClustersResponse:
        identity = _identity(context, self.key)
        try:
            statuses = {Status(s) for s in request.statuses}
        except ValueError as exc:
            raise InvalidRequest(str(exc)) from exc
        clusters = await self.service.list_clusters(identity, statuses, request.all_users)
        return registry_pb2.ListClustersResponse(clusters=[cluster_message(c) for c in clusters])

    async def StopCluster(
        self, request: registry_pb2.StopClusterRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.StopClusterResponse:
        await self.service.stop(_identity(context, self.key), request.name)
        return registry_pb2.StopClusterResponse()

    async def ScaleCluster(
        self, request: registry_pb2.ScaleClusterRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ScaleClusterResponse:
        identity = _identity(context, self.key)
        ok, msg = await self.service.scale(identity, request.name, request.count)
        return registry_pb2.ScaleClusterResponse(ok=ok, message=msg)

    async def AdaptCluster(
        self, request: registry_pb2.AdaptClusterRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.AdaptClusterResponse:
        identity = _identity(context, self.key)
        ok, msg = await self.service.adapt(
            identity,
            request.name,
            request.minimum if request.HasField("minimum") else None,
            request.maximum if request.HasField("maximum") else None,
            request.active,
        )
        return registry_pb2.AdaptClusterResponse(ok=ok, message=msg)

    async def GetClusterLogs(
        self, request: registry_pb2.GetClusterLogsRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetClusterLogsResponse:
        logs = await self.service.logs(_identity(context, self.key), request.name)
        return registry_pb2.GetClusterLogsResponse(
            logs=[types_pb2.ProcessLog(process=p, text=text) for p, text in logs.items()]
        )

    async def ListWorkers(
        self, request: registry_pb2.ListWorkersRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.ListWorkersResponse:
        workers = await self.service.workers(_identity(context, self.key), request.name)
        return registry_pb2.ListWorkersResponse(workers=[worker_message(w) for w in workers])

    async def GetUsage(
        self, request: registry_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> registry_pb2.GetUsageResponse:
        usage = await self.service.usage(_identity(context, self.key), request.all_users)
        return registry_pb2.GetUsageResponse(usage=[_user_usage(u) for u in usage])


def _user_usage(u: dict[str, Any]) -> registry_pb2.UserUsage:
    limits = {k: v for k, v in u["quota"].items() if v is not None}
    if "max_memory" in limits:
        limits["max_memory_bytes"] = limits.pop("max_memory")
    return registry_pb2.UserUsage(
        user=u["user"],
        clusters=u["clusters"],
        cores=u["cores"],
        memory_bytes=u["memory"],
        workers=u["workers"],
        quota=registry_pb2.Quota(**limits),
        core_hours=u["core_hours"],
        memory_gib_hours=u["memory_gib_hours"],
    )


def _observed(value: int) -> Observed | None:
    return Observed(value) if value in Observed._value2member_map_ else None


class LauncherServicer(internal_pb2_grpc.LauncherServiceServicer):  # type: ignore[misc]
    def __init__(self, service: ClusterService, api_url: str) -> None:
        self.service = service
        self.api_url = api_url

    async def WatchClusters(
        self, request: internal_pb2.WatchClustersRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[internal_pb2.WatchClustersResponse]:
        backend = request.backend
        with self.service.launch_hub.subscribe(lambda k, c: c.backend == backend) as sub:
            initial = self.service.active_for_backend(backend)
            log.info("launcher for %s connected; %d clusters", backend, len(initial))
            yield internal_pb2.WatchClustersResponse(
                initial=True, clusters=[launch_message(c, self.api_url) for c in initial]
            )
            while True:
                batch: dict[str, ClusterRecord] = await sub.next_batch()
                yield internal_pb2.WatchClustersResponse(
                    clusters=[launch_message(c, self.api_url) for c in batch.values()]
                )

    async def ReportCluster(
        self, request: internal_pb2.ReportClusterRequest, context: grpc.aio.ServicerContext
    ) -> internal_pb2.ReportClusterResponse:
        await self.service.report_cluster(
            request.name, _observed(request.observed), request.state_json, request.failure_reason
        )
        return internal_pb2.ReportClusterResponse()

    async def ReportWorker(
        self, request: internal_pb2.ReportWorkerRequest, context: grpc.aio.ServicerContext
    ) -> internal_pb2.ReportWorkerResponse:
        await self.service.report_worker(
            request.cluster_name,
            request.worker_name,
            _observed(request.observed),
            request.state_json,
            request.failure_reason,
        )
        return internal_pb2.ReportWorkerResponse()

    async def SaveClusterLogs(
        self, request: internal_pb2.SaveClusterLogsRequest, context: grpc.aio.ServicerContext
    ) -> internal_pb2.SaveClusterLogsResponse:
        await self.service.save_logs(
            request.cluster_name,
            {log.process: log.text for log in request.logs},
            request.answers_request,
        )
        return internal_pb2.SaveClusterLogsResponse()

    async def ReportAlive(
        self, request: internal_pb2.ReportAliveRequest, context: grpc.aio.ServicerContext
    ) -> internal_pb2.ReportAliveResponse:
        await self.service.report_alive(request.backend, list(request.names))
        return internal_pb2.ReportAliveResponse()


def _route_message(r: RouteInfo) -> internal_pb2.Route:
    return internal_pb2.Route(
        cluster_name=r.cluster_name,
        scheduler_address=r.scheduler_address,
        dashboard_address=r.dashboard_address,
    )


class RouteServicer(internal_pb2_grpc.RouteServiceServicer):  # type: ignore[misc]
    def __init__(self, service: ClusterService) -> None:
        self.service = service

    async def WatchRoutes(
        self, request: internal_pb2.WatchRoutesRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[internal_pb2.WatchRoutesResponse]:
        with self.service.route_hub.subscribe() as sub:
            yield internal_pb2.WatchRoutesResponse(
                reset=True, upserted=[_route_message(r) for r in self.service.routes()]
            )
            while True:
                batch = await sub.next_batch()
                yield internal_pb2.WatchRoutesResponse(
                    upserted=[_route_message(r) for r in batch.values() if r is not None],
                    removed=[name for name, r in batch.items() if r is None],
                )


class ClusterTokenServicer(internal_pb2_grpc.ClusterTokenServiceServicer):  # type: ignore[misc]
    def __init__(self, service: ClusterService) -> None:
        self.service = service

    async def VerifyClusterToken(
        self, request: internal_pb2.VerifyClusterTokenRequest, context: grpc.aio.ServicerContext
    ) -> internal_pb2.VerifyClusterTokenResponse:
        owner = await self.service.verify_token(request.cluster_name, request.token)
        return internal_pb2.VerifyClusterTokenResponse(valid=owner is not None, owner=owner or "")


class ControlServicer(internal_pb2_grpc.ControlServiceServicer):  # type: ignore[misc]
    def __init__(self, service: ClusterService) -> None:
        self.service = service

    async def StopAllClusters(
        self, request: internal_pb2.StopAllClustersRequest, context: grpc.aio.ServicerContext
    ) -> internal_pb2.StopAllClustersResponse:
        stopped, remaining = await self.service.stop_all(
            request.reason or "Stopped by the gateway's operator",
            max(0.0, min(request.wait_seconds, 300.0)),
        )
        return internal_pb2.StopAllClustersResponse(stopped=stopped, remaining=remaining)
