# Flotilla configuration for `make run`: everything on this machine, SQLite, basic auth.
# Every option is documented in docs/configuration.md; `c` is the traitlets config.
# ruff: noqa: F821
from flotilla_registry.options import Float, Integer, Mapping, Options

# Users reach the gateway (API, dashboards and scheduler TLS) at http://127.0.0.1:8000.
c.Deployment.public_host = "127.0.0.1"
c.Deployment.public_port = 8000
c.Deployment.state_dir = ".flotilla"

# Prometheus metrics of every service, for operators: on loopback ports, never through
# Envoy (docs/monitoring.md). Envoy's own are at http://127.0.0.1:8105/stats/prometheus.
c.Deployment.metrics_ports = {
    "registry": 8111,
    "auth": 8112,
    "proxy-config": 8113,
    "launcher-local": 8114,
    "launcher-slurm": 8115,
    "launcher-pbs": 8116,
}

# Any user name is accepted; set a shared password to require one.
c.Auth.authenticator_class = "basic"
# c.BasicAuthenticator.password = "change-me"
# c.Auth.admin_users = ["root"]

# What users may choose when they create a cluster.
c.Registry.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=4, label="Worker cores"),
    Float("worker_memory", default=1, min=0.5, max=8, label="Worker memory (GiB)"),
    Mapping("environment", default={}, label="Environment variables"),
    handler=lambda options: {
        "worker_cores": options.worker_cores,
        "worker_memory": int(options.worker_memory * 2**30),
        "environment": dict(options.environment),
    },
)

# Limits of each cluster.
c.ClusterConfig.cluster_max_workers = 8
c.ClusterConfig.scheduler_memory = "1 G"

# Schedulers and workers run as the requesting Unix user when the launcher runs as root;
# "self" runs them as the launcher's own user.
c.LocalBackend.run_as = "auto"

# HPC sites: offer Slurm (or PBS) too, one launcher each; see docs/hpc.md.
# c.Registry.backends = ["local", "slurm"]
# c.SlurmBackend.partition = "dask"
# c.BatchBackend.setup_script = "module load python"
