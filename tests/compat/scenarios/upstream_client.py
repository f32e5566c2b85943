"""Steps that drive the unmodified dask-gateway client; run by the upstream virtualenv.

The conformance suite (tests/compat) cannot import dask_gateway itself: the client must be
the one a new user installs, alone, with nothing of Flotilla beside it. So each test
module sends a batch of named steps to this script, which runs them one after the other
with the client's asynchronous API and prints what it observed as one JSON line:

    stdin:  {"address": ..., "password": ...,
             "steps": [{"id": ..., "step": <name below>, "user": ..., "args": {...}}]}
    stdout: {"<id>": {"ok": true, "result": {...}} | {"ok": false, "error": "<traceback>"}}

Steps observe and report; the tests assert. A step raises only when it cannot go on
(e.g. workers never arrive), which the test then shows with the traceback.
"""

import asyncio
import contextlib
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

from dask_gateway import BasicAuth, Gateway

STEPS: dict[str, Callable[..., Awaitable[Any]]] = {}


def step(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    STEPS[fn.__name__] = fn
    return fn


# -- helpers ------------------------------------------------------------------------------


def describe(exc: BaseException) -> dict[str, Any]:
    """An exception as the tests compare it: qualified type, message, HTTP status."""
    return {
        "type": f"{type(exc).__module__}.{type(exc).__qualname__}",
        "message": str(exc),
        "status": getattr(exc, "status", None),
    }


async def outcome(awaitable: Awaitable[Any]) -> dict[str, Any]:
    """``{"raised": describe(exc)}`` or ``{"value": repr-able value}``."""
    try:
        value = await awaitable
    except Exception as exc:
        return {"raised": describe(exc)}
    return {"value": value if isinstance(value, str | int | float | bool | type(None)) else None}


async def with_warnings(awaitable: Awaitable[Any]) -> list[dict[str, str]]:
    """The warnings raised while awaiting (class name and text)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        await awaitable
    return [{"category": w.category.__name__, "message": str(w.message)} for w in caught]


def report_json(report: Any) -> dict[str, Any]:
    """What a ClusterReport parsed into (the client rejects anything it cannot parse)."""
    return {
        "name": report.name,
        "status": report.status.name,
        "options": report.options,
        "start_time": report.start_time.timestamp(),
        "stop_time": report.stop_time.timestamp() if report.stop_time else None,
        "dashboard_link": report.dashboard_link,
        "scheduler_address": report.scheduler_address,
        "has_tls": report.tls_cert is not None and report.tls_key is not None,
    }


def worker_count(cluster: Any) -> int:
    return len(cluster.scheduler_info.get("workers", {}))


async def wait_workers(
    cluster: Any, *, exactly: int | None = None, at_least: int | None = None, timeout: float = 120
) -> float:
    """Seconds until the scheduler has ``exactly``/``at_least`` workers; raise on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        n = worker_count(cluster)
        if (exactly is not None and n == exactly) or (at_least is not None and n >= at_least):
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    raise TimeoutError(
        f"cluster {cluster.name}: {worker_count(cluster)} workers after {timeout}s "
        f"(wanted exactly={exactly}, at_least={at_least})"
    )


async def max_workers_during(cluster: Any, seconds: float) -> int:
    """The most workers seen while watching for ``seconds`` (or until cancelled)."""
    most = worker_count(cluster)
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < seconds:
            most = max(most, worker_count(cluster))
            await asyncio.sleep(0.1)
    except asyncio.CancelledError:
        pass
    return most


async def wait_status(gateway: Gateway, name: str, wanted: str, timeout: float = 60) -> float:
    t0 = time.monotonic()
    status = None
    while time.monotonic() - t0 < timeout:
        status = (await gateway.get_cluster(name)).status.name
        if status == wanted:
            return time.monotonic() - t0
        await asyncio.sleep(0.1)
    raise TimeoutError(f"cluster {name} is {status}, not {wanted}, after {timeout}s")


def slow_increment(x: int) -> int:
    time.sleep(0.5)
    return x + 1


def scheduler_view() -> dict[str, Any]:
    """Runs on the scheduler: what its environment and interpreter hold."""
    import importlib.util

    keys = (
        "COMPAT_OPTIONS",
        "COMPAT_USER",
        "COMPAT_GROUPS",
        "COMPAT_ADMIN",
        "COMPAT_MARK",
        "COMPAT_EXTRA",
    )
    return {
        "env": {k: os.environ[k] for k in keys if k in os.environ},
        "token": os.environ.get("DASK_GATEWAY_API_TOKEN"),
        "prefix": sys.prefix,
        "flotilla_importable": importlib.util.find_spec("flotilla") is not None,
        "preloads": sorted(m for m in sys.modules if m.endswith("scheduler_preload")),
    }


def worker_view() -> dict[str, Any]:
    """Runs on a worker."""
    import importlib.util

    return {
        "prefix": sys.prefix,
        "flotilla_importable": importlib.util.find_spec("flotilla") is not None,
    }


# -- steps ----------------------------------------------------------------------------------


@step
async def versions(gateway: Gateway) -> Any:
    return await gateway.get_versions()


@step
async def lifecycle(gateway: Gateway, peer: Gateway) -> dict[str, Any]:
    """New cluster → scale 5 → scale 1 → reconnect → shutdown → what a stopped cluster says."""
    r: dict[str, Any] = {"listed_before": [c.name for c in await gateway.list_clusters()]}
    t0 = time.monotonic()
    cluster = await gateway.new_cluster(shutdown_on_close=False)
    r["new_cluster_seconds"] = time.monotonic() - t0
    name = r["name"] = cluster.name
    r["cluster"] = {
        "scheduler_address": cluster.scheduler_address,
        "dashboard_link": cluster.dashboard_link,
    }
    r["report"] = report_json(await gateway.get_cluster(name))
    r["listed"] = [report_json(c) for c in await gateway.list_clusters()]
    r["peer_listed"] = [c.name for c in await peer.list_clusters()]
    r["peer_get"] = await outcome(peer.get_cluster(name))

    client = await cluster.get_client(set_as_default=False)
    await cluster.scale(5)
    r["scale_up_seconds"] = await wait_workers(cluster, exactly=5)
    futures = client.map(lambda x: x * 2, range(100))
    r["sum_with_5"] = await client.submit(sum, futures)
    del futures
    await cluster.scale(1)
    r["scale_down_seconds"] = await wait_workers(cluster, exactly=1)
    r["workers_after_scale_down"] = len((await client.scheduler.identity(n_workers=-1))["workers"])
    r["sum_with_1"] = await client.submit(sum, range(10))
    await client.close()

    again = await gateway.connect(name)
    r["reconnected"] = {"name": again.name, "workers": worker_count(again)}
    client = await again.get_client(set_as_default=False)
    r["reconnected_sum"] = await client.submit(lambda: 41 + 1)
    await client.close()
    await again.close()

    t0 = time.monotonic()
    await cluster.shutdown()
    r["stop_seconds"] = await wait_status(gateway, name, "STOPPED", 30)
    r["stopped_report"] = report_json(await gateway.get_cluster(name))
    r["listed_after"] = [c.name for c in await gateway.list_clusters()]
    r["listed_stopped"] = [c.name for c in await gateway.list_clusters(status="stopped")]
    r["listed_finished"] = [
        c.name for c in await gateway.list_clusters(status=["STOPPED", "FAILED"])
    ]
    r["connect_stopped"] = await outcome(gateway.connect(name))
    r["scale_stopped"] = await outcome(gateway.scale_cluster(name, 2))
    r["adapt_stopped"] = await outcome(gateway.adapt_cluster(name, minimum=0, maximum=2))
    r["stop_again"] = await outcome(gateway.stop_cluster(name))
    return r


@step
async def adaptive(gateway: Gateway) -> dict[str, Any]:
    """adapt(1, 3): the minimum at rest, more workers under load, back to the minimum."""
    r: dict[str, Any] = {}
    cluster = await gateway.new_cluster(shutdown_on_close=False)
    r["name"] = cluster.name
    r["adapt_warnings"] = await with_warnings(cluster.adapt(minimum=1, maximum=3))
    r["to_minimum_seconds"] = await wait_workers(cluster, exactly=1)
    client = await cluster.get_client(set_as_default=False)
    futures = client.map(slow_increment, range(40))
    r["scale_up_seconds"] = await wait_workers(cluster, at_least=2)
    most = asyncio.ensure_future(max_workers_during(cluster, 3600))
    r["results"] = sum(await client.gather(futures))
    most.cancel()
    r["most_workers_under_load"] = worker_count(cluster)
    with contextlib.suppress(asyncio.CancelledError):
        r["most_workers_under_load"] = await most
    await client.cancel(futures)
    del futures
    r["scale_down_seconds"] = await wait_workers(cluster, exactly=1, timeout=60)
    # An explicit scale turns adaptive scaling off: the count then stays where it is put.
    await cluster.scale(0)
    r["after_scale_0_seconds"] = await wait_workers(cluster, exactly=0, timeout=60)
    r["after_scale_0_most"] = await max_workers_during(cluster, 2.0)
    await client.close()
    await cluster.shutdown()
    await wait_status(gateway, cluster.name, "STOPPED", 30)
    return r


@step
async def limits(gateway: Gateway, max_workers: int) -> dict[str, Any]:
    """Scale and adapt beyond the cluster's limit: warnings, and the limit holds."""
    r: dict[str, Any] = {}
    cluster = await gateway.new_cluster(max_workers=max_workers, shutdown_on_close=False)
    r["name"] = cluster.name
    r["scale_5"] = await with_warnings(cluster.scale(5))
    r["workers_seconds"] = await wait_workers(cluster, exactly=max_workers)
    r["most_workers"] = await max_workers_during(cluster, 3.0)
    r["scale_within"] = await with_warnings(cluster.scale(max_workers))
    r["adapt_10_1"] = await with_warnings(cluster.adapt(minimum=1, maximum=10))
    r["adapt_min_5"] = await with_warnings(cluster.adapt(minimum=5))
    r["adapt_max_10"] = await with_warnings(cluster.adapt(maximum=10))
    r["adapt_default"] = await with_warnings(cluster.adapt())
    r["adapt_within"] = await with_warnings(cluster.adapt(minimum=0, maximum=max_workers))
    r["adapt_off"] = await with_warnings(cluster.adapt(active=False))
    await cluster.shutdown()
    await wait_status(gateway, cluster.name, "STOPPED", 30)
    return r


@step
async def options(gateway: Gateway, values: dict[str, Any], kwargs: dict[str, Any]) -> Any:
    """The spec as the client sees it; a cluster from an Options object plus keywords."""
    r: dict[str, Any] = {}
    opts = await gateway.cluster_options()
    r["fields"] = {
        name: {
            "class": type(f).__name__,
            "value": f.value,
            "label": f.label,
            "min": getattr(f, "min", None),
            "max": getattr(f, "max", None),
            "options": list(getattr(f, "options", []) or []),
        }
        for name, f in opts._fields.items()
    }
    r["defaults"] = dict(opts)
    for key, value in values.items():
        setattr(opts, key, value)
    cluster = await gateway.new_cluster(opts, shutdown_on_close=False, **kwargs)
    r["name"] = cluster.name
    r["report"] = report_json(await gateway.get_cluster(cluster.name))
    client = await cluster.get_client(set_as_default=False)
    r["scheduler"] = await client.run_on_scheduler(scheduler_view)
    await client.close()
    await cluster.shutdown()
    await wait_status(gateway, cluster.name, "STOPPED", 30)
    return r


@step
async def worker_config(gateway: Gateway, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A cluster with one worker: the scheduler's environment and the worker's resources."""
    cluster = await gateway.new_cluster(shutdown_on_close=False, **kwargs)
    r: dict[str, Any] = {"name": cluster.name}
    r["report"] = report_json(await gateway.get_cluster(cluster.name))
    client = await cluster.get_client(set_as_default=False)
    r["scheduler"] = await client.run_on_scheduler(scheduler_view)
    await cluster.scale(1)
    await wait_workers(cluster, exactly=1)
    info = await client.scheduler.identity(n_workers=-1)
    r["workers"] = [
        {"nthreads": w["nthreads"], "memory_limit": w["memory_limit"]}
        for w in info["workers"].values()
    ]
    await client.close()
    await cluster.shutdown()
    await wait_status(gateway, cluster.name, "STOPPED", 30)
    return r


@step
async def rejected_options(gateway: Gateway, cases: list[dict[str, Any]]) -> list[Any]:
    """new_cluster with keyword options the server must refuse (the client sends them as-is)."""
    out = []
    for kwargs in cases:
        out.append(await outcome(gateway.submit(**kwargs)))
    return out


@step
async def failing_cluster(gateway: Gateway, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A cluster whose scheduler cannot start: what new_cluster raises, what lists show."""
    before = {c.name for c in await gateway.list_clusters(status="failed")}
    r: dict[str, Any] = {"new_cluster": await outcome(gateway.new_cluster(**kwargs))}
    failed = [report_json(c) for c in await gateway.list_clusters(status="failed")]
    r["new_failed"] = [c for c in failed if c["name"] not in before]
    return r


@step
async def pending_cluster(gateway: Gateway, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A cluster whose scheduler never reports: scale/adapt are refused, stop works."""
    name = await gateway.submit(**kwargs)
    r: dict[str, Any] = {"name": name, "status": (await gateway.get_cluster(name)).status.name}
    r["scale"] = await outcome(gateway.scale_cluster(name, 1))
    r["adapt"] = await outcome(gateway.adapt_cluster(name, minimum=0, maximum=1))
    r["listed"] = [c.name for c in await gateway.list_clusters(status="pending")]
    r["stop"] = await outcome(gateway.stop_cluster(name))
    r["stopped_seconds"] = await wait_status(gateway, name, "STOPPED", 30)
    return r


@step
async def running_cluster(gateway: Gateway, workers: int, kwargs: dict[str, Any]) -> Any:
    """Start a cluster and leave it running; report its name and token (from the scheduler)."""
    cluster = await gateway.new_cluster(shutdown_on_close=False, **kwargs)
    if workers:
        await cluster.scale(workers)
        await wait_workers(cluster, exactly=workers)
    client = await cluster.get_client(set_as_default=False)
    view = await client.run_on_scheduler(scheduler_view)
    workers = (await client.scheduler.identity(n_workers=-1))["workers"]
    await client.close()
    await cluster.close()
    return {
        "name": cluster.name,
        "token": view["token"],
        "workers": sorted(w["name"] for w in workers.values()),
    }


@step
async def cluster_state(gateway: Gateway, name: str) -> dict[str, Any]:
    """A cluster's status and, when it runs, its workers' names (from its scheduler)."""
    report = await gateway.get_cluster(name)
    r: dict[str, Any] = {"status": report.status.name, "workers": None}
    if report.status.name == "RUNNING":
        cluster = await gateway.connect(name)
        client = await cluster.get_client(set_as_default=False)
        workers = (await client.scheduler.identity(n_workers=-1))["workers"]
        r["workers"] = sorted(w["name"] for w in workers.values())
        await client.close()
        await cluster.close()
    return r


@step
async def peer_access(gateway: Gateway, name: str) -> dict[str, Any]:
    """Another user's cluster: every call is refused, and how the client surfaces it."""
    return {
        **await _every_call(gateway, name),
        "listed": name in [c.name for c in await gateway.list_clusters()],
    }


@step
async def unknown_cluster(gateway: Gateway, name: str) -> dict[str, Any]:
    return await _every_call(gateway, name)


async def _every_call(gateway: Gateway, name: str) -> dict[str, Any]:
    """The outcome of each call on cluster ``name`` (for one that is not the caller's)."""
    return {
        "get": await outcome(gateway.get_cluster(name)),
        "connect": await outcome(gateway.connect(name)),
        "scale": await outcome(gateway.scale_cluster(name, 1)),
        "adapt": await outcome(gateway.adapt_cluster(name, minimum=0, maximum=1)),
        "stop": await outcome(gateway.stop_cluster(name)),
    }


@step
async def idle_timeout(gateway: Gateway, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A cluster with an idle timeout disappears from the list by itself and ends STOPPED."""
    cluster = await gateway.new_cluster(shutdown_on_close=False, **kwargs)
    name = cluster.name
    await cluster.close()
    t0 = time.monotonic()
    while name in [c.name for c in await gateway.list_clusters()]:
        if time.monotonic() - t0 > 60:
            raise TimeoutError(f"cluster {name} still listed after 60s")
        await asyncio.sleep(0.2)
    r = {"name": name, "gone_after_seconds": time.monotonic() - t0}
    r["stopped_seconds"] = await wait_status(gateway, name, "STOPPED", 30)
    return r


@step
async def list_names(gateway: Gateway, status: Any = None) -> list[str]:
    return [c.name for c in await gateway.list_clusters(status=status)]


@step
async def authenticate(gateway: Gateway) -> dict[str, Any]:
    """One list call with this user's credentials: what happens."""
    return await outcome(gateway.list_clusters())


@step
async def cookie_expiry(gateway: Gateway, max_age_seconds: float) -> dict[str, Any]:
    """The client keeps working across the session cookie's expiry, re-authenticating."""
    import aiohttp

    r: dict[str, Any] = {"first": await outcome(gateway.list_clusters())}
    cookies = {c.key: c.value for c in gateway._session.cookie_jar}
    r["cookie_names"] = sorted(cookies)
    # Let the session expire on the server, polling with the cookie alone.
    t0 = time.monotonic()
    url = f"{gateway.address}/api/v1/clusters/"
    statuses = []
    async with aiohttp.ClientSession(cookies=cookies) as bare:
        while time.monotonic() - t0 < max_age_seconds + 10:
            async with bare.get(url) as resp:
                statuses.append(resp.status)
                if resp.status == 401:
                    r["expired_after_seconds"] = time.monotonic() - t0
                    r["expired_challenge"] = resp.headers.get("WWW-Authenticate")
                    break
            await asyncio.sleep(0.25)
    r["statuses"] = sorted(set(statuses))
    r["after_expiry"] = await outcome(gateway.list_clusters())
    return r


@step
async def preload_cluster(gateway: Gateway, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A cluster run entirely from the upstream environment: scale, compute, adapt."""
    r: dict[str, Any] = {}
    cluster = await gateway.new_cluster(shutdown_on_close=False, **kwargs)
    name = r["name"] = cluster.name
    client = await cluster.get_client(set_as_default=False)
    r["scheduler"] = await client.run_on_scheduler(scheduler_view)
    await cluster.scale(2)
    r["scale_2_seconds"] = await wait_workers(cluster, exactly=2)
    r["workers"] = list((await client.run(worker_view)).values())
    r["sum"] = await client.submit(sum, client.map(lambda x: x + 1, range(50)))
    await cluster.scale(1)
    r["scale_1_seconds"] = await wait_workers(cluster, exactly=1)
    r["adapt_warnings"] = await with_warnings(cluster.adapt(minimum=0, maximum=2))
    futures = client.map(slow_increment, range(30))
    r["adapt_up_seconds"] = await wait_workers(cluster, exactly=2, timeout=60)
    r["adapt_results"] = sum(await client.gather(futures))
    await client.cancel(futures)
    del futures
    r["adapt_down_seconds"] = await wait_workers(cluster, exactly=0, timeout=60)
    await client.close()
    await cluster.shutdown()
    r["stopped_seconds"] = await wait_status(gateway, name, "STOPPED", 30)
    return r


# -- runner ---------------------------------------------------------------------------------


async def run(job: dict[str, Any]) -> dict[str, Any]:
    gateways: dict[tuple[str, str], Gateway] = {}

    def gateway_for(user: str, password: str) -> Gateway:
        key = (user, password)
        if key not in gateways:
            gateways[key] = Gateway(
                job["address"], auth=BasicAuth(user, password), asynchronous=True
            )
        return gateways[key]

    results: dict[str, Any] = {}
    try:
        for s in job["steps"]:
            password = s.get("password", job["password"])
            args = dict(s.get("args", {}))
            if "peer" in s:
                args["peer"] = gateway_for(s["peer"], password)
            t0 = time.monotonic()
            try:
                result = await asyncio.wait_for(
                    STEPS[s["step"]](gateway_for(s["user"], password), **args),
                    s.get("timeout", 180),
                )
            except Exception:
                results[s["id"]] = {"ok": False, "error": traceback.format_exc()}
            else:
                results[s["id"]] = {"ok": True, "result": result}
            results[s["id"]]["seconds"] = time.monotonic() - t0
    finally:
        for gateway in gateways.values():
            await gateway.close()
    return results


def main() -> None:
    job = json.load(sys.stdin)
    results = asyncio.run(run(job))
    sys.stdout.write("\n" + json.dumps(results, default=repr) + "\n")


if __name__ == "__main__":
    main()
