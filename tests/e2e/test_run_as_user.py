"""Acceptance: with the launcher running as root, a cluster's scheduler and workers run
as the requesting Unix user (by uid, not just $USER)."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from flotilla import BasicAuth, Gateway
from flotilla_common.embedded import EmbeddedStack
from gateway_stack import leftover_cluster_pids, write_config

USER = "flotilla-e2e"


@pytest.fixture
def unix_user() -> str:
    if os.geteuid() != 0:
        pytest.skip("switching to another Unix user needs root")
    try:
        pwd.getpwnam(USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--create-home", "--shell", "/usr/sbin/nologin", USER],
            check=True,
        )
    reach = subprocess.run(
        ["runuser", "-u", USER, "--", sys.executable, "-c", "import distributed"],
        capture_output=True,
    )
    if reach.returncode != 0:
        pytest.skip(f"{sys.executable} is not usable by other accounts (checkout under a 0700 dir)")
    return USER


@pytest.fixture
def state_dir() -> Iterator[Path]:
    # Not under pytest's 0700 tmp root: the user must reach its cluster directory.
    with tempfile.TemporaryDirectory(prefix="flotilla-e2e-") as d:
        os.chmod(d, 0o711)
        yield Path(d)


def test_clusters_run_as_the_requesting_user(unix_user: str, state_dir: Path) -> None:
    config, address = write_config(state_dir, '\nc.LocalBackend.run_as = "user"\n')
    stack = EmbeddedStack(str(config))
    try:
        stack.start()
        uid = pwd.getpwnam(unix_user).pw_uid
        with Gateway(address, auth=BasicAuth(unix_user)) as gw:
            with gw.new_cluster() as cluster:
                cluster.scale(1)
                client = cluster.get_client(set_as_default=False)
                client.wait_for_workers(1, timeout=120)

                # Defined here so it is shipped by value, not imported by module name.
                def whoami():
                    return (pwd.getpwuid(os.getuid()).pw_name, os.getuid())

                assert list(client.run(whoami).values()) == [(unix_user, uid)]
                assert client.run_on_scheduler(whoami) == (unix_user, uid)
                logs = state_dir / "clusters" / cluster.name / "logs"
                assert logs.stat().st_uid == uid
                client.close()
            # A user with no Unix account gets a clear failure, not a cluster as root.
            with Gateway(address, auth=BasicAuth("no-such-account")) as nobody:
                with pytest.raises(Exception, match="no-such-account"):
                    nobody.new_cluster()
    finally:
        stack.stop()
    assert leftover_cluster_pids(state_dir) == {}
