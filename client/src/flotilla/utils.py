"""Small helpers shared by the client modules."""

from __future__ import annotations

import os
from typing import TypeVar

__all__ = ["format_template"]

T = TypeVar("T")


def format_template(x: T) -> T:
    """Fill ``{ENV_VAR}`` placeholders of a string from ``os.environ``.

    Anything that is not a string is returned unchanged.
    """
    if isinstance(x, str):
        return x.format(**os.environ)  # type: ignore[return-value]
    return x
