"""The Slurm and PBS backends' hooks against a real single-node Slurm (and Debian's PBS
wrappers over it): jobs of the requesting user, private staging files, status from one
query, cancellation, the job's output as its log. The "scheduler" here is a shell that
prints who it is and sleeps, so these tests cost no Dask start-up."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flotilla_common.tls import new_keypair
from flotilla_launcher.backends.base import BackendError, ClusterConfig, ClusterSpec, WorkerSpec
from flotilla_launcher.backends.batch import BatchBackend, BatchCommandError
from flotilla_launcher.backends.pbs import PBSBackend
from flotilla_launcher.backends.slurm import SlurmBackend
from helpers import wait_for
from slurm_cluster import SlurmCluster, ensure_user
from traitlets.config import Config

pytestmark = [pytest.mark.integration, pytest.mark.slurm, pytest.mark.timeout(180)]

# Prints what the job sees, then waits like a scheduler would.
SHELL_SCHEDULER = (
    "/bin/sh",
    "-c",
    'echo "job-user=$(id -un) home=$HOME token=${DASK_GATEWAY_API_TOKEN:+set}"; exec sleep 300',
    "job",
)


def backend_config(slurm: SlurmCluster, job_python: Path, section: str) -> Config:
    cfg = Config()
    s = cfg[section]
    s.command_environment = {"SLURM_CONF": str(slurm.conf)}
    s.helper_command = [str(job_python / "flotilla-batch-helper")]
    s.job_path = []
    s.bind_host = "127.0.0.1"
    s.cancel_timeout = 20.0
    return cfg


def cluster_spec(owner: str, **config: Any) -> ClusterSpec:
    name = uuid.uuid4().hex
    cert, key = new_keypair(name)
    return ClusterSpec(
        name=name,
        owner=owner,
        config=ClusterConfig(
            scheduler_cmd=SHELL_SCHEDULER,
            worker_cmd=SHELL_SCHEDULER,
            scheduler_memory=256 * 2**20,
            worker_memory=256 * 2**20,
            **config,
        ),
        tls_cert=cert,
        tls_key=key,
        token=uuid.uuid4().hex,
        api_url="http://127.0.0.1:9/api",
    )


async def start(backend: BatchBackend, spec: ClusterSpec) -> dict[str, Any]:
    """Run the start hook to its last checkpoint."""
    checkpoints = [state async for state in backend.start_cluster(spec)]
    return checkpoints[-1]


async def start_worker(backend: BatchBackend, worker: WorkerSpec) -> dict[str, Any]:
    checkpoints = [state async for state in backend.start_worker(worker)]
    return checkpoints[-1]


def mode_and_owner(path: Path) -> tuple[int, int]:
    st = path.stat()
    return stat.S_IMODE(st.st_mode), st.st_uid


async def wait_log(path: Path, text: str, timeout: float = 30) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if path.exists() and text in (content := path.read_text(errors="replace")):
            return content
        await asyncio.sleep(0.2)
    raise AssertionError(f"{path} never showed {text!r}")


async def test_slurm_scheduler_job_lifecycle(
    slurm: SlurmCluster, hpc_users: tuple[str, ...], job_python: Path
) -> None:
    alice = hpc_users[0]
    uid = ensure_user(alice).pw_uid
    backend = SlurmBackend(config=backend_config(slurm, job_python, "SlurmBackend"))
    spec = cluster_spec(alice)
    state = await start(backend, spec)
    job_id = state["job_id"]

    [job] = [j for j in slurm.jobs() if j["id"] == job_id]
    assert job["user"] == alice
    assert job["name"] == f"flotilla-scheduler-{spec.name[:8]}"
    directory = Path(state["directory"])
    assert directory == Path(ensure_user(alice).pw_dir) / ".flotilla" / "clusters" / spec.name
    assert mode_and_owner(directory) == (0o700, uid)
    assert mode_and_owner(directory / "dask.pem") == (0o600, uid)
    assert mode_and_owner(directory / "dask.crt") == (0o600, uid)
    assert mode_and_owner(directory / "scheduler.sh") == (0o700, uid)
    assert (directory / "dask.pem").read_text() == spec.tls_key

    output = await wait_log(Path(state["log"]), "job-user=")
    assert f"job-user={alice} home=/home/{alice} token=set" in output
    [status] = await backend.check_clusters([(spec, state)])
    assert status.running, status.reason

    # Slurm kills it: the check says so, naming the job and where its output is.
    slurm.run("scancel", job_id)
    [status] = await backend.check_clusters([(spec, state)])
    deadline = asyncio.get_running_loop().time() + 30
    while status.running and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.3)
        [status] = await backend.check_clusters([(spec, state)])
    assert not status.running
    assert status.reason.startswith(f"scheduler job {job_id} CANCELLED"), status.reason
    assert state["log"] in status.reason
    logs = await backend.read_logs(spec, state, 4096, 65536)
    assert list(logs) == ["scheduler"] and f"job-user={alice}" in logs["scheduler"]

    # Stopping removes the secrets (scripts hold the token) and keeps the output.
    await backend.stop_cluster(spec, state)
    assert sorted(p.name for p in directory.iterdir()) == ["logs"]
    assert Path(state["log"]).exists()
    assert f"job-user={alice}" in (await backend.read_logs(spec, state, 4096, 65536))["scheduler"]


async def test_slurm_workers_and_one_query(
    slurm: SlurmCluster, hpc_users: tuple[str, ...], job_python: Path, tmp_path: Path
) -> None:
    """Every job's status comes from a single squeue, whatever the number of jobs."""
    bob = hpc_users[1]
    calls = tmp_path / "squeue-calls"
    wrapper = tmp_path / "squeue"
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nexec squeue "$@"\n')
    wrapper.chmod(0o755)
    cfg = backend_config(slurm, job_python, "SlurmBackend")
    cfg.SlurmBackend.squeue = str(wrapper)
    cfg.SlurmBackend.partition = "debug"
    backend = SlurmBackend(config=cfg)
    spec = cluster_spec(bob)
    state = await start(backend, spec)
    workers = [WorkerSpec(spec, uuid.uuid4().hex, "127.0.0.1:1") for _ in range(4)]
    wstates = await asyncio.gather(*(start_worker(backend, w) for w in workers))
    assert len({s["job_id"] for s in wstates}) == 4
    assert {j["user"] for j in slurm.jobs(bob)} == {bob}

    calls.write_text("")
    statuses, wstatuses = await backend.check(
        [(spec, state)], list(zip(workers, wstates, strict=True))
    )
    lines = calls.read_text().splitlines()
    assert len(lines) == 1, lines
    for s in [state, *wstates]:
        assert s["job_id"] in lines[0]
    assert [s.running for s in [*statuses, *wstatuses]] == [True] * 5

    # One worker's job is cancelled behind our back: only that one is reported gone.
    slurm.run("scancel", wstates[0]["job_id"])

    async def first_gone() -> bool:
        _, ws = await backend.check([], list(zip(workers, wstates, strict=True)))
        return not ws[0].running and all(s.running for s in ws[1:])

    for _ in range(60):
        if await first_gone():
            break
        await asyncio.sleep(0.3)
    else:
        raise AssertionError("the cancelled worker job was never reported")

    for w, s in zip(workers, wstates, strict=True):
        await backend.stop_worker(w, s)
    await backend.stop_cluster(spec, state)
    wait_for(lambda: not slurm.jobs(bob), 30, "bob's jobs to end")


