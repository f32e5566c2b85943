"""Acceptance (issue 4): one gateway offering local processes, Slurm and PBS (Debian's
PBS wrappers over the same single-node Slurm), driven through the real Envoy.

Every batch command the launchers run goes through a wrapper that logs it, so a test can
count them. Jobs run as the test users, from a Python installed where they can reach it
(see slurm_fixtures.job_python), which the site's setup script puts on PATH.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dask.array as da
import pytest
from flotilla import BasicAuth
from flotilla import Gateway as FlotillaGateway
from flotilla_common.embedded import EmbeddedStack
from gateway_stack import (
    Gateway,
    reap_leftover_cluster_processes,
    show_logs,
    upstream_python,
    write_config,
)
from helpers import wait_for
from slurm_cluster import SlurmCluster, make_root

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(420)]

SCENARIO = Path(__file__).parent / "scenarios" / "upstream_batch.py"
BATCH_COMMANDS = ("sbatch", "squeue", "scancel", "sacct", "qsub", "qstat", "qdel")
CHECK_PERIOD = 1.0


@dataclass
class HPCGateway(Gateway):
    slurm: SlurmCluster
    calls_log: Path

    def calls(self, since: float = 0.0) -> list[tuple[float, str, str]]:
        """Batch commands the launchers ran: (time, command, arguments)."""
        out = []
        for line in self.calls_log.read_text().splitlines():
            stamp, command, args = [*line.split(" ", 2), ""][:3]
            if float(stamp) >= since:
                out.append((float(stamp), command, args))
        return out

    def cluster_jobs(self, cluster: str, user: str) -> list[dict[str, str]]:
        """The cluster's jobs squeue lists (pending, running, completing)."""
        return [j for j in self.slurm.jobs(user) if j["name"].endswith(f"-{cluster[:8]}")]


def _wrappers(directory: Path) -> Path:
    """Logging wrappers of the batch commands (users run some of them, via the helper)."""
    log = directory / "calls.log"
    log.touch()
    log.chmod(0o666)
    for name in BATCH_COMMANDS:
        wrapper = directory / name
        wrapper.write_text(
            "#!/bin/sh\n"
            f'printf "%s {name} %s\\n" "$(date +%s.%N)" "$*" >> {log}\n'
            f'exec /usr/bin/{name} "$@"\n'
        )
        wrapper.chmod(0o755)
    return log


def _config(slurm: SlurmCluster, job_python: Path, bin_dir: Path) -> str:
    python = job_python
    return textwrap.dedent(
        f"""
        from flotilla_registry.options import Bool, Float, Integer, Options, Select

        c.Registry.backends = ["local", "slurm", "pbs"]
        c.Registry.default_backend = "slurm"

        def _handler(options):
            config = {{
                "worker_cores": options.worker_cores,
                "worker_memory": int(options.worker_memory * 2**30),
            }}
            # Where the jobs run: a Slurm partition, or a PBS queue (the wrappers map
            # queues to partitions).
            field = {{"slurm": "partition", "pbs": "queue"}}.get(options.backend)
            if field:
                config[field] = options.partition
            if options.idle_workers:
                # Workers that never connect: only their jobs matter to the test.
                config["worker_cmd"] = ["/bin/sh", "-c", "exec sleep 3600", "worker"]
                config["worker_start_timeout"] = 600
            return config

        c.Registry.cluster_options = Options(
            Select("backend", ["slurm", "pbs", "local"], label="Where to run"),
            Integer("worker_cores", default=1, min=1, max=2),
            Float("worker_memory", default=0.5, min=0.25, max=2),
            Bool("idle_workers", default=False),
            Select("partition", ["debug", "long"], label="Partition or queue"),
            handler=_handler,
        )
        # Every backend runs the Python the test users can reach.
        c.ClusterConfig.scheduler_cmd = [{str(python / "dask")!r}, "scheduler"]
        c.ClusterConfig.worker_cmd = [{str(python / "dask")!r}, "worker"]
        c.ClusterConfig.cluster_max_workers = 25
        c.LocalBackend.run_as = "user"
        c.Launcher.status_check_period = {CHECK_PERIOD}

        c.BatchBackend.command_environment = {{"SLURM_CONF": {str(slurm.conf)!r}}}
        c.BatchBackend.helper_command = [{str(python / "flotilla-batch-helper")!r}]
        c.BatchBackend.job_path = [{str(python)!r}]
        c.BatchBackend.setup_script = "export FLOTILLA_TEST_SETUP=ran"
        c.BatchBackend.bind_host = "127.0.0.1"
        c.SlurmBackend.partition = "debug"
        c.SlurmBackend.sbatch = {str(bin_dir / "sbatch")!r}
        c.SlurmBackend.squeue = {str(bin_dir / "squeue")!r}
        c.SlurmBackend.scancel = {str(bin_dir / "scancel")!r}
        c.SlurmBackend.sacct = {str(bin_dir / "sacct")!r}
        c.PBSBackend.flavor = "torque"
        c.PBSBackend.queue = "debug"
        c.PBSBackend.walltime = "02:00:00"
        c.PBSBackend.qsub = {str(bin_dir / "qsub")!r}
        c.PBSBackend.qstat = {str(bin_dir / "qstat")!r}
        c.PBSBackend.qdel = {str(bin_dir / "qdel")!r}
        """
    )


