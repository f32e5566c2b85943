"""Acceptance scenario on the kubernetes backend, run by a Python with only dask-gateway
and dask[array] (the unmodified upstream client).

Usage: python upstream_kubernetes.py <gateway address> <auth> <API server URL> <CA file>
       <token file> <namespace>

``auth`` is the client's ``auth=`` (``jupyterhub`` reads ``JUPYTERHUB_API_TOKEN``). The
API server is asked, with the token (read-only use), which pods the cluster has. Prints
one JSON object with what it saw; every step raises if it does not hold.
"""

import json
import ssl
import sys
import time
import urllib.parse
import urllib.request

import dask.array as da
from dask_gateway import Gateway
from scenario_util import until

address, auth, api_url, ca_file, token_file, namespace = sys.argv[1:7]
context = ssl.create_default_context(cafile=ca_file)
token = open(token_file).read().strip()
result = {}


def pods(name, component):
    selector = f"gateway.dask.org/cluster={name},app.kubernetes.io/component={component}"
    url = f"{api_url}/api/v1/namespaces/{namespace}/pods?" + urllib.parse.urlencode(
        {"labelSelector": selector}
    )
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, context=context, timeout=10) as answer:
        return json.load(answer)["items"]


def running(name, component):
    return [
        p["metadata"]["name"]
        for p in pods(name, component)
        if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")
    ]


with Gateway(address, auth=auth) as gateway:
    t0 = time.monotonic()
    cluster = gateway.new_cluster()
    result["new_cluster_seconds"] = time.monotonic() - t0
    name = result["name"] = cluster.name
    result["status"] = gateway.get_cluster(name).status.name
    result["scheduler_pods"] = running(name, "dask-scheduler")
    # Whose cluster the gateway says it is: the owner annotation of its scheduler pod.
    [scheduler] = pods(name, "dask-scheduler")
    result["owner"] = scheduler["metadata"]["annotations"].get("flotilla.dev/owner")

    t0 = time.monotonic()
    cluster.scale(3)
    client = cluster.get_client(set_as_default=False)
    client.wait_for_workers(3, timeout=120)
    result["scale3_seconds"] = time.monotonic() - t0
    result["worker_pods"] = until(
        lambda: len(w := running(name, "dask-worker")) == 3 and w, 30, "3 worker pods Running"
    )
    result["sum"] = float(da.ones((1000, 1000), chunks=(100, 100)).sum().compute())
    result["scheduler_address"] = cluster.scheduler_address

    client.close()
    cluster.shutdown()
    result["shutdown_at"] = time.time()

print(json.dumps(result))
