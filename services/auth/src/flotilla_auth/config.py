"""Configuration of the auth service: ``c.Auth`` and the authenticators' sections.

Only traits live here, so the configuration reference can be generated from the
``help=`` texts; behaviour lives in the modules that use them.
"""

from __future__ import annotations

import os

from flotilla_common.sessions import (
    DEFAULT_COOKIE_NAME,
    DEFAULT_MAX_AGE_SECONDS,
    DEFAULT_ROLES_REFRESH_SECONDS,
)
from traitlets import Bool, Dict, Float, Integer, List, Tuple, Unicode, default
from traitlets.config import Configurable

__all__ = ["Auth", "BasicAuthenticator", "JupyterHubAuthenticator", "KerberosAuthenticator"]


class Auth(Configurable):
    """The auth service Envoy asks (ext_authz) before every API and gRPC request."""

    authenticator_class = Unicode(
        "basic",
        help=(
            "Authenticator for user credentials: a name registered in the entry-point group "
            "'flotilla.authenticators' (e.g. 'basic'), or an import path 'module:Class'."
        ),
        config=True,
    )
    cookie_name = Unicode(
        DEFAULT_COOKIE_NAME,
        help=(
            "Name of the session cookie set after a successful credential check. Stable "
            "across restarts, so sessions survive them. Envoy sends API requests that carry "
            "it (and no Authorization header) straight to the registry, which checks it."
        ),
        config=True,
    )
    cookie_max_age_seconds = Integer(
        DEFAULT_MAX_AGE_SECONDS,
        min=1,
        help=(
            "Seconds a session cookie is accepted in place of credentials. The browser is "
            "told to keep it twice as long (Max-Age); after this the client re-authenticates."
        ),
        config=True,
    )
    roles_refresh_seconds = Integer(
        DEFAULT_ROLES_REFRESH_SECONDS,
        min=1,
        help=(
            "Seconds the groups and admin flag a session cookie carries are used as they "
            "are. Past that, auth decides them again (asking the authenticator, or the "
            "client's credentials when it cannot tell without them) and the registry "
            "answers 401 to the cookie alone, so a change of a user's groups or admin "
            "rights takes effect within this period, not only when the cookie expires."
        ),
        config=True,
    )
    cookie_secure = Bool(
        False,
        help="Mark the session cookie Secure (set when the public URL is https).",
        config=True,
    )
    admin_users = List(
        Unicode(),
        default_value=[],
        help="User names that get the admin flag in their identity.",
        config=True,
    )
    admin_groups = List(
        Unicode(),
        default_value=[],
        help="Groups whose members get the admin flag in their identity.",
        config=True,
    )
    token_cache_seconds = Float(
        30.0,
        min=0.0,
        help=(
            "Seconds a cluster token the registry confirmed is trusted without asking again "
            "(0 disables the cache). Rejections are never cached."
        ),
        config=True,
    )
    registry_timeout_seconds = Float(
        5.0,
        min=0.1,
        help="Deadline, in seconds, of each VerifyClusterToken call to the registry.",
        config=True,
    )


class BasicAuthenticator(Configurable):
    """HTTP Basic credentials (the dask-gateway client's ``auth="basic"``)."""

    password = Unicode(
        "",
        help=(
            "One password shared by every user. Empty: any password is accepted and the "
            "user is whoever the client says (development only)."
        ),
        config=True,
    )
    user_groups = Dict(
        value_trait=List(Unicode()),
        default_value={},
        help="Static group membership: {user name: [group, ...]}.",
        config=True,
    )


class KerberosAuthenticator(Configurable):
    """Kerberos via SPNEGO, ``Negotiate`` (the dask-gateway client's ``auth="kerberos"``).

    Option names as in dask-gateway-server's ``KerberosAuthenticator``.
    """

    keytab = Unicode(
        "dask_gateway.keytab",
        help=(
            "Path of the keytab holding the service's keys (principal "
            "'<service_name>/<host>@REALM'). Checked at start-up: a missing, unreadable "
            "or unusable keytab stops the service."
        ),
        config=True,
    )
    service_name = Unicode(
        "HTTP",
        help=(
            "Service part of the principal clients get tickets for; the dask-gateway "
            "client asks for HTTP@<host of the gateway URL>. Any host's key in the keytab "
            "is accepted."
        ),
        config=True,
    )
    cache_max_age = Integer(
        0,
        min=0,
        help=(
            "Seconds a session cookie from a Kerberos login is accepted before the client "
            "negotiates again; 0 uses c.Auth.cookie_max_age_seconds. Accepted for "
            "compatibility with dask-gateway-server (its default there is 300)."
        ),
        config=True,
    )
    principal_rules = List(
        Tuple(Unicode(), Unicode()),
        default_value=[],
        help=(
            "How principals become user names: (regex, template) pairs, tried in order; "
            "the first regex matching the whole principal gives the user name, its "
            "template expanded like re.Match.expand (e.g. ('(.+)/admin@EXAMPLE\\.ORG', "
            "'\\1')), and an empty template refuses the principal. Without a matching "
            "rule, 'name@REALM' becomes 'name' and a principal with an instance part "
            "('name/instance@REALM') is refused."
        ),
        config=True,
    )


