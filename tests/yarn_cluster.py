"""A private single-node Hadoop YARN for tests: one ResourceManager, one NodeManager.

``yarn_cluster()`` installs OpenJDK 17 and Maven from Debian's packages when missing (apt,
as root), resolves the Hadoop jars that ``tests/yarn/pom.xml`` names from Maven Central
once into ``.cache/yarn/`` of the checkout, writes ``core-site.xml``, ``yarn-site.xml`` and
``capacity-scheduler.xml`` in a temporary directory (every port a free one on 127.0.0.1),
starts the two daemons as plain ``java -cp conf:lib/* ...`` processes, waits until the RM's
REST API lists one RUNNING node, and stops both by PID when the block ends::

    with yarn_cluster() as yarn:
        yarn.rest("/ws/v1/cluster/nodes")      # the RM REST API, parsed JSON
        env = yarn.env                         # PATH (the `yarn` shim), JAVA_HOME, ...

Hadoop is not configured the way a site would, only enough for an application to run:

* No HDFS. ``fs.defaultFS`` is ``viewfs://<name>`` whose every path falls back to the local
  ``file:///``: skein 0.8.2's ``Utils.equalFs`` dereferences the filesystems' host, which
  ``file:///`` has none of (a NullPointerException at submit), and a view filesystem has one.
  Home directories (skein stages applications in ``~/.skein/<app id>``) are ``home/<user>``
  in the cluster's directory.
* ``DefaultContainerExecutor``: containers run as the NodeManager's Unix user whichever user
  an application is submitted for; that user shows only in the RM's records.
* ``hadoop.proxyuser.<service user>.hosts/groups = *``: the service user (the one running
  the tests) may submit for anyone, as a gateway impersonates its users.
* A ``yarn`` executable (``bin/yarn``) that answers only ``yarn classpath [--glob]``: all
  skein asks of Hadoop's scripts.

Where the cluster cannot run here it skips with a one-line reason, except with CI=true,
where it fails instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn
from xml.sax.saxutils import escape

import pytest
from helpers import apt_install, free_ports, process_environ, wait_for

__all__ = ["YarnCluster", "yarn_cluster"]

PROJECT = Path(__file__).resolve().parents[1]
POM = Path(__file__).resolve().parent / "yarn" / "pom.xml"
CACHE = PROJECT / ".cache" / "yarn"
PACKAGES = ("openjdk-17-jdk-headless", "maven")
MAVEN_DEPENDENCY_PLUGIN = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1"
START_TIMEOUT = 120.0

#: What the NodeManager offers: small enough for a 2-core CI machine, big enough for a
#: few skein ApplicationMasters (128 MiB heap each) and their services.
NODE_MEMORY_MB = 4096
NODE_VCORES = 4
#: The smallest container the scheduler hands out (Hadoop's default, 1024, would round
#: every request up to 1 GiB).
MIN_ALLOCATION_MB = 128

# Hadoop 3.5's own list for Java 17 (HADOOP-19310; its shell scripts add it, and we do not
# use those), plus java.lang.invoke, java.nio and sun.nio.ch for Guice and netty, and the
# two exports the container localizer needs (MAPREDUCE-7456).
JAVA_MODULE_FLAGS = (
    *(
        f"--add-opens=java.base/{package}=ALL-UNNAMED"
        for package in (
            "java.io", "java.lang", "java.lang.reflect", "java.math", "java.net", "java.text",
            "java.util", "java.util.concurrent", "java.util.zip", "sun.security.util",
            "sun.security.x509", "java.lang.invoke", "java.nio", "sun.nio.ch",
        )
    ),
    "--add-exports=java.base/sun.net.dns=ALL-UNNAMED",
    "--add-exports=java.base/sun.net.util=ALL-UNNAMED",
)  # fmt: skip

RM_CLASS = "org.apache.hadoop.yarn.server.resourcemanager.ResourceManager"
NM_CLASS = "org.apache.hadoop.yarn.server.nodemanager.NodeManager"


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"YARN unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"YARN unavailable: {reason}")


def _java_home() -> Path | None:
    """Debian's OpenJDK 17 (never whatever JAVA_HOME happens to name: Hadoop 3.5 wants 17)."""
    found = sorted(glob.glob("/usr/lib/jvm/java-17-openjdk-*/bin/java"))
    return Path(found[0]).parents[1] if found else None


