"""PostgreSQL store (asyncpg): one database shared by several registry replicas.

Beyond the ``Store`` interface it gives replicas what they need to stay consistent
(see ``replication``):

- every save sends ``NOTIFY flotilla_clusters, '<name>:<revision>'`` in its transaction, so
  other replicas learn about it when it commits;
- ``locked(name)`` holds the cluster's row lock (``SELECT ... FOR UPDATE``) for one change,
  and saves made inside it join its transaction: two replicas changing one cluster take
  turns, and the second one sees what the first wrote;
- ``listen()`` opens the dedicated connection notifications arrive on, which also holds
  the session advisory lock electing the replica that runs periodic jobs.

Migrations run under an advisory lock, so replicas starting together apply each once.
A lost or refused connection becomes ``StoreUnavailable`` (503 / UNAVAILABLE); the pool
reconnects on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from contextvars import ContextVar
from typing import Any
from urllib.parse import unquote, urlparse

import asyncpg
import asyncpg.exceptions as pgerr

from .crypto import FieldCipher, UndecryptableValue
from .errors import StoreUnavailable
from .model import ClusterRecord, WorkerRecord
from .store import (
    _ACCRUED_SQL,
    _CLUSTER_COLUMNS,
    _KEEP_ACCRUED_SQL,
    _RESERVATIONS_SQL,
    _WORKER_COLUMNS,
    Store,
    StoreSetupError,
    _cluster_from_row,
    _cluster_row,
    _migrations,
    _reencrypted,
    _worker_from_row,
    _worker_row,
)

__all__ = ["CHANNEL", "PostgresStore", "describe_url"]

log = logging.getLogger(__name__)

CHANNEL = "flotilla_clusters"
# Session advisory lock keys (any 64-bit numbers unique to Flotilla).
_MIGRATION_LOCK = 0x466C6F74_696C6C01
_LEADER_LOCK = 0x466C6F74_696C6C02
# Class of the two-key transaction locks on owners (key: hashtext(owner)); the two-key
# space is separate from the one-key locks above.
_OWNER_LOCK_CLASS = 0x466C6F74

# Errors that mean "the database is not reachable right now", not "the query is wrong".
_UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    pgerr.PostgresConnectionError,
    pgerr.OperatorInterventionError,  # admin shutdown, cannot connect now, query cancelled
    pgerr.InsufficientResourcesError,  # too many connections, disk full
    pgerr.TransactionRollbackError,  # serialization failure, deadlock: retry
    pgerr.ReadOnlySQLTransactionError,  # failover to a standby
)

Notify = Callable[[str, int], None]


def describe_url(url: str) -> str:
    """``host:port/db`` of a PostgreSQL URL, without credentials (for messages and logs)."""
    p = urlparse(url)
    try:
        port: object = p.port or 5432
    except ValueError:
        port = "?"
    return f"{p.hostname or 'localhost'}:{port}{p.path or '/'}"


def _check_url(url: str) -> None:
    p = urlparse(url)
    try:
        port = p.port
    except ValueError:
        raise StoreSetupError(f"malformed database URL {describe_url(url)}: bad port") from None
    if port == 0:
        raise StoreSetupError(f"malformed database URL {describe_url(url)}: bad port")
    if not p.hostname and "host=" not in p.query:
        raise StoreSetupError(
            "malformed database URL: expected postgresql://user:password@host:port/database"
        )
    if p.path.count("/") > 1 or not unquote(p.path.lstrip("/")):
        raise StoreSetupError(f"database URL {describe_url(url)} must name one database")


def _is_unavailable(exc: BaseException) -> bool:
    if isinstance(exc, pgerr.InterfaceError):  # mostly misuse; "connection is closed" is not
        return "closed" in str(exc)
    return isinstance(exc, _UNAVAILABLE)


@contextlib.contextmanager
def _unavailable_as_503(what: str) -> Iterator[None]:
    try:
        yield
    except BaseException as exc:
        if _is_unavailable(exc):
            raise StoreUnavailable(f"{what}: {type(exc).__name__}: {exc}") from exc
        raise


class PostgresStore(Store):
    """Clusters and workers in PostgreSQL (see the module docstring)."""

    def __init__(
        self,
        url: str,
        cipher: FieldCipher | None = None,
        pool_size: int = 10,
        connect_timeout: float = 10.0,
        command_timeout: float = 30.0,
    ) -> None:
        _check_url(url)
        self.url = url
        self.cipher = cipher
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self.command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        # The ``locked`` change in progress: its task and connection. Tasks started inside
        # it inherit the context but must not share the connection, hence the task.
        self._change: ContextVar[tuple[asyncio.Task[Any] | None, asyncpg.Connection] | None] = (
            ContextVar(f"pgstore-{id(self)}", default=None)
        )

    def __repr__(self) -> str:
        return f"PostgresStore({describe_url(self.url)})"

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise RuntimeError("store is not open")
        return self._pool

    async def open(self) -> None:
        # No connection floor: the pool connects on demand, so an outage shows up as
        # 503s on requests, not as reconnect attempts in the background.
        self._pool = await asyncpg.create_pool(
            self.url,
            min_size=0,
            max_size=self.pool_size,
            timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
        )
        try:
            conn = await self.pool.acquire()
        except Exception as exc:
            await self.close()
            raise StoreSetupError(
                f"cannot connect to the registry database {describe_url(self.url)}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        try:
            await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
            try:
                await self._migrate(conn)
                await self._encrypt_old_rows(conn)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
        except Exception as exc:
            await self.pool.release(conn)
            await self.close()
            if isinstance(exc, StoreSetupError):
                raise
            raise StoreSetupError(
                f"cannot prepare the registry database {describe_url(self.url)}: "
                f"{type(exc).__name__}: {exc}"
            ) from None
        await self.pool.release(conn)

    async def _migrate(self, conn: asyncpg.Connection) -> None:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name TEXT PRIMARY KEY, applied_ms BIGINT)"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        for name, sql in _migrations("postgres"):
            if name in done:
                continue
            log.info("applying migration %s", name)
            async with conn.transaction():
                await conn.execute(sql)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES "
                    "($1, (extract(epoch FROM now()) * 1000)::BIGINT)",
                    name,
                )

    async def _encrypt_old_rows(self, conn: asyncpg.Connection) -> None:
        """Rewrite rows that are plaintext or under an older key with the first key."""
        if self.cipher is None:
            return
        prefix = self.cipher.current_prefix
        rows = await conn.fetch(
            "SELECT name, token, tls_key FROM clusters "
            "WHERE token NOT LIKE $1 OR tls_key NOT LIKE $1",
            prefix + "%",
        )
        try:
            updates = [(n, *_reencrypted(self.cipher, t, k), t, k) for n, t, k in rows]
        except UndecryptableValue as exc:
            raise StoreSetupError(f"cannot decrypt a stored record: {exc}") from None
        # Compare-and-set: a replica saving the row meanwhile wins (it encrypts too).
        await conn.executemany(
            "UPDATE clusters SET token = $2, tls_key = $3 "
            "WHERE name = $1 AND token = $4 AND tls_key = $5",
            updates,
        )
        if updates:
            log.info("re-encrypted %d cluster records under key %s", len(updates), prefix)

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            try:
                await pool.close()
            except Exception:
                pool.terminate()

    def _tx(self) -> asyncpg.Connection | None:
        """The connection of the change this task is making, if any."""
        change = self._change.get()
        if change is None or change[0] is not asyncio.current_task():
            return None
        return change[1]

    @contextlib.asynccontextmanager
    async def _conn(self, what: str) -> AsyncIterator[asyncpg.Connection]:
        """The connection of the change in progress, or one from the pool."""
        current = self._tx()
        if current is not None:
            with _unavailable_as_503(what):
                yield current
            return
        with _unavailable_as_503(what):
            async with self.pool.acquire() as conn:
                yield conn

    def _consistent_read(self, conn: asyncpg.Connection) -> Any:
        """Several SELECTs that see one snapshot (inside a change: its transaction)."""
        if self._tx() is conn:
            return contextlib.nullcontext()
        return conn.transaction(isolation="repeatable_read", readonly=True)

    # -- Store ----------------------------------------------------------------------------

    async def save_cluster(self, cluster: ClusterRecord, workers: Iterable[str] = ()) -> None:
        async with self._conn(f"saving cluster {cluster.name}") as conn:
            if self._tx() is conn:
                await self._save(conn, cluster, workers)
            else:
                async with conn.transaction():
                    await self._save(conn, cluster, workers)

    async def _save(
        self, conn: asyncpg.Connection, cluster: ClusterRecord, workers: Iterable[str]
    ) -> None:
        cols = ", ".join(_CLUSTER_COLUMNS)
        marks = ", ".join(f"${i}" for i in range(1, len(_CLUSTER_COLUMNS) + 1))
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _CLUSTER_COLUMNS[1:])
        await conn.execute(
            f"INSERT INTO clusters ({cols}) VALUES ({marks}) "
            f"ON CONFLICT (name) DO UPDATE SET {updates}",
            *_cluster_row(cluster, self.cipher),
        )
        rows = [
            _worker_row(cluster.name, cluster.workers[n]) for n in workers if n in cluster.workers
        ]
        if rows:
            wcols = ", ".join(_WORKER_COLUMNS)
            wmarks = ", ".join(f"${i}" for i in range(1, len(_WORKER_COLUMNS) + 1))
            wupdates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _WORKER_COLUMNS[2:])
            await conn.executemany(
                f"INSERT INTO workers ({wcols}) VALUES ({wmarks}) "
                f"ON CONFLICT (cluster, name) DO UPDATE SET {wupdates}",
                rows,
            )
        # Delivered to every listening replica when the transaction commits.
        await conn.execute(
            "SELECT pg_notify($1, $2)", CHANNEL, f"{cluster.name}:{cluster.revision}"
        )

    async def load_unfinished(self) -> list[ClusterRecord]:
        cols = ", ".join(_CLUSTER_COLUMNS)
        wcols = ", ".join(f"w.{c}" for c in _WORKER_COLUMNS)
        async with self._conn("loading clusters") as conn:
            async with self._consistent_read(conn):
                rows = await conn.fetch(
                    f"SELECT {cols} FROM clusters WHERE stop_time IS NULL ORDER BY start_time"
                )
                wrows = await conn.fetch(
                    f"SELECT {wcols} FROM workers w JOIN clusters c ON c.name = w.cluster "
                    "WHERE c.stop_time IS NULL AND w.stop_time IS NULL"
                )
        clusters = {r["name"]: _cluster_from_row(r, self.cipher) for r in rows}
        for row in wrows:
            name, worker = _worker_from_row(row)
            clusters[name].workers[worker.name] = worker
        return list(clusters.values())

    async def get_cluster(self, name: str) -> ClusterRecord | None:
        cols = ", ".join(_CLUSTER_COLUMNS)
        async with self._conn(f"reading cluster {name}") as conn:
            row = await conn.fetchrow(f"SELECT {cols} FROM clusters WHERE name = $1", name)
        return _cluster_from_row(row, self.cipher) if row else None

    async def load_cluster(self, name: str) -> ClusterRecord | None:
        cols = ", ".join(_CLUSTER_COLUMNS)
        wcols = ", ".join(_WORKER_COLUMNS)
        async with self._conn(f"reading cluster {name}") as conn:
            async with self._consistent_read(conn):
                row = await conn.fetchrow(f"SELECT {cols} FROM clusters WHERE name = $1", name)
                wrows = await conn.fetch(
                    f"SELECT {wcols} FROM workers WHERE cluster = $1 AND stop_time IS NULL", name
                )
        if row is None:
            return None
        c = _cluster_from_row(row, self.cipher)
        for wrow in wrows:
            c.workers[wrow["name"]] = _worker_from_row(wrow)[1]
        return c

    async def list_workers(self, cluster: str, limit: int) -> list[WorkerRecord]:
        wcols = ", ".join(_WORKER_COLUMNS)
        async with self._conn(f"reading workers of cluster {cluster}") as conn:
            rows = await conn.fetch(
                f"SELECT {wcols} FROM workers WHERE cluster = $1 "
                "ORDER BY start_time DESC, name LIMIT $2",
                cluster,
                limit,
            )
        return [_worker_from_row(row)[1] for row in rows]

    async def list_finished(self, owner: str | None) -> list[ClusterRecord]:
        cols = ", ".join(_CLUSTER_COLUMNS)
        sql = f"SELECT {cols} FROM clusters WHERE stop_time IS NOT NULL"
        args: tuple[Any, ...] = ()
        if owner is not None:
            sql += " AND owner = $1"
            args = (owner,)
        async with self._conn("listing clusters") as conn:
            rows = await conn.fetch(sql + " ORDER BY start_time", *args)
        return [_cluster_from_row(r, self.cipher) for r in rows]

    async def save_logs(self, cluster: str, logs: Mapping[str, str], updated_time: int) -> None:
        async with self._conn(f"saving logs of cluster {cluster}") as conn:
            await conn.executemany(
                "INSERT INTO cluster_logs (cluster, process, output, updated_time) "
                "VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (cluster, process) DO UPDATE SET output = EXCLUDED.output, "
                "updated_time = EXCLUDED.updated_time",
                [(cluster, process, text, updated_time) for process, text in logs.items()],
            )

    async def get_logs(self, cluster: str) -> dict[str, str]:
        async with self._conn(f"reading logs of cluster {cluster}") as conn:
            rows = await conn.fetch(
                "SELECT process, output FROM cluster_logs WHERE cluster = $1 "
                "ORDER BY process <> 'scheduler', updated_time DESC, process",
                cluster,
            )
        return {r["process"]: r["output"] for r in rows}

    async def purge_finished(self, stopped_before: int) -> int:
        async with self._conn("purging finished clusters") as conn, conn.transaction():
            await conn.execute(_KEEP_ACCRUED_SQL.format(mark="$1"), stopped_before)
            status = await conn.execute(
                "DELETE FROM clusters WHERE stop_time IS NOT NULL AND stop_time < $1",
                stopped_before,
            )
        # asyncpg returns the command tag, e.g. "DELETE 3".
        return int(status.split()[-1])

    async def reservations(self, owner: str) -> list[tuple[str, str, int]]:
        async with self._conn(f"reading the clusters of {owner}") as conn:
            rows = await conn.fetch(_RESERVATIONS_SQL.format(mark="$1", greatest="GREATEST"), owner)
        return [(r[0], r[1], int(r[2])) for r in rows]

    async def accrued(self, owner: str | None) -> dict[str, tuple[float, float]]:
        where, args = ("", ()) if owner is None else (" WHERE owner = $1", (owner,))
        async with self._conn("reading accounting") as conn:
            rows = await conn.fetch(_ACCRUED_SQL.format(where=where), *args)
        return {r[0]: (float(r[1] or 0), float(r[2] or 0)) for r in rows}

    # -- what replicas need -----------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def locked(self, name: str, owner: str = "") -> AsyncIterator[int | None]:
        """Hold cluster ``name``'s row lock for one change; yields its stored revision
        (None for a cluster not stored yet). Saves inside join this transaction, which
        commits when the block ends without an exception.

        With ``owner``, first that user's transaction advisory lock: quota checks of one
        user take turns across replicas (always owner, then row: no deadlock)."""
        if self._tx() is not None:
            raise RuntimeError("locked() does not nest")
        with _unavailable_as_503(f"locking cluster {name}"):
            conn = await self.pool.acquire()
        try:
            with _unavailable_as_503(f"locking cluster {name}"):
                tx = conn.transaction()
                await tx.start()
                if owner:
                    await conn.execute(
                        "SELECT pg_advisory_xact_lock($1, hashtext($2))", _OWNER_LOCK_CLASS, owner
                    )
                revision = await conn.fetchval(
                    "SELECT revision FROM clusters WHERE name = $1 FOR UPDATE", name
                )
            reset = self._change.set((asyncio.current_task(), conn))
            try:
                yield revision
            except BaseException:
                with contextlib.suppress(Exception):
                    await tx.rollback()
                raise
            finally:
                self._change.reset(reset)
            with _unavailable_as_503(f"saving cluster {name}"):
                await tx.commit()
        finally:
            with contextlib.suppress(Exception):
                await self.pool.release(conn)

    async def revisions(self) -> dict[str, int]:
        """Name → revision of every unfinished cluster."""
        async with self._conn("listing revisions") as conn:
            rows = await conn.fetch("SELECT name, revision FROM clusters WHERE stop_time IS NULL")
        return {r["name"]: r["revision"] for r in rows}

    async def listen(self, notify: Notify) -> asyncpg.Connection:
        """A dedicated connection LISTENing for saves: ``notify(name, revision)``."""

        def on_notification(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            name, _, revision = payload.rpartition(":")
            if name and revision.isdigit():
                notify(name, int(revision))

        with _unavailable_as_503("listening for changes"):
            conn = await asyncpg.connect(
                self.url, timeout=self.connect_timeout, command_timeout=self.command_timeout
            )
            try:
                await conn.add_listener(CHANNEL, on_notification)
            except BaseException:
                conn.terminate()
                raise
        return conn

    @staticmethod
    async def try_lead(conn: asyncpg.Connection) -> bool:
        """Take the leader lock on ``conn`` (held until that connection closes)."""
        with _unavailable_as_503("electing a leader"):
            return bool(await conn.fetchval("SELECT pg_try_advisory_lock($1)", _LEADER_LOCK))

    @staticmethod
    async def ping(conn: asyncpg.Connection) -> None:
        with _unavailable_as_503("checking the notification connection"):
            await conn.fetchval("SELECT 1")
