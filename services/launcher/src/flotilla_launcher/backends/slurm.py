"""The Slurm backend: each scheduler and worker is an ``sbatch`` job of the cluster's owner.

Commands (all configurable, see :class:`SlurmBackend`):

- submit, as the owner: ``sbatch --parsable --job-name=... --chdir=<staging dir>
  --output=<log> --ntasks=1 --cpus-per-task=<cores> --mem=<MiB>M [--partition ...]
  [--account ...] [--qos ...] [--reservation ...] [--time ...] <extra> <script>``;
- status, as the launcher, once per check period for every job:
  ``squeue --noheader --states=all --jobs=<id,id,...> --format=%i|%T|%r``, and for jobs
  squeue no longer knows (older than ``MinJobAge``) one ``sacct`` call, if accounting is on;
- cancel, as the owner: ``scancel <id>``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence

from traitlets import Unicode

from .base import BackendError
from .batch import BatchBackend, BatchCommandError, JobRequest, JobState

__all__ = ["FINISHED_STATES", "SlurmBackend", "parse_sacct", "parse_squeue"]

log = logging.getLogger(__name__)

#: Job states (squeue ``%T``) of jobs that are over. Any other state (PENDING, RUNNING,
#: COMPLETING, SUSPENDED, REQUEUED, ...) counts as alive, so a state this code does not
#: know never fails a cluster.
FINISHED_STATES = frozenset(
    {
        "BOOT_FAIL",
        "CANCELLED",
        "COMPLETED",
        "DEADLINE",
        "FAILED",
        "NODE_FAIL",
        "OUT_OF_MEMORY",
        "PREEMPTED",
        "REVOKED",
        "SPECIAL_EXIT",
        "TIMEOUT",
    }
)

SQUEUE_FORMAT = "%i|%T|%r"
_JOB_ID_RE = re.compile(r"^\d+(_\d+)?$")


def parse_squeue(text: str) -> dict[str, JobState]:
    """Parse ``squeue --noheader --format=%i|%T|%r`` output."""
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0]:
            continue
        job_id, state = parts[0], parts[1]
        reason = parts[2] if len(parts) > 2 else ""
        detail = "" if reason in ("", "None") else reason
        jobs[job_id] = JobState(job_id, state not in FINISHED_STATES, state, detail)
    return jobs


def parse_sacct(text: str) -> dict[str, JobState]:
    """Parse ``sacct --noheader --parsable2 --format=JobID,State,ExitCode`` output.

    ``State`` may carry more words (``CANCELLED by 1001``); ``ExitCode`` is
    ``<code>:<signal>``.
    """
    jobs = {}
    for line in text.splitlines():
        parts = line.strip().split("|")
        if len(parts) < 2 or not parts[0] or "." in parts[0]:
            continue  # job steps (123.batch) are not jobs
        job_id, words = parts[0], parts[1].split()
        if not words:
            continue
        state = words[0]
        details = []
        if len(words) > 1:
            details.append(" ".join(words[1:]))
        if len(parts) > 2 and parts[2] not in ("", "0:0"):
            code, _, signal = parts[2].partition(":")
            details.append(f"exit code {code}" + (f", signal {signal}" if signal != "0" else ""))
        jobs[job_id] = JobState(job_id, state not in FINISHED_STATES, state, ", ".join(details))
    return jobs


class SlurmBackend(BatchBackend):
    """Runs schedulers and workers as Slurm batch jobs of the requesting user."""

    backend_name = "slurm"
    system_name = "Slurm"
    cluster_settings = ("partition", "account", "qos", "reservation")

    partition = Unicode(
        "",
        help=(
            "Partition of every job (--partition); empty: the default. A cluster's "
            "c.SlurmClusterConfig.partition, when set, takes its place (so do account, qos "
            "and reservation)."
        ),
        config=True,
    )
    account = Unicode(
        "", help="Account jobs are charged to (--account); empty: the user's default.", config=True
    )
    qos = Unicode(
        "", help="Quality of service of every job (--qos); empty: the default.", config=True
    )
    reservation = Unicode(
        "", help="Reservation jobs run in (--reservation); empty: none.", config=True
    )
    sbatch = Unicode(
        "sbatch", help="The sbatch command (name on PATH or absolute path).", config=True
    )
    squeue = Unicode("squeue", help="The squeue command.", config=True)
    scancel = Unicode("scancel", help="The scancel command.", config=True)
    sacct = Unicode(
        "sacct",
        help=(
            "The sacct command, asked about jobs squeue has forgotten (after MinJobAge). "
            "Empty: never (such jobs are reported as no longer known)."
        ),
        config=True,
    )

    def submit_command(self, job: JobRequest) -> list[str]:
        """``sbatch`` with the job's resources and the site's options."""
        argv = [
            self.sbatch,
            "--parsable",
            f"--job-name={job.name}",
            f"--chdir={job.directory}",
            f"--output={job.log}",
            "--ntasks=1",
            f"--cpus-per-task={job.cores}",
            f"--mem={job.memory_mib}M",
        ]
        for flag, value in (
            *((f"--{name}", self.setting(job, name)) for name in self.cluster_settings),
            ("--time", self.walltime),
        ):
            if value:
                argv.append(f"{flag}={value}")
        return [*argv, *self.extra_options, str(job.script)]

    def parse_job_id(self, stdout: str) -> str:
        """``sbatch --parsable`` prints ``<id>`` or ``<id>;<cluster>``."""
        first = stdout.strip().splitlines()[0] if stdout.strip() else ""
        job_id = first.split(";", 1)[0].strip()
        if not _JOB_ID_RE.match(job_id):
            raise BackendError(f"sbatch printed no job id: {stdout.strip()[:200]!r}")
        return job_id

    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        """``scancel <ids>``."""
        return [self.scancel, *job_ids]

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """One ``squeue`` for every job; one ``sacct`` for those it has forgotten."""
        if not job_ids:
            return {}
        code, out, err = await self.run_command(
            [
                self.squeue,
                "--noheader",
                "--states=all",
                f"--jobs={','.join(job_ids)}",
                f"--format={SQUEUE_FORMAT}",
            ]
        )
        if code != 0:
            # With only unknown ids squeue fails with "Invalid job id specified".
            if "Invalid job id" not in err:
                raise BatchCommandError(f"squeue failed ({code}): {err.strip()[:300]}")
            out = ""
        jobs = parse_squeue(out)
        missing = [j for j in job_ids if j not in jobs]
        if missing and self.sacct:
            jobs.update(await self._accounting(missing))
        return jobs

    async def _accounting(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        code, out, err = await self.run_command(
            [
                self.sacct,
                "--noheader",
                "--parsable2",
                "--allocations",
                f"--jobs={','.join(job_ids)}",
                "--format=JobID,State,ExitCode",
            ]
        )
        if code != 0:
            log.debug("sacct failed (%s): %s", code, err.strip())
            return {}
        return parse_sacct(out)
