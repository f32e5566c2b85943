"""Cluster options: the spec JSON for every field type, the upstream client's view of it,
``target`` renaming, ``Select`` values, handlers with and without ``user``, and the
server's validation messages."""

from __future__ import annotations

import json
from typing import Any

import pytest
from compat.harness import ALICE, CAROL, DAVE, VALUE_ERROR, CompatGateway, raised, step

pytestmark = pytest.mark.timeout(600)

EXPECTED_SPEC = [
    {
        "field": "worker_cores",
        "label": "Worker cores",
        "default": 1,
        "spec": {"type": "int", "min": 1, "max": 2},
    },
    {
        "field": "worker_memory_gib",
        "label": "Worker memory (GiB)",
        "default": 0.5,
        "spec": {"type": "float", "min": 0.25, "max": 1.5},
    },
    {"field": "label", "label": "Label", "default": "compat", "spec": {"type": "string"}},
    {"field": "pin", "label": "Pin", "default": False, "spec": {"type": "bool"}},
    {
        "field": "runtime",
        "label": "Runtime",
        "default": "flotilla",
        "spec": {"type": "select", "options": ["flotilla", "upstream", "hang", "broken"]},
    },
    {"field": "environment", "label": "Environment", "default": {}, "spec": {"type": "mapping"}},
    {
        "field": "max_workers",
        "label": "max_workers",  # no label given: the field name
        "default": 6,
        "spec": {"type": "int", "min": 0, "max": 8},
    },
    {
        "field": "idle_timeout",
        "label": "Idle timeout (s)",
        "default": 0,  # sent as declared, not normalised (as upstream)
        "spec": {"type": "float", "min": 0.0, "max": 600.0},
    },
]

# (keyword options the upstream client sends unvalidated, the server's 422 text)
REJECTED = [
    ({"foo": 1}, "Unknown fields ['foo']"),
    ({"zeta": 1, "alpha": 2}, "Unknown fields ['alpha', 'zeta']"),
    ({"worker_cores": 10}, "worker_cores must be <= 2.000000, got 10"),
    ({"worker_cores": 0}, "worker_cores must be >= 1.000000, got 0"),
    ({"worker_cores": "2"}, "worker_cores must be an integer, got '2'"),
    ({"worker_cores": 2.0}, "worker_cores must be an integer, got 2.0"),
    ({"worker_memory_gib": 100}, "worker_memory_gib must be <= 1.500000, got 100.0"),
    ({"worker_memory_gib": 0.1}, "worker_memory_gib must be >= 0.250000, got 0.1"),
    ({"worker_memory_gib": "big"}, "worker_memory_gib must be a float, got 'big'"),
    ({"label": 5}, "label must be a string, got 5"),
    ({"pin": 1}, "pin must be a bool, got 1"),
    ({"runtime": "huge"}, "'huge' is not a valid option for runtime"),
    ({"environment": [1]}, "environment must be a mapping, got [1]"),
    # The handler's exception text, and ClusterConfig's own limits.
    ({"label": "explode"}, "the label 'explode' is reserved"),
    (
        {"label": "huge-scheduler"},
        "Scheduler memory request of 68719476736 exceeds cluster memory limit of 34359738368",
    ),
    (
        {"label": "many-scheduler-cores"},
        "Scheduler cores request of 32 exceeds cluster cores limit of 16",
    ),
]


@pytest.fixture(scope="module")
def observed(compat: CompatGateway) -> dict[str, Any]:
    values = {
        "worker_cores": 2,
        "worker_memory_gib": 1,
        "label": "from-options",
        "pin": True,
        "environment": {"COMPAT_EXTRA": "from-mapping"},
    }
    results = compat.upstream(
        step("alice", "options", ALICE, values=values, kwargs={"max_workers": 3}),
        step("dave", "options", DAVE, values={"label": "dave's"}, kwargs={}),
        step(
            "carol",
            "worker_config",
            CAROL,
            kwargs={"cores": 2, "memory": "768 M", "flavour": "marked"},
        ),
        step("rejected", "rejected_options", ALICE, cases=[kw for kw, _ in REJECTED]),
    )
    return {key: r.value for key, r in results.items()}


def test_spec_json_has_every_field_type(compat: CompatGateway) -> None:
    status, _, body = compat.request("GET", "/api/v1/options", ALICE)
    assert status == 200
    assert body == {"cluster_options": EXPECTED_SPEC}


def test_spec_depends_on_the_user(compat: CompatGateway) -> None:
    status, _, body = compat.request("GET", "/api/v1/options", CAROL)
    assert status == 200
    assert [(f["field"], f["spec"]["type"], f["default"]) for f in body["cluster_options"]] == [
        ("cores", "int", 1),
        ("memory", "string", "512 M"),
        ("flavour", "select", "plain"),
    ]
    assert body["cluster_options"][2]["spec"]["options"] == ["plain", "marked"]


def test_upstream_client_parses_every_field(observed: dict[str, Any]) -> None:
    fields = observed["alice"]["fields"]
    assert {name: f["class"] for name, f in fields.items()} == {
        "worker_cores": "Integer",
        "worker_memory_gib": "Float",
        "label": "String",
        "pin": "Bool",
        "runtime": "Select",
        "environment": "Mapping",
        "max_workers": "Integer",
        "idle_timeout": "Float",
    }
    assert fields["runtime"]["options"] == ["flotilla", "upstream", "hang", "broken"]
    assert (fields["worker_memory_gib"]["min"], fields["worker_memory_gib"]["max"]) == (0.25, 1.5)
    assert observed["alice"]["defaults"]["label"] == "compat"
    assert fields["idle_timeout"]["value"] == 0.0 and fields["max_workers"]["value"] == 6


