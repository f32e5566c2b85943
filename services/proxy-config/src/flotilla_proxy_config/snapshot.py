"""Immutable, versioned snapshots of Envoy's dynamic configuration.

A snapshot holds every xDS resource proxy-config serves, keyed by type URL and name, each
with a version that is a hash of its serialized content. It is built from the shared
addresses (``Deployment``), ``ProxyConfig`` and the registry's routes.

Building is incremental: a change of k routes costs O(k), not O(all routes), whether it
is 10 or 10,000 clusters, and each snapshot says what it changed, so the xDS server's
work per change is O(k) too. Only clusters depend on routes: the listener and the route
configuration never change, so Envoy never reloads a route table per Dask cluster.

Layout (see docs/internals.md, "Routes"):

- LDS: one listener ``public`` whose filter chains are selected by a fixed
  ``filter_chain_matcher``: TLS with an SNI starting with ``daskgateway-`` is passed
  through to cluster ``sni_<sni>`` (chosen from the SNI through filter state), other TLS
  is closed, everything else is HTTP. The listener depends only on configuration, never
  on routes, so adding or removing Dask clusters never drains a connection.
- CDS: ``flotilla_auth``, ``registry_http``, ``registry_grpc`` and, per route,
  ``sni_daskgateway-<name>`` and ``dash_<name>``.
- RDS: ``http_routes``, the same for any set of Dask clusters: the public gRPC service,
  the REST API (a request with the session cookie and no credentials straight to the
  registry, which checks the cookie; any other through auth), ``/clusters/<name>`` →
  ``/clusters/<name>/``, ``/clusters/<name>/...`` → cluster ``dash_<name>`` with the
  prefix stripped (a few lines of Lua name the cluster from the path, as the SNI does
  for schedulers), else 404. ext_authz and Lua are off by default and switched on by
  the routes that need them.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from envoy.config.accesslog.v3 import accesslog_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.core.v3 import (
    address_pb2,
    base_pb2,
    config_source_pb2,
    grpc_service_pb2,
    protocol_pb2,
    substitution_format_string_pb2,
)
from envoy.config.endpoint.v3 import endpoint_components_pb2, endpoint_pb2
from envoy.config.listener.v3 import listener_components_pb2, listener_pb2
from envoy.config.route.v3 import route_components_pb2, route_pb2
from envoy.extensions.access_loggers.filters.cel.v3 import cel_pb2
from envoy.extensions.filters.common.set_filter_state.v3 import value_pb2
from envoy.extensions.filters.http.ext_authz.v3 import ext_authz_pb2
from envoy.extensions.filters.http.lua.v3 import lua_pb2
from envoy.extensions.filters.http.router.v3 import router_pb2
from envoy.extensions.filters.listener.tls_inspector.v3 import tls_inspector_pb2
from envoy.extensions.filters.network.direct_response.v3 import config_pb2 as direct_response_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.set_filter_state.v3 import set_filter_state_pb2
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.matching.common_inputs.network.v3 import network_inputs_pb2
from envoy.extensions.upstreams.http.v3 import http_protocol_options_pb2
from envoy.type.matcher.v3 import regex_pb2, string_pb2
from envoy.type.v3 import http_status_pb2
from flotilla_common import SNI_PREFIX
from flotilla_common.config import Deployment
from flotilla_common.identity import IDENTITY_HEADER
from flotilla_common.sessions import DEFAULT_COOKIE_NAME
from google.protobuf import any_pb2, duration_pb2, message, wrappers_pb2
from xds.core.v3 import extension_pb2 as xds_extension_pb2
from xds.type.matcher.v3 import matcher_pb2

from .config import ProxyConfig

__all__ = [
    "AUTH_CLUSTER",
    "CLUSTER_TYPE",
    "LISTENER_NAME",
    "LISTENER_TYPE",
    "REGISTRY_GRPC_CLUSTER",
    "REGISTRY_GRPC_PREFIX",
    "REGISTRY_HTTP_CLUSTER",
    "ROUTE_CONFIG_NAME",
    "ROUTE_TYPE",
    "Resource",
    "Route",
    "Snapshot",
    "SnapshotBuilder",
    "build_route_configuration",
    "build_snapshot",
    "dashboard_cluster_name",
    "parse_address",
    "sni_cluster_name",
    "socket_address",
    "upstream_cluster",
]

LISTENER_TYPE = "type.googleapis.com/envoy.config.listener.v3.Listener"
CLUSTER_TYPE = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
ROUTE_TYPE = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"

LISTENER_NAME = "public"
ROUTE_CONFIG_NAME = "http_routes"
AUTH_CLUSTER = "flotilla_auth"
REGISTRY_HTTP_CLUSTER = "registry_http"
REGISTRY_GRPC_CLUSTER = "registry_grpc"
REGISTRY_GRPC_PREFIX = "/flotilla.registry.v1.RegistryService/"

CHAIN_PASSTHROUGH = "tls-passthrough"
CHAIN_HTTP = "plain-http"
CHAIN_TLS_REJECT = "tls-reject"
# tcp_proxy needs a cluster even though filter state always overrides it; this one never
# exists, so a connection whose SNI names no cluster is reset.
NO_ROUTE_CLUSTER = "flotilla_no_route"
EXT_AUTHZ_FILTER = "envoy.filters.http.ext_authz"

# dask-gateway cluster names: lower-case hex, optionally "<namespace>.<hex>". Envoy
# lower-cases the SNI, so upper case could never match anyway.
_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,200}[a-z0-9])?$")

# Envoy's own answers, as dask-gateway's JSON errors. 4xx: requests Envoy refuses before
# any service sees them (a NUL in the path, oversized headers, a path with no route).
# Auth's denials (any status, its own JSON body) pass unchanged: see _local_reply_config.
_LOCAL_REPLY_ERRORS = {
    400: "Bad Request",
    404: "Not Found",
    413: "Payload Too Large",
    414: "URI Too Long",
    431: "Request Header Fields Too Large",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
LUA_FILTER = "envoy.filters.http.lua"
#: Request header naming the dashboard cluster (set by the Lua below, never by a client).
DASHBOARD_HEADER = "x-flotilla-dashboard"
_DASHBOARD_LUA = "dashboard"
# /clusters/<name>/... → DASHBOARD_HEADER: dash_<name>. Cluster names never contain "/"
# or "?"; whatever a client sent in that header is replaced or removed.
_DASHBOARD_LUA_SOURCE = f"""
function envoy_on_request(handle)
  local headers = handle:headers()
  local name = string.match(headers:get(":path"), "^/clusters/([^/?]+)/")
  if name then
    headers:replace("{DASHBOARD_HEADER}", "dash_" .. name)
  else
    headers:remove("{DASHBOARD_HEADER}")
  end
  handle:clearRouteCache()
