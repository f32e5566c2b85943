"""Envoy's bootstrap: everything static, with LDS/CDS over delta ADS from proxy-config.

``bootstrap_config`` returns the bootstrap as a dict (what the embedded runner writes);
``write_bootstrap`` stores it as JSON, or YAML for a ``.yaml``/``.yml`` file;
``envoy_command`` is the command line that runs Envoy with it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from flotilla_common.config import Deployment
from google.protobuf import json_format
from traitlets.config import Config

from .config import ProxyConfig
from .snapshot import upstream_cluster

__all__ = ["XDS_CLUSTER", "bootstrap_config", "envoy_command", "write_bootstrap"]

XDS_CLUSTER = "xds_cluster"

_CX_MONITOR = "envoy.resource_monitors.global_downstream_max_connections"


def _xds_cluster(xds_address: str) -> dict[str, Any]:
    cluster = upstream_cluster(XDS_CLUSTER, xds_address, connect_timeout=1.0, http2=True)
    # Through JSON text: plain dicts (MessageToDict leaves OrderedDicts in Any fields).
    as_dict: dict[str, Any] = json.loads(
        json_format.MessageToJson(cluster, preserving_proto_field_name=True)
    )
    return as_dict


def bootstrap_config(
    config: Config | None = None,
    *,
    deployment: Deployment | None = None,
    proxy_config: ProxyConfig | None = None,
    xds_address: str | None = None,
) -> dict[str, Any]:
    """Envoy's bootstrap for this deployment, as a JSON-ready dict.

    ``config`` is the loaded Flotilla configuration (``None``: defaults); pass
    ``deployment``/``proxy_config`` to reuse already built sections, and ``xds_address``
    when proxy-config listens somewhere else than ``Deployment.xds_address`` (e.g. on a
    port picked at start).
    """
    cfg = config if config is not None else Config()
    deployment = deployment or Deployment(config=cfg)
    proxy_config = proxy_config or ProxyConfig(config=cfg)
    ads_source = {"ads": {}, "resource_api_version": "V3", "initial_fetch_timeout": "2s"}
    bootstrap: dict[str, Any] = {
        "node": {"id": proxy_config.node_id, "cluster": proxy_config.node_cluster},
        "admin": {
            "address": {
                "socket_address": {
                    "address": "127.0.0.1",
                    "port_value": deployment.envoy_admin_port,
                }
            }
        },
        "dynamic_resources": {
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "set_node_on_first_message_only": True,
                "grpc_services": [
                    {
                        "envoy_grpc": {
                            "cluster_name": XDS_CLUSTER,
                            # Must sit inside envoy_grpc: the outer field has no effect.
                            "retry_policy": {
                                "retry_back_off": {"base_interval": "0.1s", "max_interval": "1s"}
                            },
                        }
                    }
                ],
            },
            "cds_config": dict(ads_source),
            "lds_config": dict(ads_source),
        },
        "static_resources": {"clusters": [_xds_cluster(xds_address or deployment.xds_address)]},
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": _CX_MONITOR,
                    "typed_config": {
                        "@type": (
                            "type.googleapis.com/envoy.extensions.resource_monitors."
                            "downstream_connections.v3.DownstreamConnectionsConfig"
                        ),
                        "max_active_downstream_connections": (
                            proxy_config.max_downstream_connections
                        ),
                    },
                }
            ]
        },
    }
    if proxy_config.trim_stats:
        bootstrap["stats_config"] = {
            "stats_matcher": {
                "exclusion_list": {
                    "patterns": [{"prefix": "cluster.sni_"}, {"prefix": "cluster.dash_"}]
                }
            }
        }
    return bootstrap


def write_bootstrap(bootstrap: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write atomically: JSON, or YAML when the name ends in .yaml/.yml."""
    target = Path(path)
    if target.suffix in (".yaml", ".yml"):
        try:
            import yaml
        except ImportError:  # JSON is valid YAML
            text = json.dumps(bootstrap, indent=2) + "\n"
        else:
            text = yaml.safe_dump(bootstrap, sort_keys=False)
    else:
        text = json.dumps(bootstrap, indent=2) + "\n"
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(text)
    tmp.replace(target)
    return target


def envoy_command(
    proxy_config: ProxyConfig,
    bootstrap_path: str | os.PathLike[str],
    *,
    envoy_path: str | None = None,
    log_path: str | os.PathLike[str] | None = None,
) -> list[str]:
    """The command line that runs Envoy with ``bootstrap_path``."""
    command = [
        envoy_path or proxy_config.envoy_path,
        "-c",
        str(bootstrap_path),
        "--concurrency",
        str(proxy_config.concurrency),
        "--drain-time-s",
        str(max(0, round(proxy_config.drain_time))),
        "--disable-hot-restart",
        "-l",
        proxy_config.envoy_log_level,
    ]
    if log_path is not None:
        command += ["--log-path", str(log_path)]
    return command