class JupyterHubAuthenticator(Configurable):
    """JupyterHub API tokens (the dask-gateway client's ``auth="jupyterhub"``).

    Option names as in dask-gateway-server's ``JupyterHubAuthenticator``. The hub's
    groups become the user's groups (``c.Auth.admin_groups`` names those whose members
    are admins) and the hub's admin flag is the gateway's.
    """

    jupyterhub_api_url = Unicode(
        help=(
            "URL of the hub's REST API, e.g. 'http://hub:8081/hub/api'. Default: the "
            "JUPYTERHUB_API_URL environment variable (set when the gateway runs as a hub "
            "service)."
        ),
        config=True,
    )
    jupyterhub_api_token = Unicode(
        help=(
            "The gateway's own API token, as registered in c.JupyterHub.services. Used "
            "to refresh a user's groups and admin flag (GET /users/<name>, scopes "
            "read:users and read:users:groups); without it users present their token "
            "again when c.Auth.roles_refresh_seconds have passed. It is also the OAuth "
            "client secret of the web page's sign-in with JupyterHub, which needs it. "
            "Default: the JUPYTERHUB_API_TOKEN environment variable."
        ),
        config=True,
    )
    tls_cert = Unicode(
        "",
        help="Path of a client certificate (PEM) presented to the hub, for internal TLS.",
        config=True,
    )
    tls_key = Unicode(
        "", help="Path of the private key (PEM) of tls_cert, if not in the same file.", config=True
    )
    tls_ca = Unicode(
        "",
        help="Path of the CA bundle (PEM) the hub's certificate is checked against.",
        config=True,
    )
    cache_max_age = Integer(
        0,
        min=0,
        help=(
            "Seconds a session cookie from a JupyterHub login is accepted before the token "
            "is checked with the hub again; 0 uses c.Auth.cookie_max_age_seconds. Accepted "
            "for compatibility with dask-gateway-server (its default there is 300)."
        ),
        config=True,
    )
    request_timeout_seconds = Float(
        10.0,
        min=0.1,
        help="Deadline, in seconds, of each call to the hub's API.",
        config=True,
    )

    server_stopped_grace = Float(
        0.0,
        min=0.0,
        help=(
            "Seconds a user's clusters outlive their last notebook server: once the hub "
            "has reported no running or pending server of the owner for this long, auth "
            "stops the owner's clusters (a user who never had a server counts as one "
            "whose server stopped). 0: clusters never end for this reason. Needs "
            "jupyterhub_api_token with read:users (and read:servers for named servers)."
        ),
        config=True,
    )
    server_check_period = Float(
        60.0,
        min=0.1,
        help=(
            "Seconds between two checks of the notebook servers of the users who own "
            "active clusters (only with server_stopped_grace)."
        ),
        config=True,
    )

    jupyterhub_url = Unicode(
        "",
        help=(
            "URL browsers reach the hub at, with its base_url, e.g. "
            "'https://hub.example.org/' (the hub's API URL is often an internal address). "
            "The web page's 'Sign in with JupyterHub' sends the browser to "
            "<jupyterhub_url>/hub/api/oauth2/authorize. Default: jupyterhub_api_url "
            "without its '/hub/api' ending; an API URL without that ending and no "
            "jupyterhub_url leave the page without this sign-in (API tokens still work)."
        ),
        config=True,
    )
    oauth_client_id = Unicode(
        help=(
            "OAuth client id of the gateway's hub service (its oauth_client_id in "
            "c.JupyterHub.services; the hub's default for a service named 'dask-gateway' "
            "is 'service-dask-gateway'). The client secret is jupyterhub_api_token. "
            "Default: the JUPYTERHUB_CLIENT_ID environment variable, else "
            "'service-dask-gateway'."
        ),
        config=True,
    )
    oauth_redirect_url = Unicode(
        "",
        help=(
            "Where the hub sends the browser back after sign-in: the service's "
            "oauth_redirect_uri in c.JupyterHub.services, exactly. Default: "
            "<c.Deployment.public_url>/api/v1/login/jupyterhub/callback."
        ),
        config=True,
    )

    @default("jupyterhub_api_url")
    def _default_api_url(self) -> str:
        return os.environ.get("JUPYTERHUB_API_URL", "")

    @default("jupyterhub_api_token")
    def _default_api_token(self) -> str:
        return os.environ.get("JUPYTERHUB_API_TOKEN", "")

    @default("oauth_client_id")
    def _default_oauth_client_id(self) -> str:
        return os.environ.get("JUPYTERHUB_CLIENT_ID", "service-dask-gateway")
