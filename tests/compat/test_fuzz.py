"""Acceptance 5: requests generated from docs/openapi.yaml (schemathesis, valid and invalid
data) fired at the live REST API through Envoy, without credentials, with the fuzzing
user's, with wrong ones and with a bogus cluster token. No answer is a 5xx; every error
is a JSON ``{"error": ...}`` with a status the description declares; and the clusters
that existed before (another user's and the fuzzing user's own, each with a worker) are
still RUNNING with the same workers afterwards.

Generated path names are sometimes replaced by the other user's cluster, so ownership is
fuzzed too. The fuzzing user's new clusters default to a scheduler that only sleeps
(harness.OPTIONS), so whatever the fuzzer creates costs next to nothing.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import os
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from compat.harness import ALICE, FUZZER, CompatGateway, step
from gateway_stack import cluster_pids
from helpers import wait_for
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.timeout(600)

OPENAPI = Path(__file__).resolve().parents[2] / "docs" / "openapi.yaml"
# Examples per run; the whole fuzz takes well under a minute at the default.
MAX_EXAMPLES = int(os.environ.get("FLOTILLA_FUZZ_EXAMPLES", "600"))


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture(scope="module")
def bystanders(compat: CompatGateway) -> dict[str, dict[str, Any]]:
    """A running cluster with one worker for alice and for the fuzzing user."""
    results = compat.upstream(
        step("alice", "running_cluster", ALICE, workers=1, kwargs={}),
        step("fuzzer", "running_cluster", FUZZER, workers=1, kwargs={"runtime": "flotilla"}),
    )
    return {key: r.value for key, r in results.items()}


def _active(compat: CompatGateway, user: str) -> set[str]:
    status, _, body = compat.request("GET", "/api/v1/clusters/", user)
    assert status == 200, body
    return set(body)


def test_fuzzed_requests(compat: CompatGateway, bystanders: dict[str, dict[str, Any]]) -> None:
    alices, fuzzers = bystanders["alice"]["name"], bystanders["fuzzer"]["name"]
    alice_before = _active(compat, ALICE)
    _, headers, _ = compat.request("GET", "/api/v1/options", FUZZER)
    session = headers["set-cookie"].split(";", 1)[0]
    credentials = {
        "none": {},
        "basic": {"Authorization": _basic(FUZZER, compat.password)},
        "wrong-password": {"Authorization": _basic(FUZZER, "wrong")},
        "session": {"Cookie": session},
        "bogus-token": {"Authorization": "token " + "x" * 43},
    }

    # The event stream never ends by itself: the web page's tests read it.
    schema = schemathesis.openapi.from_path(OPENAPI).exclude(operation_id="streamEvents")
    cases = st.one_of(
        schema.as_strategy(GenerationMode.POSITIVE), schema.as_strategy(GenerationMode.NEGATIVE)
    )
    seen: collections.Counter[tuple[str, int]] = collections.Counter()

    @settings(
        max_examples=MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,  # the same requests on every run: a failure reproduces
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(
        case=cases,
        who=st.sampled_from(sorted(credentials)),
        aim_at_alices=st.integers(0, 3).map(lambda n: n == 0),
    )
    def fuzz(case: Any, who: str, aim_at_alices: bool) -> None:
        if aim_at_alices and "name" in (case.path_parameters or {}):
            case.path_parameters["name"] = alices
        sent = credentials[who]
        response = case.call(base_url=compat.address, headers=sent, timeout=60)
        seen[(case.operation.label, response.status_code)] += 1
        _check_answer(case, response, sent)

    t0 = time.monotonic()
    fuzz()
    elapsed = time.monotonic() - t0
    print(f"fuzzed {sum(seen.values())} requests in {elapsed:.1f}s")
    for (label, status), count in sorted(seen.items()):
        print(f"  {label}: {status} x{count}")
    # The fuzz reached past authentication into every operation.
    assert {label for label, status in seen if status not in (401, 403)} >= {
        "GET /api/v1/clusters/",
        "POST /api/v1/clusters/",
        "GET /api/v1/clusters/{name}",
        "GET /api/v1/clusters/{name}/logs",
        "DELETE /api/v1/clusters/{name}",
        "POST /api/v1/clusters/{name}/scale",
        "POST /api/v1/clusters/{name}/adapt",
    }

    # Nothing that existed before was touched.
    assert _active(compat, ALICE) == alice_before
    assert fuzzers in _active(compat, FUZZER)
    after = compat.upstream(
        step("alice", "cluster_state", ALICE, name=alices),
        step("fuzzer", "cluster_state", FUZZER, name=fuzzers),
    )
    for key in ("alice", "fuzzer"):
        assert after[key].value == {"status": "RUNNING", "workers": bystanders[key]["workers"]}

    # Clean up what the fuzzer created.
    for name in _active(compat, FUZZER) - {fuzzers}:
        assert compat.request("DELETE", f"/api/v1/clusters/{name}", FUZZER)[0] == 204
    wait_for(lambda: _active(compat, FUZZER) == {fuzzers}, 60, "the fuzzer's clusters to stop")


def _check_answer(case: Any, response: Any, sent: dict[str, str]) -> None:
    """No 5xx; every error a JSON ``{"error": str}``; status, content type and body as
    docs/openapi.yaml declares them. Failures carry the request as a curl command."""
    repro = case.as_curl_command(headers=sent)
    assert response.status_code < 500, f"{response.status_code} {response.text}\n{repro}"
    if response.status_code >= 400:
        # schemathesis' Response: header names lower-cased, each with a list of values.
        [content_type] = response.headers.get("content-type", [""])
        assert content_type.startswith("application/json"), repro
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), repro
    case.validate_response(
        response,
        checks=[status_code_conformance, content_type_conformance, response_schema_conformance],
        headers=sent,
    )


def _scheduler_environment(name: str) -> dict[str, str]:
    """The environment of a cluster's scheduler process (as its owner can read it): its
    token, and where its TLS certificate and key are."""
    for pid in cluster_pids(name):
        env = dict(
            item.split("=", 1)
            for item in Path(f"/proc/{pid}/environ").read_text().split("\0")
            if "=" in item
        )
        if "DASK_GATEWAY_API_TOKEN" in env:
            return env
    raise AssertionError(f"no process of cluster {name} holds its token")


@contextlib.contextmanager
def _tls_listener(cert_file: str, key_file: str) -> Iterator[int]:
    """A loopback TLS listener presenting the cluster's certificate, as its scheduler would
    (the registry checks that before it adopts a first heartbeat's addresses). Yields its
    port; each connection is closed after the handshake."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return  # closed
            with contextlib.suppress(OSError), context.wrap_socket(conn, server_side=True):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield int(listener.getsockname()[1])
    finally:
        listener.shutdown(socket.SHUT_RDWR)
        listener.close()
        thread.join(timeout=10)


def test_fuzzed_heartbeats(compat: CompatGateway, bystanders: dict[str, dict[str, Any]]) -> None:
    """See _fuzz_heartbeats; the ExitStack stops its TLS listener."""
    with contextlib.ExitStack() as stack:
        _fuzz_heartbeats(compat, bystanders, stack)


def _fuzz_heartbeats(
    compat: CompatGateway, bystanders: dict[str, dict[str, Any]], stack: contextlib.ExitStack
) -> None:
    """Heartbeats are the one route a cluster token opens, and whoever runs the scheduler
    (its owner) holds that token: fuzz their bodies with a real one.

    The target cluster's scheduler only sleeps and its worker limit is 0, so no fuzzed
    count starts processes. Any address the fuzzer sends is replaced by a loopback one
    (keeping its type), so nothing is ever sent off this machine; the scheduler address by
    a listener with the cluster's certificate, which the registry's check of a first
    heartbeat accepts, so fuzzed bodies get past it.
    """
    alices = bystanders["alice"]["name"]
    target = compat.create(FUZZER, runtime="hang", max_workers=0)
    wait_for(lambda: cluster_pids(target), 30, "the target's scheduler process")
    env = _scheduler_environment(target)
    token = env["DASK_GATEWAY_API_TOKEN"]
    listener = _tls_listener(
        env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__CERT"],
        env["DASK_DISTRIBUTED__COMM__TLS__SCHEDULER__KEY"],
    )
    tls_port = stack.enter_context(listener)
    schema = schemathesis.openapi.from_path(OPENAPI)
    operation = schema["/api/v1/clusters/{name}/heartbeat"]["POST"]
    cases = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE, path_parameters={"name": target}),
        operation.as_strategy(GenerationMode.NEGATIVE, path_parameters={"name": target}),
    )
    seen: collections.Counter[int] = collections.Counter()

    @settings(
        max_examples=MAX_EXAMPLES // 4,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def fuzz(case: Any) -> None:
        case.path_parameters["name"] = target
        if isinstance(case.body, dict):
            for key, loopback in (
                ("scheduler_address", f"tls://127.0.0.1:{tls_port}"),
                ("dashboard_address", "http://127.0.0.1:9"),
                ("api_address", "http://127.0.0.1:9"),
            ):
                if isinstance(case.body.get(key), str):
                    case.body[key] = loopback
        sent = {"Authorization": f"token {token}"}
        response = case.call(base_url=compat.address, headers=sent, timeout=60)
        seen[response.status_code] += 1
        repro = case.as_curl_command(headers=sent)
        if response.status_code == 401:
            # Only when schemathesis dropped the credentials (it fuzzes their absence too).
            assert response.request.headers.get("Authorization") != sent["Authorization"], repro
        _check_answer(case, response, sent)

    fuzz()
    print(f"fuzzed heartbeats: {dict(sorted(seen.items()))}")
    assert seen[200] > 0 and seen[422] > 0  # accepted ones and refused ones, not only 401s
    # The target took whatever came, the API still answers, and Envoy still routes the
    # bystanders' TLS (cluster_state connects through it).
    status, _, report = compat.request("GET", f"/api/v1/clusters/{target}", FUZZER)
    assert status == 200 and set(report) >= {"name", "status"}
    after = compat.upstream(
        step("alice", "cluster_state", ALICE, name=alices),
        step("fuzzer", "cluster_state", FUZZER, name=bystanders["fuzzer"]["name"]),
    )
    for key in ("alice", "fuzzer"):
        assert after[key].value == {"status": "RUNNING", "workers": bystanders[key]["workers"]}

    for name in _active(compat, FUZZER):
        assert compat.request("DELETE", f"/api/v1/clusters/{name}", FUZZER)[0] == 204
    assert compat.request("DELETE", f"/api/v1/clusters/{alices}", ALICE)[0] == 204
    wait_for(lambda: not _active(compat, FUZZER), 60, "the fuzzer's clusters to stop")
