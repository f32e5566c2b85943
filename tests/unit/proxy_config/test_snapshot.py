"""Snapshots: deterministic content, content-hash versions, a listener routes never touch."""

from __future__ import annotations

import pytest
from envoy.config.bootstrap.v3 import bootstrap_pb2
from envoy.config.cluster.v3 import cluster_pb2
from envoy.config.listener.v3 import listener_pb2
from envoy.config.route.v3 import route_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)
from envoy.extensions.filters.network.tcp_proxy.v3 import tcp_proxy_pb2
from envoy.extensions.resource_monitors.downstream_connections.v3 import (  # noqa: F401
    downstream_connections_pb2,
)
from flotilla_common.config import Deployment
from flotilla_proxy_config.bootstrap import bootstrap_config, envoy_command
from flotilla_proxy_config.config import ProxyConfig
from flotilla_proxy_config.snapshot import (
    CLUSTER_TYPE,
    LISTENER_TYPE,
    ROUTE_TYPE,
    Route,
    Snapshot,
    SnapshotBuilder,
    build_snapshot,
    parse_address,
)
from flotilla_proxy_config.snapshot import (
    EXT_AUTHZ_FILTER as EXT_AUTHZ,
)
from google.protobuf import json_format
from traitlets import TraitError
from traitlets.config import Config

ALPHA = Route("alpha", "127.0.0.1:9000", "127.0.0.1:9001")
BETA = Route("ns.beta", "10.0.0.2:9000")


def snap(*routes: Route, complete: bool = True, config: Config | None = None) -> Snapshot:
    cfg = config or Config()
    return build_snapshot(
        Deployment(config=cfg),
        ProxyConfig(config=cfg),
        {r.name: r for r in routes},
        complete=complete,
    )


def versions(snapshot: Snapshot, type_url: str) -> dict[str, str]:
    return {name: r.version for name, r in snapshot.of_type(type_url).items()}


def route_paths(snapshot: Snapshot) -> list[str]:
    config = route_pb2.RouteConfiguration()
    snapshot.of_type(ROUTE_TYPE)["http_routes"].body.Unpack(config)
    (vhost,) = config.virtual_hosts
    return [
        r.match.prefix
        or (r.match.path and f"={r.match.path}")
        or (r.match.path_separated_prefix and f"{r.match.path_separated_prefix}[/...]")
        or f"regex:{r.match.safe_regex.regex}"
        for r in vhost.routes
    ]


def test_same_input_same_bytes_and_versions() -> None:
    a, b = snap(ALPHA, BETA), snap(BETA, ALPHA)
    assert a.version == b.version
    for type_url in (LISTENER_TYPE, CLUSTER_TYPE, ROUTE_TYPE):
        assert versions(a, type_url) == versions(b, type_url)
        for name, resource in a.of_type(type_url).items():
            assert resource.body == b.of_type(type_url)[name].body


def test_resources_and_names() -> None:
    s = snap(ALPHA, BETA)
    assert list(s.of_type(LISTENER_TYPE)) == ["public"]
    assert set(s.of_type(CLUSTER_TYPE)) == {
        "flotilla_auth",
        "registry_http",
        "registry_grpc",
        "sni_daskgateway-alpha",
        "dash_alpha",
        "sni_daskgateway-ns.beta",
    }
    # beta has no dashboard: no dash_ cluster. The routes never depend on clusters.
    assert route_paths(s) == [
        "/flotilla.registry.v1.RegistryService/",
        "/api/v1/login[/...]",  # the web page's sign-in: always through auth
        "=/api/v1/events",  # the web page's event stream: no deadline
        "/api/",  # with the session cookie and no credentials: straight to the registry
        "/api/",
        "regex:/clusters/[^/]+",  # → /clusters/<name>/
        "/clusters/",  # → cluster dash_<name>
        "=/",  # the web page
        "/ui/",  # its files
        "/",
    ]
    assert versions(s, ROUTE_TYPE) == versions(snap(), ROUTE_TYPE)