end
"""


@dataclass(frozen=True, order=True)
class Route:
    """One RUNNING Dask cluster as the registry reports it."""

    name: str
    scheduler_address: str
    dashboard_address: str = ""

    def validate(self) -> None:
        """Raise ValueError unless Envoy can be configured for this route."""
        if not _NAME_RE.match(self.name):
            raise ValueError(f"invalid cluster name {self.name!r}")
        parse_address(self.scheduler_address)
        if self.dashboard_address:
            parse_address(self.dashboard_address)


@dataclass(frozen=True)
class Resource:
    """One xDS resource: its name, content-hash version and packed body."""

    name: str
    version: str
    body: any_pb2.Any

    @classmethod
    def of(cls, name: str, msg: message.Message) -> Resource:
        body = any_pb2.Any()
        body.Pack(msg, deterministic=True)
        return cls(name=name, version=_content_hash(body.value), body=body)


@dataclass(frozen=True)
class Snapshot:
    """Every resource of one configuration, by type URL then name.

    ``complete`` is False for a snapshot built before the registry's first full route
    set arrived: it holds only the static part, and a server must not use it to remove
    resources Envoy already has.
    """

    version: str
    resources: Mapping[str, Mapping[str, Resource]]
    routes: Mapping[str, Route]
    complete: bool
    #: The version of the snapshot this one was made from, and, per type URL, the names
    #: whose resource differs from it (added, changed or removed). A server that has
    #: brought a stream up to ``parent`` needs to look at these names only.
    parent: str | None = None
    changed: Mapping[str, frozenset[str]] = field(default_factory=dict)

    def of_type(self, type_url: str) -> Mapping[str, Resource]:
        return self.resources.get(type_url, MappingProxyType({}))


def sni_cluster_name(name: str) -> str:
    """The cluster Envoy's tcp_proxy picks for SNI ``daskgateway-<name>``."""
    return f"sni_{SNI_PREFIX}{name}"


