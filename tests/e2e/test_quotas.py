"""Shared-facility controls through the public port (issue 12, acceptance 1, 3 and 5).

Purdue's limits (100 cores and 400 GiB per user over all their clusters) through the
unmodified dask-gateway client: a cluster past them is refused naming the quota and the
numbers, ``scale()`` past them is clamped with a GatewayWarning naming the quota, and a
stopped cluster's share is usable at once. An admin lists and stops other users'
clusters (REST and the flotilla client); users see only their own. A ``gpu`` group is
offered an option value others are refused (422 naming the field).

Clusters run on the simulation backend (no Dask processes: the quota arithmetic with
16-core workers would not fit this machine); everything else is the real stack.
"""

from __future__ import annotations

import json
import subprocess
import textwrap
import threading
import warnings
from collections.abc import Iterator
from typing import Any

import pytest
from flotilla import BasicAuth, ClusterStatus
from flotilla import Gateway as FlotillaGateway
from gateway_stack import Gateway as Stack
from gateway_stack import running_gateway, upstream_python
from helpers import wait_for

pytestmark = pytest.mark.timeout(300)

CONFIG = """
from flotilla_registry.options import Options, Select

c.Registry.backends = ["sim", "local"]
c.Registry.default_backend = "sim"
c.Registry.backend_by_user = {"dora": "local"}
c.Auth.admin_users = ["ada"]
c.BasicAuthenticator.user_groups = {"gwen": ["gpu"]}
c.Quotas.default = {"max_cores": 100, "max_memory": "400 G"}
c.Quotas.users = {"dora": {"max_cores": 4}}
c.ClusterConfig.scheduler_cores = 4
c.ClusterConfig.scheduler_memory = "1 G"
c.ClusterConfig.worker_cores = 16
c.ClusterConfig.worker_memory = "64 G"
c.ClusterConfig.cluster_max_workers = None

def _small(options, user):
    # dora's real Dask clusters: 1-core scheduler and workers, each within her 4 cores.
    if user.name != "dora":
        return {}
    return {"scheduler_cores": 1, "worker_cores": 1, "worker_memory": "1 G"}

def _options(user):
    accelerators = ["none", "a100"] if "gpu" in user.groups else ["none"]
    return Options(
        Select("accelerator", accelerators, default="none", label="Accelerator"),
        handler=_small,
    )

c.Registry.cluster_options = _options
"""

