"""Byte quantities written the way dask-gateway administrators write them (``"2 G"``)."""

from __future__ import annotations

import math
import re

__all__ = ["parse_bytes"]

# Binary units only, as in dask-gateway: "G" is 2**30. "Gi"/"GiB" are accepted as
# unambiguous spellings of the same unit; decimal spellings ("GB") are rejected rather
# than guessed, because dask's own parse_bytes reads "GB" as 10**9.
_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
_PATTERN = re.compile(
    r"^\s*(?P<num>[0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*(?:(?P<unit>[KMGT])(?:I|IB)?|B)?\s*$",
    re.IGNORECASE,
)


def parse_bytes(value: object) -> int:
    """Return ``value`` as a whole number of bytes.

    ``value`` is an int, a finite non-negative float (rounded down), or a string: a number
    optionally followed by ``K``/``M``/``G``/``T`` (binary: ``"1.5 G"`` is ``1.5 * 2**30``).
    Raises ``ValueError`` for anything else, including booleans and negative amounts.
    """
    if isinstance(value, bool):
        raise ValueError(f"expected a number of bytes or a string like '2 G', got {value!r}")
    if isinstance(value, int):
        amount: float = value
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number of bytes, got {value!r}")
        amount = value
    elif isinstance(value, str):
        match = _PATTERN.match(value)
        if match is None:
            raise ValueError(
                f"expected a number of bytes or a string like '2 G' (units K, M, G, T; "
                f"binary), got {value!r}"
            )
        unit = (match["unit"] or "").upper()
        number = match["num"]
        # Whole numbers stay exact even for huge values; fractions go through float.
        amount = int(number) * _UNITS[unit] if number.isdigit() else float(number) * _UNITS[unit]
        if not math.isfinite(amount):
            raise ValueError(f"expected a finite number of bytes, got {value!r}")
    else:
        raise ValueError(f"expected a number of bytes or a string like '2 G', got {value!r}")
    if amount < 0:
        raise ValueError(f"a number of bytes cannot be negative, got {value!r}")
    return int(amount)
