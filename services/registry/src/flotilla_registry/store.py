"""Persistence of cluster and worker records. The only modules that know the schema are
this one and ``pgstore`` (PostgreSQL).

``Store`` is the interface; ``SQLiteStore`` is the embedded default and ``PostgresStore``
(``pgstore``) serves several registry replicas. Schemas are created by numbered migrations
(``migrations/<dialect>/NNNN_*.sql``), applied once each and recorded. Tokens and TLS keys
are encrypted with a ``FieldCipher`` on the way in and decrypted on the way out, so the rest
of the registry only ever sees plaintext records.
"""

from __future__ import annotations

import abc
import logging
import os
import sqlite3
from collections.abc import Iterable, Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiosqlite

from .crypto import FieldCipher, UndecryptableValue, decrypt_or_plain, encrypt_or_plain
from .model import ClusterRecord, Observed, Target, WorkerRecord

__all__ = ["SQLiteStore", "Store", "StoreSetupError", "is_persistent", "open_store"]

log = logging.getLogger(__name__)


class StoreSetupError(RuntimeError):
    """The store cannot be opened: a one-line reason for the operator (no secrets in it)."""


class Store(abc.ABC):
    """Where the registry keeps clusters and workers."""

    cipher: FieldCipher | None = None

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and bring the schema up to date."""

    @abc.abstractmethod
    async def close(self) -> None: ...

    @abc.abstractmethod
    async def save_cluster(self, cluster: ClusterRecord, workers: Iterable[str] = ()) -> None:
        """Insert or update ``cluster`` and the named workers (all of them if ``None``)."""

    @abc.abstractmethod
    async def load_unfinished(self) -> list[ClusterRecord]:
        """Every cluster not yet finished, with its unfinished workers."""

    @abc.abstractmethod
    async def get_cluster(self, name: str) -> ClusterRecord | None:
        """One cluster without its workers."""

    @abc.abstractmethod
    async def load_cluster(self, name: str) -> ClusterRecord | None:
        """One cluster with its unfinished workers (what the registry keeps in memory)."""

    @abc.abstractmethod
    async def list_finished(self, owner: str | None) -> list[ClusterRecord]:
        """Finished clusters of ``owner`` (every owner when None), without workers."""

    @abc.abstractmethod
    async def list_workers(self, cluster: str, limit: int) -> list[WorkerRecord]:
        """The ``limit`` most recently started workers of ``cluster``, finished ones too,
        newest first. Empty for an unknown cluster."""

    # Logs and retention (migration 0002). Logs belong to their cluster's record: deleting
    # the cluster deletes them.

    @abc.abstractmethod
    async def save_logs(self, cluster: str, logs: Mapping[str, str], updated_time: int) -> None:
        """Insert or replace the output tail of each named process (process -> text) of
        ``cluster``, which must exist; other processes' logs are kept."""

    @abc.abstractmethod
    async def get_logs(self, cluster: str) -> dict[str, str]:
        """Every stored log of ``cluster`` (process -> text): "scheduler" first, then the
        others most recently saved first (then by name). Empty for an unknown cluster."""

    @abc.abstractmethod
    async def purge_finished(self, stopped_before: int) -> int:
        """Delete finished clusters (``stop_time`` set) that stopped before
        ``stopped_before`` (ms since the epoch), with their workers and logs; returns how
        many. Never touches a cluster without a ``stop_time``. What they accrued for
        accounting is added to their owners' ``user_usage`` first."""

    # Quotas and accounting (migration 0004, quotas.py).

    @abc.abstractmethod
    async def reservations(self, owner: str) -> list[tuple[str, str, int]]:
        """``(name, config, count)`` of every unfinished cluster of ``owner`` whose target
        is RUNNING, as stored (inside a change: as its transaction sees it)."""

    @abc.abstractmethod
    async def accrued(self, owner: str | None) -> dict[str, tuple[float, float]]:
        """Owner -> (core-seconds, byte-seconds) accrued by their finished clusters,
        purged ones included (every owner when None)."""


_ACCRUED_SQL = (
    "SELECT owner, SUM(core_seconds), SUM(memory_seconds) FROM ("
    " SELECT owner, core_seconds, memory_seconds FROM clusters WHERE stop_time IS NOT NULL"
    " UNION ALL SELECT owner, core_seconds, memory_seconds FROM user_usage"
    ") AS finished{where} GROUP BY owner"
)
# A cluster reserves its granted count, or its live workers while it has more (a scale
# down frees the share once the workers are gone).
_RESERVATIONS_SQL = (
    "SELECT c.name, c.config, {greatest}(c.count, (SELECT COUNT(*) FROM workers w"
    " WHERE w.cluster = c.name AND w.target = 1)) FROM clusters c"
    " WHERE c.owner = {mark} AND c.stop_time IS NULL AND c.target = 1"
)
# Adds what the clusters about to be purged accrued to their owners' totals.
_KEEP_ACCRUED_SQL = (
    "INSERT INTO user_usage (owner, core_seconds, memory_seconds)"
    " SELECT owner, SUM(core_seconds), SUM(memory_seconds) FROM clusters"
    " WHERE stop_time IS NOT NULL AND stop_time < {mark} GROUP BY owner"
    " ON CONFLICT (owner) DO UPDATE SET"
    " core_seconds = user_usage.core_seconds + EXCLUDED.core_seconds,"
    " memory_seconds = user_usage.memory_seconds + EXCLUDED.memory_seconds"
)


