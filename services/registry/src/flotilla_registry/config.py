"""Registry configuration (``c.Registry.*`` in the Flotilla config file)."""

from __future__ import annotations

from traitlets import Any, Integer, List, Unicode
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
            "Backend of clusters whose options do not choose one (an options handler may "
            "return {'backend': name})."
        ),
        config=True,
    )
    worker_start_failure_limit = Integer(
        3,
        help="Fail a cluster after this many consecutive workers fail to start (0: never).",
        config=True,
    )