def test_options_object_and_keywords_are_stored_normalised(observed: dict[str, Any]) -> None:
    options = observed["alice"]["report"]["options"]
    assert options == {
        "worker_cores": 2,
        "worker_memory_gib": 1.0,
        "label": "from-options",
        "pin": True,
        "runtime": "flotilla",
        "environment": {"COMPAT_EXTRA": "from-mapping"},
        "max_workers": 3,  # the keyword wins over the Options object
        "idle_timeout": 0.0,
    }
    assert isinstance(options["worker_memory_gib"], float)


def test_handler_sees_targets_select_values_and_user(observed: dict[str, Any]) -> None:
    env = observed["alice"]["scheduler"]["env"]
    # The handler's options are the transformed ones: renamed to their targets, and the
    # Select key replaced by its value.
    assert json.loads(env["COMPAT_OPTIONS"]) == {
        "worker_cores": 2,
        "memory_gib": 1.0,
        "label": "from-options",
        "pin": True,
        "commands": {},
        "environment": {"COMPAT_EXTRA": "from-mapping"},
        "cluster_max_workers": 3,
        "idle_timeout": 0.0,
    }
    assert env["COMPAT_EXTRA"] == "from-mapping"  # the Mapping reached the environment
    assert env["COMPAT_USER"] == ALICE
    # The default runtime is ours (test_upstream_preload compares the upstream one with it).
    assert observed["alice"]["scheduler"]["preloads"] == ["flotilla.scheduler_preload"]
    assert env["COMPAT_GROUPS"] == "physics,staff"
    assert env["COMPAT_ADMIN"] == "False"


def test_handler_without_user(observed: dict[str, Any]) -> None:
    env = observed["dave"]["scheduler"]["env"]
    assert json.loads(env["COMPAT_OPTIONS"])["label"] == "dave's"
    assert "COMPAT_USER" not in env


def test_options_without_handler_are_the_overrides(observed: dict[str, Any]) -> None:
    r = observed["carol"]
    assert r["report"]["options"] == {"cores": 2, "memory": "768 M", "flavour": "marked"}
    # flavour -> environment (a Select value that is a dict), cores -> worker_cores,
    # memory -> worker_memory ('768 M' parsed with binary units).
    assert r["scheduler"]["env"] == {"COMPAT_MARK": "yes"}
    assert r["workers"] == [{"nthreads": 2, "memory_limit": 768 * 2**20}]


@pytest.mark.parametrize(("index", "message"), [(i, m) for i, (_, m) in enumerate(REJECTED)])
def test_rejected_options_reach_the_client_as_value_errors(
    observed: dict[str, Any], index: int, message: str
) -> None:
    assert raised(observed["rejected"][index]) == (VALUE_ERROR, message, None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"cluster_options": [1]}', "options must be a dict, got 'list'"),
        (b'{"cluster_options": "x"}', "options must be a dict, got 'str'"),
        (
            b'{"cluster_options": {"worker_cores": true}}',
            "worker_cores must be an integer, got True",
        ),
        (
            b'{"cluster_options": {"idle_timeout": NaN}}',
            "idle_timeout must be a finite float, got nan",
        ),
    ],
)
def test_rejected_bodies(compat: CompatGateway, body: bytes, message: str) -> None:
    status, _, reply = compat.request("POST", "/api/v1/clusters/", ALICE, body)
    assert (status, reply) == (422, {"error": message})


@pytest.mark.parametrize(
    ("user", "options", "fragment"),
    [
        # Beyond a float's range: a 422, not a 500.
        (ALICE, {"worker_memory_gib": 10**400}, "worker_memory_gib must be a finite float"),
        (CAROL, {"memory": "9" * 400 + ".5 G"}, "expected a finite number of bytes"),
        # Environments a process cannot have are refused up front, not at spawn time.
        (ALICE, {"environment": {"A=B": "x"}}, "environment variable names"),
        (ALICE, {"environment": {"": "x"}}, "environment variable names"),
        (ALICE, {"environment": {"A": "x\0y"}}, "environment variable A must not contain NUL"),
    ],
)
def test_values_no_cluster_could_use(
    compat: CompatGateway, user: str, options: dict[str, Any], fragment: str
) -> None:
    status, reply = compat.post_json("/api/v1/clusters/", {"cluster_options": options}, user)
    assert status == 422, reply
    assert fragment in reply["error"]


@pytest.mark.parametrize(
    "body", [b"", b"{}", b'{"cluster_options": null}', b'{"cluster_options": {}}']
)
def test_missing_options_mean_defaults(compat: CompatGateway, body: bytes) -> None:
    status, _, reply = compat.request("POST", "/api/v1/clusters/", CAROL, body)
    assert status == 201, reply
    assert set(reply) == {"name"}
    name = reply["name"]
    try:
        _, _, report = compat.request("GET", f"/api/v1/clusters/{name}", CAROL)
        assert report["options"] == {"cores": 1, "memory": "512 M", "flavour": "plain"}
    finally:
        assert compat.request("DELETE", f"/api/v1/clusters/{name}", CAROL)[0] == 204