@pytest.fixture(scope="module")
def hpc(slurm: SlurmCluster, hpc_users: tuple[str, ...], job_python: Path) -> Iterator[HPCGateway]:
    # Not under pytest's private tmp: local clusters' directories must be reachable by
    # their owners.
    state_dir = make_root("flotilla-hpc-")
    bin_dir = state_dir / "bin"
    bin_dir.mkdir(mode=0o755)
    log = _wrappers(bin_dir)
    config, address = write_config(state_dir, _config(slurm, job_python, bin_dir))
    stack = EmbeddedStack(str(config))
    try:
        stack.start()
        yield HPCGateway(address, stack, state_dir, slurm, log)
    finally:
        stack.stop()
        leftover = reap_leftover_cluster_processes(state_dir)
        jobs = [j for user in hpc_users for j in slurm.jobs(user)]
        show_logs(state_dir / "logs")
        shutil.rmtree(state_dir, ignore_errors=True)
    assert not leftover, f"local cluster processes left after the gateway stopped: {leftover}"
    assert not jobs, f"jobs left after the gateway stopped: {jobs}"


def _run_upstream(hpc: HPCGateway, user: str, backend: str) -> dict[str, object]:
    proc = subprocess.run(
        [upstream_python(), str(SCENARIO), hpc.address, user, backend],
        capture_output=True,
        text=True,
        timeout=360,
        env={
            **os.environ,
            "SLURM_CONF": str(hpc.slurm.conf),
            "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "30s",
        },
    )
    assert proc.returncode == 0, f"scenario failed:\n{proc.stdout}\n{proc.stderr[-6000:]}"
    result: dict[str, object] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"upstream scenario on {backend}:", result)
    return result


def _assert_user_everywhere(result: dict[str, object], user: str) -> None:
    expected = [user, user, "ran"]
    assert result["scheduler_user"] == expected
    assert result["worker_users"] == [expected]
    assert result["task_users"] == [expected]


def _assert_jobs_gone_within(hpc: HPCGateway, result: dict[str, object], user: str) -> None:
    name = str(result["name"])
    wait_for(lambda: not hpc.cluster_jobs(name, user), 30, "the cluster's jobs to leave squeue")
    gone_after = time.time() - float(result["shutdown_at"])  # type: ignore[arg-type]
    print(f"squeue empty {gone_after:.1f}s after shutdown()")
    assert gone_after <= 10, f"jobs still in squeue {gone_after:.1f}s after shutdown()"


def test_upstream_client_on_slurm(hpc: HPCGateway) -> None:
    """Acceptance 1: compute on 2 workers, the owner everywhere, scale 2→1→3, and an
    empty squeue within 10 s of shutdown()."""
    result = _run_upstream(hpc, "alice", "slurm")
    assert result["computed"] is True
    _assert_user_everywhere(result, "alice")
    assert (result["after_scale_1"], result["after_scale_3"]) == (1, 3)
    _assert_jobs_gone_within(hpc, result, "alice")
    submitted = [a for _, cmd, a in hpc.calls() if cmd == "sbatch" and str(result["name"]) in a]
    assert len(submitted) == 1 + 2 + 2  # the scheduler, 2 workers, 2 more after scale(1)


