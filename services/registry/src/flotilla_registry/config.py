"""Registry configuration (``c.Registry.*`` in the Flotilla config file)."""

from __future__ import annotations

from traitlets import Any, Dict, Integer, List, Unicode
from traitlets.config import Configurable

__all__ = ["Registry"]


class Registry(Configurable):
    db_url = Unicode(
        "",
        help=(
            "Where records are kept: sqlite:///relative/path or sqlite:////absolute/path. "
            "Empty: sqlite in <state_dir>/registry.sqlite."
        ),
        config=True,
    )
    cluster_options = Any(
        None,
        allow_none=True,
        help=(
            "The options users may set when creating a cluster: a "
            "flotilla_registry.options.Options, or a callable (user) -> Options (sync or "
            "async) for options that depend on the user. None: no options."
        ),
        config=True,
    )
    backends = List(
        Unicode(),
        default_value=["local"],
        help="Backends this gateway offers; a launcher must run for each.",
        config=True,
    )
    default_backend = Unicode(
        "local",
        help=(
            "Backend of clusters whose options do not choose one and whose owner no "
            "backend_by_user/backend_by_group entry maps (an options handler may also "
            "return {'backend': name})."
        ),
        config=True,
    )
    backend_by_user = Dict(
        value_trait=Unicode(),
        help="User name -> backend: the backend of that user's clusters unless they choose.",
        config=True,
    )
    backend_by_group = Dict(
        value_trait=Unicode(),
        help=(
            "Group -> backend, for users backend_by_user does not name: the first group "
            "of this mapping (in its order) the user belongs to decides."
        ),
        config=True,
    )
    backend_option = Unicode(
        "backend",
        help=(
            "Name of the cluster option (e.g. Select('backend', ['local', 'slurm'])) that "
            "lets users choose the backend. Its default is shown to each user as their "
            "mapped backend. Precedence: an options handler's {'backend': ...}, then this "
            "option, then backend_by_user, backend_by_group, default_backend. Empty: no "
            "option chooses."
        ),
        config=True,
    )
    worker_start_failure_limit = Integer(
        3,
        help="Fail a cluster after this many consecutive workers fail to start (0: never).",
        config=True,
    )
