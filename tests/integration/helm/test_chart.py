"""The Helm chart (deploy/helm/flotilla), the images' Dockerfiles and the compose file.

Renders the chart with the real ``helm`` (built by scripts/build_k8s.sh; the directory
is $FLOTILLA_K8S_BIN) and checks what Kubernetes would be given: the kinds, the labels,
the configuration file every service reads (loaded with the services' own loader), the
schema refusing bad values, and RBAC that reaches no further than the clusters'
namespace. ``docker compose config`` (or docker-compose's) checks the compose file; no
container engine runs here, so nothing is built or started. Missing tools skip the
tests, except with CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml
from flotilla_common.clusterconfig import ClusterConfig
from flotilla_common.config import Deployment, load_config

pytestmark = pytest.mark.integration

PROJECT = Path(__file__).resolve().parents[3]
CHART = PROJECT / "deploy" / "helm" / "flotilla"
DOCKER = PROJECT / "deploy" / "docker"
COMPOSE = PROJECT / "deploy" / "compose" / "docker-compose.yaml"
COMPOSE_PLUGIN = ".cache/compose/v5.6.0/docker-compose"
K8S_BIN = Path(os.environ.get("FLOTILLA_K8S_BIN", PROJECT / ".cache/k8s/v1.37.2/bin"))
RELEASE = "gw"
NAMESPACE = "flotilla"
FULLNAME = "gw-flotilla"

#: Every object the default values render, by kind.
EXPECTED_KINDS = {
    "ConfigMap": 1,
    "Deployment": 5,  # registry, auth, proxy-config, launcher, envoy
    "NetworkPolicy": 3,  # services, envoy, dask clusters
    "Role": 1,
    "RoleBinding": 1,
    "Secret": 2,  # gateway secrets, database encryption keys
    "Service": 4,  # registry, auth, proxy-config, envoy
    "ServiceAccount": 1,
}

#: What the launcher's Role may grant, by resource: nothing else, nowhere else.
ALLOWED_RULES = {
    "pods": {"get", "list", "watch", "create", "delete", "patch"},
    "pods/log": {"get"},
    "services": {"get", "list", "watch", "create", "delete"},
    "secrets": {"get", "list", "watch", "create", "delete"},
    "configmaps": {"get", "list", "watch", "create", "delete"},
    "events": {"list", "watch"},
}


def _unavailable(reason: str) -> NoReturn:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def helm() -> Path:
    binary = K8S_BIN / "helm"
    if not os.access(binary, os.X_OK):
        _unavailable(f"no helm at {binary}: run scripts/build_k8s.sh or set FLOTILLA_K8S_BIN")
    return binary


def _run_helm(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render(helm: Path, *args: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart, each rendered object parsed."""
    done = _run_helm(helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE, *args)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr.lower(), done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc is not None]


def one(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind} {name}: {len(found)} rendered"
    return found[0]


def config_file(objects: list[dict[str, Any]], deployment: str) -> str:
    """The configuration file the pods of ``deployment`` mount, from its ConfigMap."""
    spec = one(objects, "Deployment", deployment)["spec"]["template"]["spec"]
    (name,) = [v["configMap"]["name"] for v in spec["volumes"] if "configMap" in v]
    text: str = one(objects, "ConfigMap", name)["data"]["flotilla_config.py"]
    return text


