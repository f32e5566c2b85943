"""What the batch backends submit: command lines, job scripts, and the helper that writes
the owner's files. No batch system is needed here."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from flotilla_launcher import batch_helper
from flotilla_launcher.backends.base import BackendError, ClusterConfig, ClusterSpec
from flotilla_launcher.backends.batch import Account, JobRequest
from flotilla_launcher.backends.pbs import PBSBackend
from flotilla_launcher.backends.slurm import SlurmBackend
from traitlets.config import Config

JOB = JobRequest(
    name="flotilla-worker-0123abcd",
    role="worker",
    directory=Path("/home/alice/.flotilla/clusters/c1"),
    script=Path("/home/alice/.flotilla/clusters/c1/worker-w1.sh"),
    log=Path("/home/alice/.flotilla/clusters/c1/logs/worker-w1.log"),
    cores=2,
    memory_mib=1536,
)


def test_sbatch_command_with_site_options() -> None:
    cfg = Config()
    cfg.SlurmBackend.partition = "dask"
    cfg.SlurmBackend.account = "proj42"
    cfg.SlurmBackend.qos = "interactive"
    cfg.SlurmBackend.reservation = "training"
    cfg.SlurmBackend.walltime = "08:00:00"
    cfg.SlurmBackend.extra_options = ["--constraint=skylake", "--exclusive"]
    cfg.SlurmBackend.sbatch = "/opt/slurm/bin/sbatch"
    assert SlurmBackend(config=cfg).submit_command(JOB) == [
        "/opt/slurm/bin/sbatch",
        "--parsable",
        "--job-name=flotilla-worker-0123abcd",
        "--chdir=/home/alice/.flotilla/clusters/c1",
        "--output=/home/alice/.flotilla/clusters/c1/logs/worker-w1.log",
        "--ntasks=1",
        "--cpus-per-task=2",
        "--mem=1536M",
        "--partition=dask",
        "--account=proj42",
        "--qos=interactive",
        "--reservation=training",
        "--time=08:00:00",
        "--constraint=skylake",
        "--exclusive",
        "/home/alice/.flotilla/clusters/c1/worker-w1.sh",
    ]


def test_sbatch_defaults_leave_site_options_out() -> None:
    argv = SlurmBackend().submit_command(JOB)
    assert not [a for a in argv if a.startswith(("--partition", "--account", "--qos", "--time"))]


@pytest.mark.parametrize(
    ("flavor", "resources"),
    [
        ("pbspro", "select=1:ncpus=2:mem=1536mb,walltime=08:00:00"),
        ("torque", "nodes=1:ppn=2,mem=1536mb,walltime=08:00:00"),
    ],
)
def test_pbs_directives_and_qsub_per_flavor(flavor: str, resources: str) -> None:
    cfg = Config()
    cfg.PBSBackend.flavor = flavor
    cfg.PBSBackend.queue = "workq"
    cfg.PBSBackend.account = "proj42"
    cfg.PBSBackend.walltime = "08:00:00"
    cfg.PBSBackend.extra_options = ["-W", "group_list=dask"]
    backend = PBSBackend(config=cfg)
    log = "/home/alice/.flotilla/clusters/c1/logs/worker-w1.log"
    assert backend.submit_command(JOB) == [
        "qsub",
        "-o",
        log,
        "-j",
        "oe",
        "-W",
        "group_list=dask",
        "/home/alice/.flotilla/clusters/c1/worker-w1.sh",
    ]
    script = backend.job_script(cluster(), JOB, ["dask", "worker"], "w1").splitlines()
    # The directives come right after the #! line, before any command.
    assert script[:7] == [
        "#!/bin/sh",
        "#PBS -N flotilla-worker-0123abcd",
        "#PBS -j oe",
        f"#PBS -o {log}",
        # One -l only: Torque-style front ends keep just the last one.
        f"#PBS -l {resources}",
        "#PBS -q workq",
        "#PBS -A proj42",
    ]


def test_slurm_scripts_have_no_directives() -> None:
    script = SlurmBackend().job_script(cluster(), JOB, ["dask", "worker"], "w1")
    assert "#SBATCH" not in script and "#PBS" not in script


@pytest.mark.parametrize(
    ("stdout", "job_id"),
    [("4242\n", "4242"), ("4242;cluster2\n", "4242"), ("77_3\n", "77_3")],
)
def test_sbatch_job_ids(stdout: str, job_id: str) -> None:
    assert SlurmBackend().parse_job_id(stdout) == job_id


@pytest.mark.parametrize(
    ("stdout", "job_id"),
    [
        ("4801.pbs01\n", "4801.pbs01"),
        ("7\n", "7"),
        ("12[].srv.example.org\n", "12[].srv.example.org"),
    ],
)
def test_qsub_job_ids(stdout: str, job_id: str) -> None:
    assert PBSBackend().parse_job_id(stdout) == job_id


@pytest.mark.parametrize("stdout", ["", "sbatch: error: something\n", "12 34\n"])
def test_garbage_is_not_a_job_id(stdout: str) -> None:
    with pytest.raises(BackendError, match="no job id"):
        SlurmBackend().parse_job_id(stdout)
    with pytest.raises(BackendError, match="no job id"):
        PBSBackend().parse_job_id(stdout)


def cluster(**config: object) -> ClusterSpec:
    return ClusterSpec(
        name="c1",
        owner="alice",
        config=ClusterConfig(**config),  # type: ignore[arg-type]
        tls_cert="CERT",
        tls_key="KEY",
        token="tok'en",
        api_url="http://gateway:8000/api",
    )


def test_job_script_runs_setup_then_execs_with_the_gateway_environment() -> None:
    cfg = Config()
    cfg.SlurmBackend.setup_script = "module load python/3.11\nsource activate dask"
    cfg.SlurmBackend.job_path = ["/opt/flotilla/bin"]
    backend = SlurmBackend(config=cfg)
    script = backend.job_script(
        cluster(environment={"OMP_NUM_THREADS": "1", "DASK_GATEWAY_API_URL": "spoofed"}),
        JOB,
        ["dask", "worker", "tls://10.0.0.5:8786", "--name", "w1"],
        "w1",
    )
    lines = script.splitlines()
    assert lines[0] == "#!/bin/sh"
    assert lines.index("cd /home/alice/.flotilla/clusters/c1 || exit 1") < lines.index(
        "module load python/3.11"
    )
    assert lines.index('export PATH=/opt/flotilla/bin:"$PATH"') < lines.index(
        "source activate dask"
    )
    assert "export OMP_NUM_THREADS=1" in lines
    # The gateway's variables win over the cluster configuration's.
    assert "export DASK_GATEWAY_API_URL=http://gateway:8000/api" in lines
    assert "spoofed" not in script
    assert "export DASK_GATEWAY_API_TOKEN='tok'\"'\"'en'" in lines
    assert "export DASK_GATEWAY_WORKER_NAME=w1" in lines
    assert (
        "export DASK_DISTRIBUTED__COMM__TLS__WORKER__KEY="
        "/home/alice/.flotilla/clusters/c1/dask.pem" in lines
    )
    assert lines[-1] == "exec dask worker tls://10.0.0.5:8786 --name w1"
    # It is a valid shell script.
    assert subprocess.run(["sh", "-n"], input=script, text=True).returncode == 0


def test_job_script_refuses_bad_variable_names() -> None:
    with pytest.raises(BackendError, match="invalid environment variable name"):
        SlurmBackend().job_script(cluster(environment={"A B": "x"}), JOB, ["true"], None)


def test_staging_directory_and_job_names() -> None:
    cfg = Config()
    cfg.SlurmBackend.staging_directory = "/scratch/{username}/dask"
    backend = SlurmBackend(config=cfg)
    account = Account("alice", 1001, "/home/alice")
    assert backend.cluster_directory(account, "abc") == Path("/scratch/alice/dask/abc")
    assert backend.job_name("scheduler", "0123456789abcdef") == "flotilla-scheduler-01234567"
    with pytest.raises(BackendError, match="invalid cluster name"):
        backend.cluster_directory(account, "../etc")
    cfg.SlurmBackend.staging_directory = "relative/{username}"
    with pytest.raises(BackendError, match="not an absolute path"):
        SlurmBackend(config=cfg).cluster_directory(account, "abc")
    cfg.SlurmBackend.staging_directory = "/x/{nope}"
    with pytest.raises(BackendError, match="invalid staging_directory"):
        SlurmBackend(config=cfg).cluster_directory(account, "abc")


def test_unknown_owner_is_a_clear_error() -> None:
    with pytest.raises(BackendError, match="'no-such-user-xyz' does not exist"):
        SlurmBackend().owner_account("no-such-user-xyz")


# -- flotilla-batch-helper ------------------------------------------------------------------


def test_helper_writes_private_files_then_submits(tmp_path: Path) -> None:
    directory = tmp_path / "home" / ".flotilla" / "clusters" / "c1"
    reply = batch_helper.handle(
        {
            "action": "submit",
            "directory": str(directory),
            "files": {
                "dask.pem": {"text": "KEY"},
                "scheduler.sh": {"text": "#!/bin/sh\n", "mode": 0o700},
            },
            "command": ["sh", "-c", 'echo "$PWD $FLOTILLA_X"; echo oops >&2'],
            "environment": {"FLOTILLA_X": "42"},
        }
    )
    assert reply == {"returncode": 0, "stdout": f"{directory} 42\n", "stderr": "oops\n"}
    for d in (directory, directory.parent, directory.parent.parent, directory / "logs"):
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    assert stat.S_IMODE((directory / "dask.pem").stat().st_mode) == 0o600
    assert stat.S_IMODE((directory / "scheduler.sh").stat().st_mode) == 0o700
    assert (directory / "dask.pem").read_text() == "KEY"


def test_helper_records_the_job_and_never_submits_twice(tmp_path: Path) -> None:
    counter = tmp_path / "submitted"
    request = {
        "action": "submit",
        "directory": str(tmp_path / "c1"),
        "command": ["sh", "-c", f'echo x >> {counter}; echo "42;cluster"'],
        "record": "scheduler.jobid",
    }
    assert batch_helper.handle(request)["stdout"] == "42;cluster\n"
    record = tmp_path / "c1" / "scheduler.jobid"
    assert record.read_text() == "42;cluster\n"
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    # A second submit (a launcher that died before reporting) finds the record instead.
    assert batch_helper.handle(request) == {"recorded": "42;cluster\n"}
    assert counter.read_text() == "x\n"
    assert batch_helper.handle({**request, "replace": True})["returncode"] == 0
    assert counter.read_text() == "x\nx\n"
    assert batch_helper.handle(
        {"action": "recorded", "directory": str(tmp_path / "c1"), "names": ["*.jobid"]}
    ) == {"recorded": {"scheduler.jobid": "42;cluster\n"}}
    # A failed submission records nothing.
    failing = {**request, "record": "worker-w.jobid", "command": ["sh", "-c", "exit 1"]}
    assert batch_helper.handle(failing)["returncode"] == 1
    assert not (tmp_path / "c1" / "worker-w.jobid").exists()


def test_helper_cancel_removes_matching_files_only(tmp_path: Path) -> None:
    for name in ("scheduler.sh", "worker-a.sh", "dask.pem", "dask.crt"):
        (tmp_path / name).write_text("x")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "scheduler.log").write_text("output")
    reply = batch_helper.handle(
        {
            "action": "cancel",
            "directory": str(tmp_path),
            "command": ["sh", "-c", "exit 1"],
            "remove": ["*.sh", "dask.pem"],
        }
    )
    assert reply["returncode"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dask.crt", "logs"]


def test_helper_logs(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "scheduler.log").write_text("started\n" * 10)
    (tmp_path / "logs" / "worker-w1.log").write_text("connected\n")
    (tmp_path / "logs" / "other.txt").write_text("not a log")
    reply = batch_helper.handle(
        {"action": "logs", "directory": str(tmp_path), "tail_bytes": 16, "total_bytes": 1000}
    )
    assert list(reply["logs"]) == ["scheduler", "worker-w1"]
    assert reply["logs"]["scheduler"].endswith("started\nstarted\n")
    assert "earlier bytes not kept" in reply["logs"]["scheduler"]
    assert reply["logs"]["worker-w1"] == "connected\n"
    empty = {"action": "logs", "directory": str(tmp_path / "x"), "tail_bytes": 1, "total_bytes": 1}
    assert batch_helper.handle(empty) == {"logs": {}}


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        ([], "must be a JSON object"),
        ({"action": "rm"}, "unknown action"),
        ({"action": "submit", "directory": "rel", "command": ["x"]}, "absolute path"),
        ({"action": "submit", "directory": "/tmp/x", "command": []}, "must not be empty"),
        (
            {"action": "submit", "directory": "/tmp/x", "command": ["true"], "files": {"../a": {}}},
            "invalid file name",
        ),
        (
            {
                "action": "submit",
                "directory": "/tmp/flotilla-helper-test",
                "command": ["true"],
                "files": {"a": {"text": "", "mode": 0o644}},
            },
            "private to the owner",
        ),
        ({"action": "logs", "directory": "/x", "tail_bytes": 0, "total_bytes": 1}, "positive"),
    ],
)
def test_helper_refuses_malformed_requests(request_: object, message: str) -> None:
    with pytest.raises(batch_helper.HelperError, match=message):
        batch_helper.handle(request_)


def test_helper_console_script_speaks_json(tmp_path: Path) -> None:
    run = [sys.executable, "-m", "flotilla_launcher.batch_helper"]
    request = {"action": "logs", "directory": str(tmp_path), "tail_bytes": 9, "total_bytes": 9}
    ok = subprocess.run(run, input=json.dumps(request), capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout) == {"logs": {}}
    bad = subprocess.run(run, input="not json", capture_output=True, text=True)
    assert bad.returncode == 1 and "error" in json.loads(bad.stdout)
    assert os.path.basename(batch_helper.__file__) == "batch_helper.py"


def test_a_clusters_own_partition_and_queue_replace_the_sites() -> None:
    """The registry's SlurmClusterConfig/PBSClusterConfig fields arrive in config_json
    and replace the launcher's site settings for that cluster's jobs only; empty ones
    leave them in force."""
    config = ClusterConfig.from_json(
        json.dumps({"worker_cores": 2, "partition": "gpu", "account": "", "queue": "long"})
    )
    assert dict(config.extra) == {"partition": "gpu", "account": "", "queue": "long"}
    cfg = Config()
    cfg.SlurmBackend.partition = "dask"
    cfg.SlurmBackend.account = "proj42"
    cfg.PBSBackend.queue = "workq"
    slurm, pbs = SlurmBackend(config=cfg), PBSBackend(config=cfg)
    spec = cluster(extra=config.extra)
    job = dataclasses.replace(JOB, settings=slurm._cluster_settings(spec))
    argv = slurm.submit_command(job)
    assert "--partition=gpu" in argv and "--account=proj42" in argv
    assert "--partition=dask" not in argv
    assert "--partition=dask" in slurm.submit_command(JOB)  # another cluster: the site's
    pbs_job = dataclasses.replace(JOB, settings=pbs._cluster_settings(spec))
    assert "#PBS -q long" in pbs.directives(pbs_job)
    assert "#PBS -q workq" in pbs.directives(JOB)


@pytest.mark.parametrize("value", ["gpu\n#PBS -q x", "--wrap=id", 3, ["gpu"]])
def test_a_cluster_setting_that_could_escape_is_refused(value: object) -> None:
    """The registry refuses these already; a launcher does not trust config_json blindly."""
    for backend, name in ((SlurmBackend(), "partition"), (PBSBackend(), "queue")):
        with pytest.raises(BackendError, match=f"invalid .* {name}"):
            backend._cluster_settings(cluster(extra={name: value}))
