"""``make bench``: Flotilla and the reference dask-gateway-server, side by side.

Starts both gateways on free ports, one client agent per gateway (``agent.py``, the
unmodified PyPI ``dask-gateway`` client), and runs every scenario of issue 5 on both,
alternating sample by sample (and which gateway goes first), so background load hits
both alike; the YARN section (``yarn.py``) on a private YARN, the kubernetes section
(``kubernetes.py``: Flotilla's kubernetes backend next to its local one) on a private
control plane. Then runs the control-plane simulation (Flotilla only, ``sim.py``).
Writes ``results.json`` (every sample) and ``results.md`` (medians, p90, ratios and the
acceptance table) to ``--out``.

``--smoke`` (what ``make test`` runs) checks that everything works, not how fast: every
scenario once with tiny sizes on Flotilla, the reference only where its clusters start
(each costs it over a second of CPU), both gateways at once and the simulation beside.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: python bench/run.py
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import sim
from bench.client import Agent, AgentError
from bench.gateways import REPO, GatewayProcess, start_flotilla, start_reference
from bench.hops import HOPS, hop_durations
from bench.kubernetes import STAGES as KUBE_STAGES
from bench.kubernetes import breakdown as kube_breakdown
from bench.kubernetes import kube_gateway
from bench.report import Check, Row, kube_table, markdown, summary
from bench.yarn import SCALE_STAGES, scale_breakdown, timeline, yarn_gateways

MIB = 2**20

#: Sizes of each scenario: the full run, and the smoke run ``make test`` does.
PLANS: dict[str, dict[str, Any]] = {
    "full": {
        "new_cluster": 10,
        "first_task": 6,
        "scale_workers": 8,
        "scale_rounds": 3,
        "proxy_mib": 100,
        "proxy_repeats": 6,
        "proxy_rounds": 2,
        "dashboard_rounds": 2,
        "settle": True,
        "dashboard_requests": 40,
        "users": 10,
        "per_user": 2,
        "many_rounds": 2,
        "sequential": 50,
        "list_at": 20,
        "list_requests": 100,
        "list_rounds": 4,
        "throughput_seconds": 2.0,
        "throughput_rounds": 3,
        "sim_sizes": [1000, 10000],
        "sim_list_requests": 200,
        "sim_propagations": 30,
        "yarn_new_cluster": 6,
        "yarn_scale_workers": 4,
        "yarn_scale_rounds": 6,
        "k8s_new_cluster": 5,
        "k8s_scale_workers": 8,
        "k8s_scale_rounds": 5,
        #: The scenarios run on the reference too (None: all of them).
        "reference_scenarios": None,
    },
    "smoke": {
        "new_cluster": 1,
        "first_task": 1,
        "scale_workers": 1,
        "scale_rounds": 1,
        "proxy_mib": 4,
        "proxy_repeats": 1,
        "proxy_rounds": 1,
        "dashboard_rounds": 1,
        "settle": False,
        "dashboard_requests": 2,
        "users": 1,
        "per_user": 1,
        "many_rounds": 1,
        "sequential": 1,
        "list_at": 1,
        "list_requests": 5,
        "list_rounds": 1,
        "throughput_seconds": 0.3,
        "throughput_rounds": 1,
        "sim_sizes": [10],
        "sim_list_requests": 10,
        "sim_propagations": 2,
        "yarn_new_cluster": 1,
        "yarn_scale_workers": 1,
        "yarn_scale_rounds": 1,
        "k8s_new_cluster": 1,
        "k8s_scale_workers": 2,
        "k8s_scale_rounds": 1,
        "reference_scenarios": ["new_cluster", "first_task", "yarn"],
    },
}

GATEWAYS = ("flotilla", "reference")

#: Scenario name (``Bench.scenario_<name>``, ``--only``) → what it measures.
SCENARIOS = {
    "new_cluster": "cold new_cluster()",
    "first_task": "first task",
    "scale": "scale up and down",
    "proxy": "scheduler proxy throughput",
    "dashboard": "dashboard",
    "many_users": "many users at once",
    "sequential": "clusters one after another",
    "simulation": "control-plane simulation",
    "yarn": "YARN: both gateways' YARN backends",
    "kubernetes": "Kubernetes: Flotilla's kubernetes backend next to its local one",
}


def _run_all(calls: list[Callable[[], Any]], *, parallel: bool) -> None:
    """Run ``calls``, in threads when ``parallel``; the first exception is raised."""
    if not parallel:
        for call in calls:
            call()
        return
    errors: list[BaseException] = []

    def guarded(call: Callable[[], Any]) -> None:
        try:
            call()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(c,)) for c in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


class Bench:
    """Runs the scenarios and collects every sample."""

    def __init__(
        self,
        plan: dict[str, Any],
        workdir: Path,
        client_python: str,
        reference_yarn_venv: Path,
    ) -> None:
        self.plan = plan
        self.workdir = workdir
        self.client_python = client_python
        self.reference_yarn_venv = reference_yarn_venv
        self.gateways: dict[str, GatewayProcess] = {}
        self.agents: dict[str, Agent] = {}
        #: The gateways the running scenario drives.
        self.driven: tuple[str, ...] = GATEWAYS
        self.samples: dict[str, dict[str, list[float]]] = {g: {} for g in GATEWAYS}
        self.extra: dict[str, Any] = {}
        self.load: list[tuple[str, tuple[float, float, float]]] = []
        self.failures: list[dict[str, str]] = []

    def _agent(self, name: str) -> Agent:
        agent = Agent(
            self.client_python,
            self.gateways[name].address,
            self.workdir / f"agent-{name}.log",
        )
        agent.call("configure", settle=self.plan["settle"])
        return agent

    def add(self, gateway: str, metric: str, values: float | list[float]) -> None:
        bucket = self.samples[gateway].setdefault(metric, [])
        bucket.extend(values if isinstance(values, list) else [values])

    def alternate(
        self, rounds: int, body: Callable[[str, Agent], None], first_round: int = 0
    ) -> None:
        """Run ``body`` ``rounds`` times on each gateway, flipping who goes first.

        A sample that fails (an error, or no answer in time: the agent is then replaced)
        is recorded in ``failures`` and the run goes on. Without ``settle`` (smoke
        runs, which check that everything works, not how fast) both gateways run at
        the same time.
        """
        for i in range(first_round, first_round + rounds):
            order = self.driven if i % 2 == 0 else self.driven[::-1]
            if self.plan["settle"]:
                for name in order:
                    self.attempt(name, body)
                continue
            _run_all([lambda n=name: self.attempt(n, body) for name in order], parallel=True)

    def attempt(self, name: str, body: Callable[[str, Agent], None]) -> None:
        """Run ``body`` on one gateway; a failure is recorded, a stuck agent replaced."""
        try:
            body(name, self.agents[name])
        except AgentError as exc:
            self.failures.append({"gateway": name, "error": str(exc)})
            print(f"[bench] {name}: sample failed: {exc}", flush=True)
            if self.agents[name].proc.poll() is not None or exc.fatal:
                self.agents[name].close(timeout=0)
                self.agents[name] = self._agent(name)

    def run_scenarios(self, names: list[str]) -> None:
        """The scenarios ``names``, one after another, each on the gateways it drives."""
        compared = self.plan["reference_scenarios"]
        for name in names:
            self.driven = GATEWAYS if compared is None or name in compared else ("flotilla",)
            with self.stage(SCENARIOS[name]):
                getattr(self, f"scenario_{name}")()
        self.driven = GATEWAYS

    def note_load(self, when: str) -> None:
        self.load.append((when, os.getloadavg()))
        print(f"[bench] {when} (load {os.getloadavg()[0]:.2f})", flush=True)

    # -- scenarios ------------------------------------------------------------------------

    def scenario_new_cluster(self) -> None:
        flotilla_samples: list[dict[str, Any]] = []

        def body(name: str, agent: Agent) -> None:
            result = agent.call("new_cluster", timeout=240)
            self.add(name, "new_cluster_s", result["seconds"])
            self.add(name, "stop_s", result["stop_seconds"])
            if name == "flotilla":
                flotilla_samples.append(result)

        self.alternate(self.plan["new_cluster"], body)
        logs = self.gateways["flotilla"].log_path.parent / "state" / "logs"
        self.extra["hops_ms"] = hop_durations(logs, flotilla_samples)

    def scenario_first_task(self) -> None:
        self.alternate(
            self.plan["first_task"],
            lambda name, agent: self.add(name, "first_task_s", agent.call("first_task")["seconds"]),
        )

    def scenario_scale(self) -> None:
        workers = self.plan["scale_workers"]

        def body(name: str, agent: Agent) -> None:
            result = agent.call("scale", workers=workers, cycles=1)
            self.add(name, "scale_up_s", result["up_seconds"])
            self.add(name, "scale_down_s", result["down_seconds"])

        self.alternate(self.plan["scale_rounds"], body)

    def scenario_proxy(self) -> None:
        def body(name: str, agent: Agent) -> None:
            result = agent.call(
                "proxy_throughput", mib=self.plan["proxy_mib"], repeats=self.plan["proxy_repeats"]
            )
            self.add(name, "proxy_mib_s", result["proxied_mib_s"])
            self.add(name, "direct_mib_s", result["direct_mib_s"])
            self.add(name, "proxy_over_direct", result["ratio"])
            self.add(name, "relay_mib_s", result["relay_mib_s"])
            self.add(name, "relay_over_direct", result["relay_ratio"])

        self.alternate(self.plan["proxy_rounds"], body)

    def scenario_dashboard(self) -> None:
        def body(name: str, agent: Agent) -> None:
            result = agent.call("dashboard", requests=self.plan["dashboard_requests"])
            self.add(name, "dashboard_page_ms", result["page_ms"])
            self.add(name, "dashboard_health_ms", result["health_ms"])

        self.alternate(self.plan["dashboard_rounds"], body)

    def scenario_many_users(self) -> None:
        def body(name: str, agent: Agent) -> None:
            result = agent.call(
                "many_users", users=self.plan["users"], per_user=self.plan["per_user"]
            )
            self.add(name, "many_users_cluster_s", result["seconds"])
            self.add(name, "many_users_total_s", result["total_seconds"])

        self.alternate(self.plan["many_rounds"], body)

    def scenario_sequential(self) -> None:
        """Clusters one after another, kept running; at ``list_at`` of them, list_clusters
        latency and throughput and the gateways' memory are measured."""
        total, at = self.plan["sequential"], self.plan["list_at"]

        def one(name: str, agent: Agent) -> None:
            result = agent.call("keep_clusters", count=1, timeout=300)
            self.add(name, "sequential_s", result["seconds"])

        for i in range(total):
            self.alternate(1, one, first_round=i)
            if i + 1 == at:
                self.note_load(f"{at} clusters running: list_clusters and memory")
                self._measure_lists()
                for name, gw in self.gateways.items():
                    self.extra.setdefault("rss", {})[f"{name}_with_{at}_clusters"] = gw.rss()
        for name in self.driven:
            self.attempt(
                name,
                lambda n, agent: self.add(n, "stop_all_s", agent.call("stop_kept")["seconds"]),
            )

    def scenario_yarn(self) -> None:
        """Cold new_cluster() and scale(n) until connected, on one YARN (bench/yarn.py);
        the local gateways stay up, idle, meanwhile."""
        local = (self.gateways, self.agents)
        scaled: list[dict[str, Any]] = []
        with yarn_gateways(self.workdir, self.reference_yarn_venv) as (yarn, gateways):
            self.gateways, self.agents = gateways, {}
            try:
                _run_all(
                    [
                        lambda n=name: self.agents.__setitem__(n, self._agent(n))
                        for name in gateways
                    ],
                    parallel=True,
                )

                def cycle(name: str, agent: Agent) -> None:
                    result = agent.call("new_cluster", timeout=300)
                    self.extra.setdefault("yarn_samples", []).append({"gateway": name, **result})
                    self.add(name, "yarn_new_cluster_s", result["seconds"])
                    self.add(name, "yarn_stop_s", result["stop_seconds"])

                self.alternate(self.plan["yarn_new_cluster"], cycle)
                workers = self.plan["yarn_scale_workers"]

                def scale(name: str, agent: Agent) -> None:
                    result = agent.call("scale", workers=workers, cycles=1, timeout=300)
                    scaled.extend(
                        {"gateway": name, "scaled_at": at, "workers": workers}
                        for at in result["scaled_at"]
                    )
                    self.add(name, "yarn_scale_up_s", result["up_seconds"])
                    self.add(
                        name,
                        "yarn_ready_s",
                        [result["create_seconds"] + up for up in result["up_seconds"]],
                    )
                    self.add(name, "yarn_scale_down_s", result["down_seconds"])

                self.alternate(self.plan["yarn_scale_rounds"], scale)
                self.extra["yarn_applications"] = timeline(yarn, "bench")  # agent.py's user
            finally:
                for agent in self.agents.values():
                    agent.close()
                self.gateways, self.agents = local
        # The YARN's logs are in the work directory now.
        self.extra["yarn_scale_breakdown"] = scale_breakdown(self.workdir / "yarn", scaled)

    def scenario_kubernetes(self) -> None:
        """Cold new_cluster() until RUNNING, shutdown() until STOPPED (and, on kubernetes,
        every pod gone), and scale(n) until connected, on the kubernetes backend (pods
        run by the node agent, bench/kubernetes.py) and on the local one."""
        samples: dict[str, dict[str, list[float]]] = {"kubernetes": {}, "local": {}}
        steps: list[dict[str, Any]] = []
        side = {"kubernetes": "kubernetes", "flotilla": "local"}

        def add(name: str, metric: str, values: float | list[float]) -> None:
            bucket = samples[side[name]].setdefault(metric, [])
            bucket.extend(values if isinstance(values, list) else [values])

        with kube_gateway(self.workdir) as section:
            self.gateways["kubernetes"] = section.gateway
            try:
                self.agents["kubernetes"] = self._agent("kubernetes")
                self.driven = ("kubernetes", "flotilla")

                def cycle(name: str, agent: Agent) -> None:
                    result = agent.call("new_cluster", timeout=300)
                    add(name, "new_cluster_s", result["seconds"])
                    add(name, "stop_s", result["stop_seconds"])
                    if name != "kubernetes":
                        return
                    gone = section.watch.wait_deleted(result["name"], 60)
                    add(name, "stop_gone_s", gone - result["finished_at"])
                    steps.append(
                        {
                            "step": "new_cluster",
                            "cluster": result["name"],
                            "at": result["started_at"],
                            "ready": result["seconds"],
                        }
                    )

                self.alternate(self.plan["k8s_new_cluster"], cycle)
                workers = self.plan["k8s_scale_workers"]

                def scale(name: str, agent: Agent) -> None:
                    result = agent.call("scale", workers=workers, cycles=1, timeout=300)
                    add(name, "scale_up_s", result["up_seconds"])
                    if name == "kubernetes":
                        steps.append(
                            {
                                "step": "scale",
                                "cluster": result["name"],
                                "at": result["scaled_at"][0],
                                "ready": result["up_seconds"][0],
                            }
                        )

                self.alternate(self.plan["k8s_scale_rounds"], scale)
                self.extra["kubernetes_breakdown"] = kube_breakdown(
                    section.watch, section.agent_log, steps
                )
            finally:
                self.driven = GATEWAYS
                agent = self.agents.pop("kubernetes", None)
                if agent is not None:
                    agent.close()
                self.gateways.pop("kubernetes", None)
        self.extra["kubernetes_samples"] = samples
        self.extra["kubernetes_steps"] = steps

    def _measure_lists(self) -> None:
        def latency(name: str, agent: Agent) -> None:
            result = agent.call("list_latency", requests=self.plan["list_requests"])
            self.add(name, "list_ms", result["ms"])

        self.alternate(self.plan["list_rounds"], latency)
        for concurrency in (16, 64):

            def throughput(name: str, agent: Agent, c: int = concurrency) -> None:
                result = agent.call(
                    "list_throughput", concurrency=c, seconds=self.plan["throughput_seconds"]
                )
                self.add(name, f"list_per_s_{c}", result["per_second"])
                self.add(name, f"list_errors_{c}", float(result["errors"]))

            self.alternate(self.plan["throughput_rounds"], throughput)

    # -- driving --------------------------------------------------------------------------

    def start(self, reference_venv: Path) -> None:
        """Both gateways (one after the other, so their start-up times compare, unless
        a smoke run), then one agent for each."""
        self.note_load("starting both gateways")
        starters = {
            "flotilla": lambda: start_flotilla(self.workdir),
            "reference": lambda: start_reference(self.workdir, reference_venv),
        }
        _run_all(
            [
                lambda n=name, f=fn: self.gateways.__setitem__(n, f())
                for name, fn in starters.items()
            ],
            parallel=not self.plan["settle"],
        )
        for name, gw in self.gateways.items():
            self.extra.setdefault("start_seconds", {})[name] = gw.started_seconds

        def agent(name: str) -> None:
            self.agents[name] = self._agent(name)
            self.extra.setdefault("versions", {})[name] = self.agents[name].call("ping")

        _run_all([lambda n=name: agent(n) for name in GATEWAYS], parallel=True)
        if self.plan["settle"]:
            # Let both settle (start-up work, first GC) before their idle memory is read.
            time.sleep(1.0)
        self.extra["rss"] = {f"{n}_idle": gw.rss() for n, gw in self.gateways.items()}

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.close()
        # Sequential in a full run, so neither gateway's teardown slows the other's.
        # A smoke run checks that things work, not how gracefully the reference stops
        # (its workers take seconds): a short grace, then the process group is killed.
        grace = 60.0 if self.plan["settle"] else 2.0
        _run_all(
            [functools.partial(gw.stop, timeout=grace) for gw in self.gateways.values()],
            parallel=not self.plan["settle"],
        )
        self.agents.clear()
        self.gateways.clear()

    @contextmanager
    def stage(self, what: str) -> Iterator[None]:
        self.note_load(what)
        start = time.monotonic()
        yield
        self.extra.setdefault("stage_seconds", {})[what] = time.monotonic() - start