def test_only_the_api_routes_run_ext_authz() -> None:
    config = route_pb2.RouteConfiguration()
    snap(ALPHA).of_type(ROUTE_TYPE)["http_routes"].body.Unpack(config)
    authz = {
        r.name for r in config.virtual_hosts[0].routes if EXT_AUTHZ in r.typed_per_filter_config
    }
    assert authz == {"registry-grpc", "registry-login", "registry-events", "registry-api"}
    (session,) = [r for r in config.virtual_hosts[0].routes if r.name == "registry-api-session"]
    cookie, credentials = session.match.headers
    assert (cookie.name, cookie.string_match.contains) == ("cookie", "flotilla-session=")
    assert credentials.name == "authorization" and credentials.invert_match
    assert list(session.request_headers_to_remove) == ["x-flotilla-identity"]
    listener = listener_pb2.Listener()
    snap().of_type(LISTENER_TYPE)["public"].body.Unpack(listener)
    hcm = hcm_pb2.HttpConnectionManager()
    next(c for c in listener.filter_chains if c.name == "plain-http").filters[
        0
    ].typed_config.Unpack(hcm)
    (ext_authz,) = [f for f in hcm.http_filters if f.name == EXT_AUTHZ]
    assert ext_authz.disabled, "off unless a route turns it on"


def test_dashboards_are_named_from_the_path_by_lua() -> None:
    config = route_pb2.RouteConfiguration()
    snap(ALPHA).of_type(ROUTE_TYPE)["http_routes"].body.Unpack(config)
    (route,) = [r for r in config.virtual_hosts[0].routes if r.name == "dashboards"]
    assert route.route.cluster_header == "x-flotilla-dashboard"
    assert route.route.regex_rewrite.pattern.regex == "^/clusters/[^/]+"
    assert list(route.request_headers_to_remove) == ["x-flotilla-dashboard"]
    assert set(route.typed_per_filter_config) == {"envoy.filters.http.lua"}


def test_apply_reports_only_what_changed() -> None:
    builder = SnapshotBuilder(Deployment(), ProxyConfig())
    first = builder.build({"alpha": ALPHA})
    second = builder.apply([BETA])
    assert second.parent == first.version
    assert second.changed == {CLUSTER_TYPE: frozenset({"sni_daskgateway-ns.beta"})}
    moved = Route("alpha", "127.0.0.1:9100", "127.0.0.1:9001")
    third = builder.apply([moved], ["ns.beta"])
    assert third.changed == {
        CLUSTER_TYPE: frozenset({"sni_daskgateway-alpha", "sni_daskgateway-ns.beta"})
    }
    fourth = builder.apply([], ["alpha"])
    assert fourth.changed == {CLUSTER_TYPE: frozenset({"sni_daskgateway-alpha", "dash_alpha"})}
    assert fourth.version == snap().version, "the same content, the same version"
    assert builder.apply([]).changed == {}


def test_listener_never_depends_on_routes() -> None:
    listeners = {
        snap(*routes).of_type(LISTENER_TYPE)["public"].body.SerializeToString()
        for routes in ([], [ALPHA], [ALPHA, BETA])
    }
    assert len(listeners) == 1
    # The static clusters keep their versions too.
    before, after = versions(snap(), CLUSTER_TYPE), versions(snap(ALPHA), CLUSTER_TYPE)
    assert {k: after[k] for k in before} == before


def test_versions_change_only_for_changed_resources() -> None:
    moved = Route("alpha", "127.0.0.1:9100", "127.0.0.1:9001")
    before, after = (
        versions(snap(ALPHA, BETA), CLUSTER_TYPE),
        versions(snap(moved, BETA), CLUSTER_TYPE),
    )
    changed = {name for name in before if before[name] != after[name]}
    assert changed == {"sni_daskgateway-alpha"}
    assert versions(snap(ALPHA), ROUTE_TYPE) == versions(snap(moved), ROUTE_TYPE)


def test_partial_snapshot_is_versioned_apart() -> None:
    assert snap().version != snap(complete=False).version
    assert not snap(complete=False).complete


def test_builder_reuses_and_forgets_route_resources() -> None:
    builder = SnapshotBuilder(Deployment(), ProxyConfig())
    first = builder.build({"alpha": ALPHA})
    second = builder.build({"alpha": ALPHA, "ns.beta": BETA})
    assert (
        first.of_type(CLUSTER_TYPE)["sni_daskgateway-alpha"]
        is second.of_type(CLUSTER_TYPE)["sni_daskgateway-alpha"]
    )
    assert builder.build({}).version == snap().version


