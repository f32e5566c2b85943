"""Cluster options: spec JSON, validation messages, transform, handlers, per-user specs."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flotilla_common.identity import Identity
from flotilla_registry.options import (
    Bool,
    Float,
    HandlerUser,
    Integer,
    Mapping,
    Options,
    OptionsError,
    OptionsView,
    Select,
    String,
    resolve_options,
)

ALICE = Identity(user="alice", groups=frozenset({"staff", "gpu"}), admin=False)


def example_options(**kwargs: Any) -> Options:
    return Options(
        Integer("worker_cores", default=1, min=1, max=4, label="Worker cores"),
        Float("worker_memory", default=1, min=0.5, max=8, label="Worker memory (GiB)"),
        String("image", default="daskgateway/dask-gateway:latest"),
        Bool("gpu"),
        Select("profile", ["small", ("large", {"cores": 4})], label="Profile"),
        Mapping("env", label="Environment"),
        **kwargs,
    )


# --- specification ----------------------------------------------------------------------------


def test_specification_is_the_dask_gateway_json() -> None:
    spec = example_options().get_specification()
    assert spec == [
        {
            "field": "worker_cores",
            "label": "Worker cores",
            "default": 1,
            "spec": {"type": "int", "min": 1, "max": 4},
        },
        {
            "field": "worker_memory",
            "label": "Worker memory (GiB)",
            "default": 1,
            "spec": {"type": "float", "min": 0.5, "max": 8.0},
        },
        {
            "field": "image",
            "label": "image",
            "default": "daskgateway/dask-gateway:latest",
            "spec": {"type": "string"},
        },
        {"field": "gpu", "label": "gpu", "default": False, "spec": {"type": "bool"}},
        {
            "field": "profile",
            "label": "Profile",
            "default": "small",
            "spec": {"type": "select", "options": ["small", "large"]},
        },
        {"field": "env", "label": "Environment", "default": {}, "spec": {"type": "mapping"}},
    ]
    # Exactly what goes on the wire.
    assert json.loads(json.dumps(spec)) == spec


def test_float_spec_sends_default_as_given_and_bounds_as_floats() -> None:
    (entry,) = Options(Float("x", default=1, min=0.5, max=8)).get_specification()
    assert entry["default"] == 1 and isinstance(entry["default"], int)
    assert isinstance(entry["spec"]["max"], float)
    assert json.dumps(entry["spec"]) == '{"type": "float", "min": 0.5, "max": 8.0}'


def test_unbounded_numbers_send_null_bounds() -> None:
    spec = Options(Integer("n"), Float("f")).get_specification()
    assert spec[0] == {
        "field": "n",
        "label": "n",
        "default": 0,
        "spec": {"type": "int", "min": None, "max": None},
    }
    assert spec[1]["spec"] == {"type": "float", "min": None, "max": None}
    assert spec[1]["default"] == 0.0


def test_field_defaults() -> None:
    assert String("s").default == ""
    assert Bool("b").default is False
    assert Mapping("m").default == {}
    assert Select("p", ["a", "b"]).default == "a"
    assert Select("p", ["a", "b"], default="b").default == "b"


def test_empty_options_spec() -> None:
    assert Options().get_specification() == []
    assert Options().parse_options({}) == {}


def test_mapping_default_is_copied_into_spec_and_parse() -> None:
    default = {"A": "1"}
    options = Options(Mapping("env", default=default))
    parsed = options.parse_options({})
    parsed["env"]["B"] = "2"
    assert options.get_specification()[0]["default"] == {"A": "1"}
    assert options.parse_options({}) == {"env": {"A": "1"}}


# --- declaration errors ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda: Integer("n", default=10, max=4),
        lambda: Integer("n", default=True),
        lambda: Integer("n", default=1.0),
        lambda: Float("f", default="1"),
        lambda: String("s", default=1),
        lambda: Bool("b", default=0),
        lambda: Select("p", ["a"], default="z"),
        lambda: Mapping("m", default=[1]),
    ],
)
def test_invalid_default_is_a_declaration_error(make: Any) -> None:
    with pytest.raises(ValueError, match="invalid default"):
        make()


@pytest.mark.parametrize(
    ("make", "exc"),
    [
        (lambda: Integer("n", min=5, max=1), ValueError),
        (lambda: Integer("n", min=1.5), TypeError),
        (lambda: Float("f", min=2, max=1, default=1.5), ValueError),
        (lambda: Float("f", max=float("nan")), TypeError),
        (lambda: Select("p", []), ValueError),
        (lambda: Select("p", "abc"), TypeError),
        (lambda: Select("p", ["a", "a"]), ValueError),
        (lambda: Select("p", [1]), TypeError),
        (lambda: Select("p", [("a", 1, 2)]), TypeError),
        (lambda: Integer(""), TypeError),
        (lambda: Options(Integer("n"), Integer("n")), ValueError),
        (lambda: Options(Integer("a", target="x"), Integer("x")), ValueError),
        (lambda: Options("n"), TypeError),
        (lambda: Options(handler=lambda: {}), TypeError),
    ],
)
def test_bad_declarations(make: Any, exc: type[Exception]) -> None:
    with pytest.raises(exc):
        make()


# --- parse_options --------------------------------------------------------------------------


def test_parse_fills_defaults_and_normalises() -> None:
    assert example_options().parse_options({"worker_memory": 2, "gpu": True}) == {
        "worker_cores": 1,
        "worker_memory": 2.0,
        "image": "daskgateway/dask-gateway:latest",
        "gpu": True,
        "profile": "small",
        "env": {},
    }


def test_parse_normalises_float_default() -> None:
    parsed = example_options().parse_options({})
    assert parsed["worker_memory"] == 1.0 and isinstance(parsed["worker_memory"], float)


@pytest.mark.parametrize("requested", [None, {}])
def test_parse_missing_or_null_options(requested: Any) -> None:
    assert example_options().parse_options(requested)["worker_cores"] == 1


SCHEMA = Options(
    Integer("worker_cores", default=1, min=1, max=4),
    Float("worker_memory", default=1, min=0.5, max=8),
    String("image"),
    Bool("bad"),
    Select("profile", ["small", "large"]),
    Mapping("env"),
)


@pytest.mark.parametrize(
    ("requested", "message"),
    [
        ([], "options must be a dict, got 'list'"),
        ("x", "options must be a dict, got 'str'"),
        ({"foo": 1}, "Unknown fields ['foo']"),
        ({"zed": 1, "foo": 1, "worker_cores": 2}, "Unknown fields ['foo', 'zed']"),
        ({"worker_cores": "2"}, "worker_cores must be an integer, got '2'"),
        ({"worker_cores": 2.0}, "worker_cores must be an integer, got 2.0"),
        # Upstream accepts true as 1 (isinstance(True, int)); we do not.
        ({"worker_cores": True}, "worker_cores must be an integer, got True"),
        ({"worker_cores": None}, "worker_cores must be an integer, got None"),
        ({"worker_cores": 10}, "worker_cores must be <= 4.000000, got 10"),
        ({"worker_cores": 0}, "worker_cores must be >= 1.000000, got 0"),
        ({"worker_memory": 100}, "worker_memory must be <= 8.000000, got 100.0"),
        ({"worker_memory": 100.0}, "worker_memory must be <= 8.000000, got 100.0"),
        ({"worker_memory": 0.25}, "worker_memory must be >= 0.500000, got 0.25"),
        ({"worker_memory": "1"}, "worker_memory must be a float, got '1'"),
        ({"worker_memory": False}, "worker_memory must be a float, got False"),
        ({"worker_memory": float("nan")}, "worker_memory must be a finite float, got nan"),
        ({"worker_memory": float("inf")}, "worker_memory must be a finite float, got inf"),
        # An int beyond a float's range (JSON allows it) is no float either.
        ({"worker_memory": 10**400}, f"worker_memory must be a finite float, got {10**400}"),
        ({"image": 3}, "image must be a string, got 3"),
        ({"bad": 1}, "bad must be a bool, got 1"),
        ({"bad": "true"}, "bad must be a bool, got 'true'"),
        ({"profile": "huge"}, "'huge' is not a valid option for profile"),
        ({"profile": 1}, "profile must be a string, got 1"),
        ({"env": [1]}, "env must be a mapping, got [1]"),
        ({"env": "A=1"}, "env must be a mapping, got 'A=1'"),
    ],
)
def test_validation_messages(requested: Any, message: str) -> None:
    with pytest.raises(OptionsError) as info:
        SCHEMA.parse_options(requested)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_float_accepts_int_and_stores_float() -> None:
    value = SCHEMA.parse_options({"worker_memory": 4})["worker_memory"]
    assert value == 4.0 and isinstance(value, float)


def test_bounds_are_inclusive() -> None:
    assert SCHEMA.parse_options({"worker_cores": 4})["worker_cores"] == 4
    assert SCHEMA.parse_options({"worker_memory": 0.5})["worker_memory"] == 0.5


def test_parse_copies_mapping_values() -> None:
    env = {"A": {"nested": 1}}
    parsed = SCHEMA.parse_options({"env": env})
    parsed["env"]["A"]["nested"] = 2
    assert env == {"A": {"nested": 1}}


# --- transform_options ----------------------------------------------------------------------


def test_transform_renames_targets_and_maps_select_values() -> None:
    options = Options(
        Integer("cores", default=1, target="worker_cores"),
        Select("profile", [("small", {"m": 1}), ("large", {"m": 8})], target="resources"),
        Select("image", ["a", ("b", "registry/b:1")]),
        Mapping("env", target="environment"),
        String("name"),
    )
    parsed = options.parse_options({"profile": "large", "image": "b", "env": {"K": "V"}})
    assert parsed == {
        "cores": 1,
        "profile": "large",
        "image": "b",
        "env": {"K": "V"},
        "name": "",
    }
    assert options.transform_options(parsed) == {
        "worker_cores": 1,
        "resources": {"m": 8},
        "image": "registry/b:1",
        "environment": {"K": "V"},
        "name": "",
    }
    # A key without a value stands for itself.
    assert options.transform_options({**parsed, "image": "a"})["image"] == "a"


def test_transform_fills_missing_fields_with_defaults() -> None:
    options = Options(Float("f", default=1, target="g"), Select("p", [("k", 42)]))
    assert options.transform_options({}) == {"g": 1.0, "p": 42}


def test_transform_copies_select_values() -> None:
    select = Select("p", [("k", {"list": [1]})])
    options = Options(select)
    options.transform_options({"p": "k"})["p"]["list"].append(2)
    assert select.options["k"] == {"list": [1]}


# --- get_configuration and handlers ---------------------------------------------------------


async def test_without_handler_transformed_options_are_the_overrides() -> None:
    options = Options(Integer("cores", default=2, target="worker_cores"), Mapping("environment"))
    parsed = options.parse_options({"environment": {"A": "1"}})
    assert await options.get_configuration(parsed, ALICE) == {
        "worker_cores": 2,
        "environment": {"A": "1"},
    }


async def test_sync_handler_without_user_gets_a_read_only_view() -> None:
    seen: dict[str, Any] = {}

    def handler(options: Any) -> dict[str, Any]:
        seen["options"] = options
        return {"worker_cores": options.worker_cores, "worker_memory": options["mem"] * 2**30}

    options = Options(
        Integer("worker_cores", default=1),
        Select("size", [("small", 1)], target="mem"),
        handler=handler,
    )
    result = await options.get_configuration(options.parse_options({"worker_cores": 3}), ALICE)
    assert result == {"worker_cores": 3, "worker_memory": 2**30}
    view = seen["options"]
    assert isinstance(view, OptionsView)
    assert dict(view) == {"worker_cores": 3, "mem": 1}
    assert "mem" in view and len(view) == 2 and "mem" in dir(view)
    with pytest.raises(AttributeError):
        view.worker_cores = 4
    with pytest.raises(TypeError):
        view["worker_cores"] = 4  # type: ignore[index]
    with pytest.raises(AttributeError):
        _ = view.missing


async def test_async_handler_with_user() -> None:
    async def handler(options: Any, user: HandlerUser) -> dict[str, Any]:
        return {
            "environment": {
                "USERNAME_FROM_HANDLER": user.name,
                "GROUPS": ",".join(sorted(user.groups)),
                "ADMIN": str(user.admin),
                "FOO": options.foo,
            }
        }

    options = Options(String("foo", default="bar"), handler=handler)
    result = await options.get_configuration(options.parse_options({}), ALICE)
    assert result == {
        "environment": {
            "USERNAME_FROM_HANDLER": "alice",
            "GROUPS": "gpu,staff",
            "ADMIN": "False",
            "FOO": "bar",
        }
    }


async def test_handler_user_groups_is_a_fresh_set_per_call() -> None:
    seen: list[set[str]] = []

    def handler(options: Any, user: Any) -> dict[str, Any]:
        assert isinstance(user.groups, set)
        seen.append(set(user.groups))
        user.groups.add("mutated")
        return {}

    options = Options(handler=handler)
    await options.get_configuration({}, ALICE)
    await options.get_configuration({}, ALICE)
    assert seen == [{"staff", "gpu"}, {"staff", "gpu"}]


async def test_handler_arity_decides_the_user_argument() -> None:
    calls: list[tuple[Any, ...]] = []

    class Handlers:
        def one(self, options: Any) -> dict[str, Any]:
            calls.append((options,))
            return {}

        def two(self, options: Any, user: Any) -> dict[str, Any]:
            calls.append((options, user))
            return {}

        def star(self, *args: Any) -> dict[str, Any]:
            calls.append(args)
            return {}

    h = Handlers()
    for handler, expected in ((h.one, 1), (h.two, 2), (h.star, 2)):
        calls.clear()
        await Options(handler=handler).get_configuration({}, ALICE)
        assert len(calls[0]) == expected


async def test_handler_returning_awaitable_from_sync_callable() -> None:
    async def inner() -> dict[str, Any]:
        return {"worker_cores": 5}

    options = Options(handler=lambda options: inner())
    assert await options.get_configuration({}, ALICE) == {"worker_cores": 5}


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_handler_exceptions_become_options_errors(asynchronous: bool) -> None:
    def sync_handler(options: Any, user: Any) -> dict[str, Any]:
        raise RuntimeError(f"{user.name} may not use GPUs")

    async def async_handler(options: Any, user: Any) -> dict[str, Any]:
        raise KeyError("gpu")

    handler = async_handler if asynchronous else sync_handler
    with pytest.raises(OptionsError) as info:
        await Options(handler=handler).get_configuration({}, ALICE)
    assert str(info.value) == ("'gpu'" if asynchronous else "alice may not use GPUs")


async def test_handler_exception_without_message_names_its_type() -> None:
    def handler(options: Any) -> dict[str, Any]:
        raise ZeroDivisionError

    with pytest.raises(OptionsError, match=r"^ZeroDivisionError$"):
        await Options(handler=handler).get_configuration({}, ALICE)


async def test_handler_must_return_a_mapping() -> None:
    options = Options(handler=lambda options: [("worker_cores", 1)])
    with pytest.raises(OptionsError, match="handler must return a dict, got 'list'"):
        await options.get_configuration({}, ALICE)


# --- per-user option specs ------------------------------------------------------------------


async def test_resolve_options_passes_options_through() -> None:
    options = example_options()
    assert await resolve_options(options, ALICE) is options


async def test_resolve_options_sync_and_async_callables() -> None:
    def sync_spec(user: HandlerUser) -> Options:
        return Options(Integer("worker_cores", max=8 if "gpu" in user.groups else 2))

    async def async_spec(user: HandlerUser) -> Options:
        return Options(String("owner", default=user.name))

    resolved = await resolve_options(sync_spec, ALICE)
    assert resolved.get_specification()[0]["spec"]["max"] == 8
    bob = Identity(user="bob")
    assert (await resolve_options(sync_spec, bob)).get_specification()[0]["spec"]["max"] == 2
    resolved = await resolve_options(async_spec, ALICE)
    assert resolved.get_specification()[0]["default"] == "alice"


async def test_resolve_options_rejects_non_options() -> None:
    with pytest.raises(TypeError):
        await resolve_options(lambda user: {"worker_cores": 1}, ALICE)  # type: ignore[arg-type,return-value]
