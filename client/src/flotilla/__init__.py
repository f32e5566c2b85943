"""Flotilla client: the dask-gateway client API for Flotilla gateways, and more."""
from __future__ import annotations

# Generated protobuf code for ``flotilla.<svc>.v1`` is installed by another
# distribution (flotilla-protos) into this same package namespace.
__path__ = __import__("pkgutil").extend_path(__path__, __name__)