def _install() -> Path:
    """OpenJDK 17 and Maven, installed if missing; returns the JDK's home."""
    java_home = _java_home()
    if java_home is not None and shutil.which("mvn"):
        return java_home
    failed = apt_install(PACKAGES)
    if failed:
        _unavailable(failed)
    java_home = _java_home()
    if java_home is None or not shutil.which("mvn"):
        _unavailable(f"installed {' '.join(PACKAGES)} but found no Java 17 or no mvn")
    return java_home


def hadoop_lib(java_home: Path) -> Path:
    """The directory of Hadoop's jars, resolved by Maven once per version of the pom.

    The jars are copied flat into ``.cache/yarn/<pom digest>/lib``: one directory serves the
    daemons' classpath, ``yarn.application.classpath`` and the ``yarn`` shim. Maven's own
    repository (plugins, poms, a second copy of every jar) is deleted afterwards.
    """
    digest = hashlib.sha256(POM.read_bytes()).hexdigest()[:12]
    version = re.search(r"<hadoop.version>([^<]+)</hadoop.version>", POM.read_text())
    home = CACHE / f"hadoop-{version.group(1) if version else 'unknown'}-{digest}"
    lib = home / "lib"
    if lib.is_dir():
        return lib
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be resolving the same pom
        if lib.is_dir():
            return lib
        repository = CACHE / "m2"
        partial = home / "lib.partial"
        shutil.rmtree(partial, ignore_errors=True)
        argv = [
            "mvn", "-B", "-q", "-f", str(POM), f"-Dmaven.repo.local={repository}",
            "-Dmaven.artifact.threads=8", f"{MAVEN_DEPENDENCY_PLUGIN}:copy-dependencies",
            "-DincludeScope=runtime", f"-DoutputDirectory={partial}",
        ]  # fmt: skip
        done = subprocess.run(
            argv,
            env={**os.environ, "JAVA_HOME": str(java_home)},
            capture_output=True,
            text=True,
            timeout=900,
        )
        if done.returncode != 0:
            lines = (done.stdout + done.stderr).strip().splitlines()
            errors = [line for line in lines if "ERROR" in line] or lines or ["no output"]
            _unavailable(f"Maven could not resolve {POM.name}: {errors[0][:300]}")
        partial.rename(lib)
        shutil.rmtree(repository, ignore_errors=True)
    return lib


def _xml(properties: dict[str, str | int | float]) -> str:
    rows = "".join(
        f"  <property><name>{escape(k)}</name><value>{escape(str(v))}</value></property>\n"
        for k, v in properties.items()
    )
    header = '<?xml version="1.0"?>\n<!-- Written by tests/yarn_cluster.py -->\n'
    return f"{header}<configuration>\n{rows}</configuration>\n"