def test_upstream_client_through_pbs_commands(hpc: HPCGateway) -> None:
    """Acceptance 2: the same through qsub/qstat/qdel."""
    since = time.time()
    result = _run_upstream(hpc, "bob", "pbs")
    assert result["computed"] is True
    _assert_user_everywhere(result, "bob")
    assert (result["after_scale_1"], result["after_scale_3"]) == (1, 3)
    _assert_jobs_gone_within(hpc, result, "bob")
    # Every command that concerned this cluster's jobs was a PBS one. (The Slurm
    # launcher may still be polling the end of an earlier test's cluster.)
    name = str(result["name"])
    finished = hpc.slurm.run("squeue", "-h", "-t", "all", "-u", "bob", "-o", "%i %j").stdout
    ids = {i for i, job in (line.split() for line in finished.splitlines()) if name[:8] in job}
    assert len(ids) == 1 + 2 + 2, finished

    def concerns(args: str) -> bool:
        words = args.replace(",", " ").replace("=", " ").split()
        return name in args or any(i in words for i in ids)

    used = {cmd for _, cmd, args in hpc.calls(since) if concerns(args)}
    assert used == {"qsub", "qstat", "qdel"}, used


def _wait_status(gw: FlotillaGateway, name: str, status: str, timeout: float) -> object:
    return wait_for(
        lambda: (r := gw.get_cluster(name)).status.name == status and r,
        timeout,
        f"cluster {name} to be {status}",
        interval=0.3,
    )


def test_killed_jobs_are_replaced_or_fail_the_cluster(hpc: HPCGateway) -> None:
    """Acceptance 3: scancel of a worker → a replacement; of the scheduler → FAILED with a
    reason naming the job; the job output stays readable as the cluster's logs."""
    with FlotillaGateway(hpc.address, auth=BasicAuth("alice")) as gw:
        cluster = gw.new_cluster(backend="slurm")
        name = cluster.name
        cluster.scale(1)
        client = cluster.get_client(set_as_default=False)
        client.wait_for_workers(1, timeout=180)

        def worker_names() -> set[str]:
            return {w["name"] for w in client.scheduler_info()["workers"].values()}

        first = worker_names()
        [worker_job] = [j for j in hpc.cluster_jobs(name, "alice") if "-worker-" in j["name"]]
        hpc.slurm.run("scancel", worker_job["id"])
        replaced = wait_for(
            lambda: (names := worker_names()) and len(names) == 1 and not names & first and names,
            180,
            "a replacement worker to connect",
        )
        [new_job] = [j for j in hpc.cluster_jobs(name, "alice") if "-worker-" in j["name"]]
        assert new_job["id"] != worker_job["id"]
        assert client.submit(lambda x: x * 2, 21).result(timeout=60) == 42
        client.close()

        [scheduler_job] = [j for j in hpc.cluster_jobs(name, "alice") if "-scheduler-" in j["name"]]
        hpc.slurm.run("scancel", scheduler_job["id"])
        report = _wait_status(gw, name, "FAILED", 60)
        reason = report.reason  # type: ignore[attr-defined]
        assert reason.startswith(f"scheduler job {scheduler_job['id']} CANCELLED"), reason
        assert name not in [c.name for c in gw.list_clusters()]
        wait_for(lambda: not hpc.cluster_jobs(name, "alice"), 30, "the failed cluster's jobs")
        # The registry kept every job's output, sent by the launcher once the jobs ended.
        logs = gw.get_cluster_logs(name)
        assert next(iter(logs)) == "scheduler" and "Scheduler at:" in logs["scheduler"]
        assert set(logs) == {"scheduler", *(f"worker-{w}" for w in first | replaced)}

    # The output of every job is kept, owned by alice, where the reason says.
    scheduler_log = Path(reason.rsplit("output in ", 1)[1])
    assert scheduler_log.stat().st_uid == pwd.getpwnam("alice").pw_uid
    assert "Scheduler at:" in scheduler_log.read_text()
    logs = sorted(p.name for p in scheduler_log.parent.iterdir())
    assert logs == sorted(["scheduler.log", *(f"worker-{w}.log" for w in first | replaced)]), logs
    staged = sorted(p.name for p in scheduler_log.parent.parent.iterdir())
    assert staged == ["logs"], staged  # certificates and scripts (token) are gone


