"""A private Kubernetes control plane for tests: etcd, kube-apiserver, kube-controller-manager
and kube-scheduler, real binaries on 127.0.0.1.

The binaries come from ``scripts/build_k8s.sh`` (``make k8s``), built once from the Go
module proxy into ``.cache/k8s/<release>/bin`` (``FLOTILLA_K8S_BIN`` names another
directory). ``kube_control_plane()`` makes a CA and the components' certificates, starts
the four processes on free ports, waits until the API server is ready and the
controller-manager has created the ``default`` namespace's ServiceAccount (its controllers
then run), and stops them by PID when the block ends::

    with kube_control_plane() as kube:
        api = kube.client()                      # the cluster admin (system:masters)
        ns = kube.create_namespace("t")          # a fresh namespace with its ServiceAccount
        api.post(f"/api/v1/namespaces/{ns}/pods", {...})

What differs from a site's cluster:

* No kubelet, so no node runs pods: tests that need running pods start the test-only node
  agent (``tests/k8s_node_agent.py``) as well.
* The API server advertises 127.0.0.1 with ``--endpoint-reconciler-type=none``: the default
  reconciler refuses a loopback address, so the ``kubernetes`` Service has no endpoints.
* No kube-proxy and no cluster DNS: a Service's ClusterIP and name lead nowhere here;
  EndpointSlices (from the real controller-manager) do list the Ready pods behind it.
* Authorization is RBAC. Static bearer tokens (``--token-auth-file``) exist for
  ``test-admin`` (``system:masters``) and for a few plain users (``kube.user_token``)
  with no permissions until a test grants them.

Where the binaries are missing it skips with a one-line reason, except with CI=true,
where it fails instead.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import secrets
import signal
import ssl
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from helpers import free_ports, wait_for

__all__ = ["K8S_BIN", "KubeClient", "KubeControlPlane", "KubeError", "kube_control_plane"]

PROJECT = Path(__file__).resolve().parents[1]
K8S_BIN = Path(os.environ.get("FLOTILLA_K8S_BIN") or PROJECT / ".cache/k8s/v1.37.2/bin")
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "helm")
#: Plain users with a static token and no permissions of their own.
USERS = ("alice", "bob")
#: The range Services' ClusterIPs come from (nothing routes them here).
SERVICE_RANGE = "10.96.0.0/16"


class KubeError(Exception):
    """A non-2xx answer of the API server: ``status`` and the decoded ``body``."""

    def __init__(self, method: str, path: str, status: int, body: Any) -> None:
        message = body.get("message", "") if isinstance(body, dict) else str(body)[:300]
        super().__init__(f"{method} {path}: {status} {message}")
        self.status = status
        self.body = body


@dataclass
class KubeClient:
    """A small synchronous JSON client of the API server (tests' own checks and setup)."""

    api_url: str
    ca_file: Path
    token: str
    timeout: float = 30.0
    _context: ssl.SSLContext = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._context = ssl.create_default_context(cafile=str(self.ca_file))

    def _open(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
        timeout: float | None = None,
    ) -> Any:
        url = self.api_url + path
        if params:
            url += "?" + urllib.parse.urlencode(params)
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(url, data=data, method=method)
        request.add_header("Authorization", f"Bearer {self.token}")
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            return urllib.request.urlopen(
                request, context=self._context, timeout=timeout or self.timeout
            )
        except urllib.error.HTTPError as exc:
            raw = exc.read().decode(errors="replace")
            try:
                decoded: Any = json.loads(raw)
            except ValueError:
                decoded = raw
            raise KubeError(method, path, exc.code, decoded) from None

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        params: Mapping[str, Any] | None = None,
        content_type: str = "application/json",
    ) -> Any:
        """One call; the decoded JSON answer (text for non-JSON answers such as logs)."""
        with self._open(method, path, body, params, content_type) as answer:
            raw = answer.read().decode(errors="replace")
        try:
            return json.loads(raw)
        except ValueError:
            return raw

    def get(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def patch(self, path: str, body: Any) -> Any:
        """A JSON merge patch."""
        return self.request("PATCH", path, body, content_type="application/merge-patch+json")

    def delete(self, path: str, params: Mapping[str, Any] | None = None) -> Any:
        return self.request("DELETE", path, params=params)

    def exists(self, path: str) -> bool:
        try:
            self.get(path)
        except KubeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def watch(
        self, path: str, resource_version: str, timeout: float = 30.0, **params: Any
    ) -> Iterator[dict[str, Any]]:
        """The watch events of ``path`` (a collection) after ``resource_version``, until
        ``timeout`` seconds have passed or the caller stops iterating."""
        query = {
            "watch": "1",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(max(1, int(timeout))),
            "allowWatchBookmarks": "false",
            **params,
        }
        with self._open("GET", path, params=query, timeout=timeout + 5) as stream:
            for line in stream:
                if line.strip():
                    yield json.loads(line)

    def wait_for(
        self, path: str, predicate: Callable[[dict[str, Any]], bool], timeout: float, what: str
    ) -> dict[str, Any]:
        """The object at ``path`` once ``predicate`` holds, seen through a watch of it."""
        collection, _, name = path.rpartition("/")
        deadline = time.monotonic() + timeout
        while True:
            listing = self.get(collection, {"fieldSelector": f"metadata.name={name}"})
            for item in listing["items"]:
                if predicate(item):
                    return item
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            for event in self.watch(
                collection,
                listing["metadata"]["resourceVersion"],
                timeout=min(left, 30.0),
                fieldSelector=f"metadata.name={name}",
            ):
                if event["type"] in ("ADDED", "MODIFIED") and predicate(event["object"]):
                    return dict(event["object"])
                if event["type"] == "ERROR":
                    break  # 410 Gone and the like: list again


@dataclass
class KubeControlPlane:
    """A running control plane (see the module docstring)."""

    api_url: str
    ca_file: Path
    admin_token: str
    state_dir: Path
    bin_dir: Path
    etcd_url: str
    user_tokens: dict[str, str]

    @property
    def ca_key_file(self) -> Path:
        """The test CA's key: the node agent signs its serving certificate with it."""
        return self.state_dir / "pki" / "ca.key"

    def client(self, token: str | None = None) -> KubeClient:
        return KubeClient(self.api_url, self.ca_file, token or self.admin_token)

    def user_token(self, name: str) -> str:
        """The static bearer token of plain user ``name`` (one of ``USERS``)."""
        return self.user_tokens[name]

    def write_kubeconfig(self, path: Path, token: str | None = None) -> Path:
        """A kubeconfig (helm's, kubectl's) for ``token`` (default the admin's)."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "test",
                    "cluster": {
                        "server": self.api_url,
                        "certificate-authority": str(self.ca_file),
                    },
                }
            ],
            "users": [{"name": "user", "user": {"token": token or self.admin_token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "user"}}],
            "current-context": "test",
        }
        path.write_text(json.dumps(config, indent=2))
        path.chmod(0o600)
        return path

    def create_namespace(self, prefix: str = "t") -> str:
        """A new namespace, returned once its ``default`` ServiceAccount exists."""
        api = self.client()
        created = api.post("/api/v1/namespaces", {"metadata": {"generateName": f"{prefix}-"}})
        name = str(created["metadata"]["name"])
        wait_for(
            lambda: api.exists(f"/api/v1/namespaces/{name}/serviceaccounts/default"),
            60,
            f"the default ServiceAccount of namespace {name}",
        )
        return name

    def service_account_token(self, namespace: str, name: str, seconds: int = 3600) -> str:
        """A bound token of ServiceAccount ``namespace/name`` (the TokenRequest API, as a
        pod's projected token is made)."""
        answer = self.client().post(
            f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
            {
                "apiVersion": "authentication.k8s.io/v1",
                "kind": "TokenRequest",
                "spec": {"expirationSeconds": seconds},
            },
        )
        return str(answer["status"]["token"])


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI") == "true":
        pytest.fail(f"Kubernetes control plane unavailable with CI=true: {reason}")
    pytest.skip(reason)


def _key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class _CA:
    """The test cluster's one certificate authority (apiserver serving, clients)."""

    def __init__(self, pki: Path) -> None:
        self.pki = pki
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "flotilla-test-kube-ca")])
        self.cert = (
            self._builder(name, self.key)
            .issuer_name(name)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256())
        )
        self.write("ca", self.cert, self.key)

    @staticmethod
    def _builder(subject: x509.Name, key: ec.EllipticCurvePrivateKey) -> x509.CertificateBuilder:
        now = datetime.datetime.now(datetime.UTC)
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
        )

    def write(self, stem: str, cert: x509.Certificate, key: Any) -> None:
        (self.pki / f"{stem}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_file = self.pki / f"{stem}.key"
        key_file.write_bytes(_key_pem(key))
        key_file.chmod(0o600)

    def issue(
        self, stem: str, common_name: str, organization: str | None = None, server: bool = False
    ) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
        if organization:
            attributes.insert(0, x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            self._builder(x509.Name(attributes), key)
            .issuer_name(self.cert.subject)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [
                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                        x509.DNSName("localhost"),
                        x509.DNSName("kubernetes.default.svc"),
                    ]
                ),
                critical=False,
            )
        self.write(stem, builder.sign(self.key, hashes.SHA256()), key)