def dashboard_cluster_name(name: str) -> str:
    return f"dash_{name}"


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` too); ValueError when malformed."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"not a host:port address: {address!r}")
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if ":" in host:
        ipaddress.IPv6Address(host)  # raises ValueError
    return host, port


def _content_hash(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


def _any(msg: message.Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(msg, deterministic=True)
    return packed


def _duration(seconds: float) -> duration_pb2.Duration:
    d = duration_pb2.Duration()
    d.FromNanoseconds(round(seconds * 1e9))
    return d


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _connect_host(host: str) -> str:
    """A wildcard bind address is reached through the loopback interface."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)


def socket_address(host: str, port: int) -> address_pb2.Address:
    return address_pb2.Address(
        socket_address=address_pb2.SocketAddress(address=host, port_value=port)
    )


def _http2_options() -> dict[str, any_pb2.Any]:
    options = http_protocol_options_pb2.HttpProtocolOptions(
        explicit_http_config=http_protocol_options_pb2.HttpProtocolOptions.ExplicitHttpConfig(
            http2_protocol_options=protocol_pb2.Http2ProtocolOptions(
                connection_keepalive=protocol_pb2.KeepaliveSettings(
                    interval=_duration(30), timeout=_duration(5)
                )
            )
        )
    )
    return {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": _any(options)}


def upstream_cluster(
    name: str, address: str, *, connect_timeout: float, http2: bool = False
) -> cluster_pb2.Cluster:
    """A cluster with one endpoint: STATIC for an IP address, STRICT_DNS for a host name."""
    host, port = parse_address(address)
    host = _connect_host(host)
    cluster = cluster_pb2.Cluster(
        name=name,
        type=cluster_pb2.Cluster.STATIC if _is_ip(host) else cluster_pb2.Cluster.STRICT_DNS,
        connect_timeout=_duration(connect_timeout),
        load_assignment=endpoint_pb2.ClusterLoadAssignment(
            cluster_name=name,
            endpoints=[
                endpoint_components_pb2.LocalityLbEndpoints(
                    lb_endpoints=[
                        endpoint_components_pb2.LbEndpoint(
                            endpoint=endpoint_components_pb2.Endpoint(
                                address=socket_address(host, port)
                            )
                        )
                    ]
                )
            ],
        ),
    )
    if http2:
        for key, value in _http2_options().items():
            cluster.typed_extension_protocol_options[key].CopyFrom(value)
    return cluster


def _chain_action(chain: str) -> matcher_pb2.Matcher.OnMatch:
    return matcher_pb2.Matcher.OnMatch(
        action=xds_extension_pb2.TypedExtensionConfig(
            name=chain, typed_config=_any(wrappers_pb2.StringValue(value=chain))
        )
    )


def _chain_matcher() -> matcher_pb2.Matcher:
    """TLS + SNI ``daskgateway-*`` → passthrough; other TLS → reject; else → HTTP."""
    Matcher = matcher_pb2.Matcher
    sni_matcher = Matcher(
        matcher_tree=Matcher.MatcherTree(
            input=xds_extension_pb2.TypedExtensionConfig(
                name="sni", typed_config=_any(network_inputs_pb2.ServerNameInput())
            ),
            prefix_match_map=Matcher.MatcherTree.MatchMap(
                map={SNI_PREFIX: _chain_action(CHAIN_PASSTHROUGH)}
            ),
        ),
        on_no_match=_chain_action(CHAIN_TLS_REJECT),
    )
    return Matcher(
        matcher_tree=Matcher.MatcherTree(
            input=xds_extension_pb2.TypedExtensionConfig(
                name="transport",
                typed_config=_any(network_inputs_pb2.TransportProtocolInput()),
            ),
            exact_match_map=Matcher.MatcherTree.MatchMap(
                map={"tls": Matcher.OnMatch(matcher=sni_matcher)}
            ),
        ),
        on_no_match=_chain_action(CHAIN_HTTP),
    )


def _passthrough_chain(config: ProxyConfig) -> listener_components_pb2.FilterChain:
    set_state = set_filter_state_pb2.Config(
        on_new_connection=[
            value_pb2.FilterStateValue(
                object_key="envoy.tcp_proxy.cluster",
                format_string=substitution_format_string_pb2.SubstitutionFormatString(
                    text_format_source=base_pb2.DataSource(
                        inline_string="sni_%REQUESTED_SERVER_NAME%"
                    )
                ),
            )
        ]
    )
    tcp_proxy = tcp_proxy_pb2.TcpProxy(
        stat_prefix="sni",
        cluster=NO_ROUTE_CLUSTER,
        idle_timeout=_duration(config.tcp_idle_timeout),
    )
    return listener_components_pb2.FilterChain(
        name=CHAIN_PASSTHROUGH,
        filters=[
            listener_components_pb2.Filter(
                name="envoy.filters.network.set_filter_state", typed_config=_any(set_state)
            ),
            listener_components_pb2.Filter(
                name="envoy.filters.network.tcp_proxy", typed_config=_any(tcp_proxy)
            ),
        ],
    )


def _reject_chain() -> listener_components_pb2.FilterChain:
    # No public HTTPS yet: TLS for anything but a scheduler is closed at once.
    return listener_components_pb2.FilterChain(
        name=CHAIN_TLS_REJECT,
        filters=[
            listener_components_pb2.Filter(
                name="envoy.filters.network.direct_response",
                typed_config=_any(direct_response_pb2.Config()),
            )
        ],
    )


def _local_reply_config() -> hcm_pb2.LocalReplyConfig:
    """Envoy's own answers (upstream down, auth down, malformed requests) get a JSON body.

    A denial from auth is a local reply too (with auth's own JSON body): the first
    mapper matches it and keeps that body, so the status mappers never see it (auth's
    "JupyterHub is unavailable" stays that, not "Service Unavailable"). Auth being down
    is ``ext_authz_error``, which the status mappers do see.
    """
    denied = cel_pb2.ExpressionFilter(expression="response.code_details == 'ext_authz_denied'")
    mappers = [
        hcm_pb2.ResponseMapper(
            filter=accesslog_pb2.AccessLogFilter(
                extension_filter=accesslog_pb2.ExtensionFilter(
                    name="envoy.access_loggers.extension_filters.cel", typed_config=_any(denied)
                )
            ),
            body_format_override=substitution_format_string_pb2.SubstitutionFormatString(
                text_format_source=base_pb2.DataSource(inline_string="%LOCAL_REPLY_BODY%"),
                content_type="application/json",
            ),
        )
    ]
    for status, text in sorted(_LOCAL_REPLY_ERRORS.items()):
        mappers.append(
            hcm_pb2.ResponseMapper(
                filter=accesslog_pb2.AccessLogFilter(
                    status_code_filter=accesslog_pb2.StatusCodeFilter(
                        comparison=accesslog_pb2.ComparisonFilter(
                            op=accesslog_pb2.ComparisonFilter.EQ,
                            value=base_pb2.RuntimeUInt32(
                                default_value=status,
                                runtime_key=f"flotilla.local_reply.{status}",
                            ),
                        )
                    )
                ),
                body_format_override=substitution_format_string_pb2.SubstitutionFormatString(
                    text_format_source=base_pb2.DataSource(
                        inline_string=json.dumps({"error": text})
                    ),
                    content_type="application/json",
                ),
            )
        )
    return hcm_pb2.LocalReplyConfig(mappers=mappers)


def _http_chain(config: ProxyConfig) -> listener_components_pb2.FilterChain:
    ext_authz = ext_authz_pb2.ExtAuthz(
        grpc_service=grpc_service_pb2.GrpcService(
            envoy_grpc=grpc_service_pb2.GrpcService.EnvoyGrpc(cluster_name=AUTH_CLUSTER),
            timeout=_duration(config.auth_timeout),
        ),
        transport_api_version=config_source_pb2.V3,
        failure_mode_allow=False,
        status_on_error=http_status_pb2.HttpStatus(code=http_status_pb2.ServiceUnavailable),
    )
    hcm = hcm_pb2.HttpConnectionManager(
        stat_prefix="http",
        codec_type=hcm_pb2.HttpConnectionManager.AUTO,
        rds=hcm_pb2.Rds(
            config_source=config_source_pb2.ConfigSource(
                ads=config_source_pb2.AggregatedConfigSource(),
                resource_api_version=config_source_pb2.V3,
            ),
            route_config_name=ROUTE_CONFIG_NAME,
        ),
        upgrade_configs=[hcm_pb2.HttpConnectionManager.UpgradeConfig(upgrade_type="websocket")],
        http_filters=[
            # Off unless a route turns it on: the dashboards' route (_with_lua).
            hcm_pb2.HttpFilter(
                name=LUA_FILTER,
                typed_config=_any(
                    lua_pb2.Lua(
                        source_codes={
                            _DASHBOARD_LUA: base_pb2.DataSource(inline_string=_DASHBOARD_LUA_SOURCE)
                        }
                    )
                ),
                disabled=True,
            ),
            # Off unless a route turns it on (_with_authz): the API and gRPC routes do.
            hcm_pb2.HttpFilter(name=EXT_AUTHZ_FILTER, typed_config=_any(ext_authz), disabled=True),
            hcm_pb2.HttpFilter(
                name="envoy.filters.http.router", typed_config=_any(router_pb2.Router())
            ),
        ],
        use_remote_address=wrappers_pb2.BoolValue(value=True),
        normalize_path=wrappers_pb2.BoolValue(value=True),
        merge_slashes=True,
        local_reply_config=_local_reply_config(),
    )
    return listener_components_pb2.FilterChain(
        name=CHAIN_HTTP,
        filters=[
            listener_components_pb2.Filter(
                name="envoy.filters.network.http_connection_manager", typed_config=_any(hcm)
            )
        ],
    )


def build_listener(deployment: Deployment, config: ProxyConfig) -> listener_pb2.Listener:
    """The one public listener. Depends only on configuration, never on routes."""
    return listener_pb2.Listener(
        name=LISTENER_NAME,
        address=socket_address(deployment.public_host, deployment.public_port),
        listener_filters=[
            listener_components_pb2.ListenerFilter(
                name="envoy.filters.listener.tls_inspector",
                typed_config=_any(tls_inspector_pb2.TlsInspector()),
            )
        ],
        filter_chains=[_passthrough_chain(config), _http_chain(config), _reject_chain()],
        filter_chain_matcher=_chain_matcher(),
    )


def _with_authz() -> dict[str, any_pb2.Any]:
    """Per-route switch turning on ext_authz, which is off by default (see ``_http_chain``)."""
    enabled = ext_authz_pb2.ExtAuthzPerRoute(check_settings=ext_authz_pb2.CheckSettings())
    return {
        EXT_AUTHZ_FILTER: _any(
            route_components_pb2.FilterConfig(config=_any(enabled), disabled=False)
        )
    }


def _with_lua() -> dict[str, any_pb2.Any]:
    """Per-route switch turning on the dashboard Lua, which is off by default."""
    return {
        LUA_FILTER: _any(
            route_components_pb2.FilterConfig(
                config=_any(lua_pb2.LuaPerRoute(name=_DASHBOARD_LUA)), disabled=False
            )
        )
    }


def _dashboard_routes() -> list[route_components_pb2.Route]:
    """Every cluster's dashboard, in two routes whatever the number of clusters."""
    return [
        # /clusters/<name> → /clusters/<name>/
        route_components_pb2.Route(
            name="dash-redirect",
            match=route_components_pb2.RouteMatch(
                safe_regex=regex_pb2.RegexMatcher(regex=r"/clusters/[^/]+")
            ),
            redirect=route_components_pb2.RedirectAction(
                regex_rewrite=regex_pb2.RegexMatchAndSubstitute(
                    pattern=regex_pb2.RegexMatcher(regex=r"^(/clusters/[^/]+)$"),
                    substitution=r"\1/",
                ),
                response_code=route_components_pb2.RedirectAction.FOUND,
            ),
        ),
        # /clusters/<name>/... → cluster dash_<name> (named by the Lua), prefix stripped;
        # no such cluster → 404.
        route_components_pb2.Route(
            name="dashboards",
            match=route_components_pb2.RouteMatch(prefix="/clusters/"),
            route=route_components_pb2.RouteAction(
                cluster_header=DASHBOARD_HEADER,
                cluster_not_found_response_code=route_components_pb2.RouteAction.NOT_FOUND,
                regex_rewrite=regex_pb2.RegexMatchAndSubstitute(
                    pattern=regex_pb2.RegexMatcher(regex=r"^/clusters/[^/]+"),
                    substitution="",
                ),
                timeout=_duration(0),
            ),
            request_headers_to_remove=[DASHBOARD_HEADER],
            typed_per_filter_config=_with_lua(),
        ),
    ]


def _session_route(config: ProxyConfig, session_cookie: str) -> route_components_pb2.Route:
    """API requests that carry a session cookie and no credentials go straight to the
    registry, which checks the cookie: no round trip to auth for every call of a
    logged-in client. Anything else on /api/ goes through auth (``registry-api``)."""
    return route_components_pb2.Route(
        name="registry-api-session",
        match=route_components_pb2.RouteMatch(
            prefix="/api/",
            headers=[
                route_components_pb2.HeaderMatcher(
                    name="cookie",
                    string_match=string_pb2.StringMatcher(contains=f"{session_cookie}="),
                ),
                route_components_pb2.HeaderMatcher(
                    name="authorization", present_match=True, invert_match=True
                ),
            ],
        ),
        route=route_components_pb2.RouteAction(
            cluster=REGISTRY_HTTP_CLUSTER, timeout=_duration(config.api_timeout)
        ),
        # Only auth may set an identity; here nobody does (ext_authz strips it elsewhere).
        request_headers_to_remove=[IDENTITY_HEADER],
    )


def _registry_route(
    name: str, match: dict[str, str], timeout: float, *, authz: bool = True
) -> route_components_pb2.Route:
    """A route to the registry's HTTP server: through auth (``authz``), else with any
    identity header a client sent removed (only auth may set one)."""
    return route_components_pb2.Route(
        name=name,
        match=route_components_pb2.RouteMatch(**match),
        route=route_components_pb2.RouteAction(
            cluster=REGISTRY_HTTP_CLUSTER, timeout=_duration(timeout)
        ),
        typed_per_filter_config=_with_authz() if authz else {},
        request_headers_to_remove=[] if authz else [IDENTITY_HEADER],
    )


def _static_routes(
    config: ProxyConfig, session_cookie: str = DEFAULT_COOKIE_NAME
) -> list[route_components_pb2.Route]:
    return [
        route_components_pb2.Route(
            name="registry-grpc",
            match=route_components_pb2.RouteMatch(
                prefix=REGISTRY_GRPC_PREFIX,
                grpc=route_components_pb2.RouteMatch.GrpcRouteMatchOptions(),
            ),
            route=route_components_pb2.RouteAction(
                cluster=REGISTRY_GRPC_CLUSTER,
                timeout=_duration(0),
                # Honour the caller's grpc-timeout (deadline), uncapped.
                max_stream_duration=route_components_pb2.RouteAction.MaxStreamDuration(
                    grpc_timeout_header_max=_duration(0)
                ),
            ),
            typed_per_filter_config=_with_authz(),
        ),
        # The web page's sign-in always asks auth (a session cookie may have expired,
        # and Kerberos answers auth's challenge), and so do the steps of a sign-in
        # through an identity provider under /api/v1/login/ (auth answers those itself);
        # the event stream has no deadline.
        _registry_route(
            "registry-login", {"path_separated_prefix": "/api/v1/login"}, config.api_timeout
        ),
        _registry_route("registry-events", {"path": "/api/v1/events"}, 0),
        _session_route(config, session_cookie),
        _registry_route("registry-api", {"prefix": "/api/"}, config.api_timeout),
        *_dashboard_routes(),
        # The web page and its files: public (they hold no data; the page's API calls
        # are authenticated like any other).
        _registry_route("web-page", {"path": "/"}, config.api_timeout, authz=False),
        _registry_route("web-files", {"prefix": "/ui/"}, config.api_timeout, authz=False),
        route_components_pb2.Route(
            name="not-found",
            match=route_components_pb2.RouteMatch(prefix="/"),
            direct_response=route_components_pb2.DirectResponseAction(
                status=404,
                body=base_pb2.DataSource(inline_string=json.dumps({"error": "Not Found"})),
            ),
            response_headers_to_add=[
                base_pb2.HeaderValueOption(
                    header=base_pb2.HeaderValue(key="content-type", value="application/json"),
                    append_action=base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD,
                )
            ],
        ),
    ]


def build_route_configuration(
    config: ProxyConfig, session_cookie: str = DEFAULT_COOKIE_NAME
) -> route_pb2.RouteConfiguration:
    """The one route configuration: it depends on configuration only, never on routes."""
    return route_pb2.RouteConfiguration(
        name=ROUTE_CONFIG_NAME,
        virtual_hosts=[
            route_components_pb2.VirtualHost(
                name="all", domains=["*"], routes=_static_routes(config, session_cookie)
            )
        ],
    )


def _xor_hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\0".join(parts).encode()).digest()[:16], "big")


class SnapshotBuilder:
    """Builds snapshots for one configuration, incrementally.

    It holds the current routes and the clusters derived from them; :meth:`apply`
    changes some routes and returns the next snapshot in O(changed). Versions are
    content hashes: of each resource's bytes, and, for the whole snapshot, an XOR of
    its resources' (type, name, version), updated as resources change, so equal
    content gives equal versions in any proxy-config process.
    """

    def __init__(
        self,
        deployment: Deployment,
        config: ProxyConfig,
        session_cookie: str = DEFAULT_COOKIE_NAME,
    ) -> None:
        """``session_cookie``: the name of auth's session cookie (``c.Auth.cookie_name``)."""
        self._config = config
        self._listener = Resource.of(LISTENER_NAME, build_listener(deployment, config))
        timeout = config.connect_timeout
        self._static_clusters = {
            r.name: r
            for r in (
                Resource.of(
                    AUTH_CLUSTER,
                    upstream_cluster(
                        AUTH_CLUSTER,
                        deployment.auth_grpc_address,
                        connect_timeout=timeout,
                        http2=True,
                    ),
                ),
                Resource.of(
                    REGISTRY_HTTP_CLUSTER,
                    upstream_cluster(
                        REGISTRY_HTTP_CLUSTER,
                        deployment.registry_http_address,
                        connect_timeout=timeout,
                    ),
                ),
                Resource.of(
                    REGISTRY_GRPC_CLUSTER,
                    upstream_cluster(
                        REGISTRY_GRPC_CLUSTER,
                        deployment.registry_grpc_address,
                        connect_timeout=timeout,
                        http2=True,
                    ),
                ),
            )
        }
        self._route_config = Resource.of(
            ROUTE_CONFIG_NAME, build_route_configuration(config, session_cookie)
        )
        self._routes: dict[str, Route] = {}
        self._clusters: dict[str, Resource] = dict(self._static_clusters)
        self._route_clusters: dict[str, tuple[Resource, ...]] = {}
        self._xor = 0
        for resource in self._clusters.values():
            self._xor ^= _xor_hash(CLUSTER_TYPE, resource.name, resource.version)
        self._xor ^= _xor_hash(LISTENER_TYPE, LISTENER_NAME, self._listener.version)
        self._xor ^= _xor_hash(ROUTE_TYPE, ROUTE_CONFIG_NAME, self._route_config.version)
        self._last: Snapshot | None = None

    # -- resources of one route -----------------------------------------------------------

    def _clusters_for(self, route: Route) -> tuple[Resource, ...]:
        timeout = self._config.connect_timeout
        sni = sni_cluster_name(route.name)
        built = [
            Resource.of(
                sni, upstream_cluster(sni, route.scheduler_address, connect_timeout=timeout)
            )
        ]
        if route.dashboard_address:
            dash = dashboard_cluster_name(route.name)
            built.append(
                Resource.of(
                    dash,
                    upstream_cluster(dash, route.dashboard_address, connect_timeout=timeout),
                )
            )
        return tuple(built)

    def _set_cluster(self, name: str, resource: Resource | None) -> bool:
        old = self._clusters.get(name)
        if old is not None and resource is not None and old.version == resource.version:
            return False
        if old is not None:
            self._xor ^= _xor_hash(CLUSTER_TYPE, name, old.version)
            del self._clusters[name]
        if resource is not None:
            self._xor ^= _xor_hash(CLUSTER_TYPE, name, resource.version)
            self._clusters[name] = resource
        return old is not None or resource is not None

    # -- snapshots --------------------------------------------------------------------------

    def apply(
        self, upserts: Iterable[Route] = (), removed: Iterable[str] = (), *, complete: bool = True
    ) -> Snapshot:
        """The next snapshot: ``upserts`` added or replaced, ``removed`` names gone."""
        upserts = list(upserts)
        for route in upserts:
            route.validate()
        changed_clusters: set[str] = set()
        for route in upserts:
            previous = self._routes.get(route.name)
            if previous == route:
                continue
            self._routes[route.name] = route
            fresh = {r.name: r for r in self._clusters_for(route)}
            for old in self._route_clusters.get(route.name, ()):
                if old.name not in fresh and self._set_cluster(old.name, None):
                    changed_clusters.add(old.name)
            for name, resource in fresh.items():
                if self._set_cluster(name, resource):
                    changed_clusters.add(name)
            self._route_clusters[route.name] = tuple(fresh.values())
        for name in removed:
            if self._routes.pop(name, None) is None:
                continue
            for old in self._route_clusters.pop(name, ()):
                if self._set_cluster(old.name, None):
                    changed_clusters.add(old.name)
        changed: dict[str, frozenset[str]] = {}
        if changed_clusters:
            changed[CLUSTER_TYPE] = frozenset(changed_clusters)
        version = f"{self._xor:032x}"[:16] + ("" if complete else "-partial")
        # Becoming complete allows removals a partial snapshot held back: no shortcut.
        last = self._last
        parent = last.version if last is not None and last.complete == complete else None
        snapshot = Snapshot(
            version=version,
            resources=MappingProxyType(
                {
                    LISTENER_TYPE: MappingProxyType({LISTENER_NAME: self._listener}),
                    CLUSTER_TYPE: MappingProxyType(dict(self._clusters)),
                    ROUTE_TYPE: MappingProxyType({ROUTE_CONFIG_NAME: self._route_config}),
                }
            ),
            routes=MappingProxyType(dict(self._routes)),
            complete=complete,
            parent=parent,
            changed=MappingProxyType(changed),
        )
        self._last = snapshot
        return snapshot

    def build(self, routes: Mapping[str, Route] | None, *, complete: bool = True) -> Snapshot:
        """A snapshot for exactly ``routes`` (name → Route); ``None``: static part only."""
        routes = dict(routes or {})
        for name, route in routes.items():
            if name != route.name:
                raise ValueError(f"route keyed {name!r} is named {route.name!r}")
        upserts = [r for n, r in routes.items() if self._routes.get(n) != r]
        removed = [n for n in self._routes if n not in routes]
        return self.apply(upserts, removed, complete=complete)


def build_snapshot(
    deployment: Deployment,
    config: ProxyConfig,
    routes: Mapping[str, Route] | None,
    *,
    complete: bool = True,
) -> Snapshot:
    """One-off ``SnapshotBuilder(deployment, config).build(routes, complete=complete)``."""
    return SnapshotBuilder(deployment, config).build(routes, complete=complete)