def test_listener_shape() -> None:
    cfg = Config()
    cfg.Deployment.public_host = "0.0.0.0"
    cfg.Deployment.public_port = 8786
    cfg.ProxyConfig.tcp_idle_timeout = 120.0
    listener = listener_pb2.Listener()
    snap(config=cfg).of_type(LISTENER_TYPE)["public"].body.Unpack(listener)
    assert listener.address.socket_address.address == "0.0.0.0"
    assert listener.address.socket_address.port_value == 8786
    assert [f.name for f in listener.listener_filters] == ["envoy.filters.listener.tls_inspector"]
    chains = {c.name: c for c in listener.filter_chains}
    assert set(chains) == {"tls-passthrough", "plain-http", "tls-reject"}
    tls = listener.filter_chain_matcher.matcher_tree.exact_match_map.map["tls"].matcher
    assert list(tls.matcher_tree.prefix_match_map.map) == ["daskgateway-"]
    tcp_proxy = tcp_proxy_pb2.TcpProxy()
    chains["tls-passthrough"].filters[1].typed_config.Unpack(tcp_proxy)
    assert tcp_proxy.idle_timeout.seconds == 120


def test_cluster_types_follow_the_address() -> None:
    s = snap(Route("alpha", "node-7.example:9000", "[::1]:8787"))
    sni, dash = cluster_pb2.Cluster(), cluster_pb2.Cluster()
    s.of_type(CLUSTER_TYPE)["sni_daskgateway-alpha"].body.Unpack(sni)
    s.of_type(CLUSTER_TYPE)["dash_alpha"].body.Unpack(dash)
    assert sni.type == cluster_pb2.Cluster.STRICT_DNS
    assert dash.type == cluster_pb2.Cluster.STATIC
    address = dash.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address
    assert (address.socket_address.address, address.socket_address.port_value) == ("::1", 8787)


@pytest.mark.parametrize(
    "route",
    [
        Route("Alpha", "127.0.0.1:1"),
        Route("a/b", "127.0.0.1:1"),
        Route("", "127.0.0.1:1"),
        Route("alpha", "127.0.0.1"),
        Route("alpha", "127.0.0.1:70000"),
        Route("alpha", "127.0.0.1:1", "nohost"),
    ],
)
def test_invalid_routes_are_rejected(route: Route) -> None:
    with pytest.raises(ValueError):
        route.validate()
    with pytest.raises(ValueError):
        snap(route)


def test_parse_address() -> None:
    assert parse_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_address("[fe80::1]:80") == ("fe80::1", 80)
    assert parse_address("host.example:8786") == ("host.example", 8786)


def test_proxy_config_limits() -> None:
    with pytest.raises(TraitError):
        ProxyConfig(tcp_idle_timeout=10.0)
    with pytest.raises(TraitError):
        ProxyConfig(api_timeout=20.0)
    assert ProxyConfig(tcp_idle_timeout=0.0).tcp_idle_timeout == 0.0
    assert ProxyConfig().tcp_idle_timeout == 3600.0


def test_bootstrap_is_a_valid_envoy_bootstrap() -> None:
    cfg = Config()
    cfg.Deployment.envoy_admin_port = 9901
    cfg.Deployment.xds_address = "0.0.0.0:8104"
    bootstrap = bootstrap_config(cfg)
    parsed = json_format.ParseDict(bootstrap, bootstrap_pb2.Bootstrap())
    ads = parsed.dynamic_resources.ads_config
    assert ads.api_type == ads.DELTA_GRPC
    assert ads.grpc_services[0].envoy_grpc.retry_policy.retry_back_off.max_interval.seconds == 1
    assert parsed.dynamic_resources.cds_config.initial_fetch_timeout.seconds == 2
    assert parsed.admin.address.socket_address.port_value == 9901
    (xds,) = parsed.static_resources.clusters
    endpoint = xds.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address
    assert (endpoint.address, endpoint.port_value) == ("127.0.0.1", 8104)
    assert parsed.stats_config.stats_matcher.exclusion_list.patterns
    assert (
        bootstrap_config(cfg, xds_address="127.0.0.1:1")["static_resources"]
        != bootstrap["static_resources"]
    )


def test_bootstrap_without_stats_trimming_and_command() -> None:
    cfg = Config()
    cfg.ProxyConfig.trim_stats = False
    cfg.ProxyConfig.concurrency = 4
    cfg.ProxyConfig.drain_time = 7.0
    assert "stats_config" not in bootstrap_config(cfg)
    command = envoy_command(ProxyConfig(config=cfg), "/tmp/b.json", envoy_path="/bin/envoy")
    assert command[:3] == ["/bin/envoy", "-c", "/tmp/b.json"]
    assert command[command.index("--concurrency") + 1] == "4"
    assert command[command.index("--drain-time-s") + 1] == "7"
