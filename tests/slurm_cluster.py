"""A private single-node Slurm for tests, the Unix users jobs run as, and a Python they
can reach.

:class:`SlurmCluster` starts munged (with its own key and socket), slurmctld and slurmd
from a generated ``slurm.conf`` on free ports, all under a directory of its own: nothing
in ``/etc`` changes, and commands find the cluster through ``SLURM_CONF``. Daemons run in
the foreground (``-F``/``-D``) so the PIDs the test holds are the daemons', and each is
stopped by that PID. Debian's ``slurm-wlm-torque`` adds PBS-style ``qsub``/``qstat``/
``qdel`` over the same Slurm.

The node declares more CPUs than the machine has (``SlurmdParameters=config_overrides``):
a Dask scheduler or worker mostly waits, and a cluster of 1 scheduler + 20 workers must
fit on a 2-core test machine.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

from helpers import apt_install, free_ports, wait_for

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge", "sudo", "slurm-wlm-torque")
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "munged", "sudo", "qsub")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin", "/bin")
NODE_CPUS = 64
#: The workspace members a job or the batch helper needs (the client has the preload).
MEMBERS = ("protos", "client", "services/common", "services/launcher")


class Unavailable(Exception):
    """Slurm cannot run here; the message is the one-line reason."""


def _which(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path=os.pathsep.join(SBIN))


def ensure_installed() -> None:
    """Install Slurm, munge, sudo and the PBS wrappers from Debian packages if missing."""
    if all(_which(b) for b in BINARIES):
        return
    failed = apt_install(PACKAGES)
    if failed:
        raise Unavailable(f"cannot install Slurm: {failed}")
    missing = [b for b in BINARIES if not _which(b)]
    if missing:
        raise Unavailable(f"installed Slurm but {missing} are still missing")


def ensure_user(name: str) -> pwd.struct_passwd:
    """A Unix account with a home directory it owns (created if missing)."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--create-home", "--shell", "/bin/bash", name],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(name)
    home = Path(entry.pw_dir)
    if not home.is_dir():
        home.mkdir(parents=True, mode=0o750)
        os.chown(home, entry.pw_uid, entry.pw_gid)
    return entry


def build_job_python(project: Path, dest: Path) -> Path:
    """A virtualenv at ``dest`` with the project installed (not editable) and its pinned
    dependencies: what a site installs on a shared filesystem for its users' jobs.

    Test users cannot be assumed to reach the checkout (CI may clone under ``/root``), so
    their jobs and ``flotilla-batch-helper`` run from here. Returns its ``bin`` directory.
    """
    uv = project / ".cache" / "tools" / "bin" / "uv"
    python = "/usr/bin/python3.11" if Path("/usr/bin/python3.11").exists() else "python3.11"
    if not uv.exists():
        raise Unavailable(f"{uv} is missing: run the tests through `make test`")
    env = {**os.environ, "UV_LINK_MODE": "copy"}
    install = [str(uv), "pip", "install", "-q", "--python", str(dest / "bin" / "python")]
    requirements = dest.parent / f"{dest.name}-requirements.txt"
    steps = [
        [str(uv), "venv", "-q", "--python", python, str(dest)],
        [
            str(uv),
            "export",
            "-q",
            "--frozen",
            "--no-dev",
            "--all-packages",
            "--no-emit-workspace",
            "--no-hashes",
            "-o",
            str(requirements),
        ],
        [*install, "-r", str(requirements)],
        [*install, "--no-deps", *(str(project / p) for p in MEMBERS)],
    ]
    try:
        for argv in steps:
            proc = subprocess.run(
                argv, cwd=project, env=env, capture_output=True, text=True, timeout=600
            )
            if proc.returncode != 0:
                raise Unavailable(f"cannot build the jobs' Python: {proc.stderr.strip()[-500:]}")
    finally:
        requirements.unlink(missing_ok=True)
    for path in (dest, *dest.rglob("*")):
        if path.is_dir():
            path.chmod(0o755)
    return dest / "bin"


def _conf_value(text: str, key: str) -> str:
    match = re.search(rf"\b{key}=(\S+)", text)
    if not match:
        raise Unavailable(f"`slurmd -C` printed no {key}: {text.strip()!r}")
    return match.group(1)