# Run by the upstream client's interpreter: only dask-gateway from PyPI.
PURDUE = textwrap.dedent(
    """
    import json, sys, time, warnings
    from dask_gateway import BasicAuth, Gateway

    out = {}
    def warned(call):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            call()
        return [f"{type(w.message).__name__}: {w.message}" for w in caught]

    def running(name):
        deadline = time.monotonic() + 60
        while gw.get_cluster(name).status.name != "RUNNING":
            assert time.monotonic() < deadline, f"{name} did not start"
            time.sleep(0.1)
        return name

    gw = Gateway(sys.argv[1], auth=BasicAuth("purdue", "x"))
    a = running(gw.submit())
    out["scale_a_6"] = warned(lambda: gw.scale_cluster(a, 6))  # 4 + 96 = 100 cores
    try:
        gw.submit()
        out["second"] = "created"
    except Exception as exc:
        out["second"] = f"{type(exc).__name__}: {exc}"
    out["scale_a_3"] = warned(lambda: gw.scale_cluster(a, 3))  # 52 cores
    # Scaling down frees the share once the scheduler has retired the workers.
    deadline = time.monotonic() + 30
    while True:
        try:
            b = running(gw.submit())
            break
        except Exception as exc:
            assert "quota max_cores" in str(exc) and time.monotonic() < deadline, exc
            time.sleep(0.1)
    out["scale_b_4"] = warned(lambda: gw.scale_cluster(b, 4))  # room for 2 (56 + 32 = 88)
    gw.stop_cluster(a)
    out["scale_b_4_after_stop"] = warned(lambda: gw.scale_cluster(b, 4))
    out["scale_b_7"] = warned(lambda: gw.scale_cluster(b, 7))  # 4 + 112 > 100
    gw.stop_cluster(b)
    print(json.dumps(out))
    """
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_gateway(tmp_path_factory.mktemp("quotas"), CONFIG) as gateway:
        yield gateway


def test_purdue_limits_through_the_upstream_client(stack: Stack) -> None:
    proc = subprocess.run(
        [upstream_python(), "-c", PURDUE, stack.address],
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, f"client failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["scale_a_6"] == []
    assert out["second"] == (
        "GatewayClusterError: Cannot create the cluster: it would exceed quota max_cores of "
        "100 cores for user purdue (in use: 100 cores; the new cluster needs 4 cores)"
    )
    assert out["scale_a_3"] == []
    assert out["scale_b_4"] == [
        "GatewayWarning: Scale request of 4 workers would exceed quota max_cores of 100 "
        "cores (in use by your other clusters and this scheduler: 56 cores). Scaling to 2 "
        "instead."
    ]
    assert out["scale_b_4_after_stop"] == []  # a's share is free at once
    assert out["scale_b_7"] == [
        "GatewayWarning: Scale request of 7 workers would exceed quota max_cores of 100 "
        "cores (in use by your other clusters and this scheduler: 4 cores). Scaling to 6 "
        "instead."
    ]
    status, _, usage = stack.request("GET", "/api/v1/usage", "purdue")
    assert status == 200
    (mine,) = usage["usage"]
    assert mine["user"] == "purdue" and mine["clusters"] == 0  # both stopped
    assert mine["quota"]["max_cores"] == 100 and mine["quota"]["max_memory"] == 400 * 2**30
    assert mine["core_hours"] > 0  # what the two clusters held while they ran
    with FlotillaGateway(stack.address, auth=BasicAuth("purdue")) as gw:
        (through_client,) = gw.usage()
    assert through_client["quota"] == {**mine["quota"], "max_clusters": None}
    assert through_client["core_hours"] >= mine["core_hours"]


def test_concurrent_scales_of_real_clusters_stay_within_the_core_quota(stack: Stack) -> None:
    """Two real Dask clusters of a user with 4 cores: 2 for the schedulers, so 2 workers
    in all, however the two scale requests interleave (counted by Dask itself)."""
    with FlotillaGateway(stack.address, auth=BasicAuth("dora")) as gw:
        clusters = [gw.new_cluster(), gw.new_cluster()]
        try:
            clients = [c.get_client() for c in clusters]
            seen: list[int] = []
            stop = threading.Event()

            def count_workers() -> None:
                while not stop.is_set():
                    seen.append(
                        sum(len(c.scheduler_info(n_workers=-1)["workers"]) for c in clients)
                    )
                    stop.wait(0.05)

            sampler = threading.Thread(target=count_workers)
            sampler.start()
            try:
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    threads = [threading.Thread(target=c.scale, args=(3,)) for c in clusters]
                    for t in threads:
                        t.start()
                    for t in threads:
                        t.join()
                # Both together are clamped to 2 workers: one cluster got fewer than asked.
                assert any("quota max_cores of 4 cores" in str(w.message) for w in caught)
                wait_for(lambda: seen and seen[-1] == 2, 90, "the 2 workers the quota allows")
            finally:
                stop.set()
                sampler.join()
            assert max(seen) <= 2, seen
            (usage,) = gw.usage()
            assert (usage["cores"], usage["workers"]) == (4, 2)
        finally:
            for c in clusters:
                c.shutdown()


def _create(stack: Stack, user: str, **options: Any) -> tuple[int, Any]:
    body = json.dumps({"cluster_options": options}).encode()
    status, _, reply = stack.request("POST", "/api/v1/clusters/", user, body=body)
    return status, reply


def test_admins_see_and_stop_everyone_users_only_their_own(stack: Stack) -> None:
    (_, a), (_, b) = _create(stack, "alice"), _create(stack, "bob")
    alice_cluster, bob_cluster = a["name"], b["name"]

    # An admin lists every user's clusters (REST and the flotilla client) ...
    status, _, listed = stack.request("GET", "/api/v1/clusters/?all_users=1", "ada")
    assert status == 200
    owners = {name: report["owner"] for name, report in listed.items()}
    assert owners[alice_cluster] == "alice" and owners[bob_cluster] == "bob"
    with FlotillaGateway(stack.address, auth=BasicAuth("ada")) as admin:
        names = {c.name for c in admin.list_clusters(all_users=True)}
        assert {alice_cluster, bob_cluster} <= names
        assert not {c.name for c in admin.list_clusters()} & names  # her own: none
        admin.stop_cluster(bob_cluster)

    # ... and bob's client sees it stopped, and by whom.
    with FlotillaGateway(stack.address, auth=BasicAuth("bob")) as bob:
        wait_for(
            lambda: bob.get_cluster(bob_cluster).status == ClusterStatus.STOPPED,
            30,
            "bob's cluster to stop",
        )
        assert bob.get_cluster(bob_cluster).reason == "Stopped by admin ada"
        assert alice_cluster not in {c.name for c in bob.list_clusters(status=list(ClusterStatus))}

    # bob cannot list everyone's, nor read, scale or stop alice's cluster.
    assert stack.request("GET", "/api/v1/clusters/?all_users=1", "bob")[0] == 403
    assert stack.request("GET", "/api/v1/usage?all_users=1", "bob")[0] == 403
    listed_by_bob = stack.request("GET", "/api/v1/clusters/?status=running,pending", "bob")[2]
    assert alice_cluster not in listed_by_bob
    for method, path in [
        ("GET", f"/api/v1/clusters/{alice_cluster}"),
        ("DELETE", f"/api/v1/clusters/{alice_cluster}"),
        ("POST", f"/api/v1/clusters/{alice_cluster}/scale"),
        ("GET", f"/api/v1/clusters/{alice_cluster}/logs"),
    ]:
        body = b'{"count": 1}' if method == "POST" else None
        status, _, reply = stack.request(method, path, "bob", body=body)
        assert status in (403, 404), (method, path, status, reply)
    assert stack.request("GET", f"/api/v1/clusters/{alice_cluster}", "alice")[2]["status"] in (
        "PENDING",
        "RUNNING",
    )

    # The admin's usage view has everyone; the admin stops alice's through REST.
    everyone = stack.request("GET", "/api/v1/usage?all_users=1", "ada")[2]["usage"]
    assert {"alice", "bob"} <= {u["user"] for u in everyone}
    with FlotillaGateway(stack.address, auth=BasicAuth("ada")) as admin:
        assert {"alice", "bob"} <= {u["user"] for u in admin.usage(all_users=True)}
    with (
        FlotillaGateway(stack.address, auth=BasicAuth("bob")) as bob,
        pytest.raises(Exception) as denied,
    ):
        bob.usage(all_users=True)
    assert "not an admin" in str(denied.value)
    assert stack.request("DELETE", f"/api/v1/clusters/{alice_cluster}", "ada")[0] == 204
    wait_for(
        lambda: (
            stack.request("GET", f"/api/v1/clusters/{alice_cluster}", "alice")[2]["status"]
            == "STOPPED"
        ),
        30,
        "alice's cluster to stop",
    )
    logs = (stack.state_dir / "logs" / "registry.log").read_text(errors="replace")
    assert f"admin ada: stop cluster {alice_cluster} of user alice" in logs


def test_a_group_sees_an_option_value_others_are_refused(stack: Stack) -> None:
    spec = stack.request("GET", "/api/v1/options", "gwen")[2]["cluster_options"]
    assert spec[0]["spec"]["options"] == ["none", "a100"]
    assert stack.request("GET", "/api/v1/options", "carl")[2]["cluster_options"][0]["spec"][
        "options"
    ] == ["none"]
    status, reply = _create(stack, "carl", accelerator="a100")
    assert (status, reply) == (422, {"error": "'a100' is not a valid option for accelerator"})
    status, reply = _create(stack, "gwen", accelerator="a100")
    assert status == 201
    assert stack.request("DELETE", f"/api/v1/clusters/{reply['name']}", "gwen")[0] == 204
