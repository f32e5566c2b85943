"""Address inference, auth headers, status parsing and gRPC error mapping."""

from __future__ import annotations

import base64
import getpass
import subprocess
import sys
from typing import Any

import dask.config
import flotilla
import grpc
import grpc.aio
import pytest
from flotilla._rpc import _grpc_target, _parse_set_cookie
from flotilla.auth import BasicAuth, GatewayAuth, JupyterHubAuth, get_auth
from flotilla.client import ClusterStatus, map_rpc_error, resolve_addresses
from flotilla.errors import (
    GatewayAuthError,
    GatewayClusterError,
    GatewayError,
    GatewayLimitError,
    GatewayPermissionError,
    GatewayServerError,
)

# -- package -----------------------------------------------------------------------


def test_exported_names_are_pinned() -> None:
    assert flotilla.__all__ == [
        "BasicAuth",
        "ClusterReport",
        "ClusterStatus",
        "Gateway",
        "GatewayAuth",
        "GatewayAuthError",
        "GatewayCluster",
        "GatewayClusterError",
        "GatewayError",
        "GatewayLimitError",
        "GatewayPermissionError",
        "GatewaySecurity",
        "GatewayServerError",
        "GatewayWarning",
        "JupyterHubAuth",
        "Options",
        "__version__",
        "get_auth",
    ]
    for name in flotilla.__all__:
        assert getattr(flotilla, name) is not None
    with pytest.raises(AttributeError):
        _ = flotilla.NoSuchThing  # type: ignore[attr-defined]


def test_client_module_exports_are_pinned() -> None:
    # The code lives in private modules; flotilla.client is where it is imported from.
    import flotilla.client

    assert flotilla.client.__all__ == [
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
        "Quota",
        "UsageReport",
        "WorkerReport",
        "map_rpc_error",
        "resolve_addresses",
    ]
    for name in flotilla.client.__all__:
        assert getattr(flotilla.client, name) is not None
    for name in set(flotilla.__all__) & set(flotilla.client.__all__):
        assert getattr(flotilla, name) is getattr(flotilla.client, name)
    assert flotilla.client.CALL_TIMEOUT_SECONDS == 30.0
    assert flotilla.client.WAIT_SECONDS == 20.0
    assert flotilla.client.LOGS_WAIT_SECONDS == 30.0


def test_import_is_lazy_and_protos_share_the_namespace() -> None:
    code = (
        "import sys, flotilla, flotilla.registry.v1.registry_pb2;"
        "assert flotilla.GatewayError;"
        "bad = sorted(m for m in ('dask', 'distributed', 'grpc', 'flotilla.client') "
        "if m in sys.modules);"
        "assert not bad, bad;"
        "import flotilla.client, distributed.comm.registry as r;"
        "assert type(r.backends['gateway']).__module__ == 'flotilla.comm'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_config_defaults_registered() -> None:
    import flotilla.client  # noqa: F401

    assert dask.config.get("gateway.auth.type") == "basic"
    assert dask.config.get("gateway.cluster.options") == {}
    assert dask.config.get("gateway.http-client.proxy") is True
    assert dask.config.get("gateway.tls.ca-file") is None


def test_config_defaults_do_not_override_existing() -> None:
    from flotilla.config import _missing

    current = {"gateway": {"address": "x", "auth": {"type": "kerberos"}}}
    new = {"gateway": {"address": None, "auth": {"type": "basic", "kwargs": {}}, "tls": {}}}
    assert _missing(new, current) == {"gateway": {"auth": {"kwargs": {}}, "tls": {}}}


# -- addresses ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "proxy", "expected_proxy"),
    [
        ("http://gw.example:8000", None, "gateway://gw.example:8000"),
        ("http://gw.example", None, "gateway://gw.example:80"),
        ("https://gw.example", None, "gateway://gw.example:443"),
        ("https://gw.example/services/dask-gateway/", None, "gateway://gw.example:443"),
        ("http://gw.example:8000", 8786, "gateway://gw.example:8786"),
        ("http://gw.example:8000", "tls://other:9000", "gateway://other:9000"),
        ("http://gw.example:8000", "gateway://other:9000", "gateway://other:9000"),
        ("http://gw.example:8000", "other:9000", "gateway://other:9000"),
        ("http://[::1]:8000", None, "gateway://[::1]:8000"),
        ("http://[::1]:8000", 9000, "gateway://[::1]:9000"),
    ],
)
def test_proxy_address_inference(address: str, proxy: Any, expected_proxy: str) -> None:
    addr, proxy_address, public = resolve_addresses(address, proxy)
    assert addr == address.rstrip("/")
    assert public == addr
    assert proxy_address == expected_proxy


