# distributed is untyped.
# mypy: disable-error-code="no-untyped-call"
"""``Gateway``: the gateway's API (``flotilla.registry.v1.RegistryService``) over gRPC."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import sys
import threading
import time
import warnings
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Generic, Literal, ParamSpec, Self, TypeVar, overload

import dask.config
import grpc
import grpc.aio
from distributed.utils import LoopRunner

from flotilla.registry.v1 import registry_pb2, registry_pb2_grpc, types_pb2

from . import config as _config  # registers the gateway.* dask config defaults
from ._report import ClusterReport, ClusterStatus, Quota, UsageReport, WorkerReport
from ._rpc import _grpc_target, _parse_set_cookie, map_rpc_error, resolve_addresses
from ._version import __version__
from .auth import GatewayAuth, get_auth
from .errors import GatewayClusterError, GatewayServerError, GatewayWarning
from .options import Options
from .utils import format_template

if TYPE_CHECKING:
    from tornado.ioloop import IOLoop

    from ._cluster import GatewayCluster

del _config

__all__ = ["Gateway"]

T = TypeVar("T")
P = ParamSpec("P")
#: Whether a ``Gateway`` (or ``GatewayCluster``) is asynchronous, for type checkers:
#: ``Literal[False]`` when its methods return values, ``Literal[True]`` when they
#: return awaitables, ``bool`` when that is known only at run time.
_AsyncT = TypeVar("_AsyncT", bound=bool, covariant=True)

#: Deadline of an ordinary registry call, in seconds.
CALL_TIMEOUT_SECONDS = 30.0
#: How long one GetCluster call asks the server to hold a PENDING cluster's reply.
WAIT_SECONDS = 20.0
#: Longest the server may spend fetching an active cluster's current logs, in seconds.
LOGS_WAIT_SECONDS = 30.0
#: Minimum interval between two polls while waiting for a cluster to start.
_POLL_INTERVAL_SECONDS = 0.5


class Gateway(Generic[_AsyncT]):
    """A client for a Flotilla (dask-gateway compatible) gateway.

    Parameters
    ----------
    address : str, optional
        The gateway's address, e.g. ``http://127.0.0.1:8000``. Defaults to dask config
        ``gateway.address``.
    proxy_address : str or int, optional
        Where dask clients reach schedulers. An int is used as the port on
        ``address``'s host. Defaults to ``gateway.proxy-address``, then to the host and
        port of ``address``.
    public_address : str, optional
        The address dashboard links are built on. Defaults to
        ``gateway.public-address``, then to ``address``.
    auth : GatewayAuth or str, optional
        The authentication method. Defaults to ``gateway.auth.type`` (``"basic"``).
    asynchronous : bool, optional
        If True, methods return coroutines to await in the caller's event loop.
    loop : IOLoop, optional
        The (running) IOLoop to use. Defaults to the current loop in asynchronous mode,
        otherwise a loop in a background thread.

    Examples
    --------
    >>> gateway = Gateway("http://127.0.0.1:8000")  # doctest: +SKIP
    >>> cluster = gateway.new_cluster(worker_cores=2)  # doctest: +SKIP
    >>> cluster.scale(4)  # doctest: +SKIP
    >>> client = cluster.get_client()  # doctest: +SKIP

    Notes
    -----
    For type checkers a ``Gateway`` is ``Gateway[Literal[False]]`` (each method returns
    its value) or ``Gateway[Literal[True]]`` (each returns an awaitable of it), following
    ``asynchronous``; ``Gateway[bool]`` when that is known only at run time.
    """

    @overload
    def __init__(
        self: Gateway[Literal[False]],
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        asynchronous: Literal[False] = False,
        loop: IOLoop | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self: Gateway[Literal[True]],
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        *,
        asynchronous: Literal[True],
        loop: IOLoop | None = None,
    ) -> None: ...
    @overload
    def __init__(
        self: Gateway[bool],
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        asynchronous: bool = False,
        loop: IOLoop | None = None,
    ) -> None: ...
    def __init__(
        self,
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        asynchronous: bool = False,
        loop: IOLoop | None = None,
    ) -> None:
        self.address, self.proxy_address, self._public_address = resolve_addresses(
            address, proxy_address, public_address
        )
        self._target, self._secure = _grpc_target(self.address)
        self.auth = get_auth(auth)
        self._cookies: dict[str, tuple[str, float | None]] = {}
        self._channel: grpc.aio.Channel | None = None
        self._stub: registry_pb2_grpc.RegistryServiceStub | None = None
        self._channel_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._asynchronous = asynchronous
        self._loop_runner = LoopRunner(loop=loop, asynchronous=asynchronous)
        self._loop_runner.start()

    # -- event loop plumbing ---------------------------------------------------

    @property
    def loop(self) -> IOLoop:
        """The IOLoop the client runs on."""
        loop: IOLoop = self._loop_runner.loop
        return loop

    @property
    def asynchronous(self) -> bool:
        """Whether the public methods return coroutines."""
        return self._asynchronous

    @property
    def public_address(self) -> str:
        """The base address of dashboard links."""
        return self._public_address

    def _in_loop_thread(self) -> bool:
        try:
            return asyncio.get_running_loop() is self._loop_runner.loop.asyncio_loop
        except RuntimeError:
            return False

    @overload
    def sync(
        self: Gateway[Literal[False]],
        func: Callable[P, Coroutine[Any, Any, T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T: ...
    @overload
    def sync(
        self: Gateway[Literal[True]],
        func: Callable[P, Coroutine[Any, Any, T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Awaitable[T]: ...
    @overload
    def sync(
        self: Gateway[bool],
        func: Callable[P, Coroutine[Any, Any, T]],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> T | Awaitable[T]: ...
    def sync(
        self, func: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> T | Awaitable[T]:
        """Run ``func(*args, **kwargs)``: awaitable in asynchronous mode, else to completion.

        Parameters
        ----------
        func : coroutine function
        *args, **kwargs
            Passed to ``func``.
        """
        if self.asynchronous:
            return func(*args, **kwargs)
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._in_loop_thread():
            raise RuntimeError(
                "A synchronous Gateway method was called from its own event loop; "
                "use Gateway(asynchronous=True) in async code"
            )
        future: concurrent.futures.Future[T] = asyncio.run_coroutine_threadsafe(
            func(*args, **kwargs),
            self._loop_runner.loop.asyncio_loop,
        )
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    async def _close_channel(self) -> None:
        channel, self._channel, self._stub = self._channel, None, None
        self._channel_loop = None
        if channel is not None:
            await channel.close()

    @overload
    def close(self: Gateway[Literal[False]]) -> None: ...
    @overload
    def close(self: Gateway[Literal[True]]) -> asyncio.Future[None] | None: ...
    @overload
    def close(self: Gateway[bool]) -> asyncio.Future[None] | None: ...
    def close(self) -> asyncio.Future[None] | None:
        """Close the gateway client (its connection, and its loop thread if it owns one).

        In asynchronous mode this returns an awaitable (awaiting it is optional).
        """
        if self.asynchronous:
            try:
                return asyncio.ensure_future(self._close_channel())
            except RuntimeError:  # no running loop: nothing left to close cleanly
                self._channel = self._stub = None
                return None
        if self._closed:
            return None
        self._closed = True
        try:
            if self._loop_runner.is_started() and not self._in_loop_thread():
                self.sync(self._close_channel)
        except RuntimeError:
            pass  # loop already stopped
        finally:
            if self._in_loop_thread():
                threading.Thread(target=self._loop_runner.stop, daemon=True).start()
            else:
                self._loop_runner.stop()
        return None

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *args: Any) -> None:
        await self._close_channel()

    def __del__(self) -> None:
        # __del__ also runs when __init__ failed half-way.
        if not hasattr(self, "_loop_runner") or self._asynchronous or sys.is_finalizing():
            return
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        return f"Gateway<{self.address}>"

    # -- RPC plumbing ----------------------------------------------------------

    def _channel_options(self) -> list[tuple[str, Any]]:
        options: list[tuple[str, Any]] = [
            ("grpc.primary_user_agent", f"flotilla-client/{__version__}"),
            # Cluster logs can exceed gRPC's default 4 MiB (the gateway sends up to 16 MiB).
            ("grpc.max_receive_message_length", 64 * 2**20),
        ]
        proxy = dask.config.get("gateway.http-client.proxy", True)
        if proxy is False:
            options.append(("grpc.enable_http_proxy", 0))
        elif isinstance(proxy, str) and proxy:
            options.append(("grpc.http_proxy", format_template(proxy)))
        return options

    def _get_stub(self) -> registry_pb2_grpc.RegistryServiceStub:
        loop = asyncio.get_running_loop()
        if self._stub is None or self._channel_loop is not loop:
            options = self._channel_options()
            if self._secure:
                ca_file = format_template(dask.config.get("gateway.tls.ca-file", None))
                roots = None
                if ca_file:
                    with open(ca_file, "rb") as f:
                        roots = f.read()
                creds = grpc.ssl_channel_credentials(root_certificates=roots)
                channel = grpc.aio.secure_channel(self._target, creds, options=options)
            else:
                channel = grpc.aio.insecure_channel(self._target, options=options)
            self._channel, self._channel_loop = channel, loop
            self._stub = registry_pb2_grpc.RegistryServiceStub(channel)
        return self._stub

    def _request_metadata(self) -> list[tuple[str, str]]:
        now = time.monotonic()
        live = {n: v for n, (v, exp) in self._cookies.items() if exp is None or exp > now}
        if len(live) != len(self._cookies):
            self._cookies = {n: self._cookies[n] for n in live}
        if live:
            return [("cookie", "; ".join(f"{n}={v}" for n, v in live.items()))]
        return self.auth.metadata()

    def _absorb_metadata(self, *groups: Iterable[tuple[str, Any]] | None) -> list[tuple[str, str]]:
        entries = [(k, v) for group in groups if group for k, v in group]
        for key, value in entries:
            if key.lower() != "set-cookie" or not isinstance(value, str):
                continue
            parsed = _parse_set_cookie(value)
            if parsed is None:
                continue
            name, val, max_age = parsed
            if max_age is not None and max_age <= 0:
                self._cookies.pop(name, None)
            else:
                expires = None if max_age is None else time.monotonic() + max_age
                self._cookies[name] = (val, expires)
        return entries

    async def _rpc(self, method: str, request: Any, timeout: float = CALL_TIMEOUT_SECONDS) -> Any:
        """Call ``RegistryService.<method>`` with credentials; map failures to exceptions."""
        stub = self._get_stub()
        retried = False
        while True:
            metadata = self._request_metadata()
            sent_cookie = any(k == "cookie" for k, _ in metadata)
            call = getattr(stub, method)(request, metadata=metadata, timeout=timeout)
            try:
                response = await call
            except grpc.aio.AioRpcError as exc:
                self._absorb_metadata(exc.initial_metadata(), exc.trailing_metadata())
                if exc.code() is grpc.StatusCode.UNAUTHENTICATED and sent_cookie and not retried:
                    # The session expired (or the gateway restarted): log in again.
                    self._cookies.clear()
                    retried = True
                    continue
                raise map_rpc_error(exc, self.address) from None
            entries = self._absorb_metadata(
                await call.initial_metadata(), await call.trailing_metadata()
            )
            self.auth.post_response(entries)
            return response

    # -- API -------------------------------------------------------------------

    def _report(self, msg: types_pb2.Cluster) -> ClusterReport:
        return ClusterReport._from_proto(self._public_address, self.proxy_address, msg)

    async def _clusters(
        self,
        status: ClusterStatus | str | Iterable[ClusterStatus | str] | None = None,
        all_users: bool = False,
    ) -> list[ClusterReport]:
        if status is None:
            statuses: list[ClusterStatus] = []
        elif isinstance(status, (str, ClusterStatus)):
            statuses = [ClusterStatus._create(status)]
        else:
            statuses = [ClusterStatus._create(s) for s in status]
        resp: registry_pb2.ListClustersResponse = await self._rpc(
            "ListClusters",
            registry_pb2.ListClustersRequest(
                statuses=[int(s) for s in statuses], all_users=all_users
            ),
        )
        return [self._report(c) for c in resp.clusters]

    @overload
    def list_clusters(
        self: Gateway[Literal[False]],
        status: ClusterStatus | str | Iterable[ClusterStatus | str] | None = None,
        all_users: bool = False,
        **kwargs: Any,
    ) -> list[ClusterReport]: ...
    @overload
    def list_clusters(
        self: Gateway[Literal[True]],
        status: ClusterStatus | str | Iterable[ClusterStatus | str] | None = None,
        all_users: bool = False,
        **kwargs: Any,
    ) -> Awaitable[list[ClusterReport]]: ...
    @overload
    def list_clusters(
        self: Gateway[bool],
        status: ClusterStatus | str | Iterable[ClusterStatus | str] | None = None,
        all_users: bool = False,
        **kwargs: Any,
    ) -> list[ClusterReport] | Awaitable[list[ClusterReport]]: ...
    def list_clusters(
        self,
        status: ClusterStatus | str | Iterable[ClusterStatus | str] | None = None,
        all_users: bool = False,
        **kwargs: Any,
    ) -> list[ClusterReport] | Awaitable[list[ClusterReport]]:
        """List clusters.

        Parameters
        ----------
        status : ClusterStatus, str, or list, optional
            The status (or statuses) to select, by name or value. By default only
            active clusters (PENDING and RUNNING).
        all_users : bool, optional
            Every user's clusters instead of only your own (admins only).

        Returns
        -------
        clusters : list of ClusterReport
        """
        return self.sync(self._clusters, status=status, all_users=all_users, **kwargs)

    async def _cluster_report(self, cluster_name: str, wait: bool = False) -> ClusterReport:
        wait_seconds = WAIT_SECONDS if wait else 0.0
        resp: registry_pb2.GetClusterResponse = await self._rpc(
            "GetCluster",
            registry_pb2.GetClusterRequest(name=cluster_name, wait_seconds=wait_seconds),
            timeout=CALL_TIMEOUT_SECONDS + wait_seconds,
        )
        return self._report(resp.cluster)

    @overload
    def get_cluster(
        self: Gateway[Literal[False]], cluster_name: str, **kwargs: Any
    ) -> ClusterReport: ...
    @overload
    def get_cluster(
        self: Gateway[Literal[True]], cluster_name: str, **kwargs: Any
    ) -> Awaitable[ClusterReport]: ...
    @overload
    def get_cluster(
        self: Gateway[bool], cluster_name: str, **kwargs: Any
    ) -> ClusterReport | Awaitable[ClusterReport]: ...
    def get_cluster(
        self, cluster_name: str, **kwargs: Any
    ) -> ClusterReport | Awaitable[ClusterReport]:
        """Get information about one cluster.

        Parameters
        ----------
        cluster_name : str
            The cluster's name.

        Returns
        -------
        report : ClusterReport
        """
        return self.sync(self._cluster_report, cluster_name, **kwargs)

    def _config_cluster_options(self) -> dict[str, Any]:
        opts = dask.config.get("gateway.cluster.options", None) or {}
        return {k: format_template(v) for k, v in opts.items()}

    async def _cluster_options(self, use_local_defaults: bool = True) -> Options:
        resp: registry_pb2.GetOptionsResponse = await self._rpc(
            "GetOptions", registry_pb2.GetOptionsRequest()
        )
        try:
            spec = [
                {
                    "field": f.field,
                    "label": f.label,
                    "default": json.loads(f.default_json) if f.default_json else None,
                    "spec": json.loads(f.spec_json) if f.spec_json else {},
                }
                for f in resp.fields
            ]
        except json.JSONDecodeError as exc:
            raise GatewayServerError(f"Gateway sent malformed cluster options: {exc}") from exc
        options = Options.from_spec(spec)
        if use_local_defaults:
            options.update(self._config_cluster_options())
        return options

    @overload
    def cluster_options(
        self: Gateway[Literal[False]], use_local_defaults: bool = True, **kwargs: Any
    ) -> Options: ...
    @overload
    def cluster_options(
        self: Gateway[Literal[True]], use_local_defaults: bool = True, **kwargs: Any
    ) -> Awaitable[Options]: ...
    @overload
    def cluster_options(
        self: Gateway[bool], use_local_defaults: bool = True, **kwargs: Any
    ) -> Options | Awaitable[Options]: ...
    def cluster_options(
        self, use_local_defaults: bool = True, **kwargs: Any
    ) -> Options | Awaitable[Options]:
        """Get the cluster options the gateway offers.

        Parameters
        ----------
        use_local_defaults : bool, optional
            Apply defaults from dask config ``gateway.cluster.options`` (default True);
            False gives the server's defaults only.

        Returns
        -------
        cluster_options : Options
        """
        return self.sync(self._cluster_options, use_local_defaults=use_local_defaults, **kwargs)

    async def _submit(
        self, cluster_options: Options | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> str:
        if cluster_options is not None:
            if not isinstance(cluster_options, Mapping):
                raise TypeError(
                    f"cluster_options must be an `Options`, got {type(cluster_options).__name__!r}"
                )
            options = dict(cluster_options)
        else:
            options = self._config_cluster_options()
        options.update(kwargs)
        try:
            options_json = json.dumps(options)
        except TypeError as exc:
            raise ValueError(f"Cluster options must be JSON serializable: {exc}") from None
        resp: registry_pb2.CreateClusterResponse = await self._rpc(
            "CreateCluster", registry_pb2.CreateClusterRequest(options_json=options_json)
        )
        return str(resp.name)

    @overload
    def submit(
        self: Gateway[Literal[False]],
        cluster_options: Options | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> str: ...
    @overload
    def submit(
        self: Gateway[Literal[True]],
        cluster_options: Options | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Awaitable[str]: ...
    @overload
    def submit(
        self: Gateway[bool],
        cluster_options: Options | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> str | Awaitable[str]: ...
    def submit(
        self, cluster_options: Options | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> str | Awaitable[str]:
        """Submit a new cluster to be started, without waiting for it.

        Parameters
        ----------
        cluster_options : Options or mapping, optional
            The cluster options (every field of an ``Options`` is sent). Defaults to dask
            config ``gateway.cluster.options``.
        **kwargs
            Option values applied on top of ``cluster_options``.

        Returns
        -------
        cluster_name : str
        """
        return self.sync(self._submit, cluster_options=cluster_options, **kwargs)

    async def _wait_for_start(self, cluster_name: str) -> ClusterReport:
        while True:
            started = time.monotonic()
            try:
                report = await self._cluster_report(cluster_name, wait=True)
            except TimeoutError:
                continue
            if report.status is ClusterStatus.RUNNING:
                return report
            if report.status is ClusterStatus.FAILED:
                msg = f"Cluster '{cluster_name}' failed to start, see logs for more information"
                if report.reason:
                    msg += f" (reason: {report.reason})"
                raise GatewayClusterError(msg)
            if report.status is ClusterStatus.STOPPED:
                raise GatewayClusterError(f"Cluster '{cluster_name}' is already stopped")
            # PENDING after the server's wait, or STOPPING: poll again, not too eagerly.
            elapsed = time.monotonic() - started
            if elapsed < _POLL_INTERVAL_SECONDS:
                await asyncio.sleep(_POLL_INTERVAL_SECONDS - elapsed)

    @overload
    def wait_for_start(
        self: Gateway[Literal[False]], cluster_name: str, **kwargs: Any
    ) -> ClusterReport: ...
    @overload
    def wait_for_start(
        self: Gateway[Literal[True]], cluster_name: str, **kwargs: Any
    ) -> Awaitable[ClusterReport]: ...
    @overload
    def wait_for_start(
        self: Gateway[bool], cluster_name: str, **kwargs: Any
    ) -> ClusterReport | Awaitable[ClusterReport]: ...
    def wait_for_start(
        self, cluster_name: str, **kwargs: Any
    ) -> ClusterReport | Awaitable[ClusterReport]:
        """Wait until a cluster is running.

        Parameters
        ----------
        cluster_name : str
            The cluster's name.

        Returns
        -------
        report : ClusterReport

        Raises
        ------
        GatewayClusterError
            If the cluster failed (with the gateway's reason) or was stopped.
        """
        return self.sync(self._wait_for_start, cluster_name, **kwargs)

    @overload
    def connect(
        self: Gateway[Literal[False]], cluster_name: str, shutdown_on_close: bool = False
    ) -> GatewayCluster[Literal[False]]: ...
    @overload
    def connect(
        self: Gateway[Literal[True]], cluster_name: str, shutdown_on_close: bool = False
    ) -> GatewayCluster[Literal[True]]: ...
    @overload
    def connect(
        self: Gateway[bool], cluster_name: str, shutdown_on_close: bool = False
    ) -> GatewayCluster[bool]: ...
    def connect(self, cluster_name: str, shutdown_on_close: bool = False) -> GatewayCluster[bool]:
        """Connect to a submitted cluster.

        Parameters
        ----------
        cluster_name : str
            The cluster to connect to.
        shutdown_on_close : bool, optional
            Shut the cluster down when the returned object is closed (default False).

        Returns
        -------
        cluster : GatewayCluster
            Awaitable in asynchronous mode.
        """
        from ._cluster import GatewayCluster  # it builds a Gateway of its own

        return GatewayCluster.from_name(
            cluster_name,
            shutdown_on_close=shutdown_on_close,
            address=self.address,
            proxy_address=self.proxy_address,
            public_address=self._public_address,
            auth=self.auth,
            asynchronous=self.asynchronous,
            loop=self.loop,
        )

    @overload
    def new_cluster(
        self: Gateway[Literal[False]],
        cluster_options: Options | Mapping[str, Any] | None = None,
        shutdown_on_close: bool = True,
        **kwargs: Any,
    ) -> GatewayCluster[Literal[False]]: ...
    @overload
    def new_cluster(
        self: Gateway[Literal[True]],
        cluster_options: Options | Mapping[str, Any] | None = None,
        shutdown_on_close: bool = True,
        **kwargs: Any,
    ) -> GatewayCluster[Literal[True]]: ...
    @overload
    def new_cluster(
        self: Gateway[bool],
        cluster_options: Options | Mapping[str, Any] | None = None,
        shutdown_on_close: bool = True,
        **kwargs: Any,
    ) -> GatewayCluster[bool]: ...
    def new_cluster(
        self,
        cluster_options: Options | Mapping[str, Any] | None = None,
        shutdown_on_close: bool = True,
        **kwargs: Any,
    ) -> GatewayCluster[bool]:
        """Create a new cluster and wait for it to start (``submit`` + ``connect``).

        Parameters
        ----------
        cluster_options : Options or mapping, optional
            The cluster options; see :meth:`submit`.
        shutdown_on_close : bool, optional
            Shut the cluster down when the returned object is closed (default True).
        **kwargs
            Option values applied on top of ``cluster_options``.

        Returns
        -------
        cluster : GatewayCluster
            Awaitable in asynchronous mode.
        """
        from ._cluster import GatewayCluster  # it builds a Gateway of its own

        return GatewayCluster(
            address=self.address,
            proxy_address=self.proxy_address,
            public_address=self._public_address,
            auth=self.auth,
            asynchronous=self.asynchronous,
            loop=self.loop,
            cluster_options=cluster_options,
            shutdown_on_close=shutdown_on_close,
            **kwargs,
        )

    async def _stop_cluster(self, cluster_name: str) -> None:
        await self._rpc("StopCluster", registry_pb2.StopClusterRequest(name=cluster_name))

    @overload
    def stop_cluster(self: Gateway[Literal[False]], cluster_name: str, **kwargs: Any) -> None: ...
    @overload
    def stop_cluster(
        self: Gateway[Literal[True]], cluster_name: str, **kwargs: Any
    ) -> Awaitable[None]: ...
    @overload
    def stop_cluster(
        self: Gateway[bool], cluster_name: str, **kwargs: Any
    ) -> Awaitable[None] | None: ...
    def stop_cluster(self, cluster_name: str, **kwargs: Any) -> Awaitable[None] | None:
        """Stop a cluster (idempotent).

        Parameters
        ----------
        cluster_name : str
            The cluster's name.
        """
        return self.sync(self._stop_cluster, cluster_name, **kwargs)

    @staticmethod
    def _warn_if_clamped(
        resp: registry_pb2.ScaleClusterResponse | registry_pb2.AdaptClusterResponse,
    ) -> None:
        if not resp.ok and resp.message:
            warnings.warn(GatewayWarning(resp.message), stacklevel=3)

    async def _scale_cluster(self, cluster_name: str, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"Scale expects a non-negative integer, got {n}")
        resp: registry_pb2.ScaleClusterResponse = await self._rpc(
            "ScaleCluster", registry_pb2.ScaleClusterRequest(name=cluster_name, count=n)
        )
        self._warn_if_clamped(resp)

    @overload
    def scale_cluster(
        self: Gateway[Literal[False]], cluster_name: str, n: int, **kwargs: Any
    ) -> None: ...
    @overload
    def scale_cluster(
        self: Gateway[Literal[True]], cluster_name: str, n: int, **kwargs: Any
    ) -> Awaitable[None]: ...
    @overload
    def scale_cluster(
        self: Gateway[bool], cluster_name: str, n: int, **kwargs: Any
    ) -> Awaitable[None] | None: ...
    def scale_cluster(self, cluster_name: str, n: int, **kwargs: Any) -> Awaitable[None] | None:
        """Scale a cluster to ``n`` workers (this turns adaptive scaling off).

        Parameters
        ----------
        cluster_name : str
            The cluster's name.
        n : int
            The number of workers.

        Warns
        -----
        GatewayWarning
            When a limit made the gateway scale to fewer workers.
        """
        return self.sync(self._scale_cluster, cluster_name, n, **kwargs)

    async def _adapt_cluster(
        self,
        cluster_name: str,
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
    ) -> None:
        for label, value in (("minimum", minimum), ("maximum", maximum)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 0
            ):
                raise ValueError(f"Adapt {label} must be a non-negative integer, got {value}")
        req = registry_pb2.AdaptClusterRequest(name=cluster_name, active=active)
        if minimum is not None:
            req.minimum = minimum
        if maximum is not None:
            req.maximum = maximum
        resp: registry_pb2.AdaptClusterResponse = await self._rpc("AdaptCluster", req)
        self._warn_if_clamped(resp)

    @overload
    def adapt_cluster(
        self: Gateway[Literal[False]],
        cluster_name: str,
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
        **kwargs: Any,
    ) -> None: ...
    @overload
    def adapt_cluster(
        self: Gateway[Literal[True]],
        cluster_name: str,
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
        **kwargs: Any,
    ) -> Awaitable[None]: ...
    @overload
    def adapt_cluster(
        self: Gateway[bool],
        cluster_name: str,
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
        **kwargs: Any,
    ) -> Awaitable[None] | None: ...
    def adapt_cluster(
        self,
        cluster_name: str,
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
        **kwargs: Any,
    ) -> Awaitable[None] | None:
        """Configure adaptive scaling for a cluster.

        Parameters
        ----------
        cluster_name : str
            The cluster's name.
        minimum : int, optional
            The minimum number of workers (default 0).
        maximum : int, optional
            The maximum number of workers (default: unbounded, or the gateway's limit).
        active : bool, optional
            True (default) turns adaptive scaling on, False turns it off.

        Warns
        -----
        GatewayWarning
            When a limit made the gateway use other bounds.
        """
        return self.sync(
            self._adapt_cluster,
            cluster_name,
            minimum=minimum,
            maximum=maximum,
            active=active,
            **kwargs,
        )

    async def _cluster_logs(self, cluster_name: str) -> dict[str, str]:
        resp: registry_pb2.GetClusterLogsResponse = await self._rpc(
            "GetClusterLogs",
            registry_pb2.GetClusterLogsRequest(name=cluster_name),
            timeout=CALL_TIMEOUT_SECONDS + LOGS_WAIT_SECONDS,
        )
        return {log.process: log.text for log in resp.logs}

    @overload
    def get_cluster_logs(
        self: Gateway[Literal[False]], cluster_name: str, **kwargs: Any
    ) -> dict[str, str]: ...
    @overload
    def get_cluster_logs(
        self: Gateway[Literal[True]], cluster_name: str, **kwargs: Any
    ) -> Awaitable[dict[str, str]]: ...
    @overload
    def get_cluster_logs(
        self: Gateway[bool], cluster_name: str, **kwargs: Any
    ) -> dict[str, str] | Awaitable[dict[str, str]]: ...
    def get_cluster_logs(
        self, cluster_name: str, **kwargs: Any
    ) -> dict[str, str] | Awaitable[dict[str, str]]:
        """The output (stdout and stderr) of a cluster's scheduler and workers.

        Works for active clusters (the gateway fetches the current output) and for
        stopped or failed ones, for as long as the gateway keeps their records. Only the
        end of each process's output is kept (a line says how much was cut).

        Parameters
        ----------
        cluster_name : str
            The cluster's name.

        Returns
        -------
        logs : dict
            Process name (``"scheduler"``, ``"worker-<name>"``) to its output text, the
            scheduler first.
        """
        return self.sync(self._cluster_logs, cluster_name, **kwargs)

    async def _list_workers(self, cluster_name: str) -> list[WorkerReport]:
        resp: registry_pb2.ListWorkersResponse = await self._rpc(
            "ListWorkers", registry_pb2.ListWorkersRequest(name=cluster_name)
        )
        return [WorkerReport._from_proto(w) for w in resp.workers]

    @overload
    def list_workers(
        self: Gateway[Literal[False]], cluster_name: str, **kwargs: Any
    ) -> list[WorkerReport]: ...
    @overload
    def list_workers(
        self: Gateway[Literal[True]], cluster_name: str, **kwargs: Any
    ) -> Awaitable[list[WorkerReport]]: ...
    @overload
    def list_workers(
        self: Gateway[bool], cluster_name: str, **kwargs: Any
    ) -> list[WorkerReport] | Awaitable[list[WorkerReport]]: ...
    def list_workers(
        self, cluster_name: str, **kwargs: Any
    ) -> list[WorkerReport] | Awaitable[list[WorkerReport]]:
        """A cluster's workers, those that ended too, and why each failed one did.

        A worker that ended without being asked to (it crashed, exceeded its memory
        limit, its image could not be pulled, its job was cancelled) is FAILED and its
        ``reason`` says why, in words; the gateway starts another in its place. Works for
        stopped and failed clusters too, for as long as the gateway keeps their records.

        Parameters
        ----------
        cluster_name : str
            The cluster's name.

        Returns
        -------
        workers : list of WorkerReport
            Most recently started first; at most the 1000 most recent.
        """
        return self.sync(self._list_workers, cluster_name, **kwargs)

    async def _usage(self, all_users: bool = False) -> list[UsageReport]:
        resp: registry_pb2.GetUsageResponse = await self._rpc(
            "GetUsage", registry_pb2.GetUsageRequest(all_users=all_users)
        )
        out: list[UsageReport] = []
        for u in resp.usage:
            q = u.quota
            quota: Quota = {
                "max_clusters": q.max_clusters if q.HasField("max_clusters") else None,
                "max_cores": q.max_cores if q.HasField("max_cores") else None,
                "max_memory": q.max_memory_bytes if q.HasField("max_memory_bytes") else None,
                "max_workers": q.max_workers if q.HasField("max_workers") else None,
            }
            out.append(
                {
                    "user": u.user,
                    "clusters": u.clusters,
                    "cores": u.cores,
                    "memory": u.memory_bytes,
                    "workers": u.workers,
                    "quota": quota,
                    "core_hours": u.core_hours,
                    "memory_gib_hours": u.memory_gib_hours,
                }
            )
        return out

    @overload
    def usage(
        self: Gateway[Literal[False]], all_users: bool = False, **kwargs: Any
    ) -> list[UsageReport]: ...
    @overload
    def usage(
        self: Gateway[Literal[True]], all_users: bool = False, **kwargs: Any
    ) -> Awaitable[list[UsageReport]]: ...
    @overload
    def usage(
        self: Gateway[bool], all_users: bool = False, **kwargs: Any
    ) -> list[UsageReport] | Awaitable[list[UsageReport]]: ...
    def usage(
        self, all_users: bool = False, **kwargs: Any
    ) -> list[UsageReport] | Awaitable[list[UsageReport]]:
        """What your active clusters reserve, your quota, and your usage so far.

        Parameters
        ----------
        all_users : bool, optional
            One entry per user instead of only yours (admins only).

        Returns
        -------
        usage : list of dict
            Per user: ``user``; ``clusters``, ``cores``, ``memory`` (bytes) and
            ``workers`` reserved now by active clusters (schedulers and granted workers);
            ``quota`` (``max_clusters``, ``max_cores``, ``max_memory``, ``max_workers``,
            None for no limit); ``core_hours`` and ``memory_gib_hours`` reserved so far.
        """
        return self.sync(self._usage, all_users=all_users, **kwargs)

    async def _get_versions(self) -> dict[str, dict[str, str]]:
        resp: registry_pb2.GetVersionResponse = await self._rpc(
            "GetVersion", registry_pb2.GetVersionRequest()
        )
        return {"server": {"version": resp.version}, "client": {"version": __version__}}

    @overload
    def get_versions(self: Gateway[Literal[False]], **kwargs: Any) -> dict[str, dict[str, str]]: ...
    @overload
    def get_versions(
        self: Gateway[Literal[True]], **kwargs: Any
    ) -> Awaitable[dict[str, dict[str, str]]]: ...
    @overload
    def get_versions(
        self: Gateway[bool], **kwargs: Any
    ) -> dict[str, dict[str, str]] | Awaitable[dict[str, dict[str, str]]]: ...
    def get_versions(
        self, **kwargs: Any
    ) -> dict[str, dict[str, str]] | Awaitable[dict[str, dict[str, str]]]:
        """The server's and the client's versions.

        Returns
        -------
        versions : dict
            ``{"server": {"version": ...}, "client": {"version": ...}}``.
        """
        return self.sync(self._get_versions, **kwargs)
