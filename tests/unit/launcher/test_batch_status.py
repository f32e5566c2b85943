"""Status parsers of the batch backends, on captured and documented outputs (where each
sample comes from: fixtures/SOURCES.md)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from flotilla_launcher.backends.base import ClusterConfig, ClusterSpec, WorkerSpec
from flotilla_launcher.backends.batch import BatchCommandError, JobState
from flotilla_launcher.backends.pbs import (
    PBSBackend,
    describe_exit_status,
    parse_qstat_full,
    parse_qstat_json,
)
from flotilla_launcher.backends.slurm import SlurmBackend, parse_sacct, parse_squeue
from traitlets.config import Config

FIXTURES = Path(__file__).parent / "fixtures"


def sample(name: str) -> str:
    return (FIXTURES / name).read_text()


def test_squeue_states_from_slurm_22_05() -> None:
    jobs = parse_squeue(sample("slurm_squeue_states.txt"))
    assert {j: (s.alive, s.state, s.detail) for j, s in jobs.items()} == {
        "1": (True, "RUNNING", ""),
        "2": (False, "FAILED", "NonZeroExitCode"),
        "3": (False, "COMPLETED", ""),
        "4": (False, "CANCELLED", ""),
        "5": (True, "PENDING", "JobHeldUser"),
        "6": (True, "PENDING", "BeginTime"),
    }
    assert "999" not in jobs  # unknown ids are simply absent


def test_sacct_parsable2() -> None:
    jobs = parse_sacct(sample("slurm_sacct_parsable2.txt"))
    assert sorted(jobs) == ["1041", "1042", "1043", "1044", "1045", "1046"]  # no steps
    assert jobs["1042"] == JobState("1042", False, "FAILED", "exit code 3")
    assert jobs["1043"] == JobState("1043", False, "CANCELLED", "by 1001, exit code 0, signal 15")
    assert jobs["1045"].detail == "exit code 0, signal 125"
    assert not jobs["1044"].alive and jobs["1044"].state == "TIMEOUT"
    assert jobs["1046"].alive
    assert jobs["1041"] == JobState("1041", False, "COMPLETED", "")


def test_pbspro_json_with_finished_jobs() -> None:
    jobs = parse_qstat_json(sample("pbspro_qstat_x_f_F_json.json"))
    assert jobs["4801.pbs01"] == JobState("4801.pbs01", True, "running", "")
    assert jobs["4802.pbs01"] == JobState("4802.pbs01", True, "queued", "")
    assert jobs["4790.pbs01"] == JobState("4790.pbs01", False, "finished", "killed by SIGTERM")
    assert jobs["4791.pbs01"].detail == "exit status 1"
    assert jobs["4792.pbs01"].detail == (
        "killed for running longer than its walltime, exit status -29"
    )


def test_pbspro_json_errors_are_not_job_states() -> None:
    with pytest.raises(BatchCommandError, match="invalid JSON"):
        parse_qstat_json('{"Jobs": {"1.s": {"job_state": "R"')
    with pytest.raises(BatchCommandError):
        parse_qstat_json("[]")
    assert parse_qstat_json('{"timestamp": 1, "pbs_version": "2022.1"}') == {}


def test_torque_full_with_wrapped_values() -> None:
    jobs = parse_qstat_full(sample("torque_qstat_f.txt"))
    assert jobs["731.torque01.example.org"].alive
    assert jobs["732.torque01.example.org"] == JobState(
        "732.torque01.example.org", False, "completed", "killed by SIGTERM"
    )
    assert jobs["733.torque01.example.org"].state == "queued"


def test_slurm_pbs_wrapper_full() -> None:
    jobs = parse_qstat_full(sample("slurm_torque_wrapper_qstat_f.txt"))
    assert jobs == {
        "1": JobState("1", True, "running", ""),
        "3": JobState("3", False, "completed", ""),
    }


@pytest.mark.parametrize(
    ("status", "text"),
    [
        (0, "exit status 0"),
        (3, "exit status 3"),
        (265, "killed by SIGKILL"),
        (271, "killed by SIGTERM"),
        (256 + 99, "killed by signal 99"),
        (-27, "killed for using more memory than it asked for, exit status -27"),
        (-3, "PBS could not run it, exit status -3"),
    ],
)
def test_pbs_exit_status_in_words(status: int, text: str) -> None:
    assert describe_exit_status(status) == text


class Recording:
    """Replaces ``run_command``: records argv and answers with a canned output."""

    def __init__(self, answers: list[tuple[int, str, str]]) -> None:
        self.answers = answers
        self.calls: list[list[str]] = []

    async def __call__(self, argv: Sequence[str]) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        return self.answers.pop(0)


def spec(name: str = "c" * 32) -> ClusterSpec:
    return ClusterSpec(name, "alice", ClusterConfig(), "", "", "", "")


def test_slurm_check_asks_once_for_everything(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = SlurmBackend()
    run = Recording(
        [
            (0, "10|RUNNING|None\n12|CANCELLED|None\n", ""),
            (1, "", "sacct: error: Slurm accounting storage is disabled"),
        ]
    )
    monkeypatch.setattr(backend, "run_command", run)
    cluster = spec()
    workers = [
        (WorkerSpec(cluster, "w1", ""), {"job_id": "11", "log": "/h/w1.log"}),
        (WorkerSpec(cluster, "w2", ""), {"job_id": "12", "log": "/h/w2.log"}),
    ]
    statuses, wstatuses = asyncio.run(
        backend.check([(cluster, {"job_id": "10", "log": "/h/s.log"})], workers)
    )
    # 11 is unknown to squeue: sacct is asked about it (and only it), once.
    assert run.calls == [
        ["squeue", "--noheader", "--states=all", "--jobs=10,11,12", "--format=%i|%T|%r"],
        [
            "sacct",
            "--noheader",
            "--parsable2",
            "--allocations",
            "--jobs=11",
            "--format=JobID,State,ExitCode",
        ],
    ]
    assert statuses[0].running
    assert not wstatuses[0].running
    assert wstatuses[0].reason == "worker job 11 is no longer known to Slurm; output in /h/w1.log"
    assert wstatuses[1].reason == "worker job 12 CANCELLED; output in /h/w2.log"


def test_slurm_sacct_fills_in_forgotten_jobs(monkeypatch: pytest.MonkeyPatch) -> None:
    backend = SlurmBackend()
    run = Recording(
        [(1, "", "slurm_load_jobs error: Invalid job id specified"), (0, "7|FAILED|2:0\n", "")]
    )
    monkeypatch.setattr(backend, "run_command", run)
    [status] = asyncio.run(backend.check_clusters([(spec(), {"job_id": "7"})]))
    assert [c[0] for c in run.calls] == ["squeue", "sacct"]
    assert status.reason == "scheduler job 7 FAILED (exit code 2)"


def test_slurm_controller_down_is_not_a_job_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config()
    cfg.SlurmBackend.sacct = ""
    backend = SlurmBackend(config=cfg)
    err = "squeue: error: Unable to contact slurm controller (connect failure)"
    monkeypatch.setattr(backend, "run_command", Recording([(1, "", err)]))
    with pytest.raises(BatchCommandError, match="Unable to contact"):
        asyncio.run(backend.check_clusters([(spec(), {"job_id": "7"})]))


@pytest.mark.parametrize(
    ("flavor", "answer", "argv"),
    [
        (
            "pbspro",
            (0, sample("pbspro_qstat_x_f_F_json.json"), ""),
            ["qstat", "-x", "-f", "-F", "json", "4790.pbs01", "4801.pbs01"],
        ),
        ("torque", (0, sample("torque_qstat_f.txt"), ""), None),
    ],
)
def test_pbs_check_asks_once(
    monkeypatch: pytest.MonkeyPatch, flavor: str, answer: tuple[int, str, str], argv: Any
) -> None:
    cfg = Config()
    cfg.PBSBackend.flavor = flavor
    backend = PBSBackend(config=cfg)
    run = Recording([answer])
    monkeypatch.setattr(backend, "run_command", run)
    ids = (
        ("4790.pbs01", "4801.pbs01") if flavor == "pbspro" else ("732", "731.torque01.example.org")
    )
    statuses = asyncio.run(backend.check_clusters([(spec(), {"job_id": i}) for i in ids]))
    assert len(run.calls) == 1
    if argv:
        assert run.calls[0] == argv
    else:
        assert run.calls[0] == ["qstat", "-f", "731.torque01.example.org", "732"]
    assert [s.running for s in statuses] == [False, True]
    assert "killed by SIGTERM" in statuses[0].reason


def test_pbs_unknown_ids_and_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = Config()
    cfg.PBSBackend.flavor = "torque"
    backend = PBSBackend(config=cfg)
    monkeypatch.setattr(backend, "run_command", Recording([(153, "", "")]))
    [status] = asyncio.run(backend.check_clusters([(spec(), {"job_id": "5"})]))
    assert status.reason == "scheduler job 5 is no longer known to PBS"
    monkeypatch.setattr(
        backend, "run_command", Recording([(2, "", "qstat: cannot connect to server pbs01")])
    )
    with pytest.raises(BatchCommandError, match="cannot connect"):
        asyncio.run(backend.check_clusters([(spec(), {"job_id": "5"})]))
