"""One configuration file for the whole stack.

The file is Python, read with traitlets: ``c.<Class>.<option> = value``. Every service
loads the same file and reads the sections it needs; ``Deployment`` holds what they
share (addresses, state directory, secrets).
"""

from __future__ import annotations

import argparse
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from traitlets import Dict, Integer, Unicode
from traitlets.config import Config, Configurable
from traitlets.config.loader import PyFileConfigLoader

from . import compat

__all__ = ["Deployment", "add_config_argument", "load_config"]


class Deployment(Configurable):
    """Addresses, directories and secrets shared by every Flotilla service."""

    public_host = Unicode(
        "127.0.0.1", help="Interface Envoy's public listener binds to.", config=True
    )
    public_port = Integer(
        8000,
        help="Port of the public listener: HTTP API, dashboards and scheduler TLS (by SNI).",
        config=True,
    )
    public_url = Unicode(
        "",
        help="URL users reach the gateway at. Default: http://<public_host>:<public_port>.",
        config=True,
    )
    api_url = Unicode(
        "",
        help=(
            "API root schedulers send heartbeats to (DASK_GATEWAY_API_URL). "
            "Default: <public_url>/api, i.e. through Envoy."
        ),
        config=True,
    )
    state_dir = Unicode(
        ".flotilla",
        help=(
            "Directory for the embedded SQLite registry, generated secrets, and the "
            "local backend's cluster directories and logs."
        ),
        config=True,
    )
    registry_grpc_address = Unicode(
        "127.0.0.1:8101", help="host:port of the registry's gRPC server.", config=True
    )
    registry_http_address = Unicode(
        "127.0.0.1:8102",
        help="host:port of the registry's REST server (reached only through Envoy).",
        config=True,
    )
    auth_grpc_address = Unicode(
        "127.0.0.1:8103", help="host:port of the auth service (Envoy ext_authz).", config=True
    )
    xds_address = Unicode(
        "127.0.0.1:8104", help="host:port of proxy-config's xDS server.", config=True
    )
    envoy_admin_port = Integer(
        8105, help="Port of Envoy's admin interface (127.0.0.1 only).", config=True
    )
    identity_key = Unicode(
        "",
        help=(
            "Secret the auth service signs identities with and services verify them "
            "with. Empty: generated once into <state_dir>/secrets/identity_key."
        ),
        config=True,
    )
    internal_token = Unicode(
        "",
        help=(
            "Secret internal gRPC callers (launchers, proxy-config, auth) present to "
            "the registry. Empty: generated once into <state_dir>/secrets/internal_token."
        ),
        config=True,
    )
    cookie_key = Unicode(
        "",
        help=(
            "Secret the auth service signs session cookies with. Empty: generated once "
            "into <state_dir>/secrets/cookie_key."
        ),
        config=True,
    )

    metrics_host = Unicode(
        "127.0.0.1",
        help=(
            "Interface every service serves its Prometheus metrics (/metrics) on. Envoy "
            "never routes there: put it on the operators' network, not the users'."
        ),
        config=True,
    )
    metrics_ports = Dict(
        value_trait=Integer(),
        help=(
            "Port of each service's Prometheus /metrics, by service: registry, auth, "
            "proxy-config, launcher-<backend> (e.g. {'registry': 8111, 'auth': 8112, "
            "'proxy-config': 8113, 'launcher-local': 8114}, what `make run` serves). 0 or "
            "absent: that service serves none. Envoy's own statistics are on its admin "
            "port (envoy_admin_port), at /stats/prometheus."
        ),
        config=True,
    )

    @property
    def state_path(self) -> Path:
        return Path(self.state_dir).resolve()

    @property
    def resolved_public_url(self) -> str:
        return (self.public_url or f"http://{self.public_host}:{self.public_port}").rstrip("/")

    @property
    def resolved_api_url(self) -> str:
        return (self.api_url or f"{self.resolved_public_url}/api").rstrip("/")

    def secret(self, name: str) -> str:
        """The configured secret ``name``, or one generated once under the state dir."""
        value: str = getattr(self, name)
        if value:
            return value
        return self.generated_secret(name)

    def generated_secret(
        self, name: str, make: Callable[[], str] = lambda: secrets.token_urlsafe(32)
    ) -> str:
        """``<state_dir>/secrets/<name>`` (0600), made with ``make()`` the first time."""
        path = self.state_path / "secrets" / name
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        token = make()
        # O_EXCL: when two services start at once, exactly one writes the secret.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return path.read_text().strip()
        with os.fdopen(fd, "w") as f:
            f.write(token)
        return token


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read a traitlets Python config file; ``None`` gives the embedded defaults."""
    if path is None:
        return Config()
    p = Path(path).resolve()
    if not p.exists():
        raise SystemExit(f"config file not found: {p}")
    loader = PyFileConfigLoader(p.name, path=str(p.parent))
    # A dask-gateway-server configuration file runs as it is (flotilla_common.compat).
    with compat.options_importable():
        try:
            cfg: Config = loader.load_config()
        except ImportError as exc:
            raise SystemExit(f"config file {p}: {exc}") from None
    return compat.translate(cfg)


def add_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        "-f",
        default=os.environ.get("FLOTILLA_CONFIG"),
        help="Flotilla configuration file (Python, traitlets); env FLOTILLA_CONFIG",
    )
