"""Registry configuration (``c.Registry.*`` in the Flotilla config file)."""

from __future__ import annotations

import os

from traitlets import Any, Bool, Dict, Float, Integer, List, Unicode, default
from traitlets.config import Configurable

__all__ = ["KEYS_ENV", "Registry"]

KEYS_ENV = "FLOTILLA_DB_ENCRYPT_KEYS"


class Registry(Configurable):
    db_url = Unicode(
        "",
        help=(
            "Where records are kept: sqlite:///relative/path, sqlite:////absolute/path, "
            "sqlite:///:memory: (lost on exit), or postgresql://user:password@host:port/db "
            "(also postgres://; several registries may share one PostgreSQL database). "
            "Empty: sqlite in <state_dir>/registry.sqlite."
        ),
        config=True,
    )
    db_encrypt_keys = List(
        Unicode(),
        default_value=[],
        help=(
            "Keys that encrypt cluster tokens and TLS private keys in the database "
            "(Fernet keys: `flotilla-registry generate-key` prints one). The first key "
            "encrypts, every key decrypts, and a registry re-encrypts old rows under the "
            "first key when it starts. To rotate: add the new key last (on every replica), "
            "then move it first, then drop the old key. Empty: taken from "
            f"${KEYS_ENV} (keys separated by ';'). Required unless db_url is in-memory; "
            "the embedded runner generates one into <state_dir>/secrets/db_encrypt_key."
        ),
        config=True,
    )
    db_pool_size = Integer(
        10, help="Most connections one registry opens to PostgreSQL.", config=True
    )
    db_resync_seconds = Float(
        10.0,
        help=(
            "With PostgreSQL: how often a registry compares every unfinished cluster with "
            "the database, to catch changes by other replicas that a notification missed."
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
        help=(
            "Backend of clusters whose options do not choose one and whose owner no "
            "backend_by_user/backend_by_group entry maps (an options handler may also "
            "return {'backend': name}). Default: the first of c.Registry.backends."
        ),
        config=True,
    )

    @default("default_backend")
    def _first_backend(self) -> str:
        return self.backends[0] if self.backends else "local"

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
    check_timeouts_period = Float(
        1.0,
        min=0.05,
        help=(
            "Seconds between checks of every active cluster's start and heartbeat deadlines "
            "(the timeouts themselves are per cluster: c.ClusterConfig.cluster_start_timeout, "
            "heartbeat_timeout, worker_start_timeout, worker_start_failure_limit)."
        ),
        config=True,
    )
    db_cluster_max_age = Float(
        24 * 3600.0,
        min=0.0,
        help=(
            "Seconds a finished (STOPPED or FAILED) cluster's record, with its logs, is kept "
            "after it stopped; then it is deleted and the cluster is unknown (404). Active "
            "clusters are never deleted. 0: keep records forever."
        ),
        config=True,
    )
    db_cleanup_period = Float(
        600.0,
        min=0.05,
        help="Seconds between deletions of finished records older than db_cluster_max_age.",
        config=True,
    )
    logs_request_timeout = Float(
        5.0,
        min=0.0,
        help=(
            "Seconds a request for an active cluster's logs waits for its launcher to send "
            "the current output; then it answers with the logs collected before."
        ),
        config=True,
    )

    check_scheduler_addresses = Bool(
        True,
        help=(
            "Before a cluster's first heartbeat sets its routes, make a TLS handshake with "
            "the reported scheduler address that trusts only the cluster's certificate, and "
            "require the dashboard and API addresses on the same host (422 otherwise). The "
            "token alone does not prove the sender is the scheduler: a batch job's script "
            "holds it where its owner can read it while the job is queued."
        ),
        config=True,
    )
    scheduler_check_timeout = Float(
        5.0,
        min=0.1,
        help="Seconds the first heartbeat's TLS check of the scheduler address may take.",
        config=True,
    )

    def encryption_keys(self) -> list[str]:
        """The configured keys, else those of $FLOTILLA_DB_ENCRYPT_KEYS."""
        keys = [k.strip() for k in self.db_encrypt_keys if k.strip()]
        if keys:
            return keys
        return [k.strip() for k in os.environ.get(KEYS_ENV, "").split(";") if k.strip()]
