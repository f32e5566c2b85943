"""A whole gateway on the test YARN with Kerberos login (tests/yarn_cluster.py,
tests/krb5_realm.py), for the e2e tests of the yarn backend and of docs/hadoop.md."""

from __future__ import annotations

import base64
import contextlib
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gssapi
import pytest
from flotilla import Gateway as FlotillaGateway
from flotilla import GatewayAuth
from gateway_stack import Gateway, running_stack
from helpers import wait_for
from krb5_realm import Krb5Realm
from yarn_cluster import YarnCluster

VENV_BIN = Path(sys.executable).parent


class NegotiateAuth(GatewayAuth):
    """Kerberos for Flotilla's client in these tests: a fresh SPNEGO token for
    ``HTTP@<host>`` from the ticket cache in ``KRB5CCNAME`` on every call that has no
    session cookie yet (python-gssapi, the library auth itself uses)."""

    def __init__(self, host: str) -> None:
        super().__init__()
        self.host = host

    def metadata(self) -> list[tuple[str, str]]:
        target = gssapi.Name(f"HTTP@{self.host}", gssapi.NameType.hostbased_service)
        token = gssapi.SecurityContext(name=target, usage="initiate").step()
        return [("authorization", "Negotiate " + base64.b64encode(token).decode())]


@dataclass
class YarnGateway(Gateway):
    yarn: YarnCluster
    kdc: Krb5Realm
    ccache: Path

    @property
    def public(self) -> str:
        """The address clients use: ``localhost``, the host of the HTTP/ principal."""
        return self.address.replace("127.0.0.1", "localhost")

    def client(self) -> FlotillaGateway:
        return FlotillaGateway(self.public, auth=NegotiateAuth("localhost"))

    def applications(self, cluster: str) -> list[dict[str, Any]]:
        """The cluster's applications, as the ResourceManager lists them."""
        tag = f"flotilla-cluster:{cluster}"
        return [a for a in self.yarn.apps() if tag in a["applicationTags"].split(",")]

    def live_applications(self, cluster: str) -> list[dict[str, Any]]:
        return [
            a
            for a in self.applications(cluster)
            if a["state"] not in ("FINISHED", "FAILED", "KILLED")
        ]

    def container_processes(self, app_id: str) -> dict[int, dict[str, str]]:
        return self.yarn.application_processes(app_id)


def launcher_settings(yarn: YarnCluster) -> str:
    """The yarn launcher's settings for the test YARN (a small driver and masters, the
    NodeManager's log directory, loopback listeners)."""
    return textwrap.dedent(
        f"""
        c.Launcher.status_check_period = 1.0
        c.YarnBackend.hadoop_conf_dir = {str(yarn.conf_dir)!r}
        c.YarnBackend.nodemanager_log_dirs = [{str(yarn.root / "nm-logs")!r}]
        c.YarnBackend.security_dir = {str(yarn.root / "gateway-skein")!r}
        c.YarnBackend.driver_log = {str(yarn.log_dir / "skein-driver-gateway.log")!r}
        c.YarnBackend.driver_java_options = ["-Xmx256m", "-XX:TieredStopAtLevel=1"]
        c.YarnBackend.master_memory = 256
        c.YarnBackend.host = "127.0.0.1"
        """
    )


def supervise(gateway: YarnGateway, stop: threading.Event) -> None:
    """Restart a service that died, as ``flotilla-embedded`` does."""
    while not stop.wait(0.2):
        gateway.stack.check_children()


@contextlib.contextmanager
def yarn_gateway(
    yarn: YarnCluster, kdc: Krb5Realm, config: Path, address: str, state_dir: Path
) -> Iterator[YarnGateway]:
    """The gateway of ``config`` with alice's ticket in this process (for
    :class:`NegotiateAuth`), its services restarted when they die; on exit every
    application on the YARN must have ended."""
    ccache = kdc.kinit("alice", state_dir / "alice.ccache")
    with pytest.MonkeyPatch.context() as mp:
        # The services inherit these: auth the KDC's, the launcher YARN's client settings.
        for key, value in {**kdc.env, **yarn.env}.items():
            mp.setenv(key, value)
        mp.setenv("KRB5CCNAME", f"FILE:{ccache}")  # this process's client: alice
        with running_stack(config, address, state_dir) as gateway:
            stack = YarnGateway(gateway.address, gateway.stack, state_dir, yarn, kdc, ccache)
            stop = threading.Event()
            # A child gets SIGTERM when the thread that started it ends: the supervisor
            # thread outlives the stack.
            supervisor = threading.Thread(target=supervise, args=(stack, stop))
            supervisor.start()
            try:
                yield stack
            finally:
                stop.set()
                supervisor.join()
        # Stopping the gateway stops its clusters: their applications end.
        wait_for(
            lambda: all(a["state"] in ("FINISHED", "FAILED", "KILLED") for a in yarn.apps()),
            30,
            "every application to end",
        )
