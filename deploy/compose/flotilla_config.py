# Flotilla configuration for deploy/compose: every service in its own container, one
# PostgreSQL, the local backend. Each container sets FLOTILLA_SERVICE; secrets come from
# the environment (docs/kubernetes.md says which variables to export).
# ruff: noqa: F821
import os

_service = os.environ.get("FLOTILLA_SERVICE", "")


def _address(service, port):
    """Listen on every interface in ``service``'s container; the others use its name."""
    return f"0.0.0.0:{port}" if _service == service else f"{service}:{port}"


c.Deployment.state_dir = "/var/lib/flotilla"
c.Deployment.public_host = "0.0.0.0"
c.Deployment.public_port = 8000
c.Deployment.public_url = "http://127.0.0.1:8000"
c.Deployment.api_url = "http://envoy:8000/api"
c.Deployment.registry_grpc_address = _address("registry", 8101)
c.Deployment.registry_http_address = _address("registry", 8102)
c.Deployment.auth_grpc_address = _address("auth", 8103)
c.Deployment.xds_address = _address("proxy-config", 8104)

if _service != "envoy":
    c.Deployment.identity_key = os.environ["FLOTILLA_IDENTITY_KEY"]
    c.Deployment.internal_token = os.environ["FLOTILLA_INTERNAL_TOKEN"]
    c.Deployment.cookie_key = os.environ["FLOTILLA_COOKIE_KEY"]
if _service == "registry":
    c.Registry.db_url = os.environ["FLOTILLA_DB_URL"]

c.Auth.authenticator_class = "basic"
c.Registry.backends = ["local"]
# Schedulers and workers run in the launcher's container, as its user.
c.LocalBackend.run_as = "self"
