"""Which backend a new cluster runs on, when a gateway offers several.

Precedence, first match wins:

1. an options handler's ``{"backend": name}`` (the administrator's own logic);
2. the cluster option named ``backend_option`` (a user's choice), whose default each user
   sees set to their mapped backend;
3. ``backend_by_user[user]``;
4. the first group of ``backend_by_group`` (in its order) the user belongs to;
5. ``default_backend``.

A name the gateway does not offer is refused with a 422 naming the offered ones.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from flotilla_common.identity import Identity

from .errors import InvalidRequest
from .options import Options, Select, String

__all__ = ["BackendChoice"]


@dataclass(frozen=True)
class BackendChoice:
    """The gateway's offered backends and how users are assigned to them."""

    backends: tuple[str, ...] = ("local",)
    default_backend: str = "local"
    by_user: Mapping[str, str] = field(default_factory=dict)
    by_group: Mapping[str, str] = field(default_factory=dict)
    option: str = "backend"

    def __post_init__(self) -> None:
        named = {
            "default_backend": [self.default_backend],
            "backend_by_user": list(self.by_user.values()),
            "backend_by_group": list(self.by_group.values()),
        }
        for setting, names in named.items():
            for name in names:
                if name not in self.backends:
                    raise ValueError(
                        f"c.Registry.{setting} names backend {name!r}, which "
                        f"c.Registry.backends {list(self.backends)} does not offer"
                    )

    def mapped(self, identity: Identity) -> str:
        """The backend of ``identity``'s clusters when nothing else chooses."""
        if identity.user in self.by_user:
            return self.by_user[identity.user]
        for group, backend in self.by_group.items():
            if group in identity.groups:
                return backend
        return self.default_backend

    def offer(self, options: Options, identity: Identity) -> Options:
        """``options`` as ``identity`` sees them: the backend option defaults to their
        mapped backend (when it is one of its choices)."""
        mapped = self.mapped(identity)
        fields = list(options.fields)
        for i, f in enumerate(fields):
            if f.field != self.option or f.default == mapped:
                continue
            if (isinstance(f, Select) and mapped in f.options) or isinstance(f, String):
                personal = copy.copy(f)
                personal.default = mapped
                fields[i] = personal
                offered = copy.copy(options)
                offered.fields = tuple(fields)
                return offered
        return options

    def choose(
        self, overrides: dict[str, Any], options: Mapping[str, Any], identity: Identity
    ) -> str:
        """The backend of a new cluster; pops ``backend`` from the handler's ``overrides``."""
        chosen = overrides.pop("backend", None)
        if chosen is None and self.option and self.option in options:
            chosen = options[self.option]
        backend = chosen or self.mapped(identity)
        if not isinstance(backend, str) or backend not in self.backends:
            raise InvalidRequest(
                f"Backend {backend!r} is not offered; choose from {list(self.backends)}"
            )
        return backend
