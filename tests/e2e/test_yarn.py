"""Acceptance (issue 11): Dask clusters as YARN applications on a real ResourceManager and
NodeManager (tests/yarn_cluster.py), users logged in with Kerberos against a real KDC
(tests/krb5_realm.py), everything through the real Envoy.

The unmodified dask-gateway client (``auth="kerberos"`` after ``kinit alice``) runs the
main scenario; the failure cases drive Flotilla's own client, which logs in with a SPNEGO
token from the same ticket (tests/yarn_gateway.py). Containers run as the NodeManager's
user (DefaultContainerExecutor, tests/yarn_cluster.py says why); the ResourceManager
records alice as the application's user. Schedulers and workers run the project's own
virtualenv, named by absolute path.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from flotilla import ClusterStatus
from gateway_stack import upstream_python, write_config
from helpers import wait_for
from krb5_realm import Krb5Realm
from yarn_cluster import YarnCluster
from yarn_gateway import VENV_BIN, YarnGateway, launcher_settings, yarn_gateway

pytestmark = [pytest.mark.yarn, pytest.mark.timeout(600)]

SCENARIO = Path(__file__).parent / "scenarios" / "upstream_yarn.py"


@pytest.fixture(scope="module")
def stack(
    yarn: YarnCluster, kdc: Krb5Realm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[YarnGateway]:
    state_dir = tmp_path_factory.mktemp("yarn-gateway")
    extra = textwrap.dedent(
        f"""
        c.Auth.authenticator_class = "kerberos"
        c.KerberosAuthenticator.keytab = {str(kdc.keytab)!r}
        c.Registry.backends = ["yarn"]
        c.ClusterConfig.scheduler_cmd = [{str(VENV_BIN / "dask")!r}, "scheduler"]
        c.ClusterConfig.worker_cmd = [{str(VENV_BIN / "dask")!r}, "worker"]
        """
    )
    config, address = write_config(state_dir, extra + launcher_settings(yarn))
    with yarn_gateway(yarn, kdc, config, address, state_dir) as gateway:
        yield gateway


def test_upstream_client_on_yarn_with_kerberos(stack: YarnGateway) -> None:
    done = subprocess.run(
        [upstream_python(), str(SCENARIO), stack.public, stack.yarn.web_url],
        capture_output=True,
        text=True,
        timeout=420,
        env={**stack.kdc.env, "PATH": "/usr/bin:/bin", "KRB5CCNAME": f"FILE:{stack.ccache}"},
    )
    assert done.returncode == 0, f"{done.stdout[-2000:]}\n{done.stderr[-5000:]}"
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(json.dumps(result, indent=1))
    assert result["status"] == "RUNNING"
    assert result["app_user"] == "alice"  # not the service user: impersonation
    assert result["app_user"] != stack.yarn.service_user
    ids = result["container_ids"]
    assert len(set(ids)) == 3 and all(
        i.startswith("container_" + result["app_id"].removeprefix("application_")) for i in ids
    ), ids
    assert result["sum"] == 1_000_000.0
    assert result["scheduler_address"].startswith("gateway://")
    assert result["containers_after_scale1"] == 2

    def ended() -> bool:
        app = stack.yarn.rest(f"/ws/v1/cluster/apps/{result['app_id']}")["app"]
        return app["state"] in ("KILLED", "FINISHED") and not stack.container_processes(
            result["app_id"]
        )

    left = result["shutdown_at"] + 10 - time.time()
    wait_for(ended, max(left, 0.5), "the application to end with no container left")


def test_an_application_killed_through_yarn_fails_the_cluster_with_its_diagnostics(
    stack: YarnGateway,
) -> None:
    with stack.client() as gw:
        cluster = gw.new_cluster()
        name = cluster.name
        [app] = stack.live_applications(name)
        stack.yarn.kill_application(app["id"])
        report = wait_for(
            lambda: (r := gw.get_cluster(name)).status is ClusterStatus.FAILED and r,
            30,
            "the cluster to fail",
        )
        diagnostics = " ".join(stack.yarn.rest(f"/ws/v1/cluster/apps/{app['id']}")["app"]
                               ["diagnostics"].split())  # fmt: skip
        assert report.reason.startswith(f"YARN application {app['id']} KILLED"), report.reason
        assert diagnostics and diagnostics[:40] in report.reason, (diagnostics, report.reason)
        assert name not in {c.name for c in gw.list_clusters()}
        logs = gw.get_cluster_logs(name)
        assert next(iter(logs)) == "scheduler" and "Scheduler at" in logs["scheduler"], logs
        cluster.close()


def worker_containers(stack: YarnGateway, app_id: str) -> dict[str, list[int]]:
    """Worker name -> pids of its container's processes."""
    out: dict[str, list[int]] = {}
    for pid, env in stack.container_processes(app_id).items():
        name = env.get("DASK_GATEWAY_WORKER_NAME")
        if name:
            out.setdefault(name, []).append(pid)
    return out


def test_worker_loss_and_a_launcher_killed_with_two_clusters(stack: YarnGateway) -> None:
    with stack.client() as gw:
        clusters = [gw.new_cluster() for _ in range(2)]
        try:
            first = clusters[0]
            first.scale(2)
            client = first.get_client(set_as_default=False)
            client.wait_for_workers(2, timeout=180)
            [app] = stack.live_applications(first.name)
            before = wait_for(
                lambda: len(w := worker_containers(stack, app["id"])) == 2 and w,
                30,
                "two worker containers",
            )

            # One worker container dies: a replacement (another name) connects. The
            # NodeManager may end the rest of the container before each PID's turn.
            lost, pids = sorted(before.items())[0]
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

            def replaced() -> set[str] | None:
                names = {w["name"] for w in client.scheduler_info()["workers"].values()}
                return names if len(names) == 2 and lost not in names else None

            names = wait_for(replaced, 120, "a replacement worker to connect")
            assert names != set(before)

            # The launcher is SIGKILLed while both clusters run: the new one adopts both
            # applications and submits none.
            apps = {c.name: [a["id"] for a in stack.live_applications(c.name)] for c in clusters}
            assert all(len(ids) == 1 for ids in apps.values()), apps
            old = stack.stack.pid("launcher-yarn")
            os.kill(old, signal.SIGKILL)
            wait_for(lambda: stack.stack.pid("launcher-yarn") != old, 30, "a new launcher")
            # It works: a worker asked of it after the restart starts and connects.
            first.scale(3)
            client.wait_for_workers(3, timeout=180)
            for c in clusters:
                assert gw.get_cluster(c.name).status is ClusterStatus.RUNNING
                assert [a["id"] for a in stack.live_applications(c.name)] == apps[c.name]
            client.close()
        finally:
            for c in clusters:
                c.shutdown()
        for c in clusters:
            wait_for(lambda c=c: not stack.live_applications(c.name), 30, "applications ended")
