"""Flotilla registry: the single source of truth for clusters."""

__version__ = "0.1.0"