@dataclass
class _Processes:
    """The control plane's processes, stopped by PID in reverse order of start."""

    logs: Path
    running: list[tuple[str, subprocess.Popen[bytes]]] = field(default_factory=list)

    def start(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with (self.logs / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.running.append((name, process))
        return process

    def check(self) -> None:
        for name, process in self.running:
            if process.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{name} exited with {process.returncode}:\n{tail}")

    def stop(self) -> None:
        for _, process in reversed(self.running):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _ready(processes: _Processes, check: Callable[[], bool]) -> Callable[[], bool]:
    """``check``, failing at once (with the log) when a process has exited."""

    def probe() -> bool:
        processes.check()
        return check()

    return probe


@contextlib.contextmanager
def kube_control_plane(bin_dir: Path = K8S_BIN) -> Iterator[KubeControlPlane]:
    """Start a control plane in a temporary directory; stop it when the block ends."""
    missing = [name for name in BINARIES if not (bin_dir / name).is_file()]
    if missing:
        _unavailable(f"{', '.join(missing)} not built in {bin_dir} (run `make k8s`)")
    with tempfile.TemporaryDirectory(prefix="flotilla-kube-") as tmp:
        state = Path(tmp)
        pki, logs = state / "pki", state / "logs"
        pki.mkdir()
        logs.mkdir()
        ca = _CA(pki)
        ca.issue("apiserver", "kube-apiserver", server=True)
        ca.issue("apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters")
        ca.issue("controller-manager", "system:kube-controller-manager")
        ca.issue("scheduler", "system:kube-scheduler")
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        (pki / "sa.key").write_bytes(_key_pem(sa_key))
        (pki / "sa.pub").write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        admin_token = secrets.token_hex(24)
        user_tokens = {user: secrets.token_hex(24) for user in USERS}
        lines = [f'{admin_token},test-admin,test-admin,"system:masters"']
        lines += [f"{token},{user},{user}" for user, token in user_tokens.items()]
        (pki / "tokens.csv").write_text("\n".join(lines) + "\n")
        (pki / "tokens.csv").chmod(0o600)

        etcd_port, peer_port, api_port, kcm_port, scheduler_port = free_ports(5)
        api_url = f"https://127.0.0.1:{api_port}"
        etcd_url = f"http://127.0.0.1:{etcd_port}"
        plane = KubeControlPlane(
            api_url, pki / "ca.crt", admin_token, state, bin_dir, etcd_url, user_tokens
        )
        processes = _Processes(logs)
        try:
            _start(plane, processes, peer_port, kcm_port, scheduler_port)
            yield plane
        finally:
            processes.stop()


def _component_kubeconfig(plane: KubeControlPlane, stem: str) -> Path:
    pki = plane.state_dir / "pki"
    path = plane.state_dir / f"{stem}.kubeconfig"
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "test",
                "cluster": {"server": plane.api_url, "certificate-authority": str(plane.ca_file)},
            }
        ],
        "users": [
            {
                "name": stem,
                "user": {
                    "client-certificate": str(pki / f"{stem}.crt"),
                    "client-key": str(pki / f"{stem}.key"),
                },
            }
        ],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": stem}}],
        "current-context": "test",
    }
    path.write_text(json.dumps(config))
    return path


