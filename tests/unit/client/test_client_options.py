"""Client-side cluster options: every field type, every validation message, spec round-trip."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from flotilla.options import (
    Bool,
    Float,
    Integer,
    InvalidOptionError,
    Mapping,
    Options,
    OptionSpecError,
    Select,
    String,
)

SPEC: list[dict[str, Any]] = [
    {"field": "n", "label": "N", "default": 1, "spec": {"type": "int", "min": 1, "max": 4}},
    {"field": "mem", "label": "Mem", "default": 1, "spec": {"type": "float", "min": 0.5, "max": 8}},
    {"field": "label", "label": "Label", "default": "x", "spec": {"type": "string"}},
    {"field": "flag", "label": "Flag", "default": False, "spec": {"type": "bool"}},
    {
        "field": "profile",
        "label": "Profile",
        "default": "small",
        "spec": {"type": "select", "options": ["small", "large"]},
    },
    {"field": "env", "label": "Env", "default": {}, "spec": {"type": "mapping"}},
]


@pytest.fixture
def options() -> Options:
    return Options.from_spec(copy.deepcopy(SPEC))


def test_from_spec_values_and_types(options: Options) -> None:
    assert dict(options) == {
        "n": 1,
        "mem": 1.0,
        "label": "x",
        "flag": False,
        "profile": "small",
        "env": {},
    }
    assert isinstance(options.mem, float)
    assert [type(f) for f in options.fields.values()] == [
        Integer,
        Float,
        String,
        Bool,
        Select,
        Mapping,
    ]
    assert options.fields["n"].label == "N"
    assert list(options) == ["n", "mem", "label", "flag", "profile", "env"]
    assert len(options) == 6


def test_spec_round_trip(options: Options) -> None:
    out = options.to_spec()
    expected = copy.deepcopy(SPEC)
    # Bounds are normalised by type (an int bound on a float field becomes a float).
    expected[1]["spec"]["max"] = 8.0
    assert out == expected
    assert Options.from_spec(out).to_spec() == out
    assert Options._from_spec(out).to_spec() == out  # dask-gateway's private name


def test_attribute_and_item_access(options: Options) -> None:
    options.n = 2
    assert options["n"] == 2
    options["label"] = "hello"
    assert options.label == "hello"
    options.update({"flag": True, "profile": "large"})
    assert (options.flag, options.profile) == (True, "large")
    assert "env" in dir(options)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("n", "2", "n must be an integer, got '2'"),
        ("n", 2.0, "n must be an integer, got 2.0"),
        ("n", 10, "n must be <= 4.000000, got 10"),
        ("n", 0, "n must be >= 1.000000, got 0"),
        ("mem", "1", "mem must be a float, got '1'"),
        ("mem", 100, "mem must be <= 8.000000, got 100.0"),
        ("mem", 0.1, "mem must be >= 0.500000, got 0.1"),
        ("label", 1, "label must be a string, got 1"),
        ("flag", 1, "flag must be a bool, got 1"),
        ("profile", "huge", "'huge' is not a valid option for profile"),
        ("profile", 1, "profile must be a string, got 1"),
        ("env", [1], "env must be a dict, got 'list'"),
    ],
)
def test_invalid_values(options: Options, key: str, value: Any, message: str) -> None:
    before = options[key]
    with pytest.raises(ValueError) as info:
        options[key] = value
    assert str(info.value) == message
    # Also a TypeError (what dask-gateway raises for wrong types), and named for the field.
    assert isinstance(info.value, InvalidOptionError)
    assert isinstance(info.value, TypeError)
    with pytest.raises(ValueError, match=key):
        setattr(options, key, value)
    assert options[key] == before


def test_valid_conversions(options: Options) -> None:
    options.mem = 2
    assert options.mem == 2.0 and isinstance(options.mem, float)
    options.n = True  # like upstream: bool is an int
    assert options.n is True
    options.env = {"A": "1"}
    assert options.env == {"A": "1"}


def test_unknown_option(options: Options) -> None:
    with pytest.raises(AttributeError, match="No option 'nope' available"):
        options.nope = 1
    with pytest.raises(AttributeError, match="No option 'nope' available"):
        _ = options.nope
    with pytest.raises(KeyError, match="No option 'nope' available"):
        options["nope"] = 1
    with pytest.raises(KeyError):
        _ = options["nope"]
    with pytest.raises(TypeError, match="Cannot delete fields"):
        del options["n"]
    with pytest.raises(TypeError, match="Cannot delete fields"):
        del options.n


def test_unknown_spec_type_is_clear() -> None:
    bad = [{"field": "gpu", "label": "GPU", "default": 1, "spec": {"type": "gpu-count"}}]
    with pytest.raises(OptionSpecError) as info:
        Options.from_spec(bad)
    msg = str(info.value)
    assert "Unknown option type 'gpu-count' for field 'gpu'" in msg
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("missing", ["field", "label", "default", "spec"])
def test_spec_missing_key(missing: str) -> None:
    entry = dict(SPEC[0])
    del entry[missing]
    with pytest.raises(OptionSpecError, match=f"missing \\['{missing}'\\]"):
        Options.from_spec([entry])


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        (
            {"field": "n", "label": "N", "default": 9, "spec": {"type": "int", "max": 4}},
            "n must be <= 4.000000, got 9",
        ),
        (
            {"field": "e", "label": "E", "default": None, "spec": {"type": "mapping"}},
            "e must be a dict, got 'NoneType'",
        ),
        (
            {
                "field": "s",
                "label": "S",
                "default": "z",
                "spec": {"type": "select", "options": ["a"]},
            },
            "'z' is not a valid option for s",
        ),
    ],
)
def test_invalid_default_is_rejected(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Options.from_spec([entry])


def test_select_needs_string_options() -> None:
    with pytest.raises(OptionSpecError, match="at least one option"):
        Select("s", "a", options=[])
    with pytest.raises(OptionSpecError, match="must be strings"):
        Select("s", "a", options=["a", 1])  # type: ignore[list-item]
    with pytest.raises(OptionSpecError, match="must be a list"):
        Select("s", "a", options="abc")


def test_unbounded_numbers() -> None:
    f = Integer("n", 0)
    f.set(-(10**12))
    assert f.get() == -(10**12)
    assert f.to_spec()["spec"] == {"type": "int", "min": None, "max": None}


def test_reprs(options: Options) -> None:
    assert repr(options).startswith("Options<n=1, mem=1.0")
    html = options._repr_html_()
    assert "<table>" in html and "Profile" in html
    options.label = "<b>"
    assert "&lt;b&gt;" in options._repr_html_()
