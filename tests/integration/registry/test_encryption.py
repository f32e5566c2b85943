"""Tokens and TLS keys encrypted at rest, on both stores: rotation, old plaintext rows,
and the registry refusing a persistent store without keys."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
from cryptography.fernet import Fernet
from flotilla_common.config import load_config
from flotilla_common.embedded import EmbeddedStack
from flotilla_registry.app import RegistryApp, StartupError, make_store
from flotilla_registry.config import KEYS_ENV, Registry
from flotilla_registry.crypto import FieldCipher, generate_key
from flotilla_registry.model import ClusterRecord, Observed, Target, WorkerRecord
from flotilla_registry.store import Store, StoreSetupError, open_store
from helpers import free_port

pytestmark = pytest.mark.integration

Opener = Callable[[str, "list[str] | None"], Awaitable[Store]]

TOKEN = "tok-" + "x" * 40
TLS_KEY = "-----BEGIN PRIVATE KEY-----\nabc\n-----END PRIVATE KEY-----\n"


def _record(name: str | None = None, finished: bool = False) -> ClusterRecord:
    c = ClusterRecord(
        name=name or uuid.uuid4().hex,
        owner="alice",
        backend="local",
        options="{}",
        config="{}",
        token=TOKEN,
        tls_cert="-----BEGIN CERTIFICATE-----\n",
        tls_key=TLS_KEY,
    )
    if finished:
        c.target, c.observed, c.stop_time = Target.STOPPED, Observed.STOPPED, c.start_time + 1
    return c


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("postgres").new_database())
    return f"sqlite:///{tmp_path / 'registry.sqlite'}"


async def _raw_secrets(url: str) -> dict[str, tuple[str, str]]:
    """name → (token, tls_key) exactly as stored."""
    if url.startswith("sqlite:///"):
        with sqlite3.connect(url[len("sqlite:///") :]) as db:
            rows = db.execute("SELECT name, token, tls_key FROM clusters").fetchall()
    else:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch("SELECT name, token, tls_key FROM clusters")
        finally:
            await conn.close()
    return {r[0]: (r[1], r[2]) for r in rows}


@pytest.fixture
async def opened() -> AsyncIterator[Opener]:
    """``await opened(url, keys)``: an open store, closed at the end of the test."""
    stores: list[Store] = []

    async def open_(url: str, keys: list[str] | None) -> Store:
        store = open_store(url, FieldCipher(keys) if keys else None)
        stores.append(store)
        await store.open()
        return store

    yield open_
    for store in stores:
        await store.close()


async def test_secrets_are_encrypted_at_rest(db_url: str, opened: Opener) -> None:
    store = await opened(db_url, [generate_key()])
    active, finished = _record(), _record(finished=True)
    active.workers["w1"] = WorkerRecord(name="w1")
    await store.save_cluster(active, ["w1"])
    await store.save_cluster(finished)
    raw = await _raw_secrets(db_url)
    for token, key in raw.values():
        assert token.startswith("fernet:") and key.startswith("fernet:")
        assert "tok-" not in token and "PRIVATE KEY" not in key
    [loaded] = await store.load_unfinished()
    assert (loaded.token, loaded.tls_key, list(loaded.workers)) == (TOKEN, TLS_KEY, ["w1"])
    [done] = await store.list_finished("alice")
    assert (done.name, done.token, done.tls_key) == (finished.name, TOKEN, TLS_KEY)


async def test_key_rotation(db_url: str, opened: Opener) -> None:
    old, new = generate_key(), generate_key()
    store = await opened(db_url, [old])
    records = [_record(), _record(finished=True)]
    for c in records:
        await store.save_cluster(c)
    await store.close()
    old_prefix, new_prefix = FieldCipher([old]).current_prefix, FieldCipher([new]).current_prefix
    assert all(t.startswith(old_prefix) for t, _ in (await _raw_secrets(db_url)).values())

    # Step 1: the new key first, the old one still listed. Opening re-encrypts every row.
    store = await opened(db_url, [new, old])
    assert (await store.get_cluster(records[0].name)).token == TOKEN  # type: ignore[union-attr]
    await store.close()
    raw = await _raw_secrets(db_url)
    assert len(raw) == 2
    assert all(t.startswith(new_prefix) and k.startswith(new_prefix) for t, k in raw.values())

    # Step 2: the old key dropped; everything still reads.
    store = await opened(db_url, [new])
    assert [c.token for c in await store.load_unfinished()] == [TOKEN]
    assert [c.tls_key for c in await store.list_finished(None)] == [TLS_KEY]
    await store.close()

    # Dropping the only key that can read the rows is refused, naming what is missing.
    with pytest.raises(StoreSetupError, match=r"not among the configured keys.*db_encrypt_keys"):
        await opened(db_url, [old])
    # ... and the data is untouched by the refusal.
    assert await _raw_secrets(db_url) == raw


async def test_a_record_under_an_old_key_reads_without_rewrite(db_url: str, opened: Opener) -> None:
    """Rows another replica wrote under the old key while this one already has the new."""
    old, new = generate_key(), generate_key()
    writer = await opened(db_url, [old, new])
    reader = await opened(db_url, [new, old])
    c = _record()
    await writer.save_cluster(c)
    assert (await _raw_secrets(db_url))[c.name][0].startswith(FieldCipher([old]).current_prefix)
    got = await reader.get_cluster(c.name)
    assert got is not None and (got.token, got.tls_key) == (TOKEN, TLS_KEY)


async def test_plaintext_rows_from_before_are_encrypted(db_url: str, opened: Opener) -> None:
    """A database written before encryption existed: rows read, then re-encrypted."""
    plain = await opened(db_url, None)
    c = _record()
    await plain.save_cluster(c)
    await plain.close()
    assert (await _raw_secrets(db_url))[c.name] == (TOKEN, TLS_KEY)
    key = generate_key()
    store = await opened(db_url, [key])
    got = await store.get_cluster(c.name)
    assert got is not None and (got.token, got.tls_key) == (TOKEN, TLS_KEY)
    token, tls_key = (await _raw_secrets(db_url))[c.name]
    prefix = FieldCipher([key]).current_prefix
    assert token.startswith(prefix) and tls_key.startswith(prefix)


async def test_encrypted_rows_without_keys_are_refused(db_url: str, opened: Opener) -> None:
    store = await opened(db_url, [generate_key()])
    await store.save_cluster(_record())
    await store.close()
    keyless = await opened(db_url, None)
    with pytest.raises(ValueError, match="no db_encrypt_keys are configured"):
        await keyless.load_unfinished()


# -- the registry refuses persistent stores without keys --------------------------------------


def _registry(tmp_path: Path, **options: object) -> Registry:
    lines = [f"c.Registry.{k} = {v!r}" for k, v in options.items()]
    cfg = tmp_path / "cfg.py"
    cfg.write_text("\n".join(lines) + "\n")
    return Registry(config=load_config(cfg))


def test_refuses_persistent_stores_without_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEYS_ENV, raising=False)
    for url in (f"sqlite:///{tmp_path}/r.sqlite", "postgresql://u:p@127.0.0.1:5/db"):
        with pytest.raises(StartupError, match=r"c\.Registry\.db_encrypt_keys") as err:
            make_store(_registry(tmp_path), url)
        assert "\n" not in str(err.value)
    assert make_store(_registry(tmp_path), "sqlite:///:memory:").cipher is None
    # The environment variable serves when the config names no keys (';'-separated).
    keys = [generate_key(), generate_key()]
    monkeypatch.setenv(KEYS_ENV, ";".join(keys))
    store = make_store(_registry(tmp_path), f"sqlite:///{tmp_path}/r.sqlite")
    assert store.cipher is not None and store.cipher.key_ids == FieldCipher(keys).key_ids


def test_a_malformed_key_is_named_but_not_shown(tmp_path: Path) -> None:
    secret_looking = "not-a-fernet-key-but-secret"
    with pytest.raises(StartupError, match=r"db_encrypt_keys: encryption key #2") as err:
        make_store(
            _registry(tmp_path, db_encrypt_keys=[generate_key(), secret_looking]),
            f"sqlite:///{tmp_path}/r.sqlite",
        )
    assert secret_looking not in str(err.value)


def _run_registry(tmp_path: Path, extra: str, env: dict[str, str] | None = None) -> str:
    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        f"c.Deployment.state_dir = {str(tmp_path)!r}\n"
        'c.Deployment.registry_grpc_address = "127.0.0.1:0"\n'
        'c.Deployment.registry_http_address = "127.0.0.1:0"\n' + extra
    )
    full_env = {k: v for k, v in os.environ.items() if k != KEYS_ENV} | (env or {})
    done = subprocess.run(
        [str(Path(sys.executable).parent / "flotilla-registry"), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=60,
        env=full_env,
    )
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if "flotilla-registry:" in line]
    assert "Traceback" not in done.stderr, done.stderr
    assert len(errors) == 1, done.stderr
    return errors[0]


def test_startup_errors_are_one_line(tmp_path: Path) -> None:
    line = _run_registry(tmp_path, "")
    assert "c.Registry.db_encrypt_keys" in line and "generate-key" in line
    key = f"c.Registry.db_encrypt_keys = [{generate_key()!r}]\n"
    line = _run_registry(tmp_path, key + 'c.Registry.db_url = "postgresql://u:pw@h:nope/db"\n')
    assert "malformed database URL" in line and "pw" not in line.replace("postgresql", "")
    port = free_port()
    line = _run_registry(
        tmp_path, key + f'c.Registry.db_url = "postgresql://u:hunter2@127.0.0.1:{port}/db"\n'
    )
    assert f"cannot connect to the registry database 127.0.0.1:{port}/db" in line
    assert "hunter2" not in line
    line = _run_registry(tmp_path, key + 'c.Registry.db_url = "mysql://h/db"\n')
    assert "unsupported registry database URL scheme 'mysql'" in line


def test_unreachable_or_missing_database(tmp_path: Path, postgres: object) -> None:
    url: str = postgres.url_for("no_such_database")  # type: ignore[attr-defined]
    key = f"c.Registry.db_encrypt_keys = [{generate_key()!r}]\n"
    line = _run_registry(tmp_path, key + f"c.Registry.db_url = {url!r}\n")
    assert "cannot connect to the registry database" in line and "no_such_database" in line
    assert postgres.password not in line  # type: ignore[attr-defined]


def test_generate_key_prints_a_fernet_key() -> None:
    exe = str(Path(sys.executable).parent / "flotilla-registry")
    out = subprocess.run([exe, "generate-key"], capture_output=True, text=True, check=True)
    key = out.stdout.strip()
    Fernet(key.encode())  # raises if it is not a key
    assert FieldCipher([key]).decrypt(FieldCipher([key]).encrypt("x")) == "x"


# -- the embedded runner's key and state directories from before ------------------------------


async def test_embedded_state_from_before_keeps_working(tmp_path: Path) -> None:
    """An old state dir: plaintext SQLite, no key. The runner makes a key (0600) and the
    registry reads the old rows, re-encrypts them, and still verifies their tokens."""
    state = tmp_path / "state"
    old = open_store(f"sqlite:///{state / 'registry.sqlite'}")
    await old.open()
    c = _record()
    await old.save_cluster(c)
    await old.close()

    cfg = tmp_path / "cfg.py"
    cfg.write_text(
        f"c.Deployment.state_dir = {str(state)!r}\n"
        'c.Deployment.registry_grpc_address = "127.0.0.1:0"\n'
        'c.Deployment.registry_http_address = "127.0.0.1:0"\n'
    )
    stack = EmbeddedStack(str(cfg))
    key = stack.db_encrypt_key()
    path = state / "secrets" / "db_encrypt_key"
    assert path.stat().st_mode & 0o777 == 0o600
    assert stack.db_encrypt_key() == key  # generated once
    FieldCipher([key])

    os.environ[KEYS_ENV] = key  # what the runner gives the registry process
    try:
        app = RegistryApp(load_config(cfg))
        await app.start()
        try:
            assert await app.service.verify_token(c.name, TOKEN) == "alice"
            assert await app.service.verify_token(c.name, "wrong") is None
        finally:
            await app.stop()
    finally:
        del os.environ[KEYS_ENV]
    token, tls_key = (await _raw_secrets(f"sqlite:///{state / 'registry.sqlite'}"))[c.name]
    assert token.startswith("fernet:") and tls_key.startswith("fernet:")
