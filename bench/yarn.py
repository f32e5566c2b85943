"""The YARN section of ``make bench``: both gateways' YARN backends on one real YARN.

A private single-node YARN (the test suite's: a ResourceManager and a NodeManager from
the Apache Hadoop jars, ``tests/yarn_cluster.py``) serves two gateways at once, each as
a Hadoop site would run it on an edge node, with simple authentication and the same
cluster sizes:

- **Flotilla**: ``flotilla-embedded`` with the ``yarn`` launcher (the settings the e2e
  tests use: ``tests/yarn_gateway.py``);
- **reference**: ``dask-gateway-server`` 2025.4.0 (the last release with a YARN backend)
  with ``dask_gateway_server.backends.yarn.YarnBackend``.

Both clusters' containers run the same environment: the reference's virtualenv, which
holds ``dask-gateway`` (the scheduler preload), ``distributed`` and ``bokeh`` (the
dashboard), as a cluster environment that contains only dask-gateway does. Flotilla's
schedulers therefore preload ``dask_gateway.scheduler_preload``, not its own.

``timeline()`` reads what the ResourceManager recorded of every application (submitted,
ApplicationMaster container launched, finished); the daemons' logs, kept in the work
directory, hold the rest (allocations, container starts).
"""

from __future__ import annotations

import contextlib
import shutil
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.gateways import REPO, GatewayProcess, start_flotilla, start_reference

sys.path.insert(0, str(REPO / "tests"))

from yarn_cluster import YarnCluster, yarn_cluster
from yarn_gateway import launcher_settings

__all__ = ["SIZES", "timeline", "yarn_gateways"]

#: What every cluster asks for, on both gateways (the NodeManager offers NODE_MEMORY_MB).
SIZES = {"scheduler_memory": "512 M", "worker_memory": "512 M", "worker_cores": 1}
#: Room for both gateways' clusters at once (smoke runs), four workers each.
NODE_MEMORY_MB = 8192


def _sizes(section: str) -> str:
    return "".join(f"c.{section}.{key} = {value!r}\n" for key, value in SIZES.items())


def _flotilla_config(yarn: YarnCluster, env_bin: Path) -> str:
    return (
        textwrap.dedent(
            f"""
            c.ClusterConfig.scheduler_cmd = [{str(env_bin / "dask")!r}, "scheduler"]
            c.ClusterConfig.worker_cmd = [{str(env_bin / "dask")!r}, "worker"]
            # The containers' environment holds dask-gateway, not Flotilla.
            c.ClusterConfig.scheduler_preload = "dask_gateway.scheduler_preload"
            """
        )
        + _sizes("ClusterConfig")
        + launcher_settings(yarn)
    )


def _reference_config(env_bin: Path) -> str:
    return textwrap.dedent(
        f"""
            c.DaskGateway.backend_class = "dask_gateway_server.backends.yarn.YarnBackend"
            c.YarnClusterConfig.scheduler_cmd = [{str(env_bin / "dask")!r}, "scheduler"]
            c.YarnClusterConfig.worker_cmd = [{str(env_bin / "dask")!r}, "worker"]
            """
    ) + _sizes("YarnClusterConfig")


@contextlib.contextmanager
def yarn_gateways(
    workdir: Path, reference_venv: Path
) -> Iterator[tuple[YarnCluster, dict[str, GatewayProcess]]]:
    """The test YARN and both gateways on it; everything stopped (by PID) afterwards."""
    env_bin = reference_venv / "bin"
    with yarn_cluster(node_memory_mb=NODE_MEMORY_MB) as yarn:
        gateways: dict[str, GatewayProcess] = {}
        try:
            gateways["flotilla"] = start_flotilla(
                workdir / "yarn",
                backend="yarn",
                extra_config=_flotilla_config(yarn, env_bin),
                env=yarn.env,
            )
            gateways["reference"] = start_reference(
                workdir / "yarn",
                reference_venv,
                backend_config=_reference_config(env_bin),
                env=yarn.env,
            )
            yield yarn, gateways
        finally:
            for gw in gateways.values():
                gw.stop()
            # The daemons' and the containers' logs outlive the YARN (--keep keeps them):
            # where time went.
            shutil.copytree(yarn.log_dir, workdir / "yarn" / "hadoop-logs", dirs_exist_ok=True)
            containers = yarn.root / "nm-logs"
            if containers.is_dir():
                shutil.copytree(
                    containers, workdir / "yarn" / "container-logs", dirs_exist_ok=True
                )


def timeline(yarn: YarnCluster, user: str) -> list[dict[str, Any]]:
    """Per application of ``user`` (oldest first): the ResourceManager's times (ms since
    the epoch) of submission (``startedTime``), of its ApplicationMaster container's
    launch (``launchTime``) and of its end, with its id and name (which gateway)."""
    apps = [a for a in yarn.apps() if a.get("user") == user]
    return [
        {
            "id": a["id"],
            "name": a.get("name", ""),
            "submitted_ms": a.get("startedTime", 0),
            "am_launched_ms": a.get("launchTime", 0),
            "finished_ms": a.get("finishedTime", 0),
        }
        for a in sorted(apps, key=lambda a: a.get("startedTime", 0))
    ]
