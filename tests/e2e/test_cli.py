"""The ``flotilla`` command against the whole stack, run as its installed script.

Each user logs in once into a config directory of their own; every later command uses the
stored session. Failures must be one line on stderr with exit status 1.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gateway_stack import Gateway as Stack
from gateway_stack import running_gateway
from helpers import wait_for

pytestmark = pytest.mark.timeout(300)

FLOTILLA = Path(sys.executable).parent / "flotilla"

CONFIG = """
c.Auth.admin_users = ["ada"]
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with running_gateway(tmp_path_factory.mktemp("cli"), CONFIG) as gateway:
        yield gateway


class User:
    """Runs ``flotilla`` as one user, with a config directory of their own."""

    def __init__(self, name: str, home: Path) -> None:
        self.name = name
        self.home = home

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DASK_GATEWAY__")}
        env.pop("FLOTILLA_PASSWORD", None)
        env["XDG_CONFIG_HOME"] = str(self.home)
        return env

    def run(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FLOTILLA), *args],
            env=self.env(),
            input=stdin,
            capture_output=True,
            text=True,
            timeout=180,
        )

    def ok(self, *args: str) -> str:
        proc = self.run(*args)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    def json(self, *args: str) -> Any:
        return json.loads(self.ok(*args, "--json"))

    def fails(self, *args: str) -> str:
        """The one stderr line of a command that must fail with status 1 (and no output)."""
        proc = self.run(*args)
        assert proc.returncode == 1, (proc.stdout, proc.stderr)
        assert proc.stdout == ""
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("flotilla: error: ")
        assert "Traceback" not in proc.stderr
        return proc.stderr.removeprefix("flotilla: error: ").rstrip("\n")


@pytest.fixture(scope="module")
def users(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> dict[str, User]:
    out = {}
    for name in ("carol", "bob", "ada"):
        user = User(name, tmp_path_factory.mktemp(f"home-{name}"))
        proc = user.run(
            "login", "--address", stack.address, "--user", name, "--password-stdin", stdin="pw\n"
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == f"Logged in to {stack.address} as {name}\n"
        out[name] = user
    return out


def test_login_keeps_a_private_session_not_the_password(
    stack: Stack, users: dict[str, User]
) -> None:
    path = users["carol"].home / "flotilla" / "cli.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    assert stored["address"] == stack.address and stored["username"] == "carol"
    assert stored["cookie"] and "pw" not in path.read_text().replace(stored["cookie"], "")


def test_create_scale_logs_stop(users: dict[str, User], tmp_path: Path) -> None:
    carol = users["carol"]
    proc = carol.run("create", "--option", "worker_cores=2", "--option", "profile=large", "--json")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # no progress indicator when stderr is no terminal
    created = json.loads(proc.stdout)
    name = created["name"]
    try:
        assert created["status"] == "RUNNING" and created["owner"] == "carol"
        assert created["options"]["worker_cores"] == 2 and created["options"]["profile"] == "large"
        assert created["dashboard_link"].endswith(f"/clusters/{name}/status")
        assert "tls_key" not in created

        listed = carol.json("list")
        assert [c["name"] for c in listed] == [name]
        assert listed[0]["cores"] >= 1 and listed[0]["memory"] > 0
        table = carol.ok("list").splitlines()
        assert table[0].split() == [
            "NAME", "STATUS", "WORKERS", "CORES", "MEMORY", "AGE", "DASHBOARD",
        ]  # fmt: skip
        assert table[1].split()[:3] == [name, "running", "0/0"]

        scaled = carol.json("scale", name, "1")
        # The report is the cluster's at that moment: the count the scheduler asks for
        # arrives with its next heartbeat.
        assert scaled["name"] == name and scaled["warnings"] == []
        wait_for(lambda: carol.json("list")[0]["requested_workers"] == 1, 30, "the new count")
        wait_for(
            lambda: carol.json("list")[0]["running_workers"] == 1, 120, "the worker to connect"
        )
        bigger = carol.json("list")[0]
        assert bigger["cores"] == listed[0]["cores"] + 2  # the worker's 2 cores

        logs = carol.json("logs", name)["logs"]
        assert "scheduler" in logs and any(p.startswith("worker-") for p in logs)
        [worker] = carol.json("workers", name)
        assert (worker["status"], worker["reason"], worker["stop_time"]) == ("RUNNING", None, None)
        assert f"worker-{worker['name']}" in logs
        table = carol.ok("workers", name).splitlines()
        assert table[0].split() == ["NAME", "STATUS", "RAN", "REASON"]
        assert table[1].split()[:2] == [worker["name"], "running"]
        assert carol.json("workers", name, "--failed") == []
        assert "==> scheduler <==" in carol.ok("logs", name)

        # --follow prints every line once, until the cluster has stopped.
        out = tmp_path / "follow.out"
        with out.open("w") as f:
            follow = subprocess.Popen(
                [str(FLOTILLA), "logs", name, "--follow", "--interval", "0.2"],
                env=carol.env(),
                stdout=f,
                stderr=subprocess.PIPE,
                text=True,
            )
        try:
            wait_for(lambda: "scheduler | " in out.read_text(), 60, "followed scheduler output")
            assert carol.ok("stop", name) == f"Stopped cluster {name}\n"
            _, err = follow.communicate(timeout=60)
        finally:
            follow.kill()
            follow.wait()
        assert follow.returncode == 0, err
        followed = [
            line.removeprefix("scheduler | ")
            for line in out.read_text().splitlines()
            if line.startswith("scheduler | ")
        ]
        final = carol.json("logs", name)["logs"]["scheduler"]
        assert followed == final.splitlines()

        stopped = carol.json("list", "--status", "stopped")
        assert [(c["name"], c["status"], c["cores"]) for c in stopped] == [(name, "STOPPED", 0)]
        assert carol.ok("stop", name) == f"Cluster {name} had already ended (stopped)\n"
    finally:
        carol.run("stop", name)


def test_ctrl_c_while_following_exits_130(users: dict[str, User], tmp_path: Path) -> None:
    bob = users["bob"]
    name = bob.json("create")["name"]
    out = tmp_path / "follow.out"
    try:
        with out.open("w") as f:
            follow = subprocess.Popen(
                [str(FLOTILLA), "logs", name, "-f", "--interval", "0.2"],
                env=bob.env(),
                stdout=f,
                stderr=subprocess.PIPE,
                text=True,
            )
        try:
            wait_for(lambda: "scheduler | " in out.read_text(), 60, "followed scheduler output")
            follow.send_signal(signal.SIGINT)
            _, err = follow.communicate(timeout=30)
        finally:
            follow.kill()
            follow.wait()
        assert follow.returncode == 130
        assert "Traceback" not in err
    finally:
        bob.run("stop", name)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("worker_cores=lots", "worker_cores must be an integer, got 'lots'"),
        ("worker_cores=9", "worker_cores must be <= 2"),
        ("profile=huge", "'huge' is not a valid option for profile"),
        ("gpus=1", "No option 'gpus' available (options: worker_cores, worker_memory,"),
    ],
)
def test_a_bad_option_is_one_line_and_exit_1(
    users: dict[str, User], option: str, message: str
) -> None:
    carol = users["carol"]
    assert message in carol.fails("create", "--option", option)
    assert carol.json("list") == []  # nothing was created