_CLUSTER_COLUMNS = (
    "name", "owner", "backend", "options", "config", "token", "tls_cert", "tls_key",
    "target", "observed", "reason", "scheduler_address", "dashboard_address", "api_address",
    "count", "state", "start_time", "stop_time", "last_heartbeat", "revision",
    "logs_request", "logs_answered", "worker_start_failures",
    "core_seconds", "memory_seconds", "accrued_until", "accrued_cores", "accrued_memory",
    "clients", "clients_gone_since", "seen_alive",
)  # fmt: skip
_WORKER_COLUMNS = (
    "cluster", "name", "target", "observed", "close_expected", "state", "reason",
    "start_time", "stop_time",
)  # fmt: skip


def _cluster_row(c: ClusterRecord, cipher: FieldCipher | None) -> tuple[Any, ...]:
    return (
        c.name, c.owner, c.backend, c.options, c.config, encrypt_or_plain(cipher, c.token),
        c.tls_cert, encrypt_or_plain(cipher, c.tls_key),
        int(c.target), int(c.observed), c.reason, c.scheduler_address, c.dashboard_address,
        c.api_address, c.count, c.state, c.start_time, c.stop_time, c.last_heartbeat,
        c.revision, c.logs_request, c.logs_answered, c.worker_start_failures,
        c.core_seconds, c.memory_seconds, c.accrued_until, c.accrued_cores, c.accrued_memory,
        c.clients, c.clients_gone_since, c.seen_alive,
    )  # fmt: skip


def _worker_row(cluster: str, w: WorkerRecord) -> tuple[Any, ...]:
    return (
        cluster, w.name, int(w.target), int(w.observed), w.close_expected, w.state,
        w.reason, w.start_time, w.stop_time,
    )  # fmt: skip


def _cluster_from_row(row: Sequence[Any], cipher: FieldCipher | None) -> ClusterRecord:
    d = dict(zip(_CLUSTER_COLUMNS, row, strict=True))
    try:
        d["token"] = decrypt_or_plain(cipher, d["token"])
        d["tls_key"] = decrypt_or_plain(cipher, d["tls_key"])
    except UndecryptableValue as exc:
        raise UndecryptableValue(f"cluster {d['name']}: {exc}") from None
    d["target"] = Target(d["target"])
    d["observed"] = Observed(d["observed"])
    return ClusterRecord(**d)


def _worker_from_row(row: Sequence[Any]) -> tuple[str, WorkerRecord]:
    d = dict(zip(_WORKER_COLUMNS, row, strict=True))
    cluster = d.pop("cluster")
    d["target"] = Target(d["target"])
    d["observed"] = Observed(d["observed"])
    d["close_expected"] = bool(d["close_expected"])
    return cluster, WorkerRecord(**d)


def _needs_rewrite(cipher: FieldCipher, token: str, tls_key: str) -> bool:
    return not (cipher.is_current(token) and cipher.is_current(tls_key))


def _reencrypted(cipher: FieldCipher, token: str, tls_key: str) -> tuple[str, str]:
    """The pair under the first key (plaintext from before encryption included)."""
    return cipher.encrypt(cipher.decrypt(token)), cipher.encrypt(cipher.decrypt(tls_key))


def _migrations(dialect: str) -> list[tuple[str, str]]:
    folder = resources.files("flotilla_registry") / "migrations" / dialect
    files = sorted(p.name for p in folder.iterdir() if p.name.endswith(".sql"))
    return [(name, (folder / name).read_text()) for name in files]


