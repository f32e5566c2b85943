# distributed is untyped.
# mypy: disable-error-code="no-untyped-call"
"""``GatewayCluster``: a gateway's cluster as a ``distributed`` cluster object."""

from __future__ import annotations

import asyncio
import atexit
import logging
import sys
import threading
import traceback
import warnings
import weakref
from collections.abc import Awaitable, Callable, Generator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Literal, Self, TypeVar, cast, overload

from distributed import Client
from distributed.core import Status, rpc
from distributed.deploy.cluster import Cluster
from distributed.objects import SchedulerInfo

from . import comm as _comm  # registers the "gateway" comm backend
from ._gateway import Gateway, _AsyncT
from ._report import ClusterReport, WorkerReport
from .auth import GatewayAuth
from .errors import GatewayServerError
from .options import Options
from .security import GatewaySecurity

if TYPE_CHECKING:
    from tornado.ioloop import IOLoop

del _comm

T = TypeVar("T")

__all__ = ["ClusterObjectStatus", "GatewayCluster"]

# The name this logger has always had (the code lived in flotilla.client).
logger = logging.getLogger("flotilla.client")


class ClusterObjectStatus(str):
    """A ``GatewayCluster``'s local status: equal both to dask-gateway's strings
    (``"running"``) and to ``distributed.core.Status`` members (``Status.running``)."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Status):
            other = other.value
        return str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self == other

    __hash__ = str.__hash__

    @property
    def name(self) -> str:
        """The status name (like ``Status.name``)."""
        return str(self)

    @property
    def value(self) -> str:
        """The status name (like ``Status.value``)."""
        return str(self)


@atexit.register
def _cleanup_lingering_clusters() -> None:
    for cluster in list(GatewayCluster._instances):
        try:
            if not cluster._asynchronous:
                cluster.close()
        except Exception as exc:
            lines = [f"Exception ignored when closing {cluster!r}:\n"]
            lines.extend(traceback.format_exception(type(exc), exc, exc.__traceback__))
            warnings.warn("".join(lines), stacklevel=1)


class GatewayCluster(Cluster, Generic[_AsyncT]):
    """A cluster managed by a Flotilla gateway.

    Creating one submits a new cluster and waits until it runs (use
    :meth:`from_name` / :meth:`Gateway.connect` for an existing one).

    Parameters
    ----------
    address, proxy_address, public_address, auth
        As for :class:`Gateway`.
    cluster_options : Options or mapping, optional
        The cluster options to start the cluster with.
    shutdown_on_close : bool, optional
        Shut the cluster down when this object is closed (default True); also done at
        interpreter exit for synchronous clusters.
    asynchronous : bool, optional
        If True, await the object (or use ``async with``) to start it.
    loop : IOLoop, optional
        As for :class:`Gateway`.
    **kwargs
        Option values applied on top of ``cluster_options``.

    Notes
    -----
    As with :class:`Gateway`, type checkers see ``GatewayCluster[Literal[False]]`` or
    ``GatewayCluster[Literal[True]]`` (methods return awaitables) from ``asynchronous``.
    """

    _instances: ClassVar[weakref.WeakSet[GatewayCluster[bool]]] = weakref.WeakSet()

    @overload
    def __init__(
        self: GatewayCluster[Literal[False]],
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        cluster_options: Options | Mapping[str, Any] | None = None,
        shutdown_on_close: bool = True,
        asynchronous: Literal[False] = False,
        loop: IOLoop | None = None,
        **kwargs: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: GatewayCluster[Literal[True]],
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        cluster_options: Options | Mapping[str, Any] | None = None,
        shutdown_on_close: bool = True,
        *,
        asynchronous: Literal[True],
        loop: IOLoop | None = None,
        **kwargs: Any,
    ) -> None: ...
    @overload
    def __init__(
        self: GatewayCluster[bool],
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        cluster_options: Options | Mapping[str, Any] | None = None,
        shutdown_on_close: bool = True,
        asynchronous: bool = False,
        loop: IOLoop | None = None,
        **kwargs: Any,
    ) -> None: ...
    def __init__(
        self,
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        cluster_options: Options | Mapping[str, Any] | None = None,
        shutdown_on_close: bool = True,
        asynchronous: bool = False,
        loop: IOLoop | None = None,
        **kwargs: Any,
    ) -> None:
        self._init_internal(
            address=address,
            proxy_address=proxy_address,
            public_address=public_address,
            auth=auth,
            cluster_options=cluster_options,
            cluster_kwargs=kwargs,
            shutdown_on_close=shutdown_on_close,
            asynchronous=asynchronous,
            loop=loop,
        )

    @overload
    @classmethod
    def from_name(
        cls,
        cluster_name: str,
        shutdown_on_close: bool = False,
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        asynchronous: Literal[False] = False,
        loop: IOLoop | None = None,
    ) -> GatewayCluster[Literal[False]]: ...
    @overload
    @classmethod
    def from_name(
        cls,
        cluster_name: str,
        shutdown_on_close: bool = False,
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        *,
        asynchronous: Literal[True],
        loop: IOLoop | None = None,
    ) -> GatewayCluster[Literal[True]]: ...
    @overload
    @classmethod
    def from_name(
        cls,
        cluster_name: str,
        shutdown_on_close: bool = False,
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        asynchronous: bool = False,
        loop: IOLoop | None = None,
    ) -> GatewayCluster[bool]: ...
    @classmethod
    def from_name(
        cls,
        cluster_name: str,
        shutdown_on_close: bool = False,
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        asynchronous: bool = False,
        loop: IOLoop | None = None,
    ) -> GatewayCluster[bool]:
        """Connect to an existing cluster.

        Parameters
        ----------
        cluster_name : str
            The cluster to connect to.
        shutdown_on_close : bool, optional
            Shut the cluster down when this object is closed (default False).
        address, proxy_address, public_address, auth, asynchronous, loop
            As for :class:`GatewayCluster`.

        Returns
        -------
        cluster : GatewayCluster
        """
        self = cls.__new__(cls)
        self._init_internal(
            address=address,
            proxy_address=proxy_address,
            public_address=public_address,
            auth=auth,
            shutdown_on_close=shutdown_on_close,
            asynchronous=asynchronous,
            loop=loop,
            name=cluster_name,
        )
        return self

    def _init_internal(
        self,
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        cluster_options: Options | Mapping[str, Any] | None = None,
        cluster_kwargs: dict[str, Any] | None = None,
        shutdown_on_close: bool = True,
        asynchronous: bool = False,
        loop: IOLoop | None = None,
        name: str | None = None,
    ) -> None:
        # The overloads of __init__ and from_name tie asynchronous to _AsyncT.
        self.gateway = cast(
            "Gateway[_AsyncT]",
            Gateway(
                address=address,
                proxy_address=proxy_address,
                public_address=public_address,
                auth=auth,
                asynchronous=asynchronous,
                loop=loop,
            ),
        )
        super().__init__(asynchronous=asynchronous, loop=self.gateway.loop, quiet=True)
        self._asynchronous = asynchronous
        self.name = name
        self.shutdown_on_close = shutdown_on_close
        self._submitted = name is not None
        self._cluster_options = cluster_options
        self._cluster_kwargs = cluster_kwargs or {}
        self._scheduler_address: str | None = None
        self._dashboard_link: str | None = None
        self.security: GatewaySecurity | None = None
        self._start_task: asyncio.Future[None] | None = None
        self._stop_task: asyncio.Future[None] | None = None
        self._clients: weakref.WeakSet[Client] = weakref.WeakSet()
        self._instances.add(self)
        if not asynchronous:
            try:
                self.gateway.sync(self._start_internal)
            except BaseException:
                self._instances.discard(self)
                self.gateway.close()
                raise

    # -- properties --------------------------------------------------------------

    @property
    def loop(self) -> IOLoop:
        """The IOLoop the cluster object runs on."""
        return self.gateway.loop

    @property  # type: ignore[override]
    def status(self) -> ClusterObjectStatus:
        """``created``, ``starting``, ``running``, ``closing`` or ``closed``.

        Compares equal to the plain strings and to ``distributed.core.Status`` members.
        """
        return self._status

    @status.setter
    def status(self, value: Status | str) -> None:
        self._status = ClusterObjectStatus(value.value if isinstance(value, Status) else value)

    @property
    def scheduler_address(self) -> str | None:  # type: ignore[override]
        """``gateway://<proxy>/<name>`` once running, else None."""
        return self._scheduler_address

    @property
    def dashboard_link(self) -> str | None:
        """The dashboard's URL, if the gateway reported one."""
        return self._dashboard_link

    def __repr__(self) -> str:
        return f"GatewayCluster<{self.name}, status={self.status.name}>"

    # -- lifecycle ---------------------------------------------------------------

    async def _start_internal(self) -> Self:
        if self._start_task is None:
            self._start_task = asyncio.ensure_future(self._start_async())
        try:
            await self._start_task
        except BaseException:
            try:
                await self._stop_internal()
            except Exception as exc:  # don't hide why the start failed
                logger.warning("Cleaning up cluster %s after a failed start: %s", self.name, exc)
            raise
        return self

    async def _start_async(self) -> None:
        if self.status in (Status.closing, Status.closed):
            return
        self.status = Status.starting
        if not self._submitted:
            self.name = await self.gateway._submit(
                cluster_options=self._cluster_options, **self._cluster_kwargs
            )
            self._submitted = True
        report = await self.gateway._wait_for_start(self.name)
        self._scheduler_address = report.scheduler_address
        self._dashboard_link = report.dashboard_link
        self.security = report.security
        if self.security is None:
            raise GatewayServerError(
                f"Gateway reported cluster {self.name!r} running without TLS credentials"
            )
        await self._connect_scheduler()
        self.status = Status.running

    async def _connect_scheduler(self) -> None:
        assert self._scheduler_address is not None and self.security is not None
        self.scheduler_comm = rpc(
            self._scheduler_address,
            connection_args=self.security.get_connection_args("client"),
        )
        comm = None
        try:
            comm = await self.scheduler_comm.live_comm()
            comm.name = "GatewayCluster worker status"
            await comm.write({"op": "subscribe_worker_status"})
            self.scheduler_info = SchedulerInfo(await comm.read())
            self._watch_worker_status_comm = comm
            self._watch_worker_status_task = asyncio.ensure_future(self._watch_worker_status(comm))
        except Exception as exc:
            # Like dask-gateway: the cluster stays usable through the gateway API even
            # when the scheduler cannot be reached from here (yet).
            logger.warning(
                "Cannot reach the scheduler of cluster %s at %s: %s",
                self.name,
                self._scheduler_address,
                exc,
            )
            if comm is not None:
                await comm.close()

    async def _stop_internal(self, shutdown: bool | None = None) -> None:
        self._instances.discard(self)
        if self._stop_task is None:
            self._stop_task = asyncio.ensure_future(self._stop_async())
        await self._stop_task
        if shutdown is None:
            shutdown = self.shutdown_on_close
        try:
            if shutdown and self.name is not None and self._submitted:
                await self.gateway._stop_cluster(self.name)
        finally:
            if self._asynchronous:
                await self.gateway._close_channel()

    async def _stop_async(self) -> None:
        start = self._start_task
        if start is not None and not start.done():
            start.cancel()
            try:
                await start
            except BaseException:
                pass
        self.status = Status.closing
        for client in list(self._clients):
            await client._close()
            self._clients.discard(client)
        if self._watch_worker_status_comm is not None:
            await self._watch_worker_status_comm.close()
        if self._watch_worker_status_task is not None:
            self._watch_worker_status_task.cancel()
            try:
                await self._watch_worker_status_task
            except BaseException:
                pass
        if self.scheduler_comm is not None:
            await self.scheduler_comm.close_rpc()
        self.status = Status.closed

    def __await__(self) -> Generator[Any, None, Self]:
        return self._start_internal().__await__()

    async def __aenter__(self) -> Self:
        return await self._start_internal()

    async def __aexit__(self, *args: Any) -> None:
        await self._stop_internal()

    def __enter__(self) -> Self:
        if self._asynchronous:
            raise TypeError("Used 'with' with an asynchronous GatewayCluster; use 'async with'")
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    @overload  # type: ignore[override]
    def close(
        self: GatewayCluster[Literal[False]],
        shutdown: bool | None = None,
        timeout: float | None = None,
    ) -> None: ...
    @overload
    def close(
        self: GatewayCluster[Literal[True]],
        shutdown: bool | None = None,
        timeout: float | None = None,
    ) -> Awaitable[None]: ...
    @overload
    def close(
        self: GatewayCluster[bool], shutdown: bool | None = None, timeout: float | None = None
    ) -> Awaitable[None] | None: ...
    def close(
        self, shutdown: bool | None = None, timeout: float | None = None
    ) -> Awaitable[None] | None:
        """Close the cluster object.

        Parameters
        ----------
        shutdown : bool, optional
            Also shut the cluster down (True) or only clean up locally (False).
            Defaults to ``shutdown_on_close``.
        timeout : float, optional
            Ignored (for compatibility with ``distributed.deploy.Cluster.close``).

        Returns
        -------
        None, or an awaitable in asynchronous mode.
        """
        if self.asynchronous:
            return self._stop_internal(shutdown=shutdown)
        try:
            if self.status != Status.closed:
                self.gateway.sync(self._stop_internal, shutdown=shutdown)
        except RuntimeError:
            if self.gateway._loop_runner.is_started():
                raise
        finally:
            self.gateway.close()
        return None

    @overload
    def shutdown(self: GatewayCluster[Literal[False]]) -> None: ...
    @overload
    def shutdown(self: GatewayCluster[Literal[True]]) -> Awaitable[None]: ...
    @overload
    def shutdown(self: GatewayCluster[bool]) -> Awaitable[None] | None: ...
    def shutdown(self) -> Awaitable[None] | None:
        """Shut the cluster down (``close(shutdown=True)``)."""
        return self.close(shutdown=True)

    def __del__(self, _warn: Any = None) -> None:
        if not hasattr(self, "gateway") or self._asynchronous or sys.is_finalizing():
            return
        if self.status == Status.closed and self.gateway._closed:
            return
        try:
            if self.gateway._in_loop_thread():
                threading.Thread(target=self.close, daemon=True).start()
            else:
                self.close()
        except Exception:
            pass

    # -- operations ----------------------------------------------------------------

    def _sync(
        self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any
    ) -> T | Awaitable[T]:
        # distributed's SyncMethodMixin.sync (untyped, and taking its own asynchronous= and
        # callback_timeout= keywords, hence no ParamSpec): the value, or an awaitable of it.
        result: T | Awaitable[T] = self.sync(func, *args, **kwargs)
        return result

    def get_client(self, set_as_default: bool = True) -> Client:
        """A ``distributed.Client`` connected to this cluster.

        Parameters
        ----------
        set_as_default : bool, optional
            Make it the default client (default True).

        Returns
        -------
        client : distributed.Client
            Awaitable in asynchronous mode.
        """
        client = Client(
            self,
            security=self.security,
            set_as_default=set_as_default,
            asynchronous=self.asynchronous,
            loop=self.loop,
        )
        if not self.asynchronous:
            self._clients.add(client)
        return client

    @overload  # type: ignore[override]
    def scale(self: GatewayCluster[Literal[False]], n: int, **kwargs: Any) -> None: ...
    @overload
    def scale(self: GatewayCluster[Literal[True]], n: int, **kwargs: Any) -> Awaitable[None]: ...
    @overload
    def scale(self: GatewayCluster[bool], n: int, **kwargs: Any) -> Awaitable[None] | None: ...
    def scale(self, n: int, **kwargs: Any) -> Awaitable[None] | None:
        """Scale the cluster to ``n`` workers (turns adaptive scaling off).

        Parameters
        ----------
        n : int
            The number of workers.

        Warns
        -----
        GatewayWarning
            When a limit made the gateway scale to fewer workers.
        """
        return self._sync(self.gateway._scale_cluster, self.name, n, **kwargs)

    @overload  # type: ignore[override]
    def adapt(
        self: GatewayCluster[Literal[False]],
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
        **kwargs: Any,
    ) -> None: ...
    @overload
    def adapt(
        self: GatewayCluster[Literal[True]],
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
        **kwargs: Any,
    ) -> Awaitable[None]: ...
    @overload
    def adapt(
        self: GatewayCluster[bool],
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
        **kwargs: Any,
    ) -> Awaitable[None] | None: ...
    def adapt(
        self,
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
        **kwargs: Any,
    ) -> Awaitable[None] | None:
        """Configure adaptive scaling (done by the gateway, not locally).

        Parameters
        ----------
        minimum : int, optional
            The minimum number of workers (default 0).
        maximum : int, optional
            The maximum number of workers (default: unbounded, or the gateway's limit).
        active : bool, optional
            True (default) turns adaptive scaling on, False turns it off.
        """
        return self._sync(
            self.gateway._adapt_cluster,
            self.name,
            minimum=minimum,
            maximum=maximum,
            active=active,
            **kwargs,
        )

    @overload
    def get_logs(
        self: GatewayCluster[Literal[False]],
        cluster: bool = True,
        scheduler: bool = True,
        workers: bool = True,
    ) -> dict[str, str]: ...
    @overload
    def get_logs(
        self: GatewayCluster[Literal[True]],
        cluster: bool = True,
        scheduler: bool = True,
        workers: bool = True,
    ) -> Awaitable[dict[str, str]]: ...
    @overload
    def get_logs(
        self: GatewayCluster[bool],
        cluster: bool = True,
        scheduler: bool = True,
        workers: bool = True,
    ) -> dict[str, str] | Awaitable[dict[str, str]]: ...
    def get_logs(
        self, cluster: bool = True, scheduler: bool = True, workers: bool = True
    ) -> dict[str, str] | Awaitable[dict[str, str]]:
        """The output of this cluster's scheduler and workers, kept by the gateway.

        Unlike ``distributed``'s ``Cluster.get_logs`` this is the processes' whole
        output (stdout and stderr, the end of it), also after the cluster has stopped or
        failed; see :meth:`Gateway.get_cluster_logs`.

        Parameters
        ----------
        cluster : bool, optional
            Accepted for compatibility; the gateway keeps no separate cluster log.
        scheduler : bool, optional
            Include the scheduler's output (default True).
        workers : bool, optional
            Include the workers' output (default True).

        Returns
        -------
        logs : dict
            Process name (``"scheduler"``, ``"worker-<name>"``) to its output text.
        """

        async def select() -> dict[str, str]:
            logs = await self.gateway._cluster_logs(self.name)
            return {
                name: text
                for name, text in logs.items()
                if (scheduler if name == "scheduler" else workers)
            }

        return self._sync(select)

    @overload
    def list_workers(self: GatewayCluster[Literal[False]]) -> list[WorkerReport]: ...
    @overload
    def list_workers(self: GatewayCluster[Literal[True]]) -> Awaitable[list[WorkerReport]]: ...
    @overload
    def list_workers(
        self: GatewayCluster[bool],
    ) -> list[WorkerReport] | Awaitable[list[WorkerReport]]: ...
    def list_workers(self) -> list[WorkerReport] | Awaitable[list[WorkerReport]]:
        """This cluster's workers, those that ended too, and why each failed one did;
        see :meth:`Gateway.list_workers`.

        Returns
        -------
        workers : list of WorkerReport
        """
        return self._sync(self.gateway._list_workers, self.name)

    @overload
    def report(self: GatewayCluster[Literal[False]], **kwargs: Any) -> ClusterReport: ...
    @overload
    def report(self: GatewayCluster[Literal[True]], **kwargs: Any) -> Awaitable[ClusterReport]: ...
    @overload
    def report(
        self: GatewayCluster[bool], **kwargs: Any
    ) -> ClusterReport | Awaitable[ClusterReport]: ...
    def report(self, **kwargs: Any) -> ClusterReport | Awaitable[ClusterReport]:
        """The gateway's current report on this cluster.

        Returns
        -------
        report : ClusterReport
        """
        return self._sync(self.gateway._cluster_report, self.name, **kwargs)
