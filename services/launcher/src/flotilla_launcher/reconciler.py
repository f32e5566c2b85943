"""Level-triggered reconciliation of the registry's clusters onto one backend.

The registry is the source of truth: :meth:`Reconciler._watch` keeps a cache of the
``LaunchCluster`` records of this backend (rebuilt from scratch on every ``initial``
message), every change queues the cluster's name in a de-duplicating work queue, and
:meth:`Reconciler._reconcile` compares target and observed state and acts (start, stop,
report). What the launcher did but the registry may not have seen yet (a report still in
flight) is kept in a small :class:`_Tracked` record per cluster, so a stale record never
starts a second scheduler. A periodic batched status check finds processes that exited.

Logs: once a cluster's processes are stopped, and before reporting it STOPPED, the
launcher sends the tails of their output to the registry (``SaveClusterLogs``), which
keeps them with the cluster's record; while a cluster is active, it sends them whenever
the record carries an unanswered ``logs_request``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import grpc
from flotilla.registry.v1 import internal_pb2, internal_pb2_grpc, types_pb2
from flotilla_common.grpcserver import internal_channel, internal_metadata

from .backends.base import Backend, BackendError, ClusterConfig, ClusterSpec, WorkerSpec
from .config import Launcher
from .metrics import LauncherMetrics
from .workqueue import QueueClosed, WorkQueue

__all__ = ["Reconciler"]

log = logging.getLogger(__name__)

RUNNING = types_pb2.TARGET_RUNNING
FAILED = types_pb2.TARGET_FAILED
CREATED = types_pb2.OBSERVED_CREATED
STARTING = types_pb2.OBSERVED_STARTING
OBS_RUNNING = types_pb2.OBSERVED_RUNNING
STOPPED = types_pb2.OBSERVED_STOPPED
ACTIVE = (STARTING, OBS_RUNNING)
#: Largest amount of log text (UTF-8 bytes) per SaveClusterLogs call; gRPC's default
#: message limit is 4 MiB.
LOG_BATCH_BYTES = 1 << 20


@dataclass
class _TrackedWorker:
    observed: int = CREATED
    state: dict[str, Any] | None = None
    checked: bool = False  # its process was seen alive by this launcher
    exit_reason: str = ""
    pending: internal_pb2.ReportWorkerRequest | None = None


@dataclass
class _Tracked:
    """What this launcher process knows of a cluster beyond the registry's record."""

    observed: int = CREATED
    state: dict[str, Any] | None = None
    checked: bool = False
    exit_reason: str = ""
    failure_reported: bool = False
    logs_answered: int = 0
    pending: internal_pb2.ReportClusterRequest | None = None
    workers: dict[str, _TrackedWorker] = field(default_factory=dict)


