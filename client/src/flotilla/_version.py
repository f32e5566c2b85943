"""The installed client's version."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

__all__ = ["__version__"]

try:
    __version__ = version("flotilla")
except PackageNotFoundError:  # running from a source tree
    __version__ = "0+unknown"