async def test_jobs_a_dead_launcher_never_reported(
    slurm: SlurmCluster, hpc_users: tuple[str, ...], job_python: Path
) -> None:
    """A launcher died after submitting but before its checkpoint reached the registry:
    the next one adopts the live jobs instead of submitting them again, and a stop with
    no checkpoint at all still cancels every job of the cluster."""
    alice = hpc_users[0]
    cfg = backend_config(slurm, job_python, "SlurmBackend")
    first = SlurmBackend(config=cfg)
    spec = cluster_spec(alice)
    state = await start(first, spec)
    worker = WorkerSpec(spec, uuid.uuid4().hex, "127.0.0.1:1")
    wstate = await start_worker(first, worker)

    second = SlurmBackend(config=cfg)  # a new launcher process, with no checkpoints
    assert (await start(second, spec))["job_id"] == state["job_id"]
    assert (await start_worker(second, worker))["job_id"] == wstate["job_id"]
    assert len(slurm.jobs(alice)) == 2

    # The scheduler job ends; starting again submits a new one.
    slurm.run("scancel", state["job_id"])
    wait_for(lambda: len(slurm.jobs(alice)) == 1, 30, "the scheduler job to end")
    again = await start(second, spec)
    assert again["job_id"] != state["job_id"]

    await SlurmBackend(config=cfg).stop_cluster(spec, {})
    wait_for(lambda: not slurm.jobs(alice), 30, "every job of the cluster to end")
    assert sorted(p.name for p in Path(again["directory"]).iterdir()) == ["logs"]


