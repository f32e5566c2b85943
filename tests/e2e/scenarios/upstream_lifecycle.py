"""Acceptance scenario run by a new user's Python: only dask-gateway and dask[array].

Usage: python upstream_lifecycle.py <gateway address>. Prints one JSON object with what it
saw; every step raises if it does not hold, so a non-zero exit is a failure.
"""

import json
import sys
import time
import urllib.request

import dask.array as da
from dask_gateway import Gateway

address = sys.argv[1]
result = {}

gateway = Gateway(address, auth="basic")
assert gateway.list_clusters() == [], gateway.list_clusters()

t0 = time.monotonic()
cluster = gateway.new_cluster()
result["new_cluster_seconds"] = time.monotonic() - t0
name = cluster.name
result["name"] = name
report = gateway.get_cluster(name)
assert report.status.name == "RUNNING", report.status
assert cluster.scheduler_address.startswith("gateway://"), cluster.scheduler_address

cluster.scale(2)
client = cluster.get_client()
client.wait_for_workers(2, timeout=120)
result["workers"] = len(client.scheduler_info()["workers"])
total = da.ones((4000, 4000), chunks=500).sum().compute()
assert total == 16_000_000, total
result["sum"] = float(total)

with urllib.request.urlopen(cluster.dashboard_link, timeout=30) as resp:
    result["dashboard_status"] = resp.status
    result["dashboard_url"] = resp.url
assert result["dashboard_status"] == 200

cluster.adapt(minimum=1, maximum=3)

second = Gateway(address, auth="basic")
names = [c.name for c in second.list_clusters()]
assert name in names, names
again = second.connect(name)
assert again.name == name
client2 = again.get_client(set_as_default=False)
assert client2.submit(lambda x: x + 1, 41).result(timeout=60) == 42
client2.close()
client.close()

t0 = time.monotonic()
cluster.shutdown()
deadline = time.monotonic() + 5
status = None
while time.monotonic() < deadline:
    status = second.get_cluster(name).status.name
    if status == "STOPPED":
        break
    time.sleep(0.1)
result["stopped_after_seconds"] = time.monotonic() - t0
result["final_status"] = status
assert status == "STOPPED", status
second.close()
gateway.close()
print(json.dumps(result))
