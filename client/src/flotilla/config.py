"""Load the client's ``gateway.*`` dask configuration defaults."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import dask.config
import yaml

__all__ = ["load_defaults"]

_loaded = False


def _missing(new: Mapping[str, Any], current: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``new`` whose keys are absent from ``current`` (recursively)."""
    out: dict[str, Any] = {}
    for key, value in new.items():
        if key not in current:
            out[key] = value
        elif isinstance(value, Mapping) and isinstance(current[key], Mapping):
            sub = _missing(value, current[key])
            if sub:
                out[key] = sub
    return out


def load_defaults() -> None:
    """Register ``gateway.yaml`` as dask config defaults, once.

    Keys already known to dask (dask-gateway may be installed alongside) keep
    their existing defaults and values.
    """
    global _loaded
    if _loaded:
        return
    _loaded = True
    path = os.path.join(os.path.dirname(__file__), "gateway.yaml")
    with open(path) as f:
        new = yaml.safe_load(f)
    current = dask.config.merge(*dask.config.defaults, dask.config.config)
    missing = _missing(new, current)
    if missing:
        dask.config.update_defaults(missing)


load_defaults()