class SQLiteStore(Store):
    """A single SQLite file (WAL mode): the embedded default."""

    def __init__(self, path: str, cipher: FieldCipher | None = None) -> None:
        self.path = path
        self.cipher = cipher
        self._db: aiosqlite.Connection | None = None

    def __repr__(self) -> str:
        return f"SQLiteStore({self.path})"

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    async def open(self) -> None:
        try:
            await self._open()
        except (OSError, sqlite3.Error) as exc:
            await self.close()
            raise StoreSetupError(f"cannot open SQLite database {self.path}: {exc}") from None

    async def _open(self) -> None:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            # Tokens and TLS keys live here: readable by the registry's account only
            # (SQLite gives its -wal and -shm files the same mode).
            os.close(os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600))
            os.chmod(self.path, 0o600)
        self._db = await aiosqlite.connect(self.path)
        await self.db.execute("PRAGMA journal_mode=WAL")
        await self.db.execute("PRAGMA synchronous=NORMAL")
        await self.db.execute("PRAGMA foreign_keys=ON")
        await self._migrate()
        await self._encrypt_old_rows()

    async def _migrate(self) -> None:
        await self.db.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name TEXT PRIMARY KEY, applied_ms INTEGER)"
        )
        async with self.db.execute("SELECT name FROM schema_migrations") as cur:
            done = {r[0] for r in await cur.fetchall()}
        for name, sql in _migrations("sqlite"):
            if name in done:
                continue
            log.info("applying migration %s", name)
            await self.db.executescript(
                f"BEGIN;\n{sql}\nINSERT INTO schema_migrations VALUES "
                f"('{name}', CAST(strftime('%s','now') AS INTEGER) * 1000);\nCOMMIT;"
            )

    async def _encrypt_old_rows(self) -> None:
        """Rewrite rows that are plaintext or under an older key with the first key."""
        if self.cipher is None:
            return
        prefix = self.cipher.current_prefix
        async with self.db.execute(
            "SELECT name, token, tls_key FROM clusters "
            "WHERE token NOT LIKE ? OR tls_key NOT LIKE ?",
            (prefix + "%", prefix + "%"),
        ) as cur:
            rows = list(await cur.fetchall())
        try:
            updates = [(*_reencrypted(self.cipher, t, k), n, t, k) for n, t, k in rows]
        except UndecryptableValue as exc:
            raise StoreSetupError(f"cannot decrypt a stored record: {exc}") from None
        await self.db.executemany(
            "UPDATE clusters SET token = ?, tls_key = ? "
            "WHERE name = ? AND token = ? AND tls_key = ?",
            updates,
        )
        await self.db.commit()
        if updates:
            log.info("re-encrypted %d cluster records under key %s", len(updates), prefix)

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def save_cluster(self, cluster: ClusterRecord, workers: Iterable[str] = ()) -> None:
        cols = ", ".join(_CLUSTER_COLUMNS)
        marks = ", ".join("?" for _ in _CLUSTER_COLUMNS)
        updates = ", ".join(f"{c}=excluded.{c}" for c in _CLUSTER_COLUMNS[1:])
        await self.db.execute(
            f"INSERT INTO clusters ({cols}) VALUES ({marks}) "
            f"ON CONFLICT(name) DO UPDATE SET {updates}",
            _cluster_row(cluster, self.cipher),
        )
        rows = [
            _worker_row(cluster.name, cluster.workers[n]) for n in workers if n in cluster.workers
        ]
        if rows:
            wcols = ", ".join(_WORKER_COLUMNS)
            wmarks = ", ".join("?" for _ in _WORKER_COLUMNS)
            wupdates = ", ".join(f"{c}=excluded.{c}" for c in _WORKER_COLUMNS[2:])
            await self.db.executemany(
                f"INSERT INTO workers ({wcols}) VALUES ({wmarks}) "
                f"ON CONFLICT(cluster, name) DO UPDATE SET {wupdates}",
                rows,
            )
        await self.db.commit()

    async def load_unfinished(self) -> list[ClusterRecord]:
        cols = ", ".join(_CLUSTER_COLUMNS)
        async with self.db.execute(
            f"SELECT {cols} FROM clusters WHERE stop_time IS NULL ORDER BY start_time"
        ) as cur:
            clusters = {r[0]: _cluster_from_row(r, self.cipher) for r in await cur.fetchall()}
        wcols = ", ".join(f"w.{c}" for c in _WORKER_COLUMNS)
        async with self.db.execute(
            f"SELECT {wcols} FROM workers w JOIN clusters c ON c.name = w.cluster "
            "WHERE c.stop_time IS NULL AND w.stop_time IS NULL"
        ) as cur:
            for row in await cur.fetchall():
                cluster, worker = _worker_from_row(row)
                clusters[cluster].workers[worker.name] = worker
        return list(clusters.values())

    async def get_cluster(self, name: str) -> ClusterRecord | None:
        cols = ", ".join(_CLUSTER_COLUMNS)
        async with self.db.execute(f"SELECT {cols} FROM clusters WHERE name = ?", (name,)) as cur:
            row = await cur.fetchone()
        return _cluster_from_row(row, self.cipher) if row else None

    async def load_cluster(self, name: str) -> ClusterRecord | None:
        c = await self.get_cluster(name)
        if c is None:
            return None
        wcols = ", ".join(_WORKER_COLUMNS)
        async with self.db.execute(
            f"SELECT {wcols} FROM workers WHERE cluster = ? AND stop_time IS NULL", (name,)
        ) as cur:
            for row in await cur.fetchall():
                c.workers[row[1]] = _worker_from_row(row)[1]
        return c

    async def list_workers(self, cluster: str, limit: int) -> list[WorkerRecord]:
        wcols = ", ".join(_WORKER_COLUMNS)
        async with self.db.execute(
            f"SELECT {wcols} FROM workers WHERE cluster = ? ORDER BY start_time DESC, name LIMIT ?",
            (cluster, limit),
        ) as cur:
            return [_worker_from_row(row)[1] for row in await cur.fetchall()]

    async def list_finished(self, owner: str | None) -> list[ClusterRecord]:
        cols = ", ".join(_CLUSTER_COLUMNS)
        sql = f"SELECT {cols} FROM clusters WHERE stop_time IS NOT NULL"
        args: tuple[Any, ...] = ()
        if owner is not None:
            sql += " AND owner = ?"
            args = (owner,)
        async with self.db.execute(sql + " ORDER BY start_time", args) as cur:
            return [_cluster_from_row(r, self.cipher) for r in await cur.fetchall()]

    async def save_logs(self, cluster: str, logs: Mapping[str, str], updated_time: int) -> None:
        await self.db.executemany(
            "INSERT INTO cluster_logs (cluster, process, output, updated_time) "
            "VALUES (?, ?, ?, ?) "
            "ON CONFLICT(cluster, process) DO UPDATE SET output=excluded.output, "
            "updated_time=excluded.updated_time",
            [(cluster, process, text, updated_time) for process, text in logs.items()],
        )
        await self.db.commit()

    async def get_logs(self, cluster: str) -> dict[str, str]:
        async with self.db.execute(
            "SELECT process, output FROM cluster_logs WHERE cluster = ? "
            "ORDER BY process != 'scheduler', updated_time DESC, process",
            (cluster,),
        ) as cur:
            return {process: text for process, text in await cur.fetchall()}

    async def purge_finished(self, stopped_before: int) -> int:
        # SQLite needs a WHERE in INSERT ... SELECT ... ON CONFLICT (parsing ambiguity).
        await self.db.execute(
            _KEEP_ACCRUED_SQL.format(mark="?").replace(" GROUP BY", " AND 1 GROUP BY"),
            (stopped_before,),
        )
        cur = await self.db.execute(
            "DELETE FROM clusters WHERE stop_time IS NOT NULL AND stop_time < ?",
            (stopped_before,),
        )
        await self.db.commit()
        return int(cur.rowcount)

    async def reservations(self, owner: str) -> list[tuple[str, str, int]]:
        async with self.db.execute(
            _RESERVATIONS_SQL.format(mark="?", greatest="MAX"), (owner,)
        ) as cur:
            return [(r[0], r[1], int(r[2])) for r in await cur.fetchall()]

    async def accrued(self, owner: str | None) -> dict[str, tuple[float, float]]:
        where, args = ("", ()) if owner is None else (" WHERE owner = ?", (owner,))
        async with self.db.execute(_ACCRUED_SQL.format(where=where), args) as cur:
            return {r[0]: (float(r[1] or 0), float(r[2] or 0)) for r in await cur.fetchall()}