def _load_state(text: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _finished(rec: internal_pb2.LaunchCluster) -> bool:
    return bool(rec.target != RUNNING and rec.observed == STOPPED)


def _log_batches(logs: Mapping[str, str], limit: int) -> list[list[types_pb2.ProcessLog]]:
    """Split logs into SaveClusterLogs-sized batches (at least one, maybe empty)."""
    batches: list[list[types_pb2.ProcessLog]] = [[]]
    size = 0
    for process, text in logs.items():
        n = len(text.encode()) + len(process)
        if batches[-1] and size + n > limit:
            batches.append([])
            size = 0
        batches[-1].append(types_pb2.ProcessLog(process=process, text=text))
        size += n
    return batches


class Reconciler:
    """Drives one backend from the registry's ``LauncherService``.

    Parameters
    ----------
    backend:
        The backend instance; ``backend_name`` the name clusters are assigned to.
    registry_address:
        host:port of the registry's gRPC server.
    internal_token:
        Sent as ``x-flotilla-internal-token`` on every call.
    settings:
        The ``c.Launcher`` section.
    """

    def __init__(
        self,
        backend: Backend,
        backend_name: str,
        registry_address: str,
        internal_token: str,
        settings: Launcher | None = None,
    ) -> None:
        self.backend = backend
        self.backend_name = backend_name
        self.registry_address = registry_address
        self.settings = settings or Launcher()
        self._metadata = internal_metadata(internal_token)
        self._cache: dict[str, internal_pb2.LaunchCluster] = {}
        self._tracked: dict[str, _Tracked] = {}
        self._queue: WorkQueue[str] = WorkQueue(
            self.settings.backoff_base, self.settings.backoff_max
        )
        self._channel: grpc.aio.Channel | None = None
        self._stub: internal_pb2_grpc.LauncherServiceStub | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: list[asyncio.Task[None]] = []
        #: Set once the first ``initial`` message of the watch has been applied.
        self.synced = asyncio.Event()
        #: Set by :meth:`Backend.changed` (any thread): the check loop runs at once.
        self._changed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        backend.on_change(self._backend_changed)
        self.metrics = LauncherMetrics(backend_name)
        self.metrics.track(lambda: len(self._tracked))

    # -- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Start the backend, open the channel, start the watch, status check and
        reconcile tasks."""
        await self.backend.start()
        self._channel = internal_channel(self.registry_address)
        self._stub = internal_pb2_grpc.LauncherServiceStub(self._channel)
        self._tasks = [
            asyncio.create_task(self._watch(), name="launcher-watch"),
            asyncio.create_task(self._check_loop(), name="launcher-status-check"),
        ]
        self._workers = [
            asyncio.create_task(self._work(), name=f"launcher-reconcile-{i}")
            for i in range(max(1, self.settings.parallelism))
        ]
        log.info(
            "launcher for backend %s watching registry at %s",
            self.backend_name,
            self.registry_address,
        )

    async def stop(self) -> None:
        """Stop reconciling; clusters keep running (the next launcher adopts them).

        In-flight reconciles get ``shutdown_grace`` seconds to finish, so a process that
        was just started is reported (checkpointed) before the launcher exits.
        """
        self._queue.close()
        for task in self._tasks:
            task.cancel()
        if self._workers:
            _, pending = await asyncio.wait(self._workers, timeout=self.settings.shutdown_grace)
            for task in pending:
                task.cancel()
        await asyncio.gather(*self._tasks, *self._workers, return_exceptions=True)
        self._tasks, self._workers = [], []
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        await self.backend.close()
        log.info("launcher for backend %s stopped", self.backend_name)

    # -- watch ----------------------------------------------------------------------------

    async def _watch(self) -> None:
        assert self._stub is not None
        delay = 0.1
        while True:
            try:
                # While the registry is down, the watch opens as soon as the channel
                # reconnects, not after this loop's backoff.
                await self._registry_ready()
                call = self._stub.WatchClusters(
                    internal_pb2.WatchClustersRequest(backend=self.backend_name),
                    metadata=self._metadata,
                )
                async for response in call:
                    delay = 0.1
                    self._apply(response)
                log.warning("registry watch for backend %s ended; reopening", self.backend_name)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                log.warning(
                    "registry watch for backend %s failed (%s: %s); retrying in %.1fs",
                    self.backend_name,
                    exc.code().name,
                    exc.details(),
                    delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.watch_backoff_max)

    async def _registry_ready(self) -> None:
        """Wait until the channel to the registry is connected, logging while it is not."""
        assert self._channel is not None
        waited = 0.0
        while True:
            try:
                await asyncio.wait_for(
                    self._channel.channel_ready(), self.settings.watch_backoff_max
                )
                return
            except TimeoutError:
                waited += self.settings.watch_backoff_max
                log.warning(
                    "registry at %s unreachable for %.0fs; backend %s waits for it",
                    self.registry_address,
                    waited,
                    self.backend_name,
                )

    def _apply(self, response: internal_pb2.WatchClustersResponse) -> None:
        """Update the cache from one watch message and queue every name it touches."""
        if response.initial:
            touched = set(self._cache)
            self._cache = {}
            for rec in response.clusters:
                if not _finished(rec):
                    self._cache[rec.name] = rec
                touched.add(rec.name)
            log.info(
                "backend %s: %d unfinished clusters from the registry",
                self.backend_name,
                len(self._cache),
            )
            for name in touched | set(self._tracked):
                self._queue.put(name)
            self.synced.set()
            return
        for rec in response.clusters:
            prev = self._cache.get(rec.name)
            if prev is not None and rec.revision and rec.revision < prev.revision:
                continue
            if _finished(rec):
                self._cache.pop(rec.name, None)
            else:
                self._cache[rec.name] = rec
            self._queue.put(rec.name)

    # -- work loop ------------------------------------------------------------------------

    async def _work(self) -> None:
        while True:
            try:
                name = await self._queue.get()
            except QueueClosed:
                return
            try:
                await self._reconcile(name)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.NOT_FOUND:
                    log.warning("cluster %s: unknown to the registry, forgetting it", name)
                    self._tracked.pop(name, None)
                    self._cache.pop(name, None)
                    self._queue.forget(name)
                else:
                    delay = self._queue.put_backoff(name)
                    log.warning(
                        "cluster %s: registry call failed (%s: %s); retrying in %.1fs",
                        name,
                        exc.code().name,
                        exc.details(),
                        delay,
                    )
            except Exception:
                delay = self._queue.put_backoff(name)
                log.exception("cluster %s: reconcile failed; retrying in %.1fs", name, delay)
            else:
                self._queue.forget(name)
            finally:
                self._queue.task_done(name)

    # -- reporting ------------------------------------------------------------------------

    async def _send_cluster(self, tr: _Tracked, req: internal_pb2.ReportClusterRequest) -> None:
        assert self._stub is not None
        tr.pending = req
        await self._stub.ReportCluster(
            req, metadata=self._metadata, timeout=self.settings.rpc_timeout
        )
        if tr.pending is req:
            tr.pending = None

    async def _send_worker(self, tw: _TrackedWorker, req: internal_pb2.ReportWorkerRequest) -> None:
        assert self._stub is not None
        tw.pending = req
        try:
            await self._stub.ReportWorker(
                req, metadata=self._metadata, timeout=self.settings.rpc_timeout
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND:
                raise
            log.warning(
                "cluster %s: worker %s unknown to the registry", req.cluster_name, req.worker_name
            )
        if tw.pending is req:
            tw.pending = None

    async def _read_logs(
        self, rec: internal_pb2.LaunchCluster, state: Mapping[str, Any]
    ) -> dict[str, str]:
        spec = self._spec_for_stop(rec)
        try:
            return await self.backend.read_logs(
                spec, state, self.settings.log_tail_bytes, self.settings.log_total_bytes
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("cluster %s: reading its logs failed", rec.name)
            return {}

    async def _send_logs(
        self, rec: internal_pb2.LaunchCluster, logs: Mapping[str, str], answers: int
    ) -> None:
        """Store ``logs`` in the registry; the last call answers logs request ``answers``."""
        assert self._stub is not None
        batches = _log_batches(logs, LOG_BATCH_BYTES)
        for i, batch in enumerate(batches):
            try:
                await self._stub.SaveClusterLogs(
                    internal_pb2.SaveClusterLogsRequest(
                        cluster_name=rec.name,
                        logs=batch,
                        answers_request=answers if i == len(batches) - 1 else 0,
                    ),
                    metadata=self._metadata,
                    timeout=self.settings.rpc_timeout,
                )
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNIMPLEMENTED:
                    raise
                # A registry older than this launcher: logs are lost, the stop is not.
                log.warning("cluster %s: the registry does not keep logs", rec.name)
                return
        log.debug("cluster %s: sent %d logs", rec.name, len(logs))

    # -- reconcile ------------------------------------------------------------------------

    def _spec(self, rec: internal_pb2.LaunchCluster) -> ClusterSpec:
        return ClusterSpec(
            name=rec.name,
            owner=rec.owner,
            config=ClusterConfig.from_json(rec.config_json),
            tls_cert=rec.tls_cert,
            tls_key=rec.tls_key,
            token=rec.token,
            api_url=rec.api_url,
        )

    def _spec_for_stop(self, rec: internal_pb2.LaunchCluster) -> ClusterSpec:
        """The cluster's spec for the stop and logs hooks: its own, with the default
        configuration if its own does not parse (such a cluster must still stop)."""
        try:
            return self._spec(rec)
        except (BackendError, ValueError, TypeError):
            return ClusterSpec(
                name=rec.name,
                owner=rec.owner,
                config=ClusterConfig(),
                tls_cert=rec.tls_cert,
                tls_key=rec.tls_key,
                token=rec.token,
                api_url=rec.api_url,
            )

    async def _reconcile(self, name: str) -> None:
        """Bring cluster ``name`` one step closer to its target (level-triggered)."""
        rec = self._cache.get(name)
        if rec is None:
            if self._tracked.pop(name, None) is not None:
                log.debug("cluster %s: finished, forgotten", name)
            return
        tr = self._tracked.setdefault(name, _Tracked())
        if tr.pending is not None:
            await self._send_cluster(tr, tr.pending)
        observed = max(rec.observed, tr.observed)
        state = tr.state if tr.state is not None else _load_state(rec.state_json)

        if rec.target != RUNNING:
            if observed != STOPPED:
                await self._stop_cluster(rec, tr, state)
            elif rec.logs_request > tr.logs_answered:
                # Everything was sent when it stopped.
                await self._send_logs(rec, {}, rec.logs_request)
                tr.logs_answered = rec.logs_request
            return
        if rec.logs_request > tr.logs_answered:
            logs = await self._read_logs(rec, state)
            await self._send_logs(rec, logs, rec.logs_request)
            tr.logs_answered = rec.logs_request

        try:
            spec = self._spec(rec)
        except (BackendError, ValueError, TypeError) as exc:
            await self._fail(rec, tr, observed, f"invalid cluster configuration: {exc}")
            return

        if observed == CREATED:
            await self._start_cluster(rec, spec, tr)
            return
        if observed not in ACTIVE:
            return
        if not tr.checked and not tr.exit_reason:
            # A record this launcher did not start: adopt the process if it is alive.
            [status] = await self.backend.check_clusters([(spec, state)])
            tr.checked = True
            tr.state = state
            if status.running:
                log.info(
                    "cluster %s (user %s): adopted running scheduler %s",
                    name,
                    rec.owner,
                    state.get("pid", ""),
                )
            else:
                tr.exit_reason = status.reason
        if tr.exit_reason:
            if not tr.failure_reported:
                await self._fail(rec, tr, observed, tr.exit_reason)
            return
        results = await asyncio.gather(
            *(self._reconcile_worker(rec, spec, tr, w) for w in rec.workers),
            return_exceptions=True,
        )
        for result in results:
            if isinstance(result, BaseException):
                raise result

    async def _fail(
        self, rec: internal_pb2.LaunchCluster, tr: _Tracked, observed: int, reason: str
    ) -> None:
        log.warning("cluster %s (user %s) failed: %s", rec.name, rec.owner, reason)
        tr.exit_reason = reason
        await self._send_cluster(
            tr,
            internal_pb2.ReportClusterRequest(
                name=rec.name, observed=observed, failure_reason=reason
            ),
        )
        tr.failure_reported = True

    async def _drive(
        self,
        gen: AsyncIterator[dict[str, Any]],
        on_state: Callable[[dict[str, Any]], Awaitable[None]],
        what: str,
    ) -> str:
        """Run a start generator, calling ``on_state`` per checkpoint; returns a failure."""
        try:
            while True:
                try:
                    state = await anext(gen)
                except StopAsyncIteration:
                    return ""
                except BackendError as exc:
                    return str(exc)
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("%s: start failed", what)
                    return f"{what} failed to start (internal error, see the launcher log)"
                await on_state(state)
        finally:
            aclose = getattr(gen, "aclose", None)
            if aclose is not None:
                await aclose()

    async def _start_cluster(
        self, rec: internal_pb2.LaunchCluster, spec: ClusterSpec, tr: _Tracked
    ) -> None:
        log.info("cluster %s (user %s): starting scheduler", rec.name, rec.owner)

        async def on_state(state: dict[str, Any]) -> None:
            tr.state = state
            tr.observed = STARTING
            await self._send_cluster(
                tr,
                internal_pb2.ReportClusterRequest(
                    name=rec.name, observed=STARTING, state_json=json.dumps(state)
                ),
            )

        started = time.perf_counter()
        reason = await self._drive(
            self.backend.start_cluster(spec), on_state, f"the scheduler of cluster {rec.name}"
        )
        if reason:
            await self._fail(rec, tr, tr.observed, reason)
        else:
            self.metrics.started("cluster", time.perf_counter() - started)
            tr.checked = True

    async def _stop_cluster(
        self, rec: internal_pb2.LaunchCluster, tr: _Tracked, state: dict[str, Any]
    ) -> None:
        log.info("cluster %s (user %s): stopping", rec.name, rec.owner)
        spec = self._spec_for_stop(rec)
        names = {w.name for w in rec.workers} | set(tr.workers)
        with_cluster = self.backend.stops_workers_with_cluster
        records = {w.name: w for w in rec.workers}

        async def stop_worker(wname: str) -> None:
            tw = tr.workers.setdefault(wname, _TrackedWorker())
            w = records.get(wname)
            wobs = max(w.observed if w else CREATED, tw.observed)
            if wobs == STOPPED:
                return
            if not with_cluster:
                wstate = (
                    tw.state if tw.state is not None else _load_state(w.state_json if w else "")
                )
                await self.backend.stop_worker(WorkerSpec(spec, wname, ""), wstate)
            tw.observed = STOPPED
            await self._send_worker(
                tw,
                internal_pb2.ReportWorkerRequest(
                    cluster_name=rec.name, worker_name=wname, observed=STOPPED
                ),
            )

        if with_cluster:
            # The backend's stop_cluster stops the workers too (a resource manager that
            # runs the whole cluster): once it returned, they are reported stopped.
            results: list[BaseException | None] = list(
                await asyncio.gather(self.backend.stop_cluster(spec, state), return_exceptions=True)
            )
            if not any(isinstance(r, BaseException) for r in results):
                results += await asyncio.gather(
                    *(stop_worker(n) for n in sorted(names)), return_exceptions=True
                )
        else:
            # Workers first, while their scheduler still answers: a worker whose scheduler
            # is already gone hangs in its shutdown trying to unregister, until SIGTERM.
            results = list(
                await asyncio.gather(
                    *(stop_worker(n) for n in sorted(names)), return_exceptions=True
                )
            )
            results.append(
                *await asyncio.gather(
                    self.backend.stop_cluster(spec, state), return_exceptions=True
                )
            )
        for result in results:
            if isinstance(result, BaseException):
                raise result
        # Logs before the STOPPED report: once the cluster shows as ended, they are there.
        await self._send_logs(rec, await self._read_logs(rec, state), rec.logs_request)
        tr.logs_answered = rec.logs_request
        tr.observed = STOPPED
        await self._send_cluster(
            tr, internal_pb2.ReportClusterRequest(name=rec.name, observed=STOPPED)
        )
        log.info("cluster %s (user %s): stopped", rec.name, rec.owner)

    async def _reconcile_worker(
        self,
        rec: internal_pb2.LaunchCluster,
        spec: ClusterSpec,
        tr: _Tracked,
        w: internal_pb2.LaunchWorker,
    ) -> None:
        tw = tr.workers.setdefault(w.name, _TrackedWorker())
        if tw.pending is not None:
            await self._send_worker(tw, tw.pending)
        wobs = max(w.observed, tw.observed)
        wstate = tw.state if tw.state is not None else _load_state(w.state_json)
        wspec = WorkerSpec(spec, w.name, rec.scheduler_address)

        def report(observed: int, state: dict[str, Any] | None = None, reason: str = "") -> Any:
            return self._send_worker(
                tw,
                internal_pb2.ReportWorkerRequest(
                    cluster_name=rec.name,
                    worker_name=w.name,
                    observed=observed,
                    state_json=json.dumps(state) if state else "",
                    failure_reason=reason,
                ),
            )

        if w.target != RUNNING:
            if wobs != STOPPED:
                reason = ""
                if w.target == FAILED and wobs in ACTIVE:
                    reason = await self._exit_reason(wspec, wstate, tw)
                await self.backend.stop_worker(wspec, wstate)
                tw.observed = STOPPED
                await report(STOPPED, reason=reason)
                log.info("cluster %s: worker %s stopped", rec.name, w.name)
            return

        if wobs == CREATED:
            if not rec.scheduler_address:
                return  # started once the scheduler has sent its first heartbeat

            async def on_state(state: dict[str, Any]) -> None:
                tw.state = state
                tw.observed = STARTING
                await report(STARTING, state)

            log.info("cluster %s (user %s): starting worker %s", rec.name, rec.owner, w.name)
            started = time.perf_counter()
            reason = await self._drive(
                self.backend.start_worker(wspec), on_state, f"worker {w.name} of {rec.name}"
            )
            if reason:
                log.warning("cluster %s: worker %s failed to start: %s", rec.name, w.name, reason)
                tw.observed = STOPPED
                await self.backend.stop_worker(wspec, tw.state or {})
                await report(STOPPED, reason=reason)
            else:
                self.metrics.started("worker", time.perf_counter() - started)
                tw.checked = True
            return

        if wobs not in ACTIVE:
            return
        if not tw.checked and not tw.exit_reason:
            [status] = await self.backend.check_workers([(wspec, wstate)])
            tw.checked = True
            tw.state = wstate
            if status.running:
                log.info("cluster %s: adopted running worker %s", rec.name, w.name)
            else:
                tw.exit_reason = status.reason
        if tw.exit_reason:
            log.warning("cluster %s: worker %s exited: %s", rec.name, w.name, tw.exit_reason)
            # Whatever is left of its process group goes too.
            await self.backend.stop_worker(wspec, wstate)
            tw.observed = STOPPED
            await report(STOPPED, reason=tw.exit_reason)

    async def _exit_reason(
        self, wspec: WorkerSpec, wstate: dict[str, Any], tw: _TrackedWorker
    ) -> str:
        """Why a worker the registry failed (its scheduler saw it leave) ended, asked
        before the stop removes what tells ("" while it still runs, or if unknown): the
        registry keeps the launcher's words over the scheduler's."""
        if tw.exit_reason:
            return tw.exit_reason
        try:
            [status] = await self.backend.check_workers([(wspec, wstate)])
        except Exception as exc:  # the stop goes ahead; only the words are lost
            log.warning("worker %s: could not read why it ended: %s", wspec.name, exc)
            return ""
        return "" if status.running else status.reason

    # -- status checks --------------------------------------------------------------------

    def _backend_changed(self) -> None:
        """:meth:`Backend.changed`: wake the check loop (thread-safe, coalesced)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            self._changed.set()
        else:
            loop.call_soon_threadsafe(self._changed.set)

    async def _check_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        while True:
            # The period, or sooner when the backend pushed a change.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), self.settings.status_check_period)
            self._changed.clear()
            try:
                await self.check_now()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("backend %s: status check failed", self.backend_name)

    async def check_now(self) -> None:
        """One batched status check of every scheduler and worker that should be running."""
        clusters: list[tuple[str, ClusterSpec, dict[str, Any]]] = []
        workers: list[tuple[str, str, WorkerSpec, dict[str, Any]]] = []
        for name, rec in list(self._cache.items()):
            tr = self._tracked.get(name)
            if rec.target != RUNNING or tr is None or not tr.checked or tr.exit_reason:
                continue
            if max(rec.observed, tr.observed) not in ACTIVE or tr.state is None:
                continue
            try:
                spec = self._spec(rec)
            except (BackendError, ValueError, TypeError):
                continue
            clusters.append((name, spec, tr.state))
            for w in rec.workers:
                tw = tr.workers.get(w.name)
                if w.target != RUNNING or tw is None or not tw.checked or tw.exit_reason:
                    continue
                if max(w.observed, tw.observed) not in ACTIVE or tw.state is None:
                    continue
                workers.append(
                    (name, w.name, WorkerSpec(spec, w.name, rec.scheduler_address), tw.state)
                )
        if not clusters and not workers:
            return
        started = time.perf_counter()
        statuses, wstatuses = await self.backend.check(
            [(s, st) for _, s, st in clusters], [(ws, st) for _, _, ws, st in workers]
        )
        self.metrics.checked(time.perf_counter() - started)
        alive: list[str] = []
        for (name, _, _), status in zip(clusters, statuses, strict=True):
            tr = self._tracked.get(name)
            if status.running and status.responsive:
                alive.append(name)
            if not status.running and tr is not None and not tr.exit_reason:
                tr.exit_reason = status.reason
                self._queue.put(name)
        for (name, wname, _, _), status in zip(workers, wstatuses, strict=True):
            tr = self._tracked.get(name)
            tw = tr.workers.get(wname) if tr else None
            if not status.running and tw is not None and not tw.exit_reason:
                tw.exit_reason = status.reason
                self._queue.put(name)
        if alive:
            await self._report_alive(alive)

    async def _report_alive(self, names: list[str]) -> None:
        """Tell the registry which schedulers are alive (busy ones keep their clusters)."""
        assert self._stub is not None
        try:
            await self._stub.ReportAlive(
                internal_pb2.ReportAliveRequest(backend=self.backend_name, names=names),
                metadata=self._metadata,
                timeout=self.settings.rpc_timeout,
            )
        except grpc.aio.AioRpcError as exc:
            log.warning("backend %s: reporting live schedulers failed: %s", self.backend_name, exc)

    # -- introspection (tests, health) ----------------------------------------------------

    def cached(self, name: str) -> internal_pb2.LaunchCluster | None:
        """The newest registry record of ``name`` this launcher has seen."""
        return self._cache.get(name)
