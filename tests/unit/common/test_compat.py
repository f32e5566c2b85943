"""dask-gateway-server configuration files read by Flotilla (flotilla_common.compat)."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest
from flotilla_common import compat
from flotilla_common.config import load_config
from flotilla_registry import options as flotilla_options
from traitlets.config import Config

DGS = "dask_gateway_server"


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / "dask_gateway_config.py"
    path.write_text(textwrap.dedent(text))
    return load_config(path)


def test_a_yarn_and_kerberos_configuration_reads_as_flotillas(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        f"""
        from {DGS}.options import Options, Integer, Float

        c.DaskGateway.backend_class = "{DGS}.backends.yarn.YarnBackend"
        c.DaskGateway.authenticator_class = "{DGS}.auth.KerberosAuthenticator"
        c.YarnBackend.principal = "dask@EXAMPLE.COM"
        c.YarnBackend.keytab = "/etc/dask-gateway/dask.keytab"
        c.KerberosAuthenticator.keytab = "/etc/dask-gateway/http.keytab"
        c.YarnClusterConfig.queue = "dask"
        c.YarnClusterConfig.localize_files = {{"env": "hdfs:///envs/env.tar.gz"}}
        c.YarnClusterConfig.worker_setup = "source env/bin/activate"
        c.YarnBackend.db_url = "sqlite:////var/lib/dask-gateway/db.sqlite"
        c.YarnBackend.cluster_status_period = 5
        c.Proxy.address = ":8000"
        c.Backend.cluster_options = Options(
            Integer("worker_cores", 1, min=1, max=4, label="Worker cores"),
            Float("worker_memory", 1, min=1, max=8, label="Worker memory (GiB)"),
        )
        """,
    )
    assert cfg.Registry.backends == ["yarn"]
    assert cfg.Auth.authenticator_class == "kerberos"
    assert cfg.YarnBackend.principal == "dask@EXAMPLE.COM"
    assert cfg.YarnClusterConfig.queue == "dask"
    assert cfg.YarnClusterConfig.worker_setup == "source env/bin/activate"
    assert cfg.Registry.db_url == "sqlite:////var/lib/dask-gateway/db.sqlite"
    assert cfg.Launcher.status_check_period == 5
    assert (cfg.Deployment.public_host, cfg.Deployment.public_port) == ("0.0.0.0", 8000)
    assert cfg.ClusterConfig.scheduler_preload == "dask_gateway.scheduler_preload"
    assert isinstance(cfg.Registry.cluster_options, flotilla_options.Options)
    for section in ("DaskGateway", "Backend", "Proxy"):
        assert section not in cfg
    assert "db_url" not in cfg.YarnBackend


def test_a_kubernetes_configuration_reads_as_flotillas(tmp_path: Path) -> None:
    # The settings of dask-gateway's Helm chart (its gateway.extraConfig and backend values).
    cfg = load(
        tmp_path,
        f"""
        c.DaskGateway.backend_class = "{DGS}.backends.kubernetes.KubeBackend"
        c.KubeBackend.gateway_instance = "prod-gateway"
        c.KubeBackend.crd_version = "v1alpha1"
        c.KubeClusterConfig.namespace = "dask"
        c.KubeClusterConfig.image = "ghcr.io/dask/dask-gateway:2026.3.0"
        c.KubeClusterConfig.worker_cores_limit = 2
        c.KubeClusterConfig.worker_extra_pod_config = {{"tolerations": [{{"key": "gpu"}}]}}
        c.KubeController.k8s_api_rate_limit = 50
        c.KubeController.common_labels = {{"team": "climate"}}
        c.KubeBackend.common_annotations = {{"cost-center": "42"}}
        c.KubeBackend.api_url = "http://api-dask-gateway.dask:8000/api"
        c.KubeBackend.kube_api_url = "https://10.0.0.1:443"
        """,
    )
    # dask-gateway's api_url is the gateway's address; the API server's is Flotilla's own.
    assert cfg.Deployment.api_url == "http://api-dask-gateway.dask:8000/api"
    assert cfg.KubeBackend.kube_api_url == "https://10.0.0.1:443"
    assert "api_url" not in cfg.KubeBackend
    assert cfg.Registry.backends == ["kubernetes"]
    assert cfg.KubeBackend.instance == "prod-gateway"
    assert cfg.KubeBackend.namespace == "dask"
    assert "crd_version" not in cfg.KubeBackend and "KubeController" not in cfg
    assert cfg.KubeClusterConfig.image == "ghcr.io/dask/dask-gateway:2026.3.0"
    assert cfg.KubeClusterConfig.worker_cores_limit == 2
    assert cfg.KubeClusterConfig.worker_extra_pod_config == {"tolerations": [{"key": "gpu"}]}
    assert "namespace" not in cfg.KubeClusterConfig
    assert cfg.KubeBackend.common_labels == {"team": "climate"}
    assert cfg.KubeBackend.common_annotations == {"cost-center": "42"}


def test_flotillas_own_configuration_is_left_as_it_is(tmp_path: Path) -> None:
    text = """
    c.Registry.backends = ["local", "slurm"]
    c.LocalBackend.sigint_timeout = 3
    c.SlurmBackend.partition = "debug"
    """
    assert load(tmp_path, text) == load(tmp_path, text)
    cfg = load(tmp_path, text)
    assert dict(cfg.LocalBackend) == {"sigint_timeout": 3}
    assert "scheduler_preload" not in cfg.get("ClusterConfig", {})


@pytest.mark.parametrize(
    ("path", "backend", "run_as"),
    [
        (f"{DGS}.backends.jobqueue.slurm.SlurmBackend", "slurm", None),
        (f"{DGS}.backends.jobqueue.pbs.PBSBackend", "pbs", None),
        (f"{DGS}.backends.kubernetes.KubeBackend", "kubernetes", None),
        (f"{DGS}.backends.local.LocalBackend", "local", "user"),
        (f"{DGS}.backends.local.UnsafeLocalBackend", "local", "self"),
    ],
)
def test_each_backend_class_names_a_flotilla_backend(
    path: str, backend: str, run_as: str | None
) -> None:
    cfg = Config()
    cfg.DaskGateway.backend_class = path
    compat.translate(cfg)
    assert cfg.Registry.backends == [backend]
    assert cfg.get("LocalBackend", {}).get("run_as") == run_as


def test_jobqueue_names_become_the_batch_backends() -> None:
    cfg = Config()
    cfg.DaskGateway.backend_class = f"{DGS}.backends.jobqueue.slurm.SlurmBackend"
    cfg.SlurmBackend.submit_command = "/opt/slurm/bin/sbatch"
    cfg.SlurmBackend.dask_gateway_jobqueue_launcher = "/opt/dgs/bin/launcher"
    cfg.SlurmClusterConfig.scheduler_setup = "module load dask"
    cfg.SlurmClusterConfig.worker_setup = "module load dask"
    cfg.SlurmClusterConfig.partition = "gpu"
    cfg.SlurmClusterConfig.staging_directory = "{home}/.dask-gateway/"
    compat.translate(cfg)
    assert cfg.SlurmBackend.sbatch == "/opt/slurm/bin/sbatch"
    assert "dask_gateway_jobqueue_launcher" not in cfg.SlurmBackend
    assert cfg.BatchBackend.setup_script == "module load dask"
    assert cfg.BatchBackend.staging_directory == "{home}/.dask-gateway/"
    assert dict(cfg.SlurmClusterConfig) == {"partition": "gpu"}


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("DaskGateway", "backend_class", f"{DGS}.backends.kubernetes.KubeController", "no such"),
        ("DaskGateway", "authenticator_class", "site_auth.LdapAuthenticator", "no such"),
        ("Proxy", "prefix", "/gateway", "Flotilla serves the API at /"),
        ("PBSClusterConfig", "worker_resource_list", "select=1", "extra_options"),
        ("PBSBackend", "gateway_hostname", "login1", "c.Deployment.api_url"),
        ("YarnBackend", "cluster_config_class", "x.Y", "entry point"),
    ],
)  # fmt: skip
def test_what_flotilla_cannot_do_is_one_line_naming_the_setting(
    section: str, key: str, value: str, message: str
) -> None:
    cfg = Config()
    cfg[section][key] = value
    with pytest.raises(SystemExit) as info:
        compat.translate(cfg)
    text = str(info.value)
    assert f"c.{section}.{key}" in text and message in text and "\n" not in text


def test_every_refusal_is_reported_at_once() -> None:
    cfg = Config()
    cfg.Proxy.prefix = "/gateway"
    cfg.Proxy.tls_cert = "/etc/cert.pem"
    cfg.JobQueueClusterConfig.scheduler_setup = "a"
    cfg.JobQueueClusterConfig.worker_setup = "b"
    with pytest.raises(SystemExit) as info:
        compat.translate(cfg)
    lines = str(info.value).splitlines()
    assert len(lines) == 3, lines
    assert any(
        "c.JobQueueClusterConfig.scheduler_setup and worker_setup differ" in x for x in lines
    )


def test_a_setting_given_under_both_names_must_agree() -> None:
    cfg = Config()
    cfg.YarnBackend.db_url = "sqlite:////a.sqlite"
    cfg.Registry.db_url = "sqlite:////b.sqlite"
    with pytest.raises(SystemExit, match=r"c\.YarnBackend\.db_url and c\.Registry\.db_url"):
        compat.translate(cfg)
    same = Config()
    same.YarnBackend.db_url = same.Registry.db_url = "sqlite:////a.sqlite"
    assert compat.translate(same).Registry.db_url == "sqlite:////a.sqlite"


def test_ignored_settings_are_logged_and_dropped(caplog: pytest.LogCaptureFixture) -> None:
    cfg = Config()
    cfg.YarnBackend.app_client_cache_max_size = 20
    cfg.Proxy.tcp_address = ":8786"
    compat.translate(cfg)
    assert "YarnBackend" not in cfg and "Proxy" not in cfg
    assert "ignoring c.Proxy.tcp_address" in caplog.text


def test_the_options_import_works_and_leaves_sys_modules_as_it_was(tmp_path: Path) -> None:
    before = {n: sys.modules.get(n) for n in (DGS, f"{DGS}.options")}
    cfg = load(
        tmp_path,
        f"""
        from {DGS}.options import Bool, Float, Integer, Mapping, Options, Select, String
        c.Backend.cluster_options = Options(
            Select("profile", ["small", "large"], default="small", label="Profile"),
            Mapping("environment", {{}}, label="Environment"),
            handler=lambda options: {{"worker_cores": 2 if options.profile == "large" else 1}},
        )
        """,
    )
    assert isinstance(cfg.Registry.cluster_options, flotilla_options.Options)
    assert {n: sys.modules.get(n) for n in before} == before


def test_a_missing_module_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="No module named 'no_such_module'") as info:
        load(tmp_path, "import no_such_module\n")
    assert "\n" not in str(info.value)


def test_jupyterhub_authenticator_keeps_its_settings(tmp_path: Path) -> None:
    cfg = load(
        tmp_path,
        f"""
        c.DaskGateway.authenticator_class = "{DGS}.auth.JupyterHubAuthenticator"
        c.JupyterHubAuthenticator.jupyterhub_api_url = "http://hub:8081/hub/api"
        c.JupyterHubAuthenticator.cache_max_age = 120
        """,
    )
    assert cfg.Auth.authenticator_class == "jupyterhub"
    assert cfg.JupyterHubAuthenticator.jupyterhub_api_url == "http://hub:8081/hub/api"
    assert cfg.JupyterHubAuthenticator.cache_max_age == 120