async def test_slurm_refusal_is_reported(
    slurm: SlurmCluster, hpc_users: tuple[str, ...], job_python: Path
) -> None:
    cfg = backend_config(slurm, job_python, "SlurmBackend")
    cfg.SlurmBackend.partition = "no-such-partition"
    backend = SlurmBackend(config=cfg)
    spec = cluster_spec(hpc_users[0])
    with pytest.raises(BackendError, match=r"Slurm refused the scheduler job.*partition"):
        await start(backend, spec)
    with pytest.raises(BackendError, match="does not exist"):
        await start(backend, cluster_spec("no-such-account-here"))


async def test_pbs_commands_over_slurm(
    slurm: SlurmCluster, hpc_users: tuple[str, ...], job_python: Path
) -> None:
    """Torque-flavoured qsub/qstat/qdel (Debian's wrappers over Slurm)."""
    alice = hpc_users[0]
    cfg = backend_config(slurm, job_python, "PBSBackend")
    cfg.PBSBackend.flavor = "torque"
    cfg.PBSBackend.queue = "debug"
    cfg.PBSBackend.walltime = "01:00:00"
    backend = PBSBackend(config=cfg)
    spec = cluster_spec(alice, scheduler_cores=2)
    state = await start(backend, spec)
    job_id = state["job_id"]
    [job] = [j for j in slurm.jobs() if j["id"] == job_id]
    assert job["user"] == alice
    # The #PBS directives carried name, queue, cores, memory and walltime to Slurm.
    shown = slurm.run("scontrol", "show", "job", "-o", job_id).stdout
    for expected in (
        f"JobName=flotilla-scheduler-{spec.name[:8]}",
        "Partition=debug",
        "NumCPUs=2",
        "TimeLimit=01:00:00",
        "MinMemoryNode=256M",
        f"StdOut={state['log']}",
    ):
        assert expected in shown, (expected, shown)
    output = await wait_log(Path(state["log"]), "job-user=")
    assert f"job-user={alice}" in output
    [status] = await backend.check_clusters([(spec, state)])
    assert status.running

    await backend.stop_cluster(spec, state)
    [status] = await backend.check_clusters([(spec, state)])
    assert not status.running
    assert status.reason.startswith(f"scheduler job {job_id} completed"), status.reason
    assert not (Path(state["directory"]) / "dask.pem").exists()


