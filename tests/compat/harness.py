"""The conformance suite's gateway: configuration, raw HTTP, and the upstream client runner.

One gateway stack per registry store serves every module of tests/compat. Its options
declare every field type the dask-gateway client knows, with ``target`` renaming,
``Select`` values that are dicts, handlers with and without ``user`` (by user name), and
runtimes that pick the scheduler and worker commands: Flotilla's own environment, the
upstream virtualenv (only ``dask-gateway``), a scheduler that hangs, one that cannot start.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flotilla_common.embedded import EmbeddedStack
from gateway_stack import (
    Gateway,
    reap_leftover_cluster_processes,
    show_logs,
    upstream_python,
    write_config,
)

__all__ = [
    "ALICE",
    "BOB",
    "CAROL",
    "CLUSTER_ERROR",
    "COOKIE_NAME",
    "DAVE",
    "FUZZER",
    "RESPONSE_ERROR",
    "VALUE_ERROR",
    "CompatGateway",
    "StepResult",
    "compat_config",
    "raised",
    "running_gateway",
    "step",
    "upstream_python",
]

SCENARIOS = Path(__file__).parent / "scenarios"

# Users with a role in the option spec (see OPTIONS below).
ALICE = "alice"  # handler(options, user); groups physics, staff
BOB = "bob"  # the other user: never sees alice's clusters
CAROL = "carol"  # options without a handler: the transformed options are the overrides
DAVE = "dave"  # handler(options), without the user
FUZZER = "fuzzer"  # the fuzz test's user: new clusters default to the cheap "hang" runtime

OPTIONS = """
import json as _json
import sys as _sys

from flotilla_registry.options import Bool, Float, Integer, Mapping, Options, Select, String

_UPSTREAM_BIN = {upstream_bin!r}
_RUNTIMES = [
    ("flotilla", {{}}),
    (
        "upstream",
        {{
            "scheduler_cmd": [_UPSTREAM_BIN + "/dask", "scheduler"],
            "worker_cmd": [_UPSTREAM_BIN + "/dask", "worker"],
            "scheduler_preload": "dask_gateway.scheduler_preload",
        }},
    ),
    ("hang", {{"scheduler_cmd": [_sys.executable, "-c", "import time; time.sleep(3600)"]}}),
    ("broken", {{"scheduler_cmd": ["/nonexistent/flotilla-compat/dask-scheduler"]}}),
]


def _fields(runtime="flotilla"):
    return [
        Integer("worker_cores", default=1, min=1, max=2, label="Worker cores"),
        Float(
            "worker_memory_gib", default=0.5, min=0.25, max=1.5, label="Worker memory (GiB)",
            target="memory_gib",
        ),
        String("label", default="compat", label="Label"),
        Bool("pin", default=False, label="Pin"),
        Select("runtime", _RUNTIMES, default=runtime, label="Runtime", target="commands"),
        Mapping("environment", default={{}}, label="Environment"),
        Integer("max_workers", default=6, min=0, max=8, target="cluster_max_workers"),
        Float("idle_timeout", default=0, min=0, max=600, label="Idle timeout (s)"),
    ]


def _overrides(options):
    if options.label == "explode":
        raise ValueError("the label 'explode' is reserved")
    env = dict(options.environment)
    env["COMPAT_OPTIONS"] = _json.dumps(dict(options), sort_keys=True)
    out = {{
        "worker_cores": options.worker_cores,
        "worker_memory": int(options.memory_gib * 2**30),
        "environment": env,
        "cluster_max_workers": options.cluster_max_workers,
        "idle_timeout": options.idle_timeout,
        **options.commands,
    }}
    if options.label == "huge-scheduler":
        out["scheduler_memory"] = "64 G"
    if options.label == "many-scheduler-cores":
        out["scheduler_cores"] = 32
    return out


def _with_user(options, user):
    out = _overrides(options)
    out["environment"]["COMPAT_USER"] = user.name
    out["environment"]["COMPAT_GROUPS"] = ",".join(sorted(user.groups))
    out["environment"]["COMPAT_ADMIN"] = str(user.admin)
    return out


def _without_user(options):
    return _overrides(options)


def _options_for(user):
    if user.name == "carol":
        return Options(
            Integer("cores", default=1, min=1, max=2, target="worker_cores"),
            String("memory", default="512 M", target="worker_memory"),
            Select(
                "flavour", [("plain", {{}}), ("marked", {{"COMPAT_MARK": "yes"}})],
                target="environment",
            ),
        )
    if user.name == "fuzzer":
        return Options(*_fields(runtime="hang"), handler=_with_user)
    handler = _without_user if user.name == "dave" else _with_user
    return Options(*_fields(), handler=handler)


