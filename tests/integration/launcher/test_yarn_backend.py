"""The yarn backend's hooks against the real single-node YARN (tests/yarn_cluster.py):
one application per cluster submitted for its owner, workers as added containers, status
from one RM query, kills seen with YARN's diagnostics, re-adoption, logs after the end,
and one-line start-up errors naming the setting. The "scheduler" and "workers" are shells
that print what they see and sleep, so these tests cost no Dask start-up."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from flotilla_common.tls import new_keypair
from flotilla_launcher.backends.base import BackendError, ClusterConfig, ClusterSpec, WorkerSpec
from flotilla_launcher.backends.yarn import YarnBackend
from helpers import free_port
from krb5_realm import REALM, Krb5Realm
from traitlets.config import Config
from yarn_cluster import YarnCluster

pytestmark = [pytest.mark.integration, pytest.mark.yarn, pytest.mark.timeout(300)]

# Prints what the container sees, then waits like a scheduler or worker would.
SHELL = (
    "/bin/sh",
    "-c",
    'echo "role=$0 container=$CONTAINER_ID token=${DASK_GATEWAY_API_TOKEN:+set}"; exec sleep 300',
)
DRIVER_JAVA_OPTIONS = ["-Xmx256m", "-XX:TieredStopAtLevel=1", "-XX:+UseSerialGC"]


def backend_config(yarn: YarnCluster, **overrides: Any) -> Config:
    cfg = Config()
    s = cfg.YarnBackend
    s.hadoop_conf_dir = str(yarn.conf_dir)
    s.driver_log = str(yarn.log_dir / "skein-driver-backend.log")
    s.driver_java_options = DRIVER_JAVA_OPTIONS
    s.nodemanager_log_dirs = [str(yarn.root / "nm-logs")]
    s.master_memory = 256
    s.security_dir = str(yarn.root / "launcher-skein")
    s.call_timeout = 60.0
    for key, value in overrides.items():
        s[key] = value
    return cfg


@pytest.fixture
def yarn_env(yarn: YarnCluster, monkeypatch: pytest.MonkeyPatch) -> YarnCluster:
    """The launcher's environment as a site sets it (JAVA_HOME, the `yarn` script...)."""
    for key, value in yarn.env.items():
        monkeypatch.setenv(key, value)
    return yarn


@pytest.fixture
async def backend(yarn_env: YarnCluster) -> AsyncIterator[YarnBackend]:
    b = YarnBackend(config=backend_config(yarn_env))
    await b.start()
    try:
        yield b
    finally:
        await b.close()


def cluster_spec(owner: str = "alice", **extra: Any) -> ClusterSpec:
    name = uuid.uuid4().hex
    cert, key = new_keypair(name)
    return ClusterSpec(
        name=name,
        owner=owner,
        config=ClusterConfig(
            scheduler_cmd=(*SHELL, "scheduler"),
            worker_cmd=(*SHELL, "worker"),
            scheduler_memory=128 * 2**20,
            worker_memory=128 * 2**20,
            extra=extra,
        ),
        tls_cert=cert,
        tls_key=key,
        token=uuid.uuid4().hex,
        api_url="http://127.0.0.1:9/api",
    )


async def start(backend: YarnBackend, spec: ClusterSpec) -> dict[str, Any]:
    return [state async for state in backend.start_cluster(spec)][-1]


async def start_worker(backend: YarnBackend, worker: WorkerSpec) -> dict[str, Any]:
    return [state async for state in backend.start_worker(worker)][-1]


def app(yarn: YarnCluster, app_id: str) -> dict[str, Any]:
    return dict(yarn.rest(f"/ws/v1/cluster/apps/{app_id}")["app"])


def apps_of(yarn: YarnCluster, spec: ClusterSpec) -> list[dict[str, Any]]:
    return [a for a in yarn.apps() if f"flotilla-cluster:{spec.name}" in a["applicationTags"]]


def container_log(yarn: YarnCluster, app_id: str, name: str) -> str:
    paths = sorted((yarn.root / "nm-logs" / app_id).glob(f"container_*/{name}"))
    return "".join(p.read_text(errors="replace") for p in paths)


async def poll(predicate: Any, timeout: float, what: str) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.25)


