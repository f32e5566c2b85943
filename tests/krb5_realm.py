"""A throwaway MIT Kerberos realm for tests, from Debian's packages.

``krb5_realm()`` installs ``krb5-kdc``, ``krb5-admin-server`` (for ``kadmin.local``) and
``krb5-user`` when missing (apt, as root), writes its own ``krb5.conf`` and ``kdc.conf``
in a temporary directory (nothing under ``/etc`` is read or written), creates the
database and the principals ``alice``, ``bob``, ``alice/admin``, ``HTTP/localhost``,
``host/localhost`` and ``HTTP/elsewhere.test``, exports a service keytab holding
``HTTP/localhost`` and ``host/localhost``, starts ``krb5kdc`` on 127.0.0.1 and a free
port, waits until a ``kinit`` succeeds, and stops the KDC by PID when the block ends::

    with krb5_realm() as realm:
        env = realm.env                        # KRB5_CONFIG etc. for processes
        ccache = realm.kinit("alice")          # a credential cache file in the realm's dir

Where Kerberos cannot be installed it skips with a one-line reason, except with CI=true,
where it fails instead.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
from helpers import apt_install, free_port, wait_for

__all__ = ["Krb5Realm", "krb5_realm"]

REALM = "EXAMPLE.TEST"
USERS = ("alice", "bob", "alice/admin")
#: In the service keytab.
SERVICES = ("HTTP/localhost", "host/localhost")
#: Known to the KDC, in no keytab the gateway has.
FOREIGN_SERVICE = "HTTP/elsewhere.test"
# kadmin.local is in krb5-admin-server on Debian (kadmind itself is never started).
PACKAGES = ("krb5-kdc", "krb5-admin-server", "krb5-user")
TOOLS = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit")
START_TIMEOUT = 30.0


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"Kerberos KDC unavailable in CI: {reason}", pytrace=False)
    pytest.skip(f"Kerberos KDC unavailable: {reason}")


def _tool(name: str) -> str | None:
    return shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")


def _install() -> None:
    if all(_tool(t) for t in TOOLS):
        return
    failed = apt_install(PACKAGES)
    if failed:
        _unavailable(failed)
    missing = [t for t in TOOLS if not _tool(t)]
    if missing:
        _unavailable(f"installed {' '.join(PACKAGES)} but found no {', '.join(missing)}")


class Krb5Realm:
    """One running KDC for ``EXAMPLE.TEST`` in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.realm = REALM
        self.port = 0
        self.passwords = {user: secrets.token_urlsafe(12) for user in USERS}
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def krb5_conf(self) -> Path:
        return self.directory / "krb5.conf"

    @property
    def kdc_conf(self) -> Path:
        return self.directory / "kdc.conf"

    @property
    def keytab(self) -> Path:
        """The service keytab (``HTTP/localhost``, ``host/localhost``)."""
        return self.directory / "service.keytab"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to use this realm (add ``KRB5CCNAME`` for a client)."""
        return {
            "KRB5_CONFIG": str(self.krb5_conf),
            "KRB5_KDC_PROFILE": str(self.kdc_conf),
            "KRB5RCACHEDIR": str(self.directory),
            "KRB5_TRACE": str(self.directory / "trace.log"),
        }

    def _write_config(self) -> None:
        d = self.directory
        self.krb5_conf.write_text(
            f"""[libdefaults]
    default_realm = {REALM}
    dns_lookup_realm = false
    dns_lookup_kdc = false
    rdns = false
    dns_canonicalize_hostname = false
    udp_preference_limit = 1
    ticket_lifetime = 1h
[realms]
    {REALM} = {{
        kdc = 127.0.0.1:{self.port}
    }}
[domain_realm]
    localhost = {REALM}
    .test = {REALM}
"""
        )
        self.kdc_conf.write_text(
            f"""[kdcdefaults]
    kdc_listen = 127.0.0.1:{self.port}
    kdc_tcp_listen = 127.0.0.1:{self.port}
[realms]
    {REALM} = {{
        database_name = {d}/principal
        key_stash_file = {d}/stash
        acl_file = {d}/kadm5.acl
        max_life = 1h
        supported_enctypes = aes256-cts-hmac-sha1-96:normal aes128-cts-hmac-sha1-96:normal
    }}
[logging]
    kdc = FILE:{d}/kdc.log
    default = FILE:{d}/krb5lib.log
"""
        )
        (d / "kadm5.acl").write_text("")

    def _run(self, argv: list[str], stdin: str = "") -> str:
        done = subprocess.run(
            argv,
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **self.env},
        )
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
        return done.stdout

    def kadmin(self, query: str) -> str:
        return self._run(["kadmin.local", "-r", REALM, "-q", query])

    def create(self) -> None:
        """Configuration, database, principals and the service keytab."""
        self.port = free_port()
        self._write_config()
        self._run(["kdb5_util", "create", "-s", "-r", REALM, "-P", secrets.token_urlsafe(16)])
        for user, password in self.passwords.items():
            self.kadmin(f"addprinc -pw {password} {user}")
        for service in (*SERVICES, FOREIGN_SERVICE):
            self.kadmin(f"addprinc -randkey {service}")
        for service in SERVICES:
            self.kadmin(f"ktadd -k {self.keytab} {service}")
        self.kadmin(f"ktadd -k {self.directory / 'foreign.keytab'} {FOREIGN_SERVICE}")

    def start(self) -> None:
        """Start the KDC and wait until it issues tickets."""
        with open(self.directory / "krb5kdc.out", "ab") as out:
            self.proc = subprocess.Popen(
                ["krb5kdc", "-n", "-r", REALM],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", **self.env},
            )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                log = (self.directory / "kdc.log").read_text(errors="replace")[-2000:]
                raise AssertionError(f"krb5kdc exited ({self.proc.returncode}):\n{log}")
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                pass
            self.kinit("bob")
            return True

        try:
            wait_for(ready, START_TIMEOUT, "the KDC to issue a ticket", interval=0.1)
        except AssertionError:
            self.stop()
            raise

    def kinit(self, user: str, ccache: Path | None = None) -> Path:
        """A credential cache (file) holding ``user``'s ticket-granting ticket."""
        path = ccache or self.directory / f"ccache-{user.replace('/', '_')}"
        self._run(
            ["kinit", "-c", f"FILE:{path}", f"{user}@{REALM}"],
            stdin=self.passwords[user] + "\n",
        )
        return path

    def stop(self) -> None:
        """SIGTERM by PID, SIGKILL if it lingers."""
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, sig)
            try:
                proc.wait(10)
                return
            except subprocess.TimeoutExpired:
                continue


@contextlib.contextmanager
def krb5_realm() -> Iterator[Krb5Realm]:
    """Install if needed, create, start, yield, stop (see the module docstring)."""
    _install()
    directory = Path(tempfile.mkdtemp(prefix="flotilla-krb5-"))
    directory.chmod(0o755)
    realm = Krb5Realm(directory)
    try:
        realm.create()
        realm.start()
        yield realm
    finally:
        realm.stop()
        shutil.rmtree(directory, ignore_errors=True)