def test_local_and_slurm_side_by_side(hpc: HPCGateway) -> None:
    """Acceptance 4: alice has a local and a Slurm cluster at once; both compute, and
    each launcher ran only its own. A backend the gateway does not offer is a 422."""
    status, _, body = hpc.request(
        "POST", "/api/v1/clusters/", body=b'{"cluster_options": {"backend": "yarn"}}'
    )
    assert (status, body) == (422, {"error": "'yarn' is not a valid option for backend"})
    with FlotillaGateway(hpc.address, auth=BasicAuth("alice")) as gw:
        local = gw.new_cluster(backend="local")
        batch = gw.new_cluster(backend="slurm")
        try:
            for cluster in (local, batch):
                cluster.scale(1)
            clients = [c.get_client(set_as_default=False) for c in (local, batch)]
            for client in clients:
                client.wait_for_workers(1, timeout=180)

            def who() -> tuple[str, str]:
                import getpass
                import os

                return getpass.getuser(), os.environ.get("FLOTILLA_TEST_SETUP", "")

            totals = [
                c.compute(da.arange(1000, chunks=100).sum()).result(timeout=60) for c in clients
            ]
            assert totals == [499500, 499500]
            assert [c.submit(who, pure=False).result(timeout=60) for c in clients] == [
                ("alice", ""),  # the local backend has no setup script
                ("alice", "ran"),
            ]
            assert {c.name: c.backend for c in gw.list_clusters()} == {
                local.name: "local",
                batch.name: "slurm",
            }
            assert not hpc.cluster_jobs(local.name, "alice")
            assert len(hpc.cluster_jobs(batch.name, "alice")) == 2
            clusters_dir = hpc.state_dir / "clusters"
            assert [p.name for p in clusters_dir.iterdir()] == [local.name]
            for client in clients:
                client.close()
        finally:
            local.shutdown()
            batch.shutdown()
        wait_for(lambda: not hpc.cluster_jobs(batch.name, "alice"), 30, "the Slurm jobs to end")


def test_partition_and_queue_chosen_per_cluster(hpc: HPCGateway) -> None:
    """An option the administrator offers puts one cluster's jobs in another partition
    (Slurm) or queue (PBS); clusters that do not choose keep the site's."""
    with FlotillaGateway(hpc.address, auth=BasicAuth("alice")) as gw:
        clusters = {
            ("slurm", "long"): gw.new_cluster(backend="slurm", partition="long", idle_workers=True),
            ("pbs", "long"): gw.new_cluster(backend="pbs", partition="long", idle_workers=True),
            ("slurm", "debug"): gw.new_cluster(backend="slurm", idle_workers=True),
        }
        try:
            for cluster in clusters.values():
                cluster.scale(1)
            for (backend, partition), cluster in clusters.items():
                wait_for(
                    lambda c=cluster: len(hpc.cluster_jobs(c.name, "alice")) == 2,
                    60,
                    f"the {backend} cluster's scheduler and worker jobs",
                )
                jobs = hpc.cluster_jobs(cluster.name, "alice")
                assert {j["partition"] for j in jobs} == {partition}, (backend, jobs)
        finally:
            for cluster in clusters.values():
                cluster.shutdown()
        for cluster in clusters.values():
            wait_for(lambda c=cluster: not hpc.cluster_jobs(c.name, "alice"), 30, "jobs to end")


def test_status_queries_do_not_grow_with_jobs(hpc: HPCGateway) -> None:
    """Acceptance 5: 20 workers, and still one squeue per check period."""
    with FlotillaGateway(hpc.address, auth=BasicAuth("bob")) as gw:
        cluster = gw.new_cluster(backend="slurm", idle_workers=True)
        name = cluster.name
        try:
            cluster.scale(20)

            def running() -> int:
                jobs = hpc.cluster_jobs(name, "bob")
                return sum(j["state"] == "RUNNING" and "-worker-" in j["name"] for j in jobs)

            wait_for(lambda: running() == 20, 180, "20 running worker jobs", interval=0.5)
            # Observe a window of whole check periods (a measurement, not a wait for
            # readiness): each period's query covers all 21 jobs.
            window = 6 * CHECK_PERIOD
            start = time.time()
            wait_for(lambda: time.time() - start >= window, window + 5, "the window")
            calls = [(t, c, a) for t, c, a in hpc.calls(start) if t < start + window]
            squeues = [a for _, c, a in calls if c == "squeue"]
            print(f"{len(squeues)} squeue calls in {window:.0f}s, {len(calls)} commands in all")
            assert 3 <= len(squeues) <= window / CHECK_PERIOD + 2, squeues
            for args in squeues:
                listed = args.split("--jobs=", 1)[1].split()[0].split(",")
                assert len(listed) >= 21, args
            assert {c for _, c, _ in calls} == {"squeue"}, calls
        finally:
            cluster.shutdown()
        wait_for(lambda: not hpc.cluster_jobs(name, "bob"), 60, "bob's 21 jobs to end")