def load_as(tmp_path: Path, text: str, service: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The rendered configuration as ``service``'s pod loads it (secrets set as there)."""
    path = tmp_path / f"{service}.py"
    path.write_text(text)
    monkeypatch.setenv("FLOTILLA_SERVICE", service)
    for name in ("FLOTILLA_IDENTITY_KEY", "FLOTILLA_INTERNAL_TOKEN", "FLOTILLA_COOKIE_KEY"):
        monkeypatch.setenv(name, f"{name.lower()}-value")
    return load_config(path)


def test_lint_is_clean(helm: Path) -> None:
    done = _run_helm(helm, "lint", "--strict", str(CHART))
    assert done.returncode == 0, done.stdout + done.stderr
    assert not re.search(r"\[(WARNING|ERROR)\]", done.stdout + done.stderr), done.stdout


def test_default_render_has_the_expected_objects_all_labelled(helm: Path) -> None:
    objects = render(helm)
    assert Counter(o["kind"] for o in objects) == EXPECTED_KINDS
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        where = f"{obj['kind']} {obj['metadata']['name']}"
        assert labels.get("app.kubernetes.io/name") == "flotilla", where
        assert labels.get("app.kubernetes.io/instance") == RELEASE, where
        assert labels.get("app.kubernetes.io/managed-by") == "Helm", where
        assert "app.kubernetes.io/version" in labels, where
        if obj["kind"] == "Deployment":
            pod = obj["spec"]["template"]["metadata"]["labels"]
            assert pod["app.kubernetes.io/component"] == labels["app.kubernetes.io/component"]
            assert obj["spec"]["selector"]["matchLabels"].items() <= pod.items(), where
    # The launcher runs the Kubernetes backend under its own ServiceAccount.
    launcher = one(objects, "Deployment", f"{FULLNAME}-launcher")["spec"]["template"]["spec"]
    assert launcher["serviceAccountName"] == f"{FULLNAME}-launcher"
    assert launcher["containers"][0]["command"] == [
        "flotilla-launcher",
        "--backend",
        "kubernetes",
    ]
    # Only Envoy is exposed, with the Service type the values ask for.
    nodeport = render(helm, "--set", "envoy.service.type=NodePort")
    assert one(nodeport, "Service", f"{FULLNAME}-envoy")["spec"]["type"] == "NodePort"
    for name in ("registry", "auth", "proxy-config"):
        assert one(nodeport, "Service", f"{FULLNAME}-{name}")["spec"]["type"] == "ClusterIP"


def test_configuration_from_values_reaches_every_service(
    helm: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "gateway": {
                    "publicUrl": "https://dask.example.org",
                    "extraConfig": {
                        "10-limits": "c.ClusterConfig.cluster_max_workers = 17",
                        "20-admins": 'c.Auth.admin_users = ["alice"]',
                    },
                },
                "kubernetes": {"clusterNamespace": "dask-clusters"},
            }
        )
    )
    objects = render(helm, "-f", str(values), "--set", "registry.replicas=1")
    text = config_file(objects, f"{FULLNAME}-registry")
    assert "c.ClusterConfig.cluster_max_workers = 17" in text
    # Every gateway Deployment mounts the same file.
    for name in ("auth", "proxy-config", "launcher", "envoy"):
        assert config_file(objects, f"{FULLNAME}-{name}") == text

    registry = load_as(tmp_path, text, "registry", monkeypatch)
    assert registry.ClusterConfig.cluster_max_workers == 17
    assert registry.Auth.admin_users == ["alice"]  # extraConfig's keys in order
    deployment = Deployment(config=registry)
    assert deployment.registry_grpc_address == "0.0.0.0:8101"
    assert deployment.resolved_public_url == "https://dask.example.org"
    assert deployment.internal_token == "flotilla_internal_token-value"

    # extraConfig as one string works the same.
    single = render(helm, "--set-string", "gateway.extraConfig=c.Launcher.parallelism = 3")
    assert "c.Launcher.parallelism = 3" in config_file(single, f"{FULLNAME}-registry")

    launcher = load_as(tmp_path, text, "launcher", monkeypatch)
    assert Deployment(config=launcher).registry_grpc_address == (
        f"{FULLNAME}-registry.{NAMESPACE}.svc.cluster.local:8101"
    )
    assert launcher.KubeBackend.namespace == "dask-clusters"
    # The label the dask-clusters NetworkPolicy selects the backend's pods by.
    assert launcher.KubeBackend.instance == FULLNAME
    assert launcher.KubeClusterConfig.image == "flotilla-cluster:0.1.0"


def test_envoy_bootstrap_points_at_proxy_config(helm: Path, tmp_path: Path) -> None:
    """The Envoy pod's init container, run here on the rendered configuration."""
    objects = render(helm)
    spec = one(objects, "Deployment", f"{FULLNAME}-envoy")["spec"]["template"]["spec"]
    (init,) = spec["initContainers"]
    config = tmp_path / "flotilla_config.py"
    config.write_text(config_file(objects, f"{FULLNAME}-envoy"))
    env = {e["name"]: e["value"] for e in init["env"]}
    assert "FLOTILLA_INTERNAL_TOKEN" not in env  # Envoy gets no secrets
    command = [c.replace("/etc/envoy", str(tmp_path)) for c in init["command"]]
    command[0] = str(PROJECT / ".venv" / "bin" / command[0])
    done = subprocess.run(
        command,
        env={**os.environ, **env, "FLOTILLA_CONFIG": str(config)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    bootstrap = json.loads((tmp_path / "bootstrap.json").read_text())
    (xds,) = bootstrap["static_resources"]["clusters"]
    endpoint = xds["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert endpoint["address"]["socket_address"] == {
        "address": f"{FULLNAME}-proxy-config.{NAMESPACE}.svc.cluster.local",
        "port_value": 8104,
    }
    (envoy,) = spec["containers"]
    assert envoy["command"][:3] == ["envoy", "-c", "/etc/envoy/bootstrap.json"]


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("registry.replicas=two", "registry/replicas"),
        ("envoy.service.type=Ingress", "envoy/service/type"),
        ("registry.databse.url=postgresql://x", "databse"),
        ("gateway.extraConfig=42", "gateway/extraConfig"),
    ],
)
def test_schema_rejects_a_wrong_value_naming_the_field(
    helm: Path, setting: str, field: str
) -> None:
    done = _run_helm(helm, "template", RELEASE, str(CHART), "--set", setting)
    assert done.returncode != 0, f"{setting} was accepted"
    assert field in done.stderr, done.stderr