def _rows(bench: Bench) -> dict[str, Row]:
    """Every compared metric, keyed by its sample name, in table order."""
    f, r = bench.samples["flotilla"], bench.samples["reference"]
    plan = bench.plan
    rows: dict[str, Row] = {}

    def row(key: str, metric: str, unit: str, better: str = "lower") -> None:
        rows[key] = Row(metric, unit, f.get(key, []), r.get(key, []), better)

    users = f"{plan['users']} users x {plan['per_user']} clusters at once"
    row("new_cluster_s", "cold new_cluster()", "s")
    row("first_task_s", "first task after new_cluster() + scale(1)", "s")
    row("scale_up_s", f"scale({plan['scale_workers']}) until connected", "s")
    row("scale_down_s", "scale(0) until gone", "s")
    row("stop_s", "shutdown() until STOPPED", "s")
    row("proxy_mib_s", f"{plan['proxy_mib']} MiB via the scheduler proxy", "MiB/s", "higher")
    row("direct_mib_s", f"{plan['proxy_mib']} MiB direct to the scheduler", "MiB/s", "higher")
    row("proxy_over_direct", "proxied / direct, pairs back to back", "ratio", "higher")
    row("relay_mib_s", "... through a splice(2) relay (control)", "MiB/s", "higher")
    row("relay_over_direct", "... splice relay / direct, back to back", "ratio", "higher")
    row("dashboard_page_ms", "dashboard page GET", "ms")
    row("dashboard_health_ms", "dashboard /health GET", "ms")
    row("list_ms", f"list_clusters() with {plan['list_at']} clusters", "ms")
    row("list_per_s_16", "list_clusters() throughput, 16 concurrent", "req/s", "higher")
    row("list_per_s_64", "list_clusters() throughput, 64 concurrent", "req/s", "higher")
    row("many_users_cluster_s", f"{users}: each", "s")
    row("many_users_total_s", f"{users}: all", "s")
    row("sequential_s", f"{plan['sequential']} clusters one after another: each", "s")
    row("stop_all_s", f"stop {plan['sequential']} clusters at once", "s")
    row("yarn_new_cluster_s", "YARN: cold new_cluster()", "s")
    row("yarn_scale_up_s", f"YARN: scale({plan['yarn_scale_workers']}) until connected", "s")
    row(
        "yarn_ready_s",
        f"YARN: new_cluster() + get_client() + scale({plan['yarn_scale_workers']}) until connected",
        "s",
    )
    row("yarn_scale_down_s", "YARN: scale(0) until gone", "s")
    row("yarn_stop_s", "YARN: shutdown() until STOPPED", "s")
    seq_f, seq_r = f.get("sequential_s", []), r.get("sequential_s", [])
    tenth = max(1, len(seq_f) // 10)
    if len(seq_f) >= 2 * tenth and len(seq_r) >= 2 * tenth:
        rows["sequential_first"] = Row(
            "... the first tenth of them", "s", seq_f[:tenth], seq_r[:tenth]
        )
        rows["sequential_last"] = Row(
            "... the last tenth of them", "s", seq_f[-tenth:], seq_r[-tenth:]
        )
    rss = bench.extra.get("rss", {})
    for key, label in (
        ("idle", "idle"),
        (f"with_{plan['list_at']}_clusters", f"{plan['list_at']} clusters"),
        ("idle_at_end", "idle at the end"),
    ):
        for measure, name in (("gateway_bytes", "RSS"), ("gateway_pss_bytes", "PSS")):
            mem = [
                [rss[f"{g}_{key}"][measure] / MIB] if f"{g}_{key}" in rss else [] for g in GATEWAYS
            ]
            prefix = "rss" if name == "RSS" else "pss"
            rows[f"{prefix}_{key}"] = Row(
                f"gateway's own processes {name}, {label}", "MiB", mem[0], mem[1]
            )
    return rows


def _checks(bench: Bench, rows: dict[str, Row], sim_result: dict[str, Any]) -> list[Check]:
    f = bench.samples["flotilla"]
    idle = bench.extra.get("rss", {}).get("flotilla_idle", {}).get("gateway_bytes", 0) / MIB
    checks = [
        Check("new_cluster() vs reference", rows["new_cluster_s"].ratio(), "<=", 0.4),
        Check("first task vs reference", rows["first_task_s"].ratio(), "<=", 0.5),
        Check("scale(8) ready vs reference", rows["scale_up_s"].ratio(), "<=", 0.4),
        Check(
            "proxy throughput vs direct (median of pairs)",
            summary(f.get("proxy_over_direct", []))["median"],
            ">=",
            0.95,
        ),
        Check("dashboard p50 vs reference", rows["dashboard_page_ms"].ratio(), "<=", 1.2),
        Check("list_clusters() p50 vs reference", rows["list_ms"].ratio(), "<=", 1.0),
        Check(
            "list_clusters() at 64 concurrent vs reference",
            rows["list_per_s_64"].ratio(),
            ">=",
            1.5,
        ),
        Check("embedded stack idle RSS (MiB, Envoy included)", idle, "<=", 400),
        Check("YARN new_cluster() vs reference", rows["yarn_new_cluster_s"].ratio(), "<=", 0.6),
        Check(
            f"YARN scale({bench.plan['yarn_scale_workers']}) until connected vs reference",
            rows["yarn_scale_up_s"].ratio(),
            "<=",
            0.6,
        ),
    ]
    checks += sim.checks(sim_result)
    return checks


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (make test)")
    parser.add_argument("--out", default=str(REPO / "bench" / "results"), help="output folder")
    parser.add_argument(
        "--client-python",
        default=str(REPO / ".cache/upstream-client/bin/python"),
        help="a Python with only the PyPI dask-gateway client and dask",
    )
    parser.add_argument(
        "--reference-venv",
        default=str(REPO / ".cache/bench-reference"),
        help="virtualenv with dask-gateway-server",
    )
    parser.add_argument(
        "--reference-yarn-venv",
        default=str(REPO / ".cache/bench-reference-yarn"),
        help="virtualenv with dask-gateway-server 2025.4.0 and skein (the YARN section)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    parser.add_argument(
        "--only",
        default="",
        help=f"comma-separated subset of scenarios: {', '.join(SCENARIOS)}",
    )
    parser.add_argument(
        "--skip", default="", help="comma-separated scenarios to leave out (after --only)"
    )
    parser.add_argument("--note", default="", help="a line for the results page (e.g. load)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override one size of the plan (JSON value), e.g. --set new_cluster=3",
    )
    return parser


def _run(bench: Bench, only: list[str], args: argparse.Namespace) -> dict[str, Any]:
    """Every chosen scenario on both gateways, and the simulation; its result.

    A full run does one thing at a time, the simulation last; a smoke run (no ``settle``)
    runs the simulation beside the scenarios, once both gateways are up (three stacks
    starting at once on two cores would slow all of them).
    """
    scenarios = [name for name in only if name != "simulation"]
    sim_result: dict[str, Any] = {}
    started = threading.Event()

    def simulation() -> None:
        started.wait()
        with bench.stage(SCENARIOS["simulation"]):
            sim_result.update(
                sim.run(
                    bench.workdir,
                    sizes=bench.plan["sim_sizes"],
                    list_requests=bench.plan["sim_list_requests"],
                    propagations=bench.plan["sim_propagations"],
                    client_python=args.client_python,
                )
            )

    def gateways() -> None:
        try:
            bench.start(Path(args.reference_venv))
        finally:
            started.set()
        bench.run_scenarios(scenarios)
        if bench.plan["settle"]:
            time.sleep(1.0)
        bench.extra["rss"].update(
            {f"{n}_idle_at_end": gw.rss() for n, gw in bench.gateways.items()}
        )
        bench.stop()

    if not scenarios:
        started.set()
    parts = ([gateways] if scenarios else []) + ([simulation] if "simulation" in only else [])
    _run_all(parts, parallel=not bench.plan["settle"])
    return sim_result


#: Who does each stage of a kubernetes pod's start (bench/kubernetes.py STAGES).
_KUBE_WHO = {
    "created": "Flotilla (registry, launcher) and the API server",
    "scheduled": "kube-scheduler",
    "started": "node agent",
    "running": "node agent",
}
#: What "ready" is, and who does it, per step.
_KUBE_READY = {
    "new_cluster": "new_cluster() returned (RUNNING, routed, connected) "
    "[dask scheduler start, Flotilla]",
    "scale": "the workers connected to the scheduler [dask worker start]",
}


def _kube_section(bench: Bench) -> str:
    """The kubernetes section of results.md: both backends' medians and the breakdown."""
    k, loc = (
        bench.extra["kubernetes_samples"]["kubernetes"],
        bench.extra["kubernetes_samples"]["local"],
    )
    workers = bench.plan["k8s_scale_workers"]
    rows = [
        Row(metric, "s", k.get(key, []), loc.get(key, []))
        for key, metric in (
            ("new_cluster_s", "cold new_cluster() until RUNNING"),
            ("stop_s", "shutdown() until STOPPED"),
            ("stop_gone_s", "shutdown() until every pod is gone (local: STOPPED)"),
            ("scale_up_s", f"scale({workers}) until {workers} workers connected"),
        )
    ]
    # Pods gone is STOPPED on the local backend: its processes are gone by then.
    rows[2] = Row(rows[2].metric, "s", rows[2].flotilla, loc.get("stop_s", []))
    found = bench.extra.get("kubernetes_breakdown", {})
    stages = []
    for step, what in (
        ("new_cluster", "new_cluster(): scheduler pod"),
        ("scale", f"scale({workers}): last worker pod"),
    ):
        for stage, seconds in found.get(step, {}).items():
            label = (
                _KUBE_READY[step]
                if stage == "ready"
                else f"{KUBE_STAGES[stage]} [{_KUBE_WHO[stage]}]"
            )
            stages.append((f"{what}: {label}", seconds))
    per_pod = []
    for step in ("new_cluster", "scale"):
        for transition, seconds in found.get(f"{step}_per_pod", {}).items():
            who = _KUBE_WHO[transition.split("->")[1]]
            per_pod.append(
                (f"{step}: {transition.replace('call', 'client call')} [{who}]", seconds)
            )
    return kube_table(rows, stages, per_pod)


def _write(
    out: Path, bench: Bench, sim_result: dict[str, Any], meta: dict[str, Any], ok: bool
) -> None:
    """results.json (every sample) and results.md (the tables) in ``out``."""
    rows = _rows(bench)
    checks = _checks(bench, rows, sim_result) if ok else []
    # The YARN section (its own YARN, JVMs and two more gateways) is timed apart.
    yarn_seconds = bench.extra.get("stage_seconds", {}).get(SCENARIOS["yarn"], 0.0)
    checks.append(
        Check(
            "make bench duration without the YARN section (minutes)",
            (meta["duration_seconds"] - yarn_seconds) / 60,
            "<=",
            15,
        )
    )
    single = [
        (f"new_cluster() hop: {hop}", "ms", bench.extra.get("hops_ms", {}).get(hop, []))
        for hop in HOPS
    ] + sim.table_rows(sim_result)
    workers = bench.plan["yarn_scale_workers"]
    single += [
        (f"YARN scale({workers}) {gateway}, until {SCALE_STAGES[stage]}", "s", seconds)
        for gateway, stages in bench.extra.get("yarn_scale_breakdown", {}).items()
        for stage, seconds in stages.items()
    ]
    versions = bench.extra.get("versions", {})
    meta = {
        **meta,
        "reference_version": versions.get("reference", {}).get("version", {}).get("version", ""),
        "completed": ok,
        "failed_samples": len(bench.failures),
    }
    data = {
        "meta": meta,
        "plan": bench.plan,
        "rows": {k: r.as_json() for k, r in rows.items()},
        "checks": [c.as_json() for c in checks],
        "samples": bench.samples,
        "extra": bench.extra,
        "load": bench.load,
        "failures": bench.failures,
        "simulation": sim_result,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    sections = [_kube_section(bench)] if "kubernetes_samples" in bench.extra else []
    (out / "results.md").write_text(markdown(list(rows.values()), checks, single, meta, sections))
    print((out / "results.md").read_text())


def main(argv: list[str] | None = None) -> int:
    # Started in the background by a shell, SIGINT is ignored, and so it would be in
    # every gateway started from here (which stop their clusters on it): undo that.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = _parser()
    args = parser.parse_args(argv)
    mode = "smoke" if args.smoke else "full"
    plan = dict(PLANS[mode])
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in plan:
            parser.error(f"unknown plan key {key!r}")
        plan[key] = json.loads(value)
    only = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    skip = [s for s in args.skip.split(",") if s]
    unknown = sorted((set(only) | set(skip)) - set(SCENARIOS))
    only = [s for s in only if s not in skip]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    workdir = Path(tempfile.mkdtemp(prefix="flotilla-bench-"))
    meta: dict[str, Any] = {
        "mode": mode,
        "started_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "load_start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "note": args.note,
    }
    t0 = time.monotonic()
    bench = Bench(plan, workdir, args.client_python, Path(args.reference_yarn_venv))
    ok = False
    sim_result: dict[str, Any] = {}
    try:
        sim_result = _run(bench, only, args)
        ok = True
    finally:
        bench.stop()
        meta["duration_seconds"] = time.monotonic() - t0
        meta["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
        _write(Path(args.out), bench, sim_result, meta, ok)
        if args.keep or not ok:
            print(f"[bench] logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
