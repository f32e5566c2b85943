# /etc/flotilla/dask_gateway_config.py: a dask-gateway-server configuration for YARN
# with Kerberos, read by Flotilla as it is (docs/hadoop.md, step 6).
# ruff: noqa: F821  (`c` is the configuration object the file is run with)
from dask_gateway_server.options import Float, Integer, Options

c.DaskGateway.backend_class = "dask_gateway_server.backends.yarn.YarnBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.KerberosAuthenticator"

# The service user's own Kerberos identity, for every call to YARN.
c.YarnBackend.principal = "flotilla/edge1.example.com@EXAMPLE.COM"
c.YarnBackend.keytab = "/etc/flotilla/flotilla.keytab"

# Users log in with SPNEGO against HTTP/edge1.example.com@EXAMPLE.COM.
c.KerberosAuthenticator.keytab = "/etc/flotilla/http.keytab"

# Every scheduler and worker runs the packed environment, unpacked by YARN as
# ./environment in its container.
c.YarnClusterConfig.localize_files = {
    "environment": {
        "source": "hdfs:///flotilla/environment.tar.gz",
        "visibility": "public",
    }
}
c.YarnClusterConfig.scheduler_setup = "source environment/bin/activate"
c.YarnClusterConfig.worker_setup = "source environment/bin/activate"
c.YarnClusterConfig.queue = "default"
c.YarnClusterConfig.scheduler_memory = "1 G"
c.YarnClusterConfig.worker_memory = "1 G"


# What users may choose: cores and memory of their workers.
def options_handler(options):
    return {
        "worker_cores": options.worker_cores,
        "worker_memory": int(options.worker_memory * 2**30),
    }


c.Backend.cluster_options = Options(
    Integer("worker_cores", default=1, min=1, max=4, label="Worker cores"),
    Float("worker_memory", default=1, min=0.5, max=8, label="Worker memory (GiB)"),
    handler=options_handler,
)

# Users reach the gateway on port 8000 of the edge node.
c.Proxy.address = ":8000"

# Flotilla's own settings, which dask-gateway-server's file has no names for:
# where it keeps its state, and the URL users and containers reach it at.
c.Deployment.state_dir = "/var/lib/flotilla"
c.Deployment.public_url = "http://edge1.example.com:8000"
