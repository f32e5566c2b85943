"""The PBS backend: each scheduler and worker is a ``qsub`` job of the cluster's owner.

One script and command builder serves PBS Pro (OpenPBS) and Torque; ``flavor`` picks the
resource syntax and the status format:

- the job script starts with ``#PBS`` directives: ``-N <name>``, ``-j oe``, ``-o <log>``,
  one ``-l <resources>`` (Torque-style front ends keep only the last ``-l``) with
  ``select=1:ncpus=<n>:mem=<m>mb[,walltime=...]`` (pbspro) or
  ``nodes=1:ppn=<n>,mem=<m>mb[,walltime=...]`` (torque), ``[-q queue]``, ``[-A account]``;
- submit, as the owner: ``qsub -o <log> -j oe <extra> <script>`` (the output path is
  repeated on the command line: Slurm's ``qsub`` wrapper replaces an output path given
  only as a directive with its own default);
- status, as the launcher, once per check period for every job:
  ``qstat -x -f -F json <ids>`` (pbspro: finished jobs included, as JSON) or
  ``qstat -f <ids>`` (torque: ``key = value`` blocks);
- cancel, as the owner: ``qdel <id>``.
"""

from __future__ import annotations

import json
import logging
import re
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from traitlets import Enum, Unicode

from .base import BackendError
from .batch import BatchBackend, BatchCommandError, JobRequest, JobState

__all__ = [
    "PBSBackend",
    "describe_exit_status",
    "parse_qstat_full",
    "parse_qstat_json",
]

log = logging.getLogger(__name__)

#: PBS job states (``job_state``) in words; F (PBS Pro), C (Torque) and X (an expired
#: subjob) are over, everything else counts as alive.
STATE_WORDS = {
    "B": "begun",
    "C": "completed",
    "E": "exiting",
    "F": "finished",
    "H": "held",
    "M": "moved",
    "Q": "queued",
    "R": "running",
    "S": "suspended",
    "T": "in transit",
    "U": "suspended (workstation busy)",
    "W": "waiting",
    "X": "expired",
}
FINISHED_STATES = frozenset({"C", "F", "X"})
#: The JOB_EXEC_* codes (negative Exit_status) a user can act on.
JOB_EXEC_CODES = {
    -10: "its user or group is unknown on the execution host",
    -25: "killed for using more CPUs than it asked for",
    -27: "killed for using more memory than it asked for",
    -29: "killed for running longer than its walltime",
}
_JOB_ID_RE = re.compile(r"^\d+(\[\d*\])?(\.[A-Za-z0-9._-]+)?$")


def describe_exit_status(status: int) -> str:
    """PBS's ``Exit_status`` in words.

    PBS documents three ranges: below 0 the job could not run (a ``JOB_EXEC_*`` code),
    0-255 the exit status of the job script, 256 and above 256 + the number of the signal
    that killed it (``qdel`` sends SIGTERM: 271).
    """
    if status in JOB_EXEC_CODES:
        return f"{JOB_EXEC_CODES[status]}, exit status {status}"
    if status < 0:
        return f"PBS could not run it, exit status {status}"
    if status >= 256:
        number = status - 256
        try:
            name = signal.Signals(number).name
        except ValueError:
            name = f"signal {number}"
        return f"killed by {name}"
    return f"exit status {status}"


def _job_state(job_id: str, attributes: Mapping[str, Any]) -> JobState:
    code = str(attributes.get("job_state", "")).strip()
    alive = code not in FINISHED_STATES
    detail = ""
    if not alive:
        raw = attributes.get("Exit_status", attributes.get("exit_status"))
        try:
            detail = describe_exit_status(int(str(raw).strip())) if raw is not None else ""
        except ValueError:
            detail = f"exit status {raw}"
        comment = str(attributes.get("comment", "")).strip()
        if comment and not detail:
            detail = comment[:200]
    return JobState(job_id, alive, STATE_WORDS.get(code, code or "unknown"), detail)