def test_launcher_rbac_is_least_privilege_in_the_cluster_namespace(helm: Path) -> None:
    objects = render(helm, "--set", "kubernetes.clusterNamespace=dask-clusters")
    kinds = {o["kind"] for o in objects}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding"}
    (role,) = [o for o in objects if o["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "dask-clusters"
    granted: dict[str, set[str]] = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == [""], rule
        assert not rule.get("resourceNames") and not rule.get("nonResourceURLs"), rule
        for resource in rule["resources"]:
            granted.setdefault(resource, set()).update(rule["verbs"])
    assert granted == ALLOWED_RULES
    (binding,) = [o for o in objects if o["kind"] == "RoleBinding"]
    assert binding["metadata"]["namespace"] == "dask-clusters"
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": f"{FULLNAME}-launcher", "namespace": NAMESPACE}
    ]
    # The default: the release's own namespace.
    (default_role,) = [o for o in render(helm) if o["kind"] == "Role"]
    assert default_role["metadata"]["namespace"] == NAMESPACE


def test_secrets_come_from_existing_secrets_when_named(helm: Path) -> None:
    objects = render(
        helm,
        "--set",
        "gateway.existingSecret=gw-shared",
        "--set",
        "registry.database.existingSecret=gw-db",
        "--set",
        "registry.encryptKeys.existingSecret=gw-keys",
        "--set",
        "registry.replicas=3",
    )
    assert not [o for o in objects if o["kind"] == "Secret"]
    registry = one(objects, "Deployment", f"{FULLNAME}-registry")
    assert registry["spec"]["replicas"] == 3
    env = {
        e["name"]: e["valueFrom"]["secretKeyRef"]
        for e in registry["spec"]["template"]["spec"]["containers"][0]["env"]
        if "valueFrom" in e
    }
    assert env["FLOTILLA_DB_URL"] == {"name": "gw-db", "key": "url"}
    assert env["FLOTILLA_DB_ENCRYPT_KEYS"] == {"name": "gw-keys", "key": "keys"}
    assert env["FLOTILLA_INTERNAL_TOKEN"] == {"name": "gw-shared", "key": "internal_token"}
    # Replicas of a registry need one shared database.
    done = _run_helm(helm, "template", RELEASE, str(CHART), "--set", "registry.replicas=2")
    assert done.returncode != 0
    assert "PostgreSQL" in done.stderr


def test_network_policies_let_only_envoy_and_the_cluster_reach_dask_pods(helm: Path) -> None:
    objects = render(helm)
    dask = one(objects, "NetworkPolicy", f"{FULLNAME}-dask-clusters")["spec"]
    assert dask["podSelector"]["matchLabels"] == {"gateway.dask.org/instance": FULLNAME}
    (components,) = dask["podSelector"]["matchExpressions"]
    assert components["key"] == "app.kubernetes.io/component"
    assert set(components["values"]) == {"dask-scheduler", "dask-worker"}
    (rule,) = dask["ingress"]
    gateway_pods, cluster_pods = rule["from"]
    assert gateway_pods["namespaceSelector"] == {
        "matchLabels": {"kubernetes.io/metadata.name": NAMESPACE}
    }
    allowed = {e["key"]: set(e["values"]) for e in gateway_pods["podSelector"]["matchExpressions"]}
    assert allowed["app.kubernetes.io/component"] == {"envoy", "registry"}
    assert cluster_pods["podSelector"]["matchLabels"] == {"gateway.dask.org/instance": FULLNAME}
    services = one(objects, "NetworkPolicy", f"{FULLNAME}-services")["spec"]
    (from_gateway,) = services["ingress"][0]["from"]
    assert from_gateway["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "flotilla",
        "app.kubernetes.io/instance": RELEASE,
    }
    assert not [
        o
        for o in render(helm, "--set", "networkPolicy.enabled=false")
        if o["kind"] == "NetworkPolicy"
    ]


def _scripts() -> set[str]:
    names: set[str] = set()
    for pyproject in [PROJECT / "client", *PROJECT.glob("services/*")]:
        data = tomllib.loads((pyproject / "pyproject.toml").read_text())
        names.update(data.get("project", {}).get("scripts", {}))
    return names


def test_dockerfiles_copy_what_exists_and_run_real_entry_points(helm: Path) -> None:
    scripts = _scripts()
    for dockerfile in DOCKER.glob("Dockerfile*"):
        if dockerfile.suffix == ".dockerignore":
            continue
        for line in dockerfile.read_text().splitlines():
            cmd = re.match(r'CMD \["([^"]+)"', line)
            if cmd:
                assert cmd.group(1) in scripts, f"{dockerfile.name}: {line}"
            words = shlex.split(line) if line.startswith(("COPY", "ADD")) else []
            if not words or any(w.startswith("--from") for w in words):
                continue
            for source in words[1:-1]:
                assert (PROJECT / source).exists(), f"{dockerfile.name}: {source} missing"
    # What the chart's and compose's containers run is an entry point of the image.
    commands = [
        c["command"][0]
        for o in render(helm)
        if o["kind"] == "Deployment"
        for c in [
            *o["spec"]["template"]["spec"].get("initContainers", []),
            *o["spec"]["template"]["spec"]["containers"],
        ]
        if c["name"] != "envoy"
    ]
    compose = yaml.safe_load(COMPOSE.read_text())
    commands += [
        s["command"][0] for s in compose["services"].values() if s.get("image") == "flotilla:dev"
    ]
    assert commands and set(commands) <= scripts
    # The cluster image: dask and distributed as locked (the client package's), the
    # scheduler preload every cluster runs, and the rest at the versions the lock pins.
    lock = (PROJECT / "uv.lock").read_text()
    cluster = (DOCKER / "Dockerfile.cluster").read_text()
    assert "uv sync --frozen --no-dev --no-editable --package flotilla" in cluster
    for name in ("dask-gateway", "bokeh"):
        version = re.search(rf'name = "{name}"\nversion = "([^"]+)"', lock)
        assert version and f"{name}=={version.group(1)}" in cluster
    preload = ClusterConfig().scheduler_preload.replace(".", "/")
    assert (PROJECT / "client" / "src" / f"{preload}.py").is_file()


def _compose(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """``docker compose`` with the plugin ``make test`` builds (FLOTILLA_DOCKER_COMPOSE):
    the docker CLI finds it in ``$DOCKER_CONFIG/cli-plugins``; without a docker CLI, the
    plugin binary runs on its own."""
    plugin = Path(os.environ.get("FLOTILLA_DOCKER_COMPOSE") or PROJECT / COMPOSE_PLUGIN).resolve()
    if not plugin.is_file():
        _unavailable(f"no Docker Compose at {plugin} (run `make {COMPOSE_PLUGIN}`)")
    docker = shutil.which("docker")
    if docker is None:
        return [str(plugin)], {}
    plugins = tmp_path / "docker-config" / "cli-plugins"
    plugins.mkdir(parents=True)
    (plugins / "docker-compose").symlink_to(plugin)
    return [docker, "compose"], {"DOCKER_CONFIG": str(plugins.parent)}


def test_compose_file_is_valid(tmp_path: Path) -> None:
    compose, compose_env = _compose(tmp_path)
    # Made-up values for the secrets the file requires; `config` only interpolates them.
    env = {
        **os.environ,
        **compose_env,
        **{
            name: f"test-{name.lower()}"
            for name in (
                "FLOTILLA_IDENTITY_KEY",
                "FLOTILLA_INTERNAL_TOKEN",
                "FLOTILLA_COOKIE_KEY",
                "FLOTILLA_DB_ENCRYPT_KEYS",
                "POSTGRES_PASSWORD",
            )
        },
    }
    done = subprocess.run(
        [*compose, "-f", str(COMPOSE), "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert set(services) == {
        "postgres",
        "registry",
        "auth",
        "proxy-config",
        "launcher",
        "envoy-bootstrap",
        "envoy",
    }
    # Without the secrets it refuses, rather than run with none.
    bare = {k: v for k, v in env.items() if k != "FLOTILLA_INTERNAL_TOKEN"}
    refused = subprocess.run(
        [*compose, "-f", str(COMPOSE), "config"],
        env=bare,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert refused.returncode != 0
    assert "FLOTILLA_INTERNAL_TOKEN" in refused.stderr, refused.stderr
