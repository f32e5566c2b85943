"""Acceptance scenario on a batch backend, run by a Python with only dask-gateway and
dask[array] (the unmodified upstream client).

Usage: python upstream_batch.py <gateway address> <user> <backend>

With SLURM_CONF in the environment it watches the cluster's jobs with ``squeue``. Prints
one JSON object with what it saw; every step raises if it does not hold.
"""

import getpass
import json
import os
import pwd
import subprocess
import sys
import time

import dask.array as da
from dask_gateway import Gateway
from dask_gateway.auth import BasicAuth
from scenario_util import until

address, user, backend = sys.argv[1:4]
result = {}


def who():
    """Who runs this, as getpass and as the kernel see it, and whether setup ran."""
    return (
        getpass.getuser(),
        pwd.getpwuid(os.getuid()).pw_name,
        os.environ.get("FLOTILLA_TEST_SETUP", ""),
    )


def worker_jobs(cluster_name):
    """The cluster's running worker jobs, as Slurm lists them."""
    out = subprocess.run(
        ["squeue", "-h", "-u", user, "-t", "RUNNING", "-o", "%j"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [j for j in out if j == f"flotilla-worker-{cluster_name[:8]}"]


gateway = Gateway(address, auth=BasicAuth(user, ""))
t0 = time.monotonic()
cluster = gateway.new_cluster(backend=backend)
result["new_cluster_seconds"] = time.monotonic() - t0
name = cluster.name
result["name"] = name
assert gateway.get_cluster(name).status.name == "RUNNING"

cluster.scale(2)
client = cluster.get_client()
client.wait_for_workers(2, timeout=180)
assert da.ones((4000, 4000), chunks=500).sum().compute() == 16_000_000
result["computed"] = True
workers = list(client.scheduler_info()["workers"])
result["scheduler_user"] = client.run_on_scheduler(who)
result["worker_users"] = sorted(set(client.run(who).values()))
result["task_users"] = sorted(
    set(client.gather([client.submit(who, pure=False, workers=[w]) for w in workers]))
)

cluster.scale(1)
until(lambda: len(client.scheduler_info()["workers"]) == 1, 120, "one worker left")
until(lambda: len(worker_jobs(name)) == 1, 60, "one worker job left")
result["after_scale_1"] = len(client.scheduler_info()["workers"])

cluster.scale(3)
client.wait_for_workers(3, timeout=180)
until(lambda: len(worker_jobs(name)) == 3, 60, "three worker jobs")
result["after_scale_3"] = len(client.scheduler_info()["workers"])
assert client.submit(lambda x: x + 1, 41).result(timeout=60) == 42

client.close()
result["shutdown_at"] = time.time()
cluster.shutdown()
gateway.close()
print(json.dumps(result))