def parse_qstat_json(text: str) -> dict[str, JobState]:
    """Parse PBS Pro's ``qstat -x -f -F json`` (``{"Jobs": {"<id>": {...}}}``)."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BatchCommandError(f"qstat printed invalid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise BatchCommandError("qstat printed JSON that is not an object")
    jobs = data.get("Jobs") or {}
    if not isinstance(jobs, dict):
        raise BatchCommandError("qstat JSON: 'Jobs' is not an object")
    return {
        str(job_id): _job_state(str(job_id), attrs)
        for job_id, attrs in jobs.items()
        if isinstance(attrs, dict)
    }


def parse_qstat_full(text: str) -> dict[str, JobState]:
    """Parse ``qstat -f`` text (Torque and PBS Pro): ``Job Id: <id>`` then indented
    ``name = value`` lines; a long value continues on tab-indented lines."""
    blocks: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    last_key = ""
    for line in text.splitlines():
        if line.startswith("Job Id:"):
            current = blocks.setdefault(line.split(":", 1)[1].strip(), {})
            last_key = ""
            continue
        if current is None or not line.strip():
            continue
        key, sep, value = line.strip().partition(" = ")
        if sep and " " not in key:
            current[key] = value.strip()
            last_key = key
        elif last_key:
            current[last_key] += line.strip()
    return {job_id: _job_state(job_id, attrs) for job_id, attrs in blocks.items()}


def _short(job_id: str) -> str:
    return job_id.split(".", 1)[0]


class PBSBackend(BatchBackend):
    """Runs schedulers and workers as PBS Pro / Torque jobs of the requesting user."""

    backend_name = "pbs"
    system_name = "PBS"
    cluster_settings = ("queue", "account")

    flavor = Enum(
        ["pbspro", "torque"],
        default_value="pbspro",
        help=(
            "Which PBS: 'pbspro' (PBS Professional, OpenPBS: select=... resources, "
            "`qstat -x -f -F json` status) or 'torque' (Torque, and Slurm's PBS wrappers: "
            "nodes=1:ppn=... resources, `qstat -f` status)."
        ),
        config=True,
    )
    queue = Unicode(
        "",
        help=(
            "Queue of every job (qsub -q); empty: the default. A cluster's "
            "c.PBSClusterConfig.queue (and account), when set, takes its place."
        ),
        config=True,
    )
    account = Unicode("", help="Account jobs are charged to (qsub -A); empty: none.", config=True)
    qsub = Unicode("qsub", help="The qsub command (name on PATH or absolute path).", config=True)
    qstat = Unicode("qstat", help="The qstat command.", config=True)
    qdel = Unicode("qdel", help="The qdel command.", config=True)

    def resources(self, job: JobRequest) -> str:
        """The one ``-l`` value: cores and memory of one chunk/node, and the walltime."""
        if self.flavor == "pbspro":
            spec = f"select=1:ncpus={job.cores}:mem={job.memory_mib}mb"
        else:
            spec = f"nodes=1:ppn={job.cores},mem={job.memory_mib}mb"
        if self.walltime:
            spec += f",walltime={self.walltime}"
        return spec

    def directives(self, job: JobRequest) -> list[str]:
        """The ``#PBS`` lines of the job script: name, output, resources, queue, account."""
        lines = [
            f"#PBS -N {job.name}",
            "#PBS -j oe",
            f"#PBS -o {job.log}",
            f"#PBS -l {self.resources(job)}",
        ]
        for flag, name in (("-q", "queue"), ("-A", "account")):
            if value := self.setting(job, name):
                lines.append(f"#PBS {flag} {value}")
        return lines

    def submit_command(self, job: JobRequest) -> list[str]:
        """``qsub`` with the output path and the site's options (the rest is in the
        script's directives)."""
        return [self.qsub, "-o", str(job.log), "-j", "oe", *self.extra_options, str(job.script)]

    def parse_job_id(self, stdout: str) -> str:
        """qsub prints the job id (``123.server``; Slurm's wrapper: ``123``)."""
        lines = [line.strip() for line in stdout.splitlines() if line.strip()]
        job_id = lines[-1] if lines else ""
        if not _JOB_ID_RE.match(job_id):
            raise BackendError(f"qsub printed no job id: {stdout.strip()[:200]!r}")
        return job_id

    def cancel_command(self, job_ids: Sequence[str]) -> list[str]:
        """``qdel <ids>``."""
        return [self.qdel, *job_ids]

    def status_command(self, job_ids: Sequence[str]) -> list[str]:
        """The one ``qstat`` of a check period."""
        if self.flavor == "pbspro":
            return [self.qstat, "-x", "-f", "-F", "json", *job_ids]
        return [self.qstat, "-f", *job_ids]

    async def query(self, job_ids: Sequence[str]) -> dict[str, JobState]:
        """One ``qstat`` for every job; unknown ids are left out."""
        if not job_ids:
            return {}
        code, out, err = await self.run_command(self.status_command(job_ids))
        if not out.strip():
            # qstat fails for unknown ids (Torque: exit 153) and prints nothing when no
            # id is known; any other failure says nothing about the jobs.
            if code == 0 or code == 153 or "Unknown Job" in err:
                return {}
            raise BatchCommandError(f"qstat failed ({code}): {err.strip()[:300]}")
        parsed = parse_qstat_json(out) if self.flavor == "pbspro" else parse_qstat_full(out)
        by_short = {_short(found): state for found, state in parsed.items()}
        jobs = {}
        for job_id in job_ids:
            state = parsed.get(job_id) or by_short.get(_short(job_id))
            if state is not None:
                jobs[job_id] = JobState(job_id, state.alive, state.state, state.detail)
        return jobs
