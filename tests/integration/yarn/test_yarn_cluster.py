"""The test YARN (tests/yarn_cluster.py) is one a skein-based launcher can use: its node
runs with the configured resources, skein's driver submits to it, applications run to the
end, and the service user may submit for other users (as a gateway does).

The first test pays for the cluster: on a fresh machine that includes installing Java and
Maven and resolving Hadoop's jars, hence the long timeout.
"""

from __future__ import annotations

import subprocess
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import skein
from flotilla_launcher.backends.yarn import (
    AM_HEARTBEAT_KEY,
    SCHEDULER_START,
    scheduler_start_script,
)
from helpers import wait_for
from yarn_cluster import MIN_ALLOCATION_MB, YarnCluster

pytestmark = [pytest.mark.integration, pytest.mark.yarn, pytest.mark.timeout(600)]

DRIVER_JAVA_OPTIONS = "-Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def _driver(yarn: YarnCluster, name: str, **env: str) -> Any:
    """A skein driver (its own JVM) against ``yarn``, with ``env`` on top of the cluster's."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**yarn.env, **env}.items():
            mp.setenv(key, value)
        return skein.Client(
            security=skein.Security.new_credentials(),
            log=str(yarn.log_dir / f"skein-driver-{name}.log"),
            java_options=DRIVER_JAVA_OPTIONS.split(),
        )


@pytest.fixture(scope="module")
def client(yarn: YarnCluster) -> Iterator[Any]:
    """skein's driver, run as the service user (who may impersonate anyone)."""
    driver = _driver(yarn, "service")
    try:
        yield driver
    finally:
        driver.close()


def _hello_spec(user: str = "") -> Any:
    return skein.ApplicationSpec(
        name="hello",
        queue="default",
        user=user,
        master=skein.Master(resources=skein.Resources(memory=256, vcores=1)),
        services={
            "hello": skein.Service(
                script="echo hello",
                resources=skein.Resources(memory=MIN_ALLOCATION_MB, vcores=1),
            )
        },
    )


def _run_to_end(client: Any, spec: Any) -> Any:
    app_id = client.submit(spec)

    def ended() -> Any:
        report = client.application_report(app_id)
        return report if str(report.state) in ("FINISHED", "FAILED", "KILLED") else None

    return wait_for(ended, 120, f"{app_id} to end", interval=0.25)


def _container_log(yarn: YarnCluster, app_id: str, name: str) -> str:
    logs = sorted((yarn.root / "nm-logs" / app_id).glob(f"container_*/{name}"))
    return "".join(path.read_text(errors="replace") for path in logs)


def test_node_is_running_with_the_configured_resources(yarn: YarnCluster) -> None:
    [node] = yarn.nodes()
    assert node["state"] == "RUNNING"
    assert node["totalResource"]["memory"] == yarn.node_memory_mb
    assert node["totalResource"]["vCores"] == yarn.node_vcores
    print(f"YARN node RUNNING {yarn.start_seconds:.1f}s after the daemons started")


def test_skein_application_runs_to_success(yarn: YarnCluster, client: Any) -> None:
    started = time.monotonic()
    report = _run_to_end(client, _hello_spec())
    app_id = report.id

    assert (str(report.state), str(report.final_status)) == ("FINISHED", "SUCCEEDED"), (
        report.diagnostics
    )
    app = yarn.rest(f"/ws/v1/cluster/apps/{app_id}")["app"]
    assert (app["state"], app["finalStatus"]) == ("FINISHED", "SUCCEEDED")
    assert app["user"] == yarn.service_user
    assert "hello" in _container_log(yarn, app_id, "hello.log")
    print(f"{app_id} submitted and FINISHED in {time.monotonic() - started:.1f}s")


def test_application_submitted_for_alice_is_alices(yarn: YarnCluster, client: Any) -> None:
    report = _run_to_end(client, _hello_spec(user="alice"))

    assert str(report.final_status) == "SUCCEEDED", report.diagnostics
    assert report.user == "alice"
    app = yarn.rest(f"/ws/v1/cluster/apps/{report.id}")["app"]
    assert app["user"] == "alice"
    # Staged in alice's home on the cluster's filesystem (skein removes the application's
    # own directory when it ends).
    assert (yarn.home_dir / "alice" / ".skein").is_dir()


def test_only_the_service_user_may_impersonate(yarn: YarnCluster) -> None:
    """The RM enforces the proxy-user rules: a driver logged in as someone without one
    (under simple auth, HADOOP_USER_NAME names the login) cannot submit for alice."""
    driver = _driver(yarn, "mallory", HADOOP_USER_NAME="mallory")
    try:
        with pytest.raises(skein.exceptions.DriverError, match="not allowed to impersonate"):
            driver.submit(_hello_spec(user="alice"))
        own = _run_to_end(driver, _hello_spec())
        assert (own.user, str(own.final_status)) == ("mallory", "SUCCEEDED"), own.diagnostics
    finally:
        driver.close()


def test_yarn_shim_prints_the_classpath(yarn: YarnCluster) -> None:
    out = subprocess.run(
        [str(yarn.bin_dir / "yarn"), "classpath", "--glob"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    conf, lib = out.split(":")
    assert Path(conf) == yarn.conf_dir
    assert lib == f"{yarn.lib}/*" and any(yarn.lib.glob("hadoop-yarn-client-*.jar"))


def test_the_masters_heartbeat_override_is_what_hadoop_reads(
    yarn: YarnCluster, tmp_path: Path
) -> None:
    """The yarn backend's BASH_ENV script gives skein's ApplicationMaster a yarn-site.xml
    that includes the container's own and sets the heartbeat key. Hadoop's own
    YarnConfiguration, started the way the master's JVM is (``bash -c`` after BASH_ENV,
    the CLASSPATH YARN gives), reads both the override and the site's values."""
    (tmp_path / SCHEDULER_START).write_text(scheduler_start_script(0.25))
    (tmp_path / "logs").mkdir()
    env = {
        "PATH": "/usr/bin:/bin",
        "BASH_ENV": SCHEDULER_START,
        "HADOOP_CONF_DIR": str(yarn.conf_dir),
        "CLASSPATH": yarn.classpath,
        "LOG_DIRS": str(tmp_path / "logs"),
    }
    java = f"{yarn.java_home}/bin/java org.apache.hadoop.yarn.conf.YarnConfiguration"
    done = subprocess.run(
        ["/bin/bash", "-c", java],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    values = {
        p.findtext("name"): p.findtext("value") for p in ET.fromstring(done.stdout).iter("property")
    }
    assert values[AM_HEARTBEAT_KEY] == "500"
    site = {
        p.findtext("name"): p.findtext("value")
        for p in ET.parse(yarn.conf_dir / "yarn-site.xml").getroot().iter("property")
    }
    assert values["yarn.resourcemanager.address"] == site["yarn.resourcemanager.address"]