def test_addresses_from_config_templates(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GW_HOST", "hub.example")
    with dask.config.set(
        {
            "gateway.address": "https://{GW_HOST}/services/dask-gateway/",
            "gateway.proxy-address": "gateway://{GW_HOST}:8786",
            "gateway.public-address": "https://public.{GW_HOST}/dg/",
        }
    ):
        addr, proxy, public = resolve_addresses()
    assert addr == "https://hub.example/services/dask-gateway"
    assert proxy == "gateway://hub.example:8786"
    assert public == "https://public.hub.example/dg"


def test_explicit_public_address_and_port_proxy_from_config() -> None:
    with dask.config.set({"gateway.proxy-address": 8786}):
        _, proxy, public = resolve_addresses("http://h:1/", public_address="http://p/x/")
    assert proxy == "gateway://h:8786"
    assert public == "http://p/x"


def test_missing_address() -> None:
    with dask.config.set({"gateway.address": None}):
        with pytest.raises(ValueError, match="No dask-gateway address provided"):
            resolve_addresses()


def test_grpc_target() -> None:
    assert _grpc_target("http://127.0.0.1:8000") == ("127.0.0.1:8000", False)
    assert _grpc_target("https://gw.example/prefix") == ("gw.example:443", True)
    assert _grpc_target("http://gw.example") == ("gw.example:80", False)
    with pytest.raises(ValueError, match="must start with http"):
        _grpc_target("tls://gw.example:1")


# -- auth --------------------------------------------------------------------------


def test_basic_auth_header() -> None:
    auth = BasicAuth("alice", "s3cret")
    assert auth.metadata() == [
        ("authorization", "Basic " + base64.b64encode(b"alice:s3cret").decode())
    ]
    default = BasicAuth()
    assert default.username == getpass.getuser()
    assert default.password == ""
    assert (
        default.header() == "Basic " + base64.b64encode(f"{getpass.getuser()}:".encode()).decode()
    )
    # latin-1, like dask-gateway's client
    assert base64.b64decode(BasicAuth("jürgen", "").header().split()[1]) == "jürgen:".encode(
        "latin-1"
    )
    assert "s3cret" not in repr(auth)


class TokenAuth(GatewayAuth):
    def __init__(self, token: str = "") -> None:
        super().__init__()
        self.token = token

    def metadata(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")]


def test_jupyterhub_auth_sends_the_hub_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JUPYTERHUB_API_TOKEN", "from-env")
    assert get_auth("jupyterhub").metadata() == [("authorization", "jupyterhub from-env")]
    assert JupyterHubAuth("given").metadata() == [("authorization", "jupyterhub given")]
    monkeypatch.delenv("JUPYTERHUB_API_TOKEN")
    with pytest.raises(ValueError, match="JUPYTERHUB_API_TOKEN"):
        JupyterHubAuth()


def test_get_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(get_auth(), BasicAuth)
    assert isinstance(get_auth("basic"), BasicAuth)
    inst = BasicAuth("bob")
    assert get_auth(inst) is inst
    monkeypatch.setenv("MY_USER", "carol")
    with dask.config.set(
        {"gateway.auth.type": "basic", "gateway.auth.kwargs": {"username": "{MY_USER}"}}
    ):
        auth = get_auth()
    assert isinstance(auth, BasicAuth) and auth.username == "carol"
    path = f"{__name__}.TokenAuth"
    with dask.config.set({"gateway.auth.kwargs": {"token": "t0k"}}):
        token = get_auth(path)
    assert token.metadata() == [("authorization", "Bearer t0k")]
    with pytest.raises(ValueError, match="Unknown auth type 'nope'"):
        get_auth("nope")
    with pytest.raises(TypeError, match="GatewayAuth"):
        get_auth("collections.OrderedDict")


def test_set_cookie_parsing() -> None:
    assert _parse_set_cookie("s=abc; Max-Age=600; Path=/; HttpOnly") == ("s", "abc", 600.0)
    assert _parse_set_cookie("s=abc") == ("s", "abc", None)
    assert _parse_set_cookie("garbage") is None


# -- status and errors -------------------------------------------------------------


def test_cluster_status_parsing() -> None:
    assert ClusterStatus.from_name("running") is ClusterStatus.RUNNING
    assert ClusterStatus._create("STOPPED") is ClusterStatus.STOPPED
    assert ClusterStatus._create(5) is ClusterStatus.FAILED
    with pytest.raises(ValueError, match="'bogus' is not a valid ClusterStatus"):
        ClusterStatus._create("bogus")
    with pytest.raises(ValueError, match="0 is not a valid ClusterStatus"):
        ClusterStatus._create(0)


def _rpc_error(code: grpc.StatusCode, details: str) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details)


@pytest.mark.parametrize(
    ("code", "exc_type", "message"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, ValueError, "Unknown fields ['foo']"),
        (grpc.StatusCode.NOT_FOUND, ValueError, "Cluster x not found"),
        (grpc.StatusCode.FAILED_PRECONDITION, GatewayClusterError, "cluster x is not running"),
        (grpc.StatusCode.PERMISSION_DENIED, GatewayPermissionError, "User b lacks permissions"),
        (grpc.StatusCode.UNAUTHENTICATED, GatewayAuthError, "Authentication required"),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, GatewayLimitError, "Too many clusters"),
        (grpc.StatusCode.INTERNAL, GatewayServerError, "boom"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, TimeoutError, "Request timed out"),
    ],
)
def test_error_mapping(code: grpc.StatusCode, exc_type: type[Exception], message: str) -> None:
    exc = map_rpc_error(_rpc_error(code, message), "http://gw")
    assert type(exc) is exc_type
    assert str(exc) == message


def test_error_mapping_unavailable_names_the_gateway() -> None:
    exc = map_rpc_error(
        _rpc_error(grpc.StatusCode.UNAVAILABLE, "connection refused"), "http://gw:1"
    )
    assert isinstance(exc, GatewayServerError)
    assert "http://gw:1" in str(exc) and "connection refused" in str(exc)


def test_error_hierarchy() -> None:
    assert issubclass(GatewayPermissionError, PermissionError)
    assert issubclass(GatewayLimitError, ValueError)
    for cls in (GatewayPermissionError, GatewayAuthError, GatewayClusterError, GatewayServerError):
        assert issubclass(cls, GatewayError)