class YarnCluster:
    """One ResourceManager and one NodeManager under ``root``."""

    def __init__(self, root: Path, java_home: Path, lib: Path, service_user: str) -> None:
        self.root = root
        self.java_home = java_home
        self.lib = lib
        self.service_user = service_user
        self.conf_dir = root / "conf"
        self.bin_dir = root / "bin"
        self.log_dir = root / "logs"
        self.home_dir = root / "home"
        self.fs_name = "flotillatest"
        self.node_memory_mb = NODE_MEMORY_MB
        self.node_vcores = NODE_VCORES
        self.ports: dict[str, int] = {}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        #: Seconds from starting the JVMs to the first RUNNING node.
        self.start_seconds = 0.0

    # -- what clients need ----------------------------------------------------------------

    @property
    def classpath(self) -> str:
        """Configuration first, then every jar (the java launcher expands ``lib/*``)."""
        return f"{self.conf_dir}:{self.lib}/*"

    def fs_url(self, path: Path) -> str:
        """A local file as a path of the cluster's filesystem (a site's ``hdfs://...``):
        YARN localizes it from there rather than staging a copy."""
        return f"viewfs://{self.fs_name}{path.resolve()}"

    @property
    def rm_address(self) -> str:
        return f"127.0.0.1:{self.ports['rm']}"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['rm_web']}"

    @property
    def env(self) -> dict[str, str]:
        """Environment variables a YARN client (skein) needs, on top of ``os.environ``."""
        return {
            "PATH": f"{self.bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            "JAVA_HOME": str(self.java_home),
            "HADOOP_CONF_DIR": str(self.conf_dir),
            "SKEIN_CONFIG": str(self.root / "skein"),
        }

    def rest(self, path: str) -> Any:
        """GET ``path`` from the ResourceManager's REST API, parsed."""
        request = urllib.request.Request(
            self.web_url + path, headers={"Accept": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)

    def nodes(self) -> list[dict[str, Any]]:
        """``/ws/v1/cluster/nodes``: every node the RM knows, in every state."""
        found = self.rest("/ws/v1/cluster/nodes").get("nodes") or {}
        return list(found.get("node") or [])

    def apps(self) -> list[dict[str, Any]]:
        """``/ws/v1/cluster/apps``: every application the RM remembers."""
        found = self.rest("/ws/v1/cluster/apps").get("apps") or {}
        return list(found.get("app") or [])

    # -- configuration --------------------------------------------------------------------

    def configure(self) -> None:
        for d in (self.conf_dir, self.bin_dir, self.log_dir, self.home_dir):
            d.mkdir(mode=0o755, parents=True, exist_ok=True)
        names = ("rm", "rm_scheduler", "rm_tracker", "rm_admin", "rm_web")
        names += ("nm", "nm_localizer", "nm_web")
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        p, r = self.ports, self.root
        core = {
            "fs.defaultFS": f"viewfs://{self.fs_name}",
            f"fs.viewfs.mounttable.{self.fs_name}.linkFallback": "file:///",
            f"fs.viewfs.mounttable.{self.fs_name}.homedir": str(self.home_dir),
            "hadoop.tmp.dir": str(r / "tmp"),
            "hadoop.security.authentication": "simple",
            f"hadoop.proxyuser.{self.service_user}.hosts": "*",
            f"hadoop.proxyuser.{self.service_user}.groups": "*",
            # The HTTP auth filter reads its signing secret from ~ otherwise.
            "hadoop.http.authentication.signature.secret.file": str(r / "http-secret"),
        }
        yarn = {
            "yarn.resourcemanager.hostname": "127.0.0.1",
            "yarn.resourcemanager.address": f"127.0.0.1:{p['rm']}",
            "yarn.resourcemanager.scheduler.address": f"127.0.0.1:{p['rm_scheduler']}",
            "yarn.resourcemanager.resource-tracker.address": f"127.0.0.1:{p['rm_tracker']}",
            "yarn.resourcemanager.admin.address": f"127.0.0.1:{p['rm_admin']}",
            "yarn.resourcemanager.webapp.address": f"127.0.0.1:{p['rm_web']}",
            "yarn.nodemanager.hostname": "127.0.0.1",
            "yarn.nodemanager.address": f"127.0.0.1:{p['nm']}",
            "yarn.nodemanager.localizer.address": f"127.0.0.1:{p['nm_localizer']}",
            "yarn.nodemanager.webapp.address": f"127.0.0.1:{p['nm_web']}",
            "yarn.resourcemanager.scheduler.class": (
                "org.apache.hadoop.yarn.server.resourcemanager.scheduler.capacity.CapacityScheduler"
            ),
            "yarn.nodemanager.container-executor.class": (
                "org.apache.hadoop.yarn.server.nodemanager.DefaultContainerExecutor"
            ),
            # The default names $HADOOP_*_HOME/share/hadoop/..., a tarball's layout.
            "yarn.application.classpath": f"{self.conf_dir},{self.lib}/*",
            "yarn.nodemanager.env-whitelist": "JAVA_HOME,HADOOP_CONF_DIR,PATH,LANG,TZ",
            "yarn.nodemanager.resource.detect-hardware-capabilities": "false",
            "yarn.nodemanager.resource.memory-mb": self.node_memory_mb,
            "yarn.nodemanager.resource.cpu-vcores": self.node_vcores,
            "yarn.scheduler.minimum-allocation-mb": MIN_ALLOCATION_MB,
            "yarn.scheduler.maximum-allocation-mb": self.node_memory_mb,
            "yarn.scheduler.minimum-allocation-vcores": 1,
            "yarn.scheduler.maximum-allocation-vcores": self.node_vcores,
            # Nothing is isolated (no cgroups): the checks would only kill JVMs whose
            # virtual memory looks large.
            "yarn.nodemanager.vmem-check-enabled": "false",
            "yarn.nodemanager.pmem-check-enabled": "false",
            # A CI disk over 90% full would otherwise mark the node UNHEALTHY.
            "yarn.nodemanager.disk-health-checker.enable": "false",
            "yarn.nodemanager.disk-health-checker.max-disk-utilization-per-disk-percentage": (
                "100.0"
            ),
            "yarn.nodemanager.local-dirs": str(r / "nm-local"),
            "yarn.nodemanager.log-dirs": str(r / "nm-logs"),
            # Containers' directories and logs stay until the cluster's directory goes:
            # deletions wait out the debug delay. Logs are not retained past an
            # application's end otherwise: a pending log deletion holds up the NM's
            # shutdown for 10 s, and so do applications it still remembers.
            "yarn.nodemanager.delete.debug-delay-sec": 3600,
            "yarn.nodemanager.log.retain-seconds": 0,
            "yarn.nodemanager.process-kill-wait.ms": 1000,
            "yarn.resourcemanager.nodemanagers.heartbeat-interval-ms": 250,
            "yarn.resourcemanager.am.max-attempts": 1,
            # Clients fail within seconds when the RM is gone; the NM waits for a slow RM.
            "yarn.resourcemanager.connect.max-wait.ms": 20000,
            "yarn.resourcemanager.connect.retry-interval.ms": 500,
            "yarn.nodemanager.resourcemanager.connect.max-wait.ms": 120000,
            "yarn.resourcemanager.recovery.enabled": "false",
            "yarn.nodemanager.recovery.enabled": "false",
            "yarn.timeline-service.enabled": "false",
            "yarn.log-aggregation-enable": "false",
        }
        capacity = {
            "yarn.scheduler.capacity.root.queues": "default",
            "yarn.scheduler.capacity.root.default.capacity": 100,
            "yarn.scheduler.capacity.root.default.maximum-capacity": 100,
            # The default, 0.1 of the node, is room for a couple of ApplicationMasters.
            "yarn.scheduler.capacity.maximum-am-resource-percent": 0.5,
        }
        (self.conf_dir / "core-site.xml").write_text(_xml(core))
        (self.conf_dir / "yarn-site.xml").write_text(_xml(yarn))
        (self.conf_dir / "capacity-scheduler.xml").write_text(_xml(capacity))
        (self.conf_dir / "log4j.properties").write_text(
            "log4j.rootLogger=INFO,console\n"
            "log4j.appender.console=org.apache.log4j.ConsoleAppender\n"
            "log4j.appender.console.target=System.err\n"
            "log4j.appender.console.layout=org.apache.log4j.PatternLayout\n"
            "log4j.appender.console.layout.ConversionPattern=%d{ISO8601} %p %c{2}: %m%n\n"
            "log4j.logger.org.apache.hadoop.util.NativeCodeLoader=ERROR\n"
        )
        (r / "http-secret").write_text(os.urandom(16).hex())
        shim = self.bin_dir / "yarn"
        shim.write_text(
            "#!/bin/sh\n"
            "# Stands in for Hadoop's `yarn` script (written by tests/yarn_cluster.py):\n"
            "# skein runs only `yarn classpath --glob`.\n"
            'case "$1" in\n'
            # As Hadoop's script does: the configuration directory the caller names.
            f'  classpath) echo "${{HADOOP_CONF_DIR:-{self.conf_dir}}}:{self.lib}/*" ;;\n'
            '  *) echo "yarn (test shim): only \\`yarn classpath\\` is here" >&2; exit 2 ;;\n'
            "esac\n"
        )
        shim.chmod(0o755)

    # -- start / stop ---------------------------------------------------------------------

    def _java(self, name: str, main: str, heap: str) -> list[str]:
        return [
            str(self.java_home / "bin" / "java"),
            f"-Xmx{heap}",
            # Two cores: skip the optimizing compiler and the parallel collector, both of
            # which cost start-up time and CPU the tests need.
            "-XX:TieredStopAtLevel=1",
            "-XX:+UseSerialGC",
            "-Djava.net.preferIPv4Stack=true",
            f"-Dproc_{name}",
            f"-Dhadoop.log.dir={self.log_dir}",
            f"-Dyarn.log.dir={self.log_dir}",
            f"-Dhadoop.tmp.dir={self.root / 'tmp'}",
            *JAVA_MODULE_FLAGS,
            "-cp",
            self.classpath,
            main,
        ]

    def _spawn(self, name: str, argv: list[str]) -> None:
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "JAVA_HOME": str(self.java_home),  # containers' `$JAVA_HOME/bin/java`
            "HADOOP_CONF_DIR": str(self.conf_dir),
            "HOME": str(self.home_dir),
        }
        with open(self.log_dir / f"{name}.log", "ab") as out:
            self.procs[name] = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.root,
                start_new_session=True,
            )

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = (self.log_dir / f"{name}.log").read_text(errors="replace")
                errors = [
                    line for line in log.splitlines() if " ERROR " in line or "Caused" in line
                ]
                raise RuntimeError(
                    f"the {name} exited with {proc.returncode}: "
                    + ("\n".join(errors[:5]) or log[-2000:])
                )

    def start(self, timeout: float = START_TIMEOUT) -> None:
        """Start both daemons and wait until the RM lists one RUNNING node."""
        started = time.monotonic()
        self._spawn("resourcemanager", self._java("resourcemanager", RM_CLASS, "512m"))
        self._spawn("nodemanager", self._java("nodemanager", NM_CLASS, "384m"))

        def running() -> bool:
            self._check_alive()
            return [n["state"] for n in self.nodes()] == ["RUNNING"]

        wait_for(running, timeout, "the YARN node to be RUNNING", interval=0.2)
        self.start_seconds = time.monotonic() - started

    def container_processes(self) -> list[int]:
        """PIDs of processes of this cluster's containers (found by their ``LOG_DIRS``)."""
        marker = f"LOG_DIRS={self.root / 'nm-logs'}/".encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                env = (entry / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if any(v.startswith(marker) for v in env):
                pids.append(int(entry.name))
        return pids

    def application_processes(self, app_id: str) -> dict[int, dict[str, str]]:
        """Processes of ``app_id``'s containers (their CONTAINER_ID names it): pid ->
        environment."""
        marker = "container_" + app_id.removeprefix("application_")
        out = {}
        for pid in self.container_processes():
            env = process_environ(pid)
            if env.get("CONTAINER_ID", "").startswith(marker):
                out[pid] = env
        return out

    def kill_application(self, app_id: str) -> None:
        """What an operator's ``yarn application -kill`` does, through the RM's REST API."""
        request = urllib.request.Request(
            f"{self.web_url}/ws/v1/cluster/apps/{app_id}/state?user.name={self.service_user}",
            data=json.dumps({"state": "KILLED"}).encode(),
            method="PUT",
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10):
            pass

    def stop(self) -> list[int]:
        """SIGTERM the NodeManager (it stops its containers), then the ResourceManager,
        by PID; SIGKILL what lingers. Returns the PIDs of container processes that were
        still alive afterwards (and were killed): a leak the caller should report."""
        for name in ("nodemanager", "resourcemanager"):
            proc = self.procs.get(name)
            if proc is None or proc.poll() is not None:
                continue
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        leaked = self.container_processes()
        for pid in leaked:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return leaked


@contextlib.contextmanager
def yarn_cluster(
    service_user: str | None = None,
    *,
    node_memory_mb: int = NODE_MEMORY_MB,
    node_vcores: int = NODE_VCORES,
) -> Iterator[YarnCluster]:
    """Install and resolve if needed, configure, start, yield, stop (see the module
    docstring). ``service_user`` (default: the current user) may impersonate anyone;
    the NodeManager offers ``node_memory_mb`` and ``node_vcores``."""
    java_home = _install()
    lib = hadoop_lib(java_home)
    user = service_user or pwd.getpwuid(os.geteuid()).pw_name
    root = Path(tempfile.mkdtemp(prefix="flotilla-yarn-", dir="/tmp"))
    root.chmod(0o755)
    cluster = YarnCluster(root, java_home, lib, user)
    cluster.node_memory_mb = node_memory_mb
    cluster.node_vcores = node_vcores
    leaked: list[int] = []
    try:
        cluster.configure()
        try:
            cluster.start()
        except RuntimeError as exc:  # a daemon died: its log says why
            raise AssertionError(str(exc)) from None
        yield cluster
    finally:
        leaked = cluster.stop()
        if os.environ.get("FLOTILLA_TEST_SHOW_LOGS"):
            for log in sorted(cluster.log_dir.glob("*.log")):
                print(f"==== {log}\n{log.read_text(errors='replace')[-8000:]}")
        shutil.rmtree(root, ignore_errors=True)
    assert not leaked, f"container processes outlived the NodeManager: {leaked}"
