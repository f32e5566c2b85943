"""The yarn backend's application spec, and the scheduler's start beside the
ApplicationMaster's JVM (BASH_ENV) run by a real bash the way YARN runs the master's
command line: ``bash -c "<java ...>"`` in the container's directory."""

from __future__ import annotations

import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

from flotilla_common.tls import new_keypair
from flotilla_launcher.backends.base import ClusterConfig, ClusterSpec
from flotilla_launcher.backends.yarn import (
    AM_CONF_DIR,
    AM_HEARTBEAT_KEY,
    MASTER_SCRIPT,
    SCHEDULER_START,
    WORKER,
    application_spec,
    scheduler_start_script,
    write_scheduler_files,
)


def _cluster(scheduler_cmd: tuple[str, ...] = ("dask", "scheduler")) -> ClusterSpec:
    cert, key = new_keypair("c1")
    return ClusterSpec(
        name="c1",
        owner="alice",
        config=ClusterConfig(
            scheduler_cmd=scheduler_cmd,
            scheduler_memory=512 * 2**20,
            worker_memory=256 * 2**20,
        ),
        token="t" * 32,
        api_url="http://edge:8000/api",
        tls_cert=cert,
        tls_key=key,
    )


def test_the_scheduler_shares_the_masters_container(tmp_path: Path) -> None:
    cluster = _cluster()
    (tmp_path / "dask.crt").write_text(cluster.tls_cert)
    (tmp_path / "dask.pem").write_text(cluster.tls_key)
    spec = application_spec(
        cluster,
        cert_path=str(tmp_path / "dask.crt"),
        key_path=str(tmp_path / "dask.pem"),
        scheduler_files=write_scheduler_files(cluster, tmp_path, "0.0.0.0"),
        instance="site",
        master_memory_mib=384,
        master_java_options=["-XX:TieredStopAtLevel=1"],
    )
    assert set(spec.services) == {WORKER}
    master = spec.master
    assert master.resources.memory == 512 + 384
    assert master.env["BASH_ENV"] == SCHEDULER_START
    assert master.env["JAVA_TOOL_OPTIONS"] == "-XX:TieredStopAtLevel=1"
    assert master.env["DASK_GATEWAY_API_TOKEN"] == "t" * 32
    assert {SCHEDULER_START, "flotilla-scheduler.sh", "dask.crt", "dask.pem"} <= set(master.files)
    assert master.script == MASTER_SCRIPT
    worker_script = spec.services[WORKER].script
    assert "--no-dashboard" in worker_script and "--dashboard-address" not in worker_script


def _container(tmp_path: Path, scheduler_cmd: tuple[str, ...]) -> tuple[Path, Path]:
    """A container directory holding the scheduler's files, and its log directory."""
    work, logs = tmp_path / "container", tmp_path / "logs"
    work.mkdir()
    logs.mkdir()
    write_scheduler_files(_cluster(scheduler_cmd), work, "127.0.0.1")
    return work, logs


def test_bash_env_starts_the_scheduler_and_the_master_script_ends_with_it(
    tmp_path: Path,
) -> None:
    # The "scheduler" writes what it was started with and exits 3.
    work, logs = _container(tmp_path, ("/bin/sh", "-c", 'echo "started $*"; exit 3', "sh"))
    env = {"PATH": "/usr/bin:/bin", "BASH_ENV": SCHEDULER_START, "LOG_DIRS": f"{logs},/x"}
    # What YARN runs: the master's command line under `bash -c`; here a JVM that sees
    # whether BASH_ENV was passed on to it (skein's master script must not source it).
    jvm = subprocess.run(
        ["/bin/bash", "-c", 'echo "BASH_ENV=${BASH_ENV:-unset}"'],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert jvm.stdout.strip() == "BASH_ENV=unset"
    master = subprocess.run(
        ["/bin/bash", "-c", MASTER_SCRIPT],
        cwd=work,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert master.returncode == 3, master
    assert "the scheduler exited with status 3" in master.stdout
    log = (logs / "scheduler.log").read_text()
    assert log.startswith("started ") and "--dg-api-address" in log


def test_a_scheduler_that_exits_cleanly_ends_the_master_script_cleanly(tmp_path: Path) -> None:
    work, logs = _container(tmp_path, ("/bin/true",))
    env = {"PATH": "/usr/bin:/bin", "BASH_ENV": SCHEDULER_START, "LOG_DIRS": str(logs)}
    subprocess.run(["/bin/bash", "-c", "true"], cwd=work, env=env, check=True, timeout=30)
    master = subprocess.run(
        ["/bin/bash", "-c", MASTER_SCRIPT], cwd=work, capture_output=True, text=True, timeout=30
    )
    assert master.returncode == 0, master


def test_without_bash_env_the_master_script_runs_the_scheduler_itself(tmp_path: Path) -> None:
    # A container whose shell did not source BASH_ENV: no FIFO, no scheduler yet.
    work, logs = _container(tmp_path, ("/bin/sh", "-c", 'echo "started late"; exit 4', "sh"))
    master = subprocess.run(
        ["/bin/bash", "-c", MASTER_SCRIPT],
        cwd=work,
        env={"PATH": "/usr/bin:/bin", "LOG_DIRS": str(logs)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert master.returncode == 4, master
    assert "BASH_ENV was not sourced" in master.stderr
    # Where the logs API reads the scheduler's log, as in the early start.
    assert (logs / "scheduler.log").read_text().startswith("started late")


def _jvm_classpath(work: Path, env: dict[str, str]) -> str:
    """The CLASSPATH the master's JVM would start with, after BASH_ENV was sourced."""
    jvm = subprocess.run(
        ["/bin/bash", "-c", 'echo "$CLASSPATH"'],
        cwd=work,
        env={"PATH": "/usr/bin:/bin", "BASH_ENV": SCHEDULER_START, "CLASSPATH": "./*", **env},
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    )
    return jvm.stdout.strip()


def test_the_masters_jvm_reads_a_yarn_site_that_sets_its_heartbeat(tmp_path: Path) -> None:
    work, logs = _container(tmp_path, ("/bin/true",))
    (work / SCHEDULER_START).write_text(scheduler_start_script(0.25))
    site = tmp_path / "hadoop-conf"
    site.mkdir()
    (site / "yarn-site.xml").write_text("<configuration/>")
    classpath = _jvm_classpath(work, {"LOG_DIRS": str(logs), "HADOOP_CONF_DIR": str(site)})
    assert classpath == f"{work / AM_CONF_DIR}:./*"
    root = ET.parse(work / AM_CONF_DIR / "yarn-site.xml").getroot()
    include = root.find("{http://www.w3.org/2001/XInclude}include")
    assert include is not None and include.get("href") == f"file://{site}/yarn-site.xml"
    values = {p.findtext("name"): p.findtext("value") for p in root.iter("property")}
    assert values == {AM_HEARTBEAT_KEY: "500"}  # skein heartbeats every value / 2 ms


def test_without_a_readable_yarn_site_the_masters_classpath_is_left_alone(
    tmp_path: Path,
) -> None:
    work, logs = _container(tmp_path, ("/bin/true",))
    (work / SCHEDULER_START).write_text(scheduler_start_script(0.25))
    classpath = _jvm_classpath(
        work, {"LOG_DIRS": str(logs), "HADOOP_CONF_DIR": str(tmp_path / "missing")}
    )
    assert classpath == "./*"
    assert not (work / AM_CONF_DIR).exists()
    assert AM_CONF_DIR not in scheduler_start_script(0)  # 0 keeps skein's heartbeat