def _is_memory(url: str) -> bool:
    return url in ("sqlite://", "sqlite:///", "sqlite:///:memory:", ":memory:")


def is_persistent(url: str) -> bool:
    """Whether ``url`` keeps records beyond the process (everything but in-memory SQLite)."""
    return not _is_memory(url)


def open_store(url: str, cipher: FieldCipher | None = None, pool_size: int = 10) -> Store:
    """A store for ``url``: ``sqlite:///relative/path``, ``sqlite:////absolute/path``,
    ``sqlite:///:memory:``, a bare file path, or ``postgresql://user:pass@host:port/db``
    (also ``postgres://``). Raises ``StoreSetupError`` for a URL it cannot use."""
    parsed = urlparse(url)
    if parsed.scheme in ("postgresql", "postgres"):
        from .pgstore import PostgresStore  # asyncpg is only imported when used

        return PostgresStore(url, cipher, pool_size=pool_size)
    if parsed.scheme == "sqlite":
        if not url.startswith("sqlite:///") and url != "sqlite://":
            raise StoreSetupError(
                "SQLite URLs look like sqlite:///relative/path or sqlite:////absolute/path"
            )
        return SQLiteStore(url[len("sqlite:///") :] or ":memory:", cipher)
    if not parsed.scheme:
        return SQLiteStore(url, cipher)
    raise StoreSetupError(
        f"unsupported registry database URL scheme {parsed.scheme!r} "
        "(use sqlite:///path or postgresql://user:password@host:port/database)"
    )
