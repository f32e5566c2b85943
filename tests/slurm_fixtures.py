"""Session fixtures for tests that need a real Slurm (loaded by tests/conftest.py).

Without root or packages the tests skip with a one-line reason; with ``CI=true`` they
fail instead, since CI must run them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from gateway_stack import show_logs
from slurm_cluster import (
    SlurmCluster,
    Unavailable,
    build_job_python,
    ensure_installed,
    ensure_user,
    make_root,
)

PROJECT = Path(__file__).resolve().parents[1]
#: The test users' names; the gateway's basic auth accepts any name.
USERS = ("alice", "bob")


def unavailable(reason: str) -> NoReturn:
    """Skip (fail under CI=true) with ``reason``."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI=true but: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A single-node Slurm of its own, stopped (with every job) at the end."""
    if os.geteuid() != 0:
        unavailable("a private Slurm needs root (daemons, test users, sudo)")
    try:
        ensure_installed()
    except Unavailable as exc:
        unavailable(str(exc))
    cluster = SlurmCluster(make_root("flotilla-slurm-"))
    try:
        try:
            cluster.start()
        except Unavailable as exc:
            unavailable(str(exc))
        yield cluster
    finally:
        leaked = cluster.stop()
        show_logs(cluster.root / "log")
        shutil.rmtree(cluster.root, ignore_errors=True)
    assert not leaked, f"job processes outlived their cancelled jobs: {leaked}"


@pytest.fixture(scope="session")
def hpc_users(slurm: SlurmCluster) -> tuple[str, ...]:
    """Unix accounts that submit jobs (created once, kept: other runs may use them)."""
    for name in USERS:
        ensure_user(name)
    return USERS


@pytest.fixture(scope="session")
def job_python(hpc_users: tuple[str, ...]) -> Iterator[Path]:
    """The bin directory of a Python every test user can run, with the project in it."""
    root = make_root("flotilla-jobenv-")
    try:
        try:
            bin_dir = build_job_python(PROJECT, root / "venv")
        except Unavailable as exc:
            unavailable(str(exc))
        probe = subprocess.run(
            [str(bin_dir / "python"), "-c", "import distributed, flotilla.scheduler_preload"],
            user=hpc_users[0],
            capture_output=True,
            text=True,
        )
        assert probe.returncode == 0, f"{hpc_users[0]} cannot use {bin_dir}: {probe.stderr}"
        yield bin_dir
    finally:
        shutil.rmtree(root, ignore_errors=True)