async def test_pbspro_select_syntax_over_slurm(
    slurm: SlurmCluster, hpc_users: tuple[str, ...], job_python: Path
) -> None:
    """The PBS Pro flavor's directives (select=...) submit through the same wrappers;
    only its status format (qstat -x -F json) needs a real PBS Pro (see the unit tests)."""
    cfg = backend_config(slurm, job_python, "PBSBackend")
    cfg.PBSBackend.flavor = "pbspro"
    cfg.PBSBackend.walltime = "00:45:00"
    backend = PBSBackend(config=cfg)
    spec = cluster_spec(hpc_users[1], scheduler_cores=3)
    state = await start(backend, spec)
    shown = slurm.run("scontrol", "show", "job", "-o", state["job_id"]).stdout
    for expected in ("MinCPUsNode=3", "TimeLimit=00:45:00", "MinMemoryNode=256M", "UserId=bob"):
        assert expected in shown, (expected, shown)
    # Its qstat -x is refused by the Torque-style wrapper: not a job state, an error.
    with pytest.raises(BatchCommandError, match="qstat failed"):
        await backend.check_clusters([(spec, state)])
    await backend.stop_cluster(spec, state)  # qdel works
    wait_for(lambda: not slurm.jobs("bob"), 30, "bob's job to end")


@pytest.fixture
def service_account(job_python: Path, hpc_users: tuple[str, ...]) -> Iterator[str]:
    """A non-root account allowed, by one sudoers line, to run the helper as the users."""
    name = "flotilla-svc"
    ensure_user(name)
    rule = Path("/etc/sudoers.d/flotilla-test-batch")
    rule.write_text(
        f"{name} ALL=({','.join(hpc_users)}) NOPASSWD: {job_python / 'flotilla-batch-helper'}\n"
    )
    rule.chmod(0o440)
    try:
        check = subprocess.run(["visudo", "-cf", str(rule)], capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
        yield name
    finally:
        rule.unlink(missing_ok=True)


def test_service_account_with_sudoers_rule(
    slurm: SlurmCluster, job_python: Path, service_account: str, hpc_users: tuple[str, ...]
) -> None:
    """The documented deployment: the launcher runs as a service account whose only
    privilege is the sudoers line for flotilla-batch-helper."""
    alice = hpc_users[0]
    script = textwrap.dedent(
        f"""
        import asyncio, json, sys, uuid
        from traitlets.config import Config
        from flotilla_common.tls import new_keypair
        from flotilla_launcher.backends.base import ClusterConfig, ClusterSpec
        from flotilla_launcher.backends.slurm import SlurmBackend

        async def main():
            cfg = Config()
            cfg.SlurmBackend.command_environment = {{"SLURM_CONF": {str(slurm.conf)!r}}}
            cfg.SlurmBackend.job_path = []
            backend = SlurmBackend(config=cfg)
            name = uuid.uuid4().hex
            cert, key = new_keypair(name)
            spec = ClusterSpec(name, {alice!r}, ClusterConfig(
                scheduler_cmd={list(SHELL_SCHEDULER)!r}, scheduler_memory=2**28),
                cert, key, "token", "http://127.0.0.1:9/api")
            async for state in backend.start_cluster(spec):
                pass
            for _ in range(100):
                job = (await backend.query([state["job_id"]]))[state["job_id"]]
                if job.state == "RUNNING":
                    break
                await asyncio.sleep(0.2)
            [running] = await backend.check_clusters([(spec, state)])
            await backend.stop_cluster(spec, state)
            [stopped] = await backend.check_clusters([(spec, state)])
            logs = await backend.read_logs(spec, state, 4096, 65536)
            print(json.dumps({{"state": state, "running": running.running,
                              "after": stopped.reason, "logs": logs}}))

        asyncio.run(main())
        """
    )
    proc = subprocess.run(
        [str(job_python / "python"), "-c", script],
        user=service_account,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": os.environ["PATH"], "HOME": "/"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["running"] is True
    assert result["state"]["user"] == alice
    assert "CANCELLED" in result["after"]
    assert f"job-user={alice}" in result["logs"]["scheduler"]
    log = Path(result["state"]["log"])
    assert log.stat().st_uid == ensure_user(alice).pw_uid
