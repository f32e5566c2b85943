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
ApplicationMaster container launched, finished). The daemons' and containers' logs are
copied into the work directory when the YARN stops; ``scale_breakdown()`` reads from
them where each ``scale(n)`` spent its time.
"""

from __future__ import annotations

import contextlib
import datetime
import re
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

__all__ = ["SCALE_STAGES", "SIZES", "scale_breakdown", "timeline", "yarn_gateways"]

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
                shutil.copytree(containers, workdir / "yarn" / "container-logs", dirs_exist_ok=True)


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


#: The stages of a worker's start that the YARN logs record, in order, and what each is.
SCALE_STAGES = {
    "ALLOCATED": "the ResourceManager allocated the container",
    "ACQUIRED": "the ApplicationMaster received it",
    "launched": "the NodeManager ran its launch script",
    "python": "the worker's first log line (Python and distributed imported)",
    "registered": "the worker registered with the scheduler",
}
_TRANSITION = re.compile(
    r"^(\S+ \S+) .*?(container_\w+?_\d+) Container Transitioned from \w+ to (ALLOCATED|ACQUIRED)$"
)
_LAUNCH = re.compile(
    r"^(\S+ \S+) .*DefaultContainerExecutor: launchContainer: .*?(container_\w+?_\d+)/"
)
_DASK_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+) - distributed\.\S+ - \w+ - (.*)")


def _log_time(text: str) -> float:
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def _container_events(logs: Path) -> dict[str, dict[str, float]]:
    """container id -> stage (SCALE_STAGES) -> first time, from the copied logs."""
    events: dict[str, dict[str, float]] = {}

    def put(container: str, stage: str, when: str) -> None:
        events.setdefault(container, {}).setdefault(stage, _log_time(when))

    for line in (logs / "hadoop-logs" / "resourcemanager.log").read_text().splitlines():
        if m := _TRANSITION.match(line):
            put(m[2], m[3], m[1])
    for line in (logs / "hadoop-logs" / "nodemanager.log").read_text().splitlines():
        if m := _LAUNCH.match(line):
            put(m[2], "launched", m[1])
    for log in (logs / "container-logs").glob("application_*/container_*/*.log"):
        for line in log.read_text(errors="replace").splitlines():
            if m := _DASK_LINE.match(line):
                put(log.parent.name, "python", m[1])
                if m[2].lstrip().startswith("Registered to"):
                    put(log.parent.name, "registered", m[1])
    return events


def scale_breakdown(logs: Path, samples: list[dict[str, Any]]) -> dict[str, dict[str, list[float]]]:
    """Per gateway and stage, the seconds (one per sample) from each ``scale(n)`` call
    (``samples``: the gateway, n and the wall-clock ``scaled_at``) to when the last of its
    n workers reached each stage of SCALE_STAGES. A sample counts the first n worker
    containers ALLOCATED after it was called and before the next sample; a stage that
    the logs lack for one of them leaves the sample out of that stage."""
    events = _container_events(logs)
    workers = sorted(
        (
            (e["ALLOCATED"], e)
            for c, e in events.items()
            if "ALLOCATED" in e and not c.endswith("_000001")  # not the ApplicationMaster's
        ),
        key=lambda pair: pair[0],
    )
    ordered = sorted(samples, key=lambda s: s["scaled_at"])
    per: dict[str, dict[str, list[float]]] = {}
    for i, sample in enumerate(ordered):
        end = ordered[i + 1]["scaled_at"] if i + 1 < len(ordered) else float("inf")
        mine = [e for t, e in workers if sample["scaled_at"] <= t < end][: sample["workers"]]
        if len(mine) < sample["workers"]:
            continue
        stages = per.setdefault(sample["gateway"], {})
        for stage in SCALE_STAGES:
            if all(stage in e for e in mine):
                last = max(e[stage] for e in mine)
                stages.setdefault(stage, []).append(last - sample["scaled_at"])
    return per
