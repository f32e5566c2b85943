# distributed is untyped.
# mypy: disable-error-code="no-untyped-call"
"""The Flotilla gateway client: dask-gateway's ``Gateway``/``GatewayCluster`` API over gRPC.

The client talks to the gateway's ``flotilla.registry.v1.RegistryService`` (served by
Envoy on the gateway's public port) and to each cluster's scheduler through the
``gateway://`` comm (TLS with SNI ``daskgateway-<name>`` on the proxy address).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import enum
import json
import logging
import sys
import threading
import time
import traceback
import warnings
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, ClassVar, TypeVar
from urllib.parse import urlsplit

import dask.config
import grpc
import grpc.aio
from distributed import Client
from distributed.core import Status, rpc
from distributed.deploy.cluster import Cluster
from distributed.objects import SchedulerInfo
from distributed.utils import LoopRunner
from google.protobuf.timestamp_pb2 import Timestamp

from flotilla.registry.v1 import registry_pb2, registry_pb2_grpc, types_pb2

from . import comm as _comm  # registers the "gateway" comm backend
from . import config as _config  # registers the gateway.* dask config defaults
from ._version import __version__
from .auth import GatewayAuth, get_auth
from .errors import (
    GatewayAuthError,
    GatewayClusterError,
    GatewayError,
    GatewayLimitError,
    GatewayPermissionError,
    GatewayServerError,
    GatewayWarning,
)
from .options import Options
from .security import GatewaySecurity
from .utils import format_template

del _comm, _config

__all__ = [
    "ClusterObjectStatus",
    "ClusterReport",
    "ClusterStatus",
    "Gateway",
    "GatewayAuthError",
    "GatewayCluster",
    "GatewayClusterError",
    "GatewayError",
    "GatewayLimitError",
    "GatewayPermissionError",
    "GatewayServerError",
    "GatewayWarning",
    "map_rpc_error",
    "resolve_addresses",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: Deadline of an ordinary registry call, in seconds.
CALL_TIMEOUT_SECONDS = 30.0
#: How long one GetCluster call asks the server to hold a PENDING cluster's reply.
WAIT_SECONDS = 20.0
#: Longest the server may spend fetching an active cluster's current logs, in seconds.
LOGS_WAIT_SECONDS = 30.0
#: Minimum interval between two polls while waiting for a cluster to start.
_POLL_INTERVAL_SECONDS = 0.5


# ----------------------------------------------------------------------------------
# Status and reports


class ClusterStatus(enum.IntEnum):
    """A cluster's status.

    Attributes
    ----------
    PENDING : ClusterStatus
        The cluster is starting.
    RUNNING : ClusterStatus
        The cluster is running.
    STOPPING : ClusterStatus
        The cluster is stopping, but not fully stopped.
    STOPPED : ClusterStatus
        The cluster was shut down by user or admin request (or went idle).
    FAILED : ClusterStatus
        Something went wrong; the report's ``reason`` says what, when known.
    """

    PENDING = 1
    RUNNING = 2
    STOPPING = 3
    STOPPED = 4
    FAILED = 5

    @classmethod
    def from_name(cls, name: str) -> ClusterStatus:
        """The status called ``name`` (case-insensitive).

        Parameters
        ----------
        name : str

        Returns
        -------
        status : ClusterStatus
        """
        try:
            return cls[name.upper()]
        except (KeyError, AttributeError):
            raise ValueError(f"{name!r} is not a valid {cls.__name__}") from None

    @classmethod
    def _create(cls, x: ClusterStatus | str | int) -> ClusterStatus:
        if isinstance(x, cls):
            return x
        if isinstance(x, str):
            return cls.from_name(x)
        try:
            return cls(x)
        except ValueError:
            raise ValueError(f"{x!r} is not a valid {cls.__name__}") from None


def _timestamp(ts: Timestamp) -> datetime:
    # Local naive time, like dask-gateway's ``datetime.fromtimestamp(ms / 1000)``.
    return datetime.fromtimestamp(ts.seconds + ts.nanos / 1e9)


class ClusterReport:
    """A report on a cluster's state.

    Attributes
    ----------
    name : str
        The cluster's name, a unique id.
    options : dict
        The cluster options it was created with (defaults filled in).
    status : ClusterStatus
        The cluster's status.
    scheduler_address : str or None
        ``gateway://<proxy>/<name>``, or None if the cluster is not running.
    dashboard_link : str or None
        A link to the dashboard, or None if there is none (yet).
    start_time : datetime.datetime
        When the cluster was created (local time).
    stop_time : datetime.datetime or None
        When the cluster stopped, or None while it is active.
    tls_cert, tls_key : str or None
        The cluster's TLS credentials (PEM), present only while it is running.
    owner : str or None
        The user the cluster belongs to.
    backend : str or None
        The launcher backend running it.
    reason : str or None
        Why the cluster failed or stopped, when the gateway knows.
    requested_workers, running_workers : int or None
        Workers asked for, and workers connected.
    cores : float or None
        The cores the scheduler and the requested workers reserve (0 once ended).
    memory : int or None
        The memory they reserve, in bytes (0 once ended).
    """

    __slots__ = (
        "backend",
        "cores",
        "dashboard_link",
        "memory",
        "name",
        "options",
        "owner",
        "reason",
        "requested_workers",
        "running_workers",
        "scheduler_address",
        "start_time",
        "status",
        "stop_time",
        "tls_cert",
        "tls_key",
    )

    def __init__(
        self,
        name: str,
        options: dict[str, Any],
        status: ClusterStatus,
        scheduler_address: str | None,
        dashboard_link: str | None,
        start_time: datetime | None,
        stop_time: datetime | None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        owner: str | None = None,
        backend: str | None = None,
        reason: str | None = None,
        requested_workers: int | None = None,
        running_workers: int | None = None,
        cores: float | None = None,
        memory: int | None = None,
    ) -> None:
        self.name = name
        self.options = options
        self.status = status
        self.scheduler_address = scheduler_address
        self.dashboard_link = dashboard_link
        self.start_time = start_time
        self.stop_time = stop_time
        self.tls_cert = tls_cert
        self.tls_key = tls_key
        self.owner = owner
        self.backend = backend
        self.reason = reason
        self.requested_workers = requested_workers
        self.running_workers = running_workers
        self.cores = cores
        self.memory = memory

    def __repr__(self) -> str:
        return f"ClusterReport<name={self.name}, status={self.status.name}>"

    @property
    def security(self) -> GatewaySecurity | None:
        """A security object for connecting to this cluster, or None if not running."""
        if self.tls_key is None or self.tls_cert is None:
            return None
        return GatewaySecurity(tls_key=self.tls_key, tls_cert=self.tls_cert)

    @classmethod
    def _from_proto(
        cls, public_address: str, proxy_address: str, msg: types_pb2.Cluster
    ) -> ClusterReport:
        status = ClusterStatus._create(msg.status)
        return cls(
            name=msg.name,
            options=json.loads(msg.options_json) if msg.options_json else {},
            status=status,
            scheduler_address=(
                f"{proxy_address}/{msg.name}" if status is ClusterStatus.RUNNING else None
            ),
            dashboard_link=(
                f"{public_address}{msg.dashboard_route}" if msg.dashboard_route else None
            ),
            start_time=_timestamp(msg.start_time) if msg.HasField("start_time") else None,
            stop_time=_timestamp(msg.stop_time) if msg.HasField("stop_time") else None,
            tls_cert=msg.tls_cert or None,
            tls_key=msg.tls_key or None,
            owner=msg.owner or None,
            backend=msg.backend or None,
            reason=msg.reason or None,
            requested_workers=msg.requested_workers,
            running_workers=msg.running_workers,
            cores=msg.cores,
            memory=msg.memory_bytes,
        )


# ----------------------------------------------------------------------------------
# Addresses and errors


def _host_for_netloc(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def resolve_addresses(
    address: str | None = None,
    proxy_address: str | int | None = None,
    public_address: str | None = None,
) -> tuple[str, str, str]:
    """Work out the gateway, proxy and public addresses like dask-gateway does.

    Missing values come from dask config ``gateway.address``,
    ``gateway.proxy-address`` and ``gateway.public-address``; strings are
    template-formatted with ``os.environ``.

    Parameters
    ----------
    address : str, optional
        The gateway's address (``http(s)://host[:port][/prefix]``).
    proxy_address : str or int, optional
        Where schedulers are reached. An int is a port on ``address``'s host; a string
        is ``scheme://host:port`` or ``host:port``. Defaults to ``address``'s host and
        port (80 for http, 443 for https, 8786 otherwise).
    public_address : str, optional
        The base of dashboard links; defaults to ``address``.

    Returns
    -------
    address, proxy_address, public_address : str
        ``proxy_address`` is always ``gateway://host:port``.
    """
    if address is None:
        address = format_template(dask.config.get("gateway.address", None))
    if address is None:
        raise ValueError("No dask-gateway address provided or found in configuration")
    address = address.rstrip("/")

    if public_address is None:
        public_address = format_template(dask.config.get("gateway.public-address", None))
    public_address = address if public_address is None else public_address.rstrip("/")

    if proxy_address is None:
        proxy_address = format_template(dask.config.get("gateway.proxy-address", None))
    parsed = urlsplit(address)
    if proxy_address is None:
        port = parsed.port
        if port is None:
            port = {"http": 80, "https": 443}.get(parsed.scheme, 8786)
        proxy_netloc = f"{_host_for_netloc(parsed.hostname or '')}:{port}"
    elif isinstance(proxy_address, int) and not isinstance(proxy_address, bool):
        proxy_netloc = f"{_host_for_netloc(parsed.hostname or '')}:{proxy_address}"
    elif isinstance(proxy_address, str):
        proxy_netloc = urlsplit(proxy_address).netloc or proxy_address
    else:
        raise TypeError(f"proxy_address must be a str or int, got {proxy_address!r}")
    return address, f"gateway://{proxy_netloc}", public_address


def _grpc_target(address: str) -> tuple[str, bool]:
    """The gRPC target (``host:port``) for a gateway address, and whether it is TLS."""
    parsed = urlsplit(address)
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"Gateway address {address!r} must start with http:// or https://")
    secure = parsed.scheme == "https"
    if not parsed.hostname:
        raise ValueError(f"Gateway address {address!r} has no host")
    port = parsed.port or (443 if secure else 80)
    return f"{_host_for_netloc(parsed.hostname)}:{port}", secure


def map_rpc_error(exc: grpc.aio.AioRpcError, address: str = "") -> Exception:
    """The exception a gRPC failure surfaces as (dask-gateway's, where it has one).

    Parameters
    ----------
    exc : grpc.RpcError
        The failed call.
    address : str, optional
        The gateway address, for messages about reaching it.

    Returns
    -------
    error : Exception
        ``ValueError`` (INVALID_ARGUMENT, NOT_FOUND, OUT_OF_RANGE),
        :class:`GatewayLimitError` (RESOURCE_EXHAUSTED; a ``ValueError``),
        :class:`GatewayClusterError` (FAILED_PRECONDITION, ABORTED),
        :class:`GatewayPermissionError` (PERMISSION_DENIED),
        :class:`GatewayAuthError` (UNAUTHENTICATED), ``TimeoutError``
        (DEADLINE_EXCEEDED), else :class:`GatewayServerError`.
    """
    code = exc.code()
    details = exc.details() or ""
    msg = details or (code.name if code is not None else "unknown error")
    C = grpc.StatusCode
    if code in (C.INVALID_ARGUMENT, C.NOT_FOUND, C.OUT_OF_RANGE):
        return ValueError(msg)
    if code is C.RESOURCE_EXHAUSTED:
        return GatewayLimitError(msg)
    if code in (C.FAILED_PRECONDITION, C.ABORTED):
        return GatewayClusterError(msg)
    if code is C.PERMISSION_DENIED:
        return GatewayPermissionError(msg)
    if code is C.UNAUTHENTICATED:
        return GatewayAuthError(msg if details else "Authentication required")
    if code is C.DEADLINE_EXCEEDED:
        return TimeoutError("Request timed out")
    where = f" at {address}" if address else ""
    if code is C.UNAVAILABLE:
        return GatewayServerError(f"Gateway{where} unavailable: {msg}")
    if code is C.UNIMPLEMENTED:
        return GatewayServerError(
            f"Gateway{where} does not implement this call ({msg}); is it a Flotilla gateway?"
        )
    return GatewayServerError(msg)


def _parse_set_cookie(value: str) -> tuple[str, str, float | None] | None:
    """``(name, value, max_age)`` of a ``Set-Cookie`` header value (None if unusable)."""
    parts = [p.strip() for p in value.split(";")]
    name, sep, val = parts[0].partition("=")
    if not sep or not name.strip():
        return None
    max_age: float | None = None
    for attr in parts[1:]:
        key, _, arg = attr.partition("=")
        if key.strip().lower() == "max-age":
            try:
                max_age = float(arg.strip())
            except ValueError:
                pass
    return name.strip(), val.strip(), max_age


# ----------------------------------------------------------------------------------
# Gateway


class Gateway:
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
    """

    def __init__(
        self,
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        asynchronous: bool = False,
        loop: Any = None,
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
    def loop(self) -> Any:
        """The IOLoop the client runs on."""
        return self._loop_runner.loop

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

    def sync(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> Any:
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
            func(*args, **kwargs),  # type: ignore[arg-type]
            self.loop.asyncio_loop,
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

    def close(self) -> Any:
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

    def __enter__(self) -> Gateway:
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    async def __aenter__(self) -> Gateway:
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
        resp = await self._rpc(
            "ListClusters",
            registry_pb2.ListClustersRequest(
                statuses=[int(s) for s in statuses], all_users=all_users
            ),
        )
        return [self._report(c) for c in resp.clusters]

    def list_clusters(
        self,
        status: ClusterStatus | str | Iterable[ClusterStatus | str] | None = None,
        all_users: bool = False,
        **kwargs: Any,
    ) -> Any:
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
        resp = await self._rpc(
            "GetCluster",
            registry_pb2.GetClusterRequest(name=cluster_name, wait_seconds=wait_seconds),
            timeout=CALL_TIMEOUT_SECONDS + wait_seconds,
        )
        return self._report(resp.cluster)

    def get_cluster(self, cluster_name: str, **kwargs: Any) -> Any:
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
        resp = await self._rpc("GetOptions", registry_pb2.GetOptionsRequest())
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

    def cluster_options(self, use_local_defaults: bool = True, **kwargs: Any) -> Any:
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
        resp = await self._rpc(
            "CreateCluster", registry_pb2.CreateClusterRequest(options_json=options_json)
        )
        return str(resp.name)

    def submit(
        self, cluster_options: Options | Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Any:
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

    def wait_for_start(self, cluster_name: str, **kwargs: Any) -> Any:
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

    def connect(self, cluster_name: str, shutdown_on_close: bool = False) -> Any:
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

    def new_cluster(
        self,
        cluster_options: Options | Mapping[str, Any] | None = None,
        shutdown_on_close: bool = True,
        **kwargs: Any,
    ) -> Any:
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

    def stop_cluster(self, cluster_name: str, **kwargs: Any) -> Any:
        """Stop a cluster (idempotent).

        Parameters
        ----------
        cluster_name : str
            The cluster's name.
        """
        return self.sync(self._stop_cluster, cluster_name, **kwargs)

    @staticmethod
    def _warn_if_clamped(resp: Any) -> None:
        if not resp.ok and resp.message:
            warnings.warn(GatewayWarning(resp.message), stacklevel=3)

    async def _scale_cluster(self, cluster_name: str, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"Scale expects a non-negative integer, got {n}")
        resp = await self._rpc(
            "ScaleCluster", registry_pb2.ScaleClusterRequest(name=cluster_name, count=n)
        )
        self._warn_if_clamped(resp)

    def scale_cluster(self, cluster_name: str, n: int, **kwargs: Any) -> Any:
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
        resp = await self._rpc("AdaptCluster", req)
        self._warn_if_clamped(resp)

    def adapt_cluster(
        self,
        cluster_name: str,
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
        **kwargs: Any,
    ) -> Any:
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
        resp = await self._rpc(
            "GetClusterLogs",
            registry_pb2.GetClusterLogsRequest(name=cluster_name),
            timeout=CALL_TIMEOUT_SECONDS + LOGS_WAIT_SECONDS,
        )
        return {log.process: log.text for log in resp.logs}

    def get_cluster_logs(self, cluster_name: str, **kwargs: Any) -> Any:
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

    async def _usage(self, all_users: bool = False) -> list[dict[str, Any]]:
        resp = await self._rpc("GetUsage", registry_pb2.GetUsageRequest(all_users=all_users))
        out = []
        for u in resp.usage:
            quota = {
                key: getattr(u.quota, field) if u.quota.HasField(field) else None
                for key, field in (
                    ("max_clusters", "max_clusters"),
                    ("max_cores", "max_cores"),
                    ("max_memory", "max_memory_bytes"),
                    ("max_workers", "max_workers"),
                )
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

    def usage(self, all_users: bool = False, **kwargs: Any) -> Any:
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
        resp = await self._rpc("GetVersion", registry_pb2.GetVersionRequest())
        return {"server": {"version": resp.version}, "client": {"version": __version__}}

    def get_versions(self, **kwargs: Any) -> Any:
        """The server's and the client's versions.

        Returns
        -------
        versions : dict
            ``{"server": {"version": ...}, "client": {"version": ...}}``.
        """
        return self.sync(self._get_versions, **kwargs)


# ----------------------------------------------------------------------------------
# GatewayCluster


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


class GatewayCluster(Cluster):
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
    """

    _instances: ClassVar[weakref.WeakSet[GatewayCluster]] = weakref.WeakSet()

    def __init__(
        self,
        address: str | None = None,
        proxy_address: str | int | None = None,
        public_address: str | None = None,
        auth: GatewayAuth | str | None = None,
        cluster_options: Options | Mapping[str, Any] | None = None,
        shutdown_on_close: bool = True,
        asynchronous: bool = False,
        loop: Any = None,
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
        loop: Any = None,
    ) -> GatewayCluster:
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
        loop: Any = None,
        name: str | None = None,
    ) -> None:
        self.gateway = Gateway(
            address=address,
            proxy_address=proxy_address,
            public_address=public_address,
            auth=auth,
            asynchronous=asynchronous,
            loop=loop,
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
    def loop(self) -> Any:
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

    async def _start_internal(self) -> GatewayCluster:
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

    def __await__(self) -> Any:
        return self._start_internal().__await__()

    async def __aenter__(self) -> GatewayCluster:
        return await self._start_internal()

    async def __aexit__(self, *args: Any) -> None:
        await self._stop_internal()

    def __enter__(self) -> GatewayCluster:
        if self._asynchronous:
            raise TypeError("Used 'with' with an asynchronous GatewayCluster; use 'async with'")
        return self

    def __exit__(self, *args: Any) -> None:
        self.close()

    def close(  # type: ignore[override]
        self, shutdown: bool | None = None, timeout: float | None = None
    ) -> Any:
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

    def shutdown(self) -> Any:
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

    def scale(self, n: int, **kwargs: Any) -> Any:
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
        return self.sync(self.gateway._scale_cluster, self.name, n, **kwargs)

    def adapt(  # type: ignore[override]
        self,
        minimum: int | None = None,
        maximum: int | None = None,
        active: bool = True,
        **kwargs: Any,
    ) -> Any:
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
        return self.sync(
            self.gateway._adapt_cluster,
            self.name,
            minimum=minimum,
            maximum=maximum,
            active=active,
            **kwargs,
        )

    def get_logs(self, cluster: bool = True, scheduler: bool = True, workers: bool = True) -> Any:
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

        return self.sync(select)

    def report(self, **kwargs: Any) -> Any:
        """The gateway's current report on this cluster.

        Returns
        -------
        report : ClusterReport
        """
        return self.sync(self.gateway._cluster_report, self.name, **kwargs)
