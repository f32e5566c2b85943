"""Byte quantities: ``"2 G"`` and friends (binary units, as dask-gateway)."""

from __future__ import annotations

from typing import Any

import pytest
from flotilla_common.units import parse_bytes


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, 0),
        (1073741824, 2**30),
        (1.9, 1),
        ("123", 123),
        ("2 G", 2 * 2**30),
        ("2G", 2 * 2**30),
        ("512 M", 512 * 2**20),
        ("1.5 G", 3 * 2**29),
        ("1 T", 2**40),
        ("4 K", 4096),
        ("2 g", 2 * 2**30),
        ("2 Gi", 2 * 2**30),
        ("2GiB", 2 * 2**30),
        ("100 B", 100),
        (" 8 M ", 8 * 2**20),
        (".5 K", 512),
        ("10 T", 10 * 2**40),
    ],
)
def test_parse_bytes(value: Any, expected: int) -> None:
    assert parse_bytes(value) == expected
    assert isinstance(parse_bytes(value), int)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "G",
        "2 GB",
        "2 MB",
        "2 P",
        "two G",
        "-1",
        "-1 G",
        "1e9",
        -1,
        True,
        None,
        [1],
        float("nan"),
        float("inf"),
        "9" * 400 + ".5 G",  # a fraction beyond a float's range
    ],
)
def test_parse_bytes_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_bytes(value)