c.Registry.cluster_options = _options_for
"""

SETTINGS = """
c.BasicAuthenticator.password = {password!r}
c.BasicAuthenticator.user_groups = {{"alice": ["physics", "staff"]}}
c.Auth.cookie_name = {cookie_name!r}
c.ClusterConfig.cluster_max_workers = None
c.ClusterConfig.cluster_max_memory = "32 G"
c.ClusterConfig.cluster_max_cores = 16
c.ClusterConfig.adaptive_period = 0.5
c.ClusterConfig.heartbeat_period = 2.0
# Lifecycle timeouts (ignored, with a log line, by a registry without them): the "hang"
# runtime's schedulers must outlive the tests that use them, and a loaded machine must not
# fail a cluster whose 2 s heartbeats come late.
c.ClusterConfig.cluster_start_timeout = 600
c.ClusterConfig.heartbeat_timeout = 120
"""


COOKIE_NAME = "compat-session"


def compat_config(password: str, store_settings: str, extra: str = "") -> str:
    """The configuration appended to gateway_stack.write_config's (later lines win)."""
    upstream_bin = str(Path(upstream_python()).parent)
    return (
        textwrap.dedent(SETTINGS.format(password=password, cookie_name=COOKIE_NAME))
        + OPTIONS.format(upstream_bin=upstream_bin)
        + store_settings
        + extra
    )


@dataclass
class CompatGateway(Gateway):
    """A gateway of the suite: ``request`` authenticates with the configured password."""

    store: str = "sqlite"
    password: str = ""

    def request(  # type: ignore[override]
        self,
        method: str,
        path: str,
        user: str | None = ALICE,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        password: str | None = None,
    ) -> tuple[int, dict[str, str], Any]:
        """One raw HTTP request (headers' names lower-cased); (status, headers, JSON or text)."""
        status, hdrs, parsed = super().request(
            method, path, user, body, headers, self.password if password is None else password
        )
        return status, {k.lower(): v for k, v in hdrs.items()}, parsed

    def post_json(self, path: str, payload: Any, user: str = ALICE) -> tuple[int, Any]:
        status, _, body = self.request("POST", path, user, json.dumps(payload).encode())
        return status, body

    def status_of(self, name: str, user: str = ALICE) -> str:
        status, _, body = self.request("GET", f"/api/v1/clusters/{name}", user)
        assert status == 200, body
        return str(body["status"])

    def create(self, user: str = ALICE, **options: Any) -> str:
        status, body = self.post_json("/api/v1/clusters/", {"cluster_options": options}, user)
        assert status == 201, body
        return str(body["name"])

    def upstream(self, *steps: dict[str, Any], timeout: float = 420) -> dict[str, StepResult]:
        """Run ``steps`` (see scenarios/upstream_client.py) in one upstream-client process."""
        job = {"address": self.address, "password": self.password, "steps": list(steps)}
        proc = subprocess.run(
            [upstream_python(), str(SCENARIOS / "upstream_client.py")],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT": "30s"},
        )
        lines = proc.stdout.strip().splitlines()
        if proc.returncode != 0 or not lines:
            raise AssertionError(
                f"upstream client exited with {proc.returncode}:\n{proc.stdout[-3000:]}\n"
                f"{proc.stderr[-6000:]}"
            )
        raw = json.loads(lines[-1])
        return {key: StepResult(key, value, proc.stderr) for key, value in raw.items()}


@dataclass
class StepResult:
    """What one upstream-client step observed."""

    id: str
    raw: dict[str, Any]
    stderr: str = ""

    @property
    def value(self) -> Any:
        """The step's result; fails the test with the step's traceback if it raised."""
        if not self.raw["ok"]:
            tail = self.stderr[-4000:]
            pytest.fail(f"upstream step {self.id} failed:\n{self.raw['error']}\n{tail}")
        return self.raw["result"]


def raised(outcome: dict[str, Any]) -> tuple[str, str, int | None]:
    """(exception type, message, HTTP status) of an outcome that must have raised."""
    assert "raised" in outcome, f"expected an exception, got {outcome}"
    exc = outcome["raised"]
    return exc["type"], exc["message"], exc["status"]


def step(step_id: str, kind: str, user: str = ALICE, /, **args: Any) -> dict[str, Any]:
    """One step of an upstream batch: ``kind`` is a step of scenarios/upstream_client.py."""
    return {"id": step_id, "step": kind, "user": user, "args": args}


# How the upstream client surfaces each status (wire-contract 1.1).
VALUE_ERROR = "builtins.ValueError"
CLUSTER_ERROR = "dask_gateway.client.GatewayClusterError"
RESPONSE_ERROR = "aiohttp.client_exceptions.ClientResponseError"


@contextlib.contextmanager
def running_gateway(
    state_dir: Path, store: str, store_settings: str = "", extra: str = ""
) -> Iterator[CompatGateway]:
    """A whole gateway with the suite's configuration; stopped (and checked) on exit."""
    password = secrets.token_urlsafe(12)
    config, address = write_config(state_dir, compat_config(password, store_settings, extra))
    stack = EmbeddedStack(str(config))
    try:
        stack.start()
        yield CompatGateway(address, stack, state_dir, store=store, password=password)
    finally:
        stack.stop()
        leftover = reap_leftover_cluster_processes(state_dir)
        show_logs(state_dir / "logs")
        assert not leftover, f"cluster processes left after the gateway stopped: {leftover}"
