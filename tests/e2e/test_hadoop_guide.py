"""Acceptance (issue 11): the install guide's example configuration
(docs/examples/dask_gateway_config_yarn.py, shown verbatim in docs/hadoop.md) runs a
cluster on the test YARN whose scheduler and workers run a venv-pack archive listed in
``localize_files`` and activated by ``scheduler_setup`` / ``worker_setup``.

The file is used as written except for the site's values, replaced by the test's (keytab
paths, principal, the archive's location, ports and URL, the state directory), and the
test YARN's launcher settings appended (tests/yarn_gateway.py). The archive holds only
dask, distributed and dask-gateway, as a dask-gateway-server site's does.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from flotilla import ClusterStatus
from gateway_stack import INTERNAL_PORTS, internal_addresses
from helpers import free_ports
from krb5_realm import REALM, Krb5Realm
from packed_env import packed_environment
from yarn_cluster import YarnCluster
from yarn_gateway import YarnGateway, launcher_settings, yarn_gateway

pytestmark = [pytest.mark.yarn, pytest.mark.timeout(600)]

EXAMPLE = Path(__file__).parents[2] / "docs" / "examples" / "dask_gateway_config_yarn.py"


def site_values(yarn: YarnCluster, kdc: Krb5Realm, state_dir: Path, public: int) -> dict[str, str]:
    """The guide's example values -> this test's."""
    return {
        "flotilla/edge1.example.com@EXAMPLE.COM": f"host/localhost@{REALM}",
        "/etc/flotilla/flotilla.keytab": str(kdc.keytab),
        "/etc/flotilla/http.keytab": str(kdc.keytab),
        "hdfs:///flotilla/environment.tar.gz": yarn.fs_url(packed_environment()),
        '":8000"': f'"127.0.0.1:{public}"',
        "/var/lib/flotilla": str(state_dir),
        "http://edge1.example.com:8000": f"http://localhost:{public}",
    }


@pytest.fixture(scope="module")
def guide(
    yarn: YarnCluster, kdc: Krb5Realm, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[YarnGateway]:
    state_dir = tmp_path_factory.mktemp("hadoop-guide")
    public, *internal = free_ports(1 + INTERNAL_PORTS)
    text = EXAMPLE.read_text()
    for site, ours in site_values(yarn, kdc, state_dir, public).items():
        assert site in text, f"the example no longer says {site!r}"
        text = text.replace(site, ours)
    config = state_dir / "dask_gateway_config.py"
    config.write_text(text + internal_addresses(internal) + launcher_settings(yarn))
    with yarn_gateway(yarn, kdc, config, f"http://127.0.0.1:{public}", state_dir) as gateway:
        yield gateway


def test_the_guides_configuration_runs_the_packed_environment(guide: YarnGateway) -> None:
    with guide.client() as gw:
        options = gw.cluster_options()
        assert set(options) == {"worker_cores", "worker_memory"}
        try:
            cluster = gw.new_cluster(worker_memory=1.5)
        except Exception:
            for failed in gw.list_clusters(status="FAILED"):  # shown with the failure
                print(failed.reason, gw.get_cluster_logs(failed.name))
            raise
        try:
            assert gw.get_cluster(cluster.name).status is ClusterStatus.RUNNING
            cluster.scale(1)
            client = cluster.get_client(set_as_default=False)
            client.wait_for_workers(1, timeout=180)
            scheduler = client.run_on_scheduler(lambda: (sys.prefix, sys.executable))
            workers = list(client.run(lambda: (sys.prefix, sys.executable)).values())
            memory = [w["memory_limit"] for w in client.scheduler_info()["workers"].values()]
            client.close()
        finally:
            cluster.shutdown()
    for prefix, executable in [scheduler, *workers]:
        # Unpacked by the NodeManager in the container's directory, as ./environment.
        assert prefix.endswith("/environment") and "nm-local" in prefix, prefix
        assert executable.startswith(prefix), executable
        assert not prefix.startswith(sys.prefix)
    assert memory == [int(1.5 * 2**30)]  # the options handler's worker_memory


def guide_blocks(language: str) -> list[str]:
    text = (Path(__file__).parents[2] / "docs" / "hadoop.md").read_text()
    return re.findall(rf"^```{language}\n(.*?)^```$", text, re.S | re.M)


def test_the_guides_kadmin_steps_make_keytabs_that_log_in(kdc: Krb5Realm, tmp_path: Path) -> None:
    """Step 4 against the test KDC (its realm and a directory of the test's for
    /etc/flotilla): each keytab logs its principal in."""
    steps = [
        line
        for block in guide_blocks("bash")
        for line in block.splitlines()
        if line.startswith(("kadmin.local ", "chmod "))
    ]
    assert len(steps) == 5, steps
    for line in steps:
        line = line.replace("EXAMPLE.COM", REALM).replace("/etc/flotilla/", f"{tmp_path}/")
        argv = shlex.split(line)
        if argv[0] == "kadmin.local":
            kdc.kadmin(argv[2])
        else:
            subprocess.run(argv, check=True)
    for keytab, principal in (
        ("flotilla.keytab", f"flotilla/edge1.example.com@{REALM}"),
        ("http.keytab", f"HTTP/edge1.example.com@{REALM}"),
    ):
        path = tmp_path / keytab
        assert path.stat().st_mode & 0o777 == 0o400
        done = subprocess.run(
            ["kinit", "-k", "-t", str(path), "-c", f"FILE:{tmp_path / 'ccache'}", principal],
            capture_output=True,
            text=True,
            env={**os.environ, **kdc.env},
            timeout=30,
        )
        assert done.returncode == 0, done.stderr


def test_the_test_yarn_grants_the_guides_proxy_user_properties(yarn: YarnCluster) -> None:
    """Step 3: the properties the test YARN's impersonation (alice's applications, in
    test_yarn.py) rests on are the guide's, for its service user."""
    [xml] = guide_blocks("xml")
    names = {p.findtext("name") for p in ET.fromstring(f"<c>{xml}</c>").iter("property")}
    site = ET.parse(yarn.conf_dir / "core-site.xml").getroot()
    granted = {p.findtext("name") for p in site.iter("property")}
    ours = {n.replace(".flotilla.", f".{yarn.service_user}.") for n in names if n}
    assert ours <= granted, (ours, granted)