def _start(
    plane: KubeControlPlane,
    processes: _Processes,
    peer_port: int,
    kcm_port: int,
    scheduler_port: int,
) -> None:
    pki, bins = plane.state_dir / "pki", plane.bin_dir
    peer = f"http://127.0.0.1:{peer_port}"
    processes.start(
        "etcd",
        [
            str(bins / "etcd"),
            "--name=test",
            f"--data-dir={plane.state_dir / 'etcd'}",
            f"--listen-client-urls={plane.etcd_url}",
            f"--advertise-client-urls={plane.etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=test={peer}",
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
    )
    health = urllib.request.Request(plane.etcd_url + "/health")
    wait_for(
        _ready(processes, lambda: b"true" in urllib.request.urlopen(health, timeout=2).read()),
        60,
        "etcd /health",
    )
    processes.start(
        "kube-apiserver",
        [
            str(bins / "kube-apiserver"),
            f"--etcd-servers={plane.etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={plane.api_url.rsplit(':', 1)[1]}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={plane.ca_file}",
            f"--token-auth-file={pki / 'tokens.csv'}",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            f"--service-cluster-ip-range={SERVICE_RANGE}",
            "--endpoint-reconciler-type=none",
            "--authorization-mode=Node,RBAC",
            # pods/log: the API server reaches the node agent's HTTPS endpoint on the
            # node's InternalIP; the agent's certificate is the test CA's.
            f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
            f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
            f"--kubelet-certificate-authority={plane.ca_file}",
            "--kubelet-preferred-address-types=InternalIP",
            "--allow-privileged=true",
            "--profiling=false",
        ],
    )
    admin = plane.client()
    wait_for(
        _ready(processes, lambda: admin.request("GET", "/readyz") == "ok"),
        120,
        "kube-apiserver /readyz",
    )
    common = ["--bind-address=127.0.0.1", "--leader-elect=false", "--profiling=false"]
    kcm_config = _component_kubeconfig(plane, "controller-manager")
    processes.start(
        "kube-controller-manager",
        [
            str(bins / "kube-controller-manager"),
            f"--kubeconfig={kcm_config}",
            f"--authentication-kubeconfig={kcm_config}",
            f"--authorization-kubeconfig={kcm_config}",
            f"--secure-port={kcm_port}",
            f"--cert-dir={plane.state_dir / 'kcm-serving'}",
            # No node heartbeats to judge: the node agent's node stays as it reports it.
            "--controllers=*,-nodelifecycle",
            f"--root-ca-file={plane.ca_file}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            "--use-service-account-credentials=true",
            *common,
        ],
    )
    scheduler_config = _component_kubeconfig(plane, "scheduler")
    processes.start(
        "kube-scheduler",
        [
            str(bins / "kube-scheduler"),
            f"--kubeconfig={scheduler_config}",
            f"--authentication-kubeconfig={scheduler_config}",
            f"--authorization-kubeconfig={scheduler_config}",
            f"--secure-port={scheduler_port}",
            f"--cert-dir={plane.state_dir / 'scheduler-serving'}",
            *common,
        ],
    )
    # The controllers run once each has its own credentials; the default namespace's
    # ServiceAccount is the first thing they make.
    wait_for(
        _ready(
            processes, lambda: admin.exists("/api/v1/namespaces/default/serviceaccounts/default")
        ),
        90,
        "the controller-manager's default ServiceAccount",
    )
    wait_for(_ready(processes, lambda: _healthy(scheduler_port)), 60, "kube-scheduler /readyz")


def _healthy(port: int) -> bool:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # the scheduler's self-signed serving certificate
    with urllib.request.urlopen(
        f"https://127.0.0.1:{port}/readyz", context=context, timeout=2
    ) as answer:
        return bool(answer.read() == b"ok")
