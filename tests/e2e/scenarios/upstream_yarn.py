"""Acceptance scenario on the yarn backend, run by a Python with only dask-gateway[kerberos]
and dask[array] (the unmodified upstream client), after ``kinit``.

Usage: python upstream_yarn.py <gateway address> <ResourceManager web URL>

Prints one JSON object with what it saw; every step raises if it does not hold.
"""

import json
import os
import sys
import time
import urllib.request

import dask.array as da
from dask_gateway import Gateway
from scenario_util import until

address, rm_url = sys.argv[1:3]
result = {}


def rm(path):
    with urllib.request.urlopen(rm_url + path, timeout=10) as response:
        return json.load(response)


def application(name):
    """The cluster's application, as the ResourceManager lists it (tagged by name)."""
    apps = (rm("/ws/v1/cluster/apps").get("apps") or {}).get("app") or []
    found = [a for a in apps if f"flotilla-cluster:{name}" in a["applicationTags"].split(",")]
    return found[0] if len(found) == 1 else None


def container_ids():
    return client.run(lambda: os.environ.get("CONTAINER_ID", ""))


with Gateway(address, auth="kerberos") as gateway:
    t0 = time.monotonic()
    cluster = gateway.new_cluster()
    result["new_cluster_seconds"] = time.monotonic() - t0
    name = cluster.name
    result["status"] = gateway.get_cluster(name).status.name
    app = until(lambda: application(name), 30, "the cluster's application")
    result["app_id"], result["app_user"] = app["id"], app["user"]

    t0 = time.monotonic()
    cluster.scale(3)
    client = cluster.get_client(set_as_default=False)
    client.wait_for_workers(3, timeout=180)
    result["scale3_seconds"] = time.monotonic() - t0
    result["container_ids"] = sorted(container_ids().values())
    result["sum"] = float(da.ones((1000, 1000), chunks=(100, 100)).sum().compute())
    result["scheduler_address"] = cluster.scheduler_address

    cluster.scale(1)
    until(lambda: len(client.scheduler_info()["workers"]) == 1, 60, "one worker left")
    # The ApplicationMaster's container (the scheduler runs in it too) and one worker.
    running = until(
        lambda: (a := application(name)) and a["runningContainers"] == 2 and a,
        60,
        "the ResourceManager to show two containers",
    )
    result["containers_after_scale1"] = running["runningContainers"]

    client.close()
    cluster.shutdown()
    result["shutdown_at"] = time.time()

print(json.dumps(result))
