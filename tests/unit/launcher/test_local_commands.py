"""Commands, environment and configuration of the local backend (no processes)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from flotilla_launcher.backends.base import (
    Backend,
    BackendError,
    ClusterConfig,
    ClusterSpec,
    check_name,
    load_backend,
)
from flotilla_launcher.backends.commands import scheduler_command, worker_command
from flotilla_launcher.backends.local import LocalBackend, RunAs, build_environment
from traitlets.config import Config

KEEP = ["PATH", "PYTHONPATH", "LANG", "LC_ALL", "VIRTUAL_ENV"]


def spec(config: ClusterConfig | None = None, owner: str = "alice") -> ClusterSpec:
    return ClusterSpec(
        name="c1",
        owner=owner,
        config=config or ClusterConfig(),
        tls_cert="CERT",
        tls_key="KEY",
        token="tok",
        api_url="http://127.0.0.1:8000/api",
    )


def test_scheduler_command_matches_the_contract() -> None:
    cfg = ClusterConfig(heartbeat_period=15, adaptive_period=3, idle_timeout=0)
    assert (
        scheduler_command(cfg)
        == (
            "dask scheduler --protocol tls --port 0 --host 127.0.0.1 --dashboard-address "
            "127.0.0.1:0 --preload flotilla.scheduler_preload --dg-api-address 127.0.0.1:0 "
            "--dg-heartbeat-period 15.0 --dg-adaptive-period 3.0 --dg-idle-timeout 0.0"
        ).split()
    )


def test_worker_command_matches_the_contract() -> None:
    cfg = ClusterConfig(worker_threads=2, worker_memory=1024)
    assert (
        worker_command(cfg, "w1", "127.0.0.1:1234")
        == (
            "dask worker tls://127.0.0.1:1234 --dashboard-address 127.0.0.1:0 --name w1 "
            "--nthreads 2 --memory-limit 1024"
        ).split()
    )
    # A full address is used as is.
    assert worker_command(cfg, "w1", "tls://h:1")[2] == "tls://h:1"


def test_config_from_json_wraps_single_string_commands_and_ignores_unknown_keys() -> None:
    cfg = ClusterConfig.from_json(
        json.dumps(
            {
                "scheduler_cmd": "my scheduler",
                "worker_cmd": ["dask", "worker"],
                "environment": {"A": 1},
                "worker_memory": 2048,
                "cluster_max_workers": None,
                "something_new": True,
            }
        )
    )
    assert cfg.scheduler_cmd == ("my scheduler",)  # not shell-split
    assert cfg.environment == {"A": "1"}
    assert cfg.worker_memory == 2048
    assert ClusterConfig.from_json("") == ClusterConfig()
    with pytest.raises(BackendError):
        ClusterConfig.from_json('{"scheduler_cmd": []}')
    with pytest.raises(BackendError):
        ClusterConfig.from_json("[1]")


def test_environment_order_and_tls_variables(tmp_path: Path) -> None:
    inherited = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "SECRET": "not copied",
        "HOME": "/root",
        "USER": "root",
    }
    cfg = ClusterConfig(
        environment={"LANG": "de_DE.UTF-8", "DASK_GATEWAY_CLUSTER_NAME": "spoofed", "X": "1"}
    )
    env = build_environment(
        spec(cfg),
        certs_dir=tmp_path,
        worker_name=None,
        run_as=None,
        inherited=inherited,
        keep=KEEP,
        bin_dir="/venv/bin",
    )
    assert env["PATH"] == "/venv/bin:/usr/bin:/bin"
    assert "SECRET" not in env
    assert env["LANG"] == "de_DE.UTF-8"  # config overrides inherited
    assert env["X"] == "1"
    assert env["DASK_GATEWAY_CLUSTER_NAME"] == "c1"  # gateway variables override config
    assert env["DASK_GATEWAY_API_URL"] == "http://127.0.0.1:8000/api"
    assert env["DASK_GATEWAY_API_TOKEN"] == "tok"
    assert env["DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION"] == "True"
    assert env["DASK_DISTRIBUTED__COMM__TLS__CA_FILE"] == str(tmp_path / "dask.crt")
    assert env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT"] == str(tmp_path / "dask.crt")
    assert env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY"] == str(tmp_path / "dask.pem")
    assert "DASK_GATEWAY_WORKER_NAME" not in env
    assert env["USER"] == "root" and env["HOME"] == "/root"


def test_worker_environment_runs_as_user(tmp_path: Path) -> None:
    run_as = RunAs("alice", 1000, 1000, (1000,), "/home/alice")
    env = build_environment(
        spec(),
        certs_dir=tmp_path,
        worker_name="w1",
        run_as=run_as,
        inherited={"PATH": "/bin", "HOME": "/root", "USER": "root"},
        keep=KEEP,
        bin_dir="/venv/bin",
    )
    assert env["USER"] == "alice" and env["HOME"] == "/home/alice"
    assert env["DASK_GATEWAY_WORKER_NAME"] == "w1"
    assert env["DASK_DISTRIBUTED__COMM__TLS__WORKER__CERT"] == str(tmp_path / "dask.crt")
    assert "DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT" not in env


def test_backend_options_and_paths(tmp_path: Path) -> None:
    cfg = Config()
    cfg.Deployment.state_dir = str(tmp_path / "state")
    backend = LocalBackend(config=cfg)
    assert backend.root == tmp_path / "state" / "clusters"
    assert backend.workdir("c1") == tmp_path / "state" / "clusters" / "c1"
    cfg.LocalBackend.clusters_directory = str(tmp_path / "elsewhere")
    cfg.LocalBackend.run_as = "self"
    backend = LocalBackend(config=cfg)
    assert backend.workdir("c1") == tmp_path / "elsewhere" / "c1"
    assert backend.resolve_run_as("anyone") is None
    for bad in ("..", "../x", "a/b", "", ".hidden"):
        with pytest.raises(BackendError):
            backend.workdir(bad)
    assert LocalBackend.class_traits()["run_as"].help


def test_missing_unix_user_is_a_clear_failure() -> None:
    cfg = Config()
    cfg.LocalBackend.run_as = "user"
    backend = LocalBackend(config=cfg)
    with pytest.raises(BackendError, match="Unix user 'flotilla-no-such-user' does not exist"):
        backend.resolve_run_as("flotilla-no-such-user")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_run_as_user_resolves_account_when_root() -> None:
    backend = LocalBackend(config=Config())  # auto: user when root
    run_as = backend.resolve_run_as("nobody")
    assert run_as is not None and run_as.user == "nobody" and run_as.uid != 0


def test_entry_point_finds_local_backend() -> None:
    assert load_backend("local") is LocalBackend
    assert issubclass(LocalBackend, Backend)
    with pytest.raises(SystemExit, match="unknown backend"):
        load_backend("no-such-backend")


def test_check_name() -> None:
    assert check_name("worker", "0123abcdef") == "0123abcdef"
    with pytest.raises(BackendError):
        check_name("worker", "a b")


def test_bin_dir_is_the_interpreters() -> None:
    env = build_environment(
        spec(),
        certs_dir=Path("/x"),
        worker_name=None,
        run_as=None,
        inherited={"PATH": "/bin"},
        keep=KEEP,
        bin_dir=str(Path(sys.executable).parent),
    )
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
