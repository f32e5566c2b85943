"""The ``gateway://`` comm against a real TLS scheduler behind an SNI-checking relay."""

from __future__ import annotations

import operator
import ssl
from typing import TYPE_CHECKING

import pytest
from distributed import Client
from distributed.comm import connect
from distributed.comm.registry import backends, get_backend
from flotilla.comm import GatewayBackend, parse_gateway_address
from flotilla.security import GatewaySecurity

if TYPE_CHECKING:
    from .conftest import SNIRelay, TLSCluster

pytestmark = pytest.mark.timeout(60)


def test_parse_gateway_address() -> None:
    assert parse_gateway_address("gateway://h:1/abc") == ("h", 1, "abc")
    assert parse_gateway_address("h:1/ns.abc") == ("h", 1, "ns.abc")
    assert parse_gateway_address("[::1]:1/abc") == ("::1", 1, "abc")
    with pytest.raises(ValueError, match="missing path component"):
        parse_gateway_address("gateway://h:1")


def test_backend_registered_and_address_helpers() -> None:
    import flotilla.client  # noqa: F401

    backend = get_backend("gateway")
    assert isinstance(backend, GatewayBackend)
    assert backends["gateway"] is backend
    assert backend.get_address_host("127.0.0.1:5/abc") == "127.0.0.1"
    assert backend.get_address_host_port("127.0.0.1:5/abc") == ("127.0.0.1", 5)
    assert backend.resolve_address("127.0.0.1:5/abc") == "127.0.0.1:5/abc"
    assert backend.get_local_address_for("127.0.0.1:5/abc").endswith(":5/abc")
    with pytest.raises(NotImplementedError):
        backend.get_listener("x", None, True)


def test_security_context(tls_cluster: TLSCluster) -> None:
    sec = GatewaySecurity(tls_key=tls_cluster.key, tls_cert=tls_cluster.cert)
    args = sec.get_connection_args("client")
    ctx = args["ssl_context"]
    assert args["require_encryption"] is True
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is False
    assert len(ctx.get_ca_certs()) == 1
    assert sec.get_connection_args("worker")["ssl_context"] is ctx
    assert repr(sec) == "GatewaySecurity<...>"


async def test_connect_requires_ssl_context(sni_relay: SNIRelay) -> None:
    with pytest.raises(TypeError, match="Gateway expects a `ssl_context`"):
        await connect(f"gateway://{sni_relay.address}/abc", timeout=5)


def test_client_through_sni_relay(tls_cluster: TLSCluster, sni_relay: SNIRelay) -> None:
    name = "ns.comm-test"
    sni_relay.routes[name] = tls_cluster.scheduler_address.removeprefix("tls://")
    sec = GatewaySecurity(tls_key=tls_cluster.key, tls_cert=tls_cluster.cert)
    before = len(sni_relay.seen)
    with Client(f"gateway://{sni_relay.address}/{name}", security=sec, timeout=20) as client:
        assert client.submit(operator.mul, 6, 7).result(timeout=20) == 42
        assert sum(client.gather(client.map(operator.neg, range(10)))) == -45
        info = client.scheduler_info()
        assert len(info["workers"]) == 1
    seen = sni_relay.seen[before:]
    assert seen and set(seen) == {f"daskgateway-{name}"}


async def test_unknown_cluster_connection_is_closed(
    tls_cluster: TLSCluster, sni_relay: SNIRelay
) -> None:
    sec = GatewaySecurity(tls_key=tls_cluster.key, tls_cert=tls_cluster.cert)
    with pytest.raises(OSError):
        await connect(
            f"gateway://{sni_relay.address}/not-routed",
            timeout=1,
            **sec.get_connection_args("client"),
        )
    assert "daskgateway-not-routed" in sni_relay.rejected


def test_interop_with_dask_gateway_comm(
    tls_cluster: TLSCluster, sni_relay: SNIRelay, monkeypatch: pytest.MonkeyPatch
) -> None:
    """dask-gateway registers the same backend name; either registration must work."""
    import importlib

    import flotilla.comm

    monkeypatch.setitem(backends, "gateway", backends["gateway"])  # restored afterwards
    dg_comm = pytest.importorskip("dask_gateway.comm")
    dg_comm = importlib.reload(dg_comm)  # registers dask-gateway's backend over ours
    dg_security = pytest.importorskip("dask_gateway.client").GatewaySecurity
    name = "interop"
    sni_relay.routes[name] = tls_cluster.scheduler_address.removeprefix("tls://")
    address = f"gateway://{sni_relay.address}/{name}"
    ours = GatewaySecurity(tls_key=tls_cluster.key, tls_cert=tls_cluster.cert)
    theirs = dg_security(tls_key=tls_cluster.key, tls_cert=tls_cluster.cert)
    for register in (lambda: None, flotilla.comm.register):
        register()
        for sec in (ours, theirs):
            with Client(address, security=sec, timeout=20) as client:
                assert client.submit(operator.add, 2, 3).result(timeout=20) == 5
    assert type(backends["gateway"]).__module__ == "flotilla.comm"


async def test_connection_closed_before_tls_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A connection the gateway closes between accept and handshake (a restarting Envoy)
    is a comm error distributed retries (OSError), never tornado's ValueError."""
    import socket

    from flotilla.comm import GatewayConnector
    from tornado.iostream import IOStream

    class ClosingTCPClient:
        async def connect(self, host: str, port: int, **kwargs: object) -> IOStream:
            ours, theirs = socket.socketpair()
            theirs.close()
            stream = IOStream(ours)
            stream.close()  # as tornado does once it notices the peer is gone
            return stream

    monkeypatch.setattr(GatewayConnector, "client", ClosingTCPClient())
    ctx = ssl.create_default_context()
    with pytest.raises(OSError, match="closed"):
        await GatewayConnector().connect("127.0.0.1:1/abc", ssl_context=ctx)