async def test_cluster_workers_stop_and_logs(yarn: YarnCluster, backend: YarnBackend) -> None:
    spec = cluster_spec("alice")
    state = await start(backend, spec)
    app_id = state["app_id"]

    record = app(yarn, app_id)
    assert record["user"] == "alice"  # submitted for the owner, not the service user
    assert record["queue"] in ("default", "root.default")  # Hadoop 3.5 names the full path
    assert "flotilla-owner:alice" in record["applicationTags"]
    assert spec.name in record["name"]

    async def scheduler_up() -> bool:
        return "role=scheduler" in container_log(yarn, app_id, "scheduler.log")

    await poll(scheduler_up, 60, "the scheduler container to run")
    assert "token=set" in container_log(yarn, app_id, "scheduler.log")
    [status] = await backend.check_clusters([(spec, state)])
    assert status.running, status.reason

    workers = [WorkerSpec(spec, f"w{i}", "127.0.0.1:1234") for i in range(3)]
    wstates = [await start_worker(backend, w) for w in workers]
    assert len({s["container"] for s in wstates}) == 3

    async def three_running() -> bool:
        return container_log(yarn, app_id, "worker.log").count("role=worker") == 3

    await poll(three_running, 60, "three worker containers to run")
    _, wstatus = await backend.check([(spec, state)], list(zip(workers, wstates, strict=True)))
    assert all(s.running for s in wstatus), wstatus
    # Starting a worker again (a launcher that died before reporting it) adopts it.
    assert await start_worker(backend, workers[0]) == wstates[0]

    # Scale down: the AM shows one worker fewer.
    await backend.stop_worker(workers[2], wstates[2])

    async def two_left() -> bool:
        _, st = await backend.check([], list(zip(workers, wstates, strict=True)))
        return [s.running for s in st] == [True, True, False]

    await poll(two_left, 20, "the third worker to be gone")

    # A worker container dies (its process killed): that worker is reported gone. Its
    # container's processes go as a group, so one listed may be gone before its turn.
    killed = 0
    for pid, env in yarn.application_processes(app_id).items():
        if env.get("DASK_GATEWAY_WORKER_NAME") == "w1":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
                killed += 1
    assert killed, "no process of worker w1's container was found"

    async def w1_gone() -> Any:
        _, st = await backend.check([], [(workers[1], wstates[1])])
        return None if st[0].running else st[0]

    gone = await poll(w1_gone, 30, "worker w1 to be reported gone")
    assert "YARN container" in gone.reason, gone.reason

    logs = await backend.read_logs(spec, state, 4096, 65536)
    assert next(iter(logs)) == "scheduler"
    assert "role=scheduler" in logs["scheduler"]
    assert {"worker-w0", "worker-w1", "worker-w2"} <= set(logs)

    # Stop: the application is killed and none of its containers is left within 10 s.
    await backend.stop_cluster(spec, state)

    async def ended() -> bool:
        return app(yarn, app_id)["state"] in (
            "KILLED",
            "FINISHED",
        ) and not yarn.application_processes(app_id)

    await poll(ended, 10, "the application to end with no container left")
    logs = await backend.read_logs(spec, state, 4096, 65536)
    assert "role=scheduler" in logs["scheduler"] and "worker-w0" in logs


async def test_kill_through_yarn_gives_its_diagnostics(
    yarn: YarnCluster, backend: YarnBackend
) -> None:
    spec = cluster_spec("alice")
    state = await start(backend, spec)
    app_id = state["app_id"]

    async def accepted() -> bool:
        return app(yarn, app_id)["state"] in ("ACCEPTED", "RUNNING")

    await poll(accepted, 60, "the application to be accepted")
    yarn.kill_application(app_id)

    async def stopped() -> Any:
        [status] = await backend.check_clusters([(spec, state)])
        return None if status.running else status

    status = await poll(stopped, 30, "the killed application to be reported")
    assert status.reason.startswith(f"YARN application {app_id} KILLED"), status.reason
    diagnostics = app(yarn, app_id)["diagnostics"]
    assert diagnostics and " ".join(diagnostics.split())[:40] in status.reason
    await backend.stop_cluster(spec, state)  # idempotent on an ended application


async def test_restarted_launcher_adopts_without_a_second_app(
    yarn_env: YarnCluster, backend: YarnBackend
) -> None:
    spec = cluster_spec("bob")
    state = await start(backend, spec)
    await backend.close()

    # A new launcher whose checkpoint never reached the registry starts it again.
    again = YarnBackend(config=backend_config(yarn_env))
    await again.start()
    try:
        assert await start(again, spec) == {"app_id": state["app_id"]}
        assert len([a for a in apps_of(yarn_env, spec) if a["state"] != "KILLED"]) == 1
        [status] = await again.check_clusters([(spec, state)])
        assert status.running, status.reason
        # Another deployment's launcher (another instance tag) sees none of it.
        other = YarnBackend(config=backend_config(yarn_env, instance="other"))
        await other.start()
        try:
            assert spec.name not in {a.name for a in await other._run("l", other._live_apps)}
        finally:
            await other.close()
        await again.stop_cluster(spec, {})  # no checkpoint: found by tag

        async def killed() -> bool:
            return app(yarn_env, state["app_id"])["state"] == "KILLED"

        await poll(killed, 10, "the adopted application to be killed")
    finally:
        await again.close()


async def test_unknown_queue_names_the_setting(backend: YarnBackend) -> None:
    spec = cluster_spec("alice", queue="nosuchqueue")
    with pytest.raises(BackendError, match=r"c\.YarnClusterConfig\.queue") as info:
        await start(backend, spec)
    assert "\n" not in str(info.value)
    await backend.stop_cluster(spec, {})


async def test_unreachable_resourcemanager_is_one_line(
    yarn_env: YarnCluster, tmp_path: Path
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    for path in yarn_env.conf_dir.iterdir():
        text = path.read_text().replace(yarn_env.rm_address, f"127.0.0.1:{free_port()}")
        (conf / path.name).write_text(text)
    b = YarnBackend(config=backend_config(yarn_env, hadoop_conf_dir=str(conf), call_timeout=15.0))
    try:
        with pytest.raises(SystemExit, match=r"c\.YarnBackend\.hadoop_conf_dir") as info:
            await b.start()
        assert "\n" not in str(info.value)
    finally:
        await b.close()


async def test_bad_keytab_is_one_line(
    yarn_env: YarnCluster, kdc: Krb5Realm, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in kdc.env.items():
        monkeypatch.setenv(key, value)
    principal = f"host/localhost@{REALM}"
    cases = {
        str(kdc.directory / "missing.keytab"): "is not a readable file",
        str(kdc.directory / "foreign.keytab"): "does not log in",
    }
    for keytab, message in cases.items():
        b = YarnBackend(config=backend_config(yarn_env, principal=principal, keytab=keytab))
        with pytest.raises(SystemExit, match=r"c\.YarnBackend\.keytab") as info:
            await b.start()
        assert message in str(info.value) and "\n" not in str(info.value)
        await b.close()
    # The service keytab holds the principal: the check passes.
    YarnBackend(
        config=backend_config(yarn_env, principal=principal, keytab=str(kdc.keytab))
    )._check_keytab()