def test_only_an_admin_lists_and_stops_another_users_cluster(users: dict[str, User]) -> None:
    carol, bob, ada = users["carol"], users["bob"], users["ada"]
    name = bob.json("create", "--no-wait")["name"]
    try:
        assert carol.fails("stop", name) == f"User carol lacks permissions to view cluster {name}"
        assert carol.fails("admin", "stop", name).startswith("User carol lacks permissions")
        assert carol.fails("list", "--all-users") == "User carol is not an admin"
        assert carol.fails("admin", "usage") == "User carol is not an admin"
        assert carol.fails("scale", name, "1").startswith("User carol lacks permissions")
        assert carol.fails("workers", name).startswith("User carol lacks permissions")
        assert ada.json("workers", name) == []  # an admin may look; no workers asked for
        assert carol.fails("stop", "no-such-cluster") == "Cluster no-such-cluster not found"
        assert bob.json("list", "--status", "pending", "--status", "running")[0]["name"] == name

        everyone = ada.json("admin", "list")
        assert (name, "bob") in [(c["name"], c["owner"]) for c in everyone]
        assert "OWNER" in ada.ok("admin", "list").splitlines()[0].split()
        assert ada.ok("admin", "stop", name) == f"Stopped cluster {name} of user bob\n"

        def stopped() -> bool:
            return name in [c["name"] for c in bob.json("list", "--status", "stopped")]

        wait_for(stopped, 60, "bob's cluster to stop")
        assert name not in [c["name"] for c in bob.json("list")]
        usage = ada.json("admin", "usage")
        assert {"bob", "carol"} <= {u["user"] for u in usage}
    finally:
        ada.run("admin", "stop", name)


def test_options_and_usage(users: dict[str, User]) -> None:
    carol = users["carol"]
    spec = {f["field"]: f for f in carol.json("options")}
    assert spec["worker_cores"] == {
        "field": "worker_cores",
        "label": "Worker cores",
        "default": 1,
        "type": "int",
        "min": 1,
        "max": 2,
    }
    assert spec["profile"]["options"] == ["small", "large"]
    rows = {line.split()[0]: line.split() for line in carol.ok("options").splitlines()}
    assert rows["FIELD"][:4] == ["FIELD", "TYPE", "DEFAULT", "CHOICES/BOUNDS"]
    assert rows["worker_cores"][:4] == ["worker_cores", "int", "1", "1..2"]
    assert rows["profile"][:4] == ["profile", "select", '"small"', "small,"]

    (mine,) = carol.json("usage")
    assert mine["user"] == "carol" and set(mine) >= {"clusters", "cores", "memory", "quota"}
    assert carol.ok("usage").splitlines()[0].split()[:3] == ["USER", "CLUSTERS", "WORKERS"]


def test_address_and_auth_override_the_login(stack: Stack, users: dict[str, User]) -> None:
    carol = users["carol"]
    dead = "http://127.0.0.1:1"
    assert carol.fails("list", "--address", dead).startswith("Gateway at http://127.0.0.1:1")
    assert carol.json("list", "--auth", "basic", "--address", stack.address) == []
    assert "Unknown auth type 'nope'" in carol.fails("list", "--auth", "nope")