class SlurmCluster:
    """munged + slurmctld + slurmd under ``root``, one partition ``debug``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.sock"
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    @property
    def env(self) -> dict[str, str]:
        """The environment Slurm's commands need to find this cluster."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a Slurm (or PBS wrapper) command against this cluster, as root."""
        return subprocess.run(
            list(argv), env=self.env, capture_output=True, text=True, timeout=60, check=check
        )

    # -- start ----------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        self.root.chmod(0o755)
        self._start_munge()
        node = subprocess.run(
            [_which("slurmd") or "slurmd", "-C"], capture_output=True, text=True, check=True
        ).stdout
        ctld_port, slurmd_port = free_ports(2)
        for d in ("state", "spool", "log"):
            (self.root / d).mkdir(mode=0o755)
        self.conf.write_text(
            self._slurm_conf(
                _conf_value(node, "NodeName"),
                int(_conf_value(node, "RealMemory")),
                ctld_port,
                slurmd_port,
            )
        )
        self._spawn(
            "slurmctld", [_which("slurmctld") or "slurmctld", "-D", "-i", "-f", str(self.conf)]
        )
        self._spawn("slurmd", [_which("slurmd") or "slurmd", "-D", "-f", str(self.conf)])

        def idle() -> bool:
            self._check_alive()
            # One line per partition the node is in.
            states = self.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.split()
            return bool(states) and set(states) == {"idle"}

        wait_for(idle, timeout, "the Slurm node to be idle", interval=0.2)

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        munge.mkdir(mode=0o755)
        entry = pwd.getpwnam("munge")
        os.chown(munge, entry.pw_uid, entry.pw_gid)
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        os.chown(key, entry.pw_uid, entry.pw_gid)
        self._spawn(
            "munged",
            [
                _which("munged") or "munged",
                "-F",
                f"--socket={self.munge_socket}",
                f"--key-file={key}",
                f"--pid-file={munge / 'munged.pid'}",
                f"--log-file={munge / 'munged.log'}",
                f"--seed-file={munge / 'munged.seed'}",
            ],
            user=entry.pw_uid,
            group=entry.pw_gid,
        )

        def answers() -> bool:
            self._check_alive()
            if not self.munge_socket.exists():
                return False
            cred = subprocess.run(
                ["munge", "-n", "-S", str(self.munge_socket)], capture_output=True, timeout=10
            )
            return (
                subprocess.run(
                    ["unmunge", "-S", str(self.munge_socket)],
                    input=cred.stdout,
                    capture_output=True,
                    timeout=10,
                ).returncode
                == 0
            )

        wait_for(answers, 30, "munged to answer", interval=0.1)

    def _slurm_conf(self, node: str, memory_mb: int, ctld_port: int, slurmd_port: int) -> str:
        r = self.root
        return f"""\
# Generated for one test session by tests/slurm_cluster.py.
ClusterName=flotillatest
SlurmctldHost={node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
# No cgroups or systemd on a CI machine.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={r}/log/jobcomp.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SlurmdParameters=config_overrides
DefMemPerCPU=256
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
SchedulerParameters=sched_interval=1
MessageTimeout=10
InactiveLimit=0
MinJobAge=300
KillWait=5
NodeName={node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
PartitionName=long Nodes={node} MaxTime=INFINITE State=UP OverSubscribe=NO
"""

    def _spawn(self, name: str, argv: list[str], **kwargs: int) -> None:
        out = open(self.root / f"{name}.out", "wb")
        try:
            self.procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                **kwargs,  # type: ignore[arg-type]
            )
        finally:
            out.close()

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.root / f"{name}.out").read_text(errors="replace")[-2000:]
                raise Unavailable(f"{name} exited with {proc.returncode}: {tail}")

    # -- queries --------------------------------------------------------------------------

    def jobs(self, user: str | None = None) -> list[dict[str, str]]:
        """Jobs squeue lists by default (pending, running, completing), optionally one
        user's: ``[{"id", "state", "user", "name", "partition"}]``."""
        argv = ["squeue", "-h", "-o", "%i|%T|%u|%j|%P"]
        if user:
            argv += ["-u", user]
        out = self.run(*argv).stdout
        keys = ("id", "state", "user", "name", "partition")
        return [dict(zip(keys, line.split("|"), strict=True)) for line in out.splitlines() if line]

    def job_processes(self) -> list[int]:
        """PIDs of processes of jobs of this cluster (found by their ``SLURM_CONF``)."""
        marker = f"SLURM_CONF={self.conf}".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if marker in env and any(v.startswith(b"SLURM_JOB_ID=") for v in env):
                pids.append(int(entry.name))
        return pids

    # -- stop -----------------------------------------------------------------------------

    def stop(self) -> list[int]:
        """Cancel every job, then stop slurmd, slurmctld and munged by PID.

        Returns the PIDs of job processes that were still alive afterwards (and were
        killed): a leak the caller should report.
        """
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                ids = [job["id"] for job in self.jobs()]
                if ids:
                    self.run("scancel", *ids, check=False)
                    wait_for(lambda: not self.jobs(), 30, "cancelled jobs to end", interval=0.3)
        leaked = self.job_processes()
        for pid in leaked:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for group in (("slurmd", "slurmctld"), ("munged",)):
            procs = [self.procs[n] for n in group if n in self.procs]
            for proc in procs:
                if proc.poll() is None:
                    proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 20
            for proc in procs:
                try:
                    proc.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        return leaked


def make_root(prefix: str) -> Path:
    """A fresh directory under /tmp that other accounts can traverse (0755)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    return path
