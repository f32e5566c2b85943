"""dask-gateway-server configuration files, read by Flotilla.

A ``dask_gateway_config.py`` written for dask-gateway-server (``c.DaskGateway.*``,
``c.Backend.cluster_options``, ``c.YarnClusterConfig.*``, ``c.KerberosAuthenticator.*``,
the jobqueue backends, ``from dask_gateway_server.options import ...``) is loaded as it is:
:func:`translate` rewrites dask-gateway-server's names into Flotilla's after the file ran,
and :func:`options_importable` lets the file import dask-gateway-server's option classes
(Flotilla's own, which take the same arguments) whether or not dask-gateway-server is
installed. Every name has one of three fates, listed in ``docs/hadoop.md``
("Bringing a dask-gateway configuration"):

* *renamed*: the same meaning under Flotilla's name (many names are already the same and
  need nothing);
* *ignored*: nothing in Flotilla to set, and no harm in that; logged once at start-up;
* *refused*: Flotilla cannot do what it asks; the service exits with one line per such
  setting, naming it and what to do instead.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import sys
import types
from collections.abc import Iterator
from typing import Any

from traitlets.config import Config

__all__ = ["IGNORED", "REFUSED", "RENAMED", "options_importable", "translate"]

log = logging.getLogger(__name__)

_DGS = "dask_gateway_server"

#: ``c.DaskGateway.backend_class`` -> (Flotilla backend, settings it implies).
BACKENDS: dict[str, tuple[str, dict[tuple[str, str], Any]]] = {
    f"{_DGS}.backends.yarn.YarnBackend": ("yarn", {}),
    f"{_DGS}.backends.kubernetes.KubeBackend": ("kubernetes", {}),
    f"{_DGS}.backends.jobqueue.slurm.SlurmBackend": ("slurm", {}),
    f"{_DGS}.backends.jobqueue.pbs.PBSBackend": ("pbs", {}),
    f"{_DGS}.backends.local.LocalBackend": ("local", {("LocalBackend", "run_as"): "user"}),
    f"{_DGS}.backends.local.UnsafeLocalBackend": (
        "local",
        {("LocalBackend", "run_as"): "self"},
    ),
}
#: ``c.DaskGateway.authenticator_class`` -> Flotilla's ``c.Auth.authenticator_class``.
AUTHENTICATORS = {
    f"{_DGS}.auth.KerberosAuthenticator": "kerberos",
    f"{_DGS}.auth.JupyterHubAuthenticator": "jupyterhub",
    f"{_DGS}.auth.SimpleAuthenticator": "basic",
}

# Sections of dask-gateway-server's backend settings (any backend class's name).
_BACKEND_SECTIONS = (
    "Backend",
    "DBBackendBase",
    "JobQueueBackend",
    "YarnBackend",
    "KubeBackend",
    "SlurmBackend",
    "PBSBackend",
    "LocalBackend",
    "UnsafeLocalBackend",
)
# dask-gateway-server's database backend settings -> Flotilla's.
_DB_BACKEND = {
    "db_url": ("Registry", "db_url"),
    "db_encrypt_keys": ("Registry", "db_encrypt_keys"),
    "db_cleanup_period": ("Registry", "db_cleanup_period"),
    "db_cluster_max_age": ("Registry", "db_cluster_max_age"),
    "stop_clusters_on_shutdown": ("Embedded", "stop_clusters_on_exit"),
    "cluster_heartbeat_period": ("ClusterConfig", "heartbeat_period"),
    "cluster_heartbeat_timeout": ("ClusterConfig", "heartbeat_timeout"),
    "cluster_start_timeout": ("ClusterConfig", "cluster_start_timeout"),
    "worker_start_timeout": ("ClusterConfig", "worker_start_timeout"),
    "worker_start_failure_limit": ("ClusterConfig", "worker_start_failure_limit"),
    "check_timeouts_period": ("Registry", "check_timeouts_period"),
    "cluster_status_period": ("Launcher", "status_check_period"),
    "worker_status_period": ("Launcher", "status_check_period"),
    "parallelism": ("Launcher", "parallelism"),
    "backoff_base_delay": ("Launcher", "backoff_base"),
    "backoff_max_delay": ("Launcher", "backoff_max"),
    "api_url": ("Deployment", "api_url"),
    "cluster_options": ("Registry", "cluster_options"),
}

#: (section, name) -> Flotilla's (section, name), same meaning.
RENAMED: dict[tuple[str, str], tuple[str, str]] = {
    **{(s, k): v for s in _BACKEND_SECTIONS for k, v in _DB_BACKEND.items()},
    ("SlurmBackend", "submit_command"): ("SlurmBackend", "sbatch"),
    ("SlurmBackend", "cancel_command"): ("SlurmBackend", "scancel"),
    ("SlurmBackend", "status_command"): ("SlurmBackend", "squeue"),
    ("PBSBackend", "submit_command"): ("PBSBackend", "qsub"),
    ("PBSBackend", "cancel_command"): ("PBSBackend", "qdel"),
    ("PBSBackend", "status_command"): ("PBSBackend", "qstat"),
    **{
        (s, k): ("BatchBackend", k)
        for s in ("JobQueueClusterConfig", "SlurmClusterConfig", "PBSClusterConfig")
        for k in ("staging_directory",)
    },
    ("KubeBackend", "gateway_instance"): ("KubeBackend", "instance"),
    ("KubeController", "gateway_instance"): ("KubeBackend", "instance"),
    ("KubeClusterConfig", "namespace"): ("KubeBackend", "namespace"),
    ("KubeController", "common_labels"): ("KubeBackend", "common_labels"),
    ("KubeController", "common_annotations"): ("KubeBackend", "common_annotations"),
    ("KubeController", "backoff_base_delay"): ("Launcher", "backoff_base"),
    ("KubeController", "backoff_max_delay"): ("Launcher", "backoff_max"),
    ("SimpleAuthenticator", "password"): ("BasicAuthenticator", "password"),
    ("Authenticator", "cookie_name"): ("Auth", "cookie_name"),
    ("Authenticator", "cache_max_age"): ("Auth", "cookie_max_age_seconds"),
    ("SimpleAuthenticator", "cache_max_age"): ("Auth", "cookie_max_age_seconds"),
}

#: (section, name) -> why Flotilla has nothing to set (logged, then dropped).
IGNORED: dict[tuple[str, str], str] = {
    ("DaskGateway", "config_file"): "Flotilla's services take --config",
    ("DaskGateway", "log_level"): "each service logs at INFO",
    ("DaskGateway", "show_config"): "not a Flotilla setting",
    ("DaskGateway", "address"): (
        "Flotilla's API listens at c.Deployment.registry_http_address behind Envoy"
    ),
    ("Proxy", "tcp_address"): "schedulers share Envoy's one public port (TLS routed by SNI)",
    ("Proxy", "log_level"): "set c.ProxyConfig.envoy_log_level for Envoy",
    ("Proxy", "api_token"): "Envoy is configured by proxy-config, no token involved",
    ("Proxy", "gateway_url"): "Envoy is configured by proxy-config",
    ("Proxy", "proxy_status_period"): "Envoy is configured by proxy-config",
    ("YarnBackend", "app_client_cache_max_size"): (
        "the yarn launcher keeps one client per running application"
    ),
    **{
        (
            s,
            "crd_version",
        ): "no DaskCluster resource: each cluster's objects are owned by a ConfigMap"
        for s in ("KubeBackend", "KubeController")
    },
    **{
        (
            s,
            "label_selector",
        ): "the launcher watches the pods labelled with its c.KubeBackend.instance"
        for s in ("KubeBackend", "KubeController")
    },
    **{
        ("KubeController", k): "the kubernetes launcher does the controller's work"
        for k in (
            "config_file",
            "address",
            "api_url",
            "parallelism",
            "completed_cluster_cleanup_period",
            "completed_cluster_max_age",
        )
    },
    **{
        (
            "KubeController",
            k,
        ): "c.KubeBackend.max_concurrent_requests bounds the launcher's API calls"
        for k in ("k8s_api_rate_limit", "k8s_api_rate_limit_burst")
    },
    **{
        ("KubeController", k): "Envoy routes to schedulers, configured by proxy-config (no Traefik)"
        for k in (
            "proxy_prefix",
            "proxy_web_entrypoint",
            "proxy_tcp_entrypoint",
            "proxy_web_middlewares",
        )
    },
    **{(s, "db_debug"): "no SQL echo in Flotilla" for s in _BACKEND_SECTIONS},
    **{
        (s, "scheduler_api_retries"): "schedulers retry heartbeats until heartbeat_timeout"
        for s in _BACKEND_SECTIONS
    },
    **{
        (s, "dask_gateway_jobqueue_launcher"): (
            "jobs are submitted as their owner through c.BatchBackend.submit_as"
        )
        for s in ("JobQueueBackend", "SlurmBackend", "PBSBackend")
    },
}

#: (section, name) -> what to do instead (a start-up error when set).
REFUSED: dict[tuple[str, str], str] = {
    ("Proxy", "prefix"): "Flotilla serves the API at /; remove it",
    ("Proxy", "tls_cert"): "put a TLS-terminating load balancer in front of Envoy",
    ("Proxy", "tls_key"): "put a TLS-terminating load balancer in front of Envoy",
    ("Proxy", "externally_managed"): "Envoy is always run and configured by Flotilla",
    ("PBSClusterConfig", "project"): "pass it with c.BatchBackend.extra_options",
    ("PBSClusterConfig", "worker_resource_list"): "pass it with c.BatchBackend.extra_options",
    ("PBSClusterConfig", "scheduler_resource_list"): ("pass it with c.BatchBackend.extra_options"),
    ("PBSClusterConfig", "use_stagein"): "Flotilla stages files through staging_directory",
    ("PBSBackend", "gateway_hostname"): (
        "set c.Deployment.api_url to the URL jobs reach the gateway at"
    ),
    **{
        (s, "cluster_config_class"): "the backend's cluster-config class is its entry point's"
        for s in _BACKEND_SECTIONS
    },
}

_PRELOAD = "dask_gateway.scheduler_preload"
_SETUP_SECTIONS = ("JobQueueClusterConfig", "SlurmClusterConfig", "PBSClusterConfig")


def _class_path(value: Any) -> str:
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return str(value)


def _put(cfg: Config, section: str, key: str, value: Any, origin: str, errors: list[str]) -> None:
    """Set ``c.section.key`` unless the file already set it to something else."""
    if key in cfg.get(section, {}) and cfg[section][key] != value:
        errors.append(f"{origin} and c.{section}.{key} are both set, to different values: keep one")
        return
    cfg[section][key] = value


def _drop(cfg: Config, section: str, key: str) -> Any:
    value = cfg[section].pop(key)
    if not cfg[section]:
        del cfg[section]
    return value


def translate(cfg: Config) -> Config:
    """Rewrite dask-gateway-server's names in ``cfg`` (in place) into Flotilla's.

    Raises ``SystemExit`` with one line per setting Flotilla cannot honour.
    """
    errors: list[str] = []
    gateway = cfg.get("DaskGateway", {}) if "DaskGateway" in cfg else {}
    backend = None
    if "backend_class" in gateway:
        path = _class_path(_drop(cfg, "DaskGateway", "backend_class"))
        if path in BACKENDS:
            backend, implied = BACKENDS[path]
            if "backends" not in cfg.get("Registry", {}):
                cfg.Registry.backends = [backend]
            # Its clusters' environments were built for dask-gateway-server: they have
            # dask-gateway's scheduler preload, not necessarily Flotilla's.
            implied = {("ClusterConfig", "scheduler_preload"): _PRELOAD, **implied}
            for (section, key), value in implied.items():
                if key not in cfg.get(section, {}):
                    cfg[section][key] = value
        else:
            known = ", ".join(sorted(b.rsplit(".", 1)[1] for b in BACKENDS))
            errors.append(
                f"c.DaskGateway.backend_class {path!r}: Flotilla has no such backend "
                f"(it runs {known}); set c.Registry.backends"
            )
    if "authenticator_class" in cfg.get("DaskGateway", {}):
        path = _class_path(_drop(cfg, "DaskGateway", "authenticator_class"))
        if path in AUTHENTICATORS:
            _put(
                cfg,
                "Auth",
                "authenticator_class",
                AUTHENTICATORS[path],
                "c.DaskGateway.authenticator_class",
                errors,
            )
        else:
            errors.append(
                f"c.DaskGateway.authenticator_class {path!r}: Flotilla has no such "
                "authenticator (kerberos, jupyterhub, basic); set c.Auth.authenticator_class"
            )
    if "Proxy" in cfg and "address" in cfg.Proxy:
        address = str(_drop(cfg, "Proxy", "address"))
        host, _, port = address.rpartition(":")
        if not port.isdigit():
            errors.append(f"c.Proxy.address {address!r}: expected host:port or :port")
        else:
            _put(cfg, "Deployment", "public_port", int(port), "c.Proxy.address", errors)
            # ":8000" listens on every interface there.
            _put(cfg, "Deployment", "public_host", host or "0.0.0.0", "c.Proxy.address", errors)
    # The jobqueue setup scripts: one per cluster config there, one per launcher here.
    for section in _SETUP_SECTIONS:
        if section not in cfg:
            continue
        scripts = {
            k: cfg[section].pop(k) for k in ("scheduler_setup", "worker_setup") if k in cfg[section]
        }
        if not cfg[section]:
            del cfg[section]
        if len(set(scripts.values())) > 1:
            errors.append(
                f"c.{section}.scheduler_setup and worker_setup differ: Flotilla runs one "
                "c.BatchBackend.setup_script before both; merge them"
            )
        elif scripts:
            _put(
                cfg,
                "BatchBackend",
                "setup_script",
                next(iter(scripts.values())),
                f"c.{section}.worker_setup",
                errors,
            )
    for section in list(cfg):
        if not isinstance(cfg[section], Config):
            continue
        for key in list(cfg[section]):
            where = (section, key)
            if where in REFUSED:
                errors.append(f"c.{section}.{key} is not supported: {REFUSED[where]}")
            elif where in IGNORED:
                _drop(cfg, section, key)
                log.warning("ignoring c.%s.%s (%s)", section, key, IGNORED[where])
            elif where in RENAMED:
                value = _drop(cfg, section, key)
                to_section, to_key = RENAMED[where]
                _put(cfg, to_section, to_key, value, f"c.{section}.{key}", errors)
                log.info("c.%s.%s read as c.%s.%s", section, key, to_section, to_key)
    if errors:
        raise SystemExit("\n".join(f"configuration: {e}" for e in errors))
    return cfg


@contextlib.contextmanager
def options_importable() -> Iterator[None]:
    """While a configuration file runs, ``dask_gateway_server.options`` is Flotilla's
    options module (the same classes and arguments), installed or not; afterwards
    ``sys.modules`` is as it was."""
    try:
        ours = importlib.import_module("flotilla_registry.options")
    except ImportError:  # a service without the registry package: nothing to offer
        yield
        return
    names = (_DGS, f"{_DGS}.options")
    saved = {n: sys.modules[n] for n in names if n in sys.modules}
    try:
        if _DGS not in sys.modules:
            try:
                importlib.import_module(_DGS)
            except ImportError:
                package = types.ModuleType(_DGS, "stand-in: dask-gateway-server is not installed")
                package.__path__ = []
                sys.modules[_DGS] = package
        sys.modules[f"{_DGS}.options"] = ours
        yield
    finally:
        for name in names:
            sys.modules.pop(name, None)
        sys.modules.update(saved)
