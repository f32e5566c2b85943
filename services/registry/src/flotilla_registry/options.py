"""Cluster options: the fields an administrator offers users when they create a cluster.

An :class:`Options` declares typed fields (``Integer``, ``Float``, ``String``, ``Bool``,
``Select``, ``Mapping``) and an optional handler. The registry

1. serves :meth:`Options.get_specification` on ``GET /api/v1/options`` (the JSON the
   dask-gateway client builds its ``Options`` object from);
2. validates a creation request with :meth:`Options.parse_options` (the normalised result
   is stored and reported back as the cluster's ``options``);
3. turns the normalised options into ``ClusterConfig`` overrides with
   :meth:`Options.get_configuration` (``transform_options`` + the handler).

Validation messages are the ones dask-gateway's server and client produce (see
``wire-contract.md`` section 6); every failure is an :class:`OptionsError`, which the REST
layer answers with 422 ``{"error": str(exc)}``. Nothing here does I/O.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Awaitable, Callable, Iterator, Sequence
from collections.abc import Mapping as MappingABC
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, NoReturn, TypeAlias

from flotilla_common.identity import Identity

__all__ = [
    "Bool",
    "Field",
    "Float",
    "HandlerUser",
    "Integer",
    "Mapping",
    "Options",
    "OptionsError",
    "OptionsSpec",
    "OptionsView",
    "Select",
    "String",
    "resolve_options",
]


class OptionsError(ValueError):
    """Invalid cluster options, or an option handler that failed: a 422 with ``str(exc)``."""


@dataclass(frozen=True, eq=False)
class HandlerUser:
    """The user as option handlers and per-user option specs see it (dask-gateway's ``User``).

    ``groups`` is a fresh ``set`` for every call, so a handler that mutates it changes
    nothing outside that call.
    """

    name: str
    groups: set[str]
    admin: bool

    @classmethod
    def from_identity(cls, identity: Identity) -> HandlerUser:
        """The handler's view of an authenticated :class:`Identity`."""
        return cls(name=identity.user, groups=set(identity.groups), admin=identity.admin)


class OptionsView(MappingABC[str, Any]):
    """A read-only mapping with attribute access: what a handler receives as ``options``.

    ``options["worker_cores"]`` and ``options.worker_cores`` are the same value.
    """

    __slots__ = ("_data",)

    def __init__(self, data: MappingABC[str, Any]) -> None:
        object.__setattr__(self, "_data", MappingProxyType(dict(data)))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: object) -> NoReturn:
        raise AttributeError("cluster options are read-only")

    def __delattr__(self, name: str) -> NoReturn:
        raise AttributeError("cluster options are read-only")

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._data))

    def __repr__(self) -> str:
        return f"OptionsView({dict(self._data)!r})"


# ---------------------------------------------------------------------------------------------
# Fields


class Field:
    """One user-facing option.

    Parameters
    ----------
    field:
        The option's name, as users pass it (``new_cluster(worker_cores=2)``).
    default:
        The value used when the user does not set the option. It is validated at
        declaration time, since the client re-validates it with its own rules.
    label:
        Human-readable name shown by the client's widget. Defaults to ``field``.
    target:
        The key the value is stored under after :meth:`Options.transform_options` (the
        handler's ``options`` and, without a handler, the ``ClusterConfig`` override).
        Defaults to ``field``.
    """

    #: The ``spec.type`` the dask-gateway client dispatches on.
    spec_type: ClassVar[str]

    def __init__(
        self,
        field: str,
        default: Any,
        label: str | None = None,
        target: str | None = None,
    ) -> None:
        if not isinstance(field, str) or not field:
            raise TypeError(f"field name must be a non-empty string, got {field!r}")
        self.field = field
        self.label = field if label is None else label
        self.target = field if target is None else target
        self.default = default

    def _check_default(self) -> None:
        # Called by subclasses once their own attributes are set.
        try:
            self.validate(self.default)
        except OptionsError as exc:
            raise ValueError(f"invalid default for option {self.field!r}: {exc}") from None

    def json_spec(self) -> dict[str, Any]:
        """The ``spec`` object of this field in ``GET /api/v1/options``."""
        return {"type": self.spec_type}

    def json_default(self) -> Any:
        """The ``default`` sent to clients (as declared, not normalised)."""
        return self.default

    def specification(self) -> dict[str, Any]:
        """This field's entry in ``GET /api/v1/options``."""
        return {
            "field": self.field,
            "label": self.label,
            "default": self.json_default(),
            "spec": self.json_spec(),
        }

    def validate(self, value: Any) -> Any:
        """Return ``value`` normalised, or raise :class:`OptionsError`."""
        raise NotImplementedError

    def transform(self, value: Any) -> Any:
        """The handler-facing value of an already validated ``value``."""
        return value

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.field!r}, default={self.default!r})"


def _is_int(value: object) -> bool:
    # Deliberate difference from upstream: JSON ``true`` is not an integer (or a float).
    # Python's isinstance(True, int) let dask-gateway's server accept {"workers": true} as
    # 1; we reject booleans for numeric fields.
    return isinstance(value, int) and not isinstance(value, bool)


class _Number(Field):
    """Shared bounds handling of :class:`Integer` and :class:`Float`."""

    min: float | None
    max: float | None

    def _check_bounds(self, value: float) -> None:
        if self.min is not None and value < self.min:
            raise OptionsError(f"{self.field} must be >= {self.min:f}, got {value}")
        if self.max is not None and value > self.max:
            raise OptionsError(f"{self.field} must be <= {self.max:f}, got {value}")

    def json_spec(self) -> dict[str, Any]:
        return {"type": self.spec_type, "min": self.min, "max": self.max}


class Integer(_Number):
    """An integer option, optionally bounded (``spec {"type": "int", "min", "max"}``)."""

    spec_type = "int"
    min: int | None
    max: int | None

    def __init__(
        self,
        field: str,
        default: int = 0,
        min: int | None = None,
        max: int | None = None,
        label: str | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__(field, default, label=label, target=target)
        for name, bound in (("min", min), ("max", max)):
            if bound is not None and not _is_int(bound):
                raise TypeError(f"{name} of option {field!r} must be an int, got {bound!r}")
        if min is not None and max is not None and min > max:
            raise ValueError(f"option {field!r} has min {min} > max {max}")
        self.min = min
        self.max = max
        self._check_default()

    def validate(self, value: Any) -> int:
        if not _is_int(value):
            raise OptionsError(f"{self.field} must be an integer, got {value!r}")
        self._check_bounds(value)
        return int(value)


class Float(_Number):
    """A float option; ints are accepted and stored as floats. Bounds are sent as floats."""

    spec_type = "float"

    def __init__(
        self,
        field: str,
        default: float = 0.0,
        min: float | None = None,
        max: float | None = None,
        label: str | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__(field, default, label=label, target=target)
        self.min = self._bound("min", min)
        self.max = self._bound("max", max)
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"option {field!r} has min {self.min} > max {self.max}")
        self._check_default()

    def _bound(self, name: str, bound: float | None) -> float | None:
        if bound is None:
            return None
        if not (_is_int(bound) or isinstance(bound, float)) or not math.isfinite(bound):
            raise TypeError(f"{name} of option {self.field!r} must be a number, got {bound!r}")
        return float(bound)

    def validate(self, value: Any) -> float:
        if not (_is_int(value) or isinstance(value, float)):
            raise OptionsError(f"{self.field} must be a float, got {value!r}")
        try:
            number = float(value)
        except OverflowError:  # an int beyond a float's range
            number = math.inf
        # JSON parsers (Python's included) accept NaN and Infinity; neither is a sensible
        # option value and NaN would slip through every bound check.
        if not math.isfinite(number):
            raise OptionsError(f"{self.field} must be a finite float, got {value!r}")
        self._check_bounds(number)
        return number


class String(Field):
    """A free-text option (``spec {"type": "string"}``)."""

    spec_type = "string"

    def __init__(
        self,
        field: str,
        default: str = "",
        label: str | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__(field, default, label=label, target=target)
        self._check_default()

    def validate(self, value: Any) -> str:
        if not isinstance(value, str):
            raise OptionsError(f"{self.field} must be a string, got {value!r}")
        return value


class Bool(Field):
    """A true/false option (``spec {"type": "bool"}``)."""

    spec_type = "bool"

    def __init__(
        self,
        field: str,
        default: bool = False,
        label: str | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__(field, default, label=label, target=target)
        self._check_default()

    def validate(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise OptionsError(f"{self.field} must be a bool, got {value!r}")
        return value


class Select(Field):
    """A choice among string keys, each optionally standing for any Python value.

    ``options`` is a sequence of keys, or of ``(key, value)`` tuples, or a mix. Users (and
    the stored options) see keys; :meth:`Options.transform_options` hands the handler the
    associated value (the key itself when no value was given). The default is the first key.
    """

    spec_type = "select"

    def __init__(
        self,
        field: str,
        options: Sequence[str | tuple[str, Any]],
        default: str | None = None,
        label: str | None = None,
        target: str | None = None,
    ) -> None:
        if isinstance(options, str | bytes) or not isinstance(options, Sequence):
            raise TypeError(f"options of {field!r} must be a list of keys or (key, value) tuples")
        values: dict[str, Any] = {}
        for entry in options:
            if isinstance(entry, tuple):
                if len(entry) != 2:
                    raise TypeError(f"option entries of {field!r} must be (key, value) pairs")
                key, value = entry
            else:
                key = value = entry
            if not isinstance(key, str):
                raise TypeError(f"option keys of {field!r} must be strings, got {key!r}")
            if key in values:
                raise ValueError(f"option {field!r} lists the key {key!r} twice")
            values[key] = value
        if not values:
            raise ValueError(f"option {field!r} needs at least one choice")
        self.options: dict[str, Any] = values
        super().__init__(field, next(iter(values)) if default is None else default, label, target)
        self._check_default()

    def json_spec(self) -> dict[str, Any]:
        return {"type": self.spec_type, "options": list(self.options)}

    def validate(self, value: Any) -> str:
        if not isinstance(value, str):
            raise OptionsError(f"{self.field} must be a string, got {value!r}")
        if value not in self.options:
            raise OptionsError(f"{value!r} is not a valid option for {self.field}")
        return value

    def transform(self, value: Any) -> Any:
        # A copy: a handler mutating its value must not change the declaration.
        return copy.deepcopy(self.options[value])


class Mapping(Field):
    """A dict option, e.g. extra environment variables (``spec {"type": "mapping"}``)."""

    spec_type = "mapping"

    def __init__(
        self,
        field: str,
        default: MappingABC[str, Any] | None = None,
        label: str | None = None,
        target: str | None = None,
    ) -> None:
        super().__init__(field, {} if default is None else default, label=label, target=target)
        self._check_default()

    def json_default(self) -> Any:
        return dict(self.default)

    def validate(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, MappingABC):
            raise OptionsError(f"{self.field} must be a mapping, got {value!r}")
        return copy.deepcopy(dict(value))


# ---------------------------------------------------------------------------------------------
# Options

Handler: TypeAlias = Callable[..., "MappingABC[str, Any] | Awaitable[MappingABC[str, Any]]"]


def _takes_user(handler: Handler) -> bool:
    """Whether ``handler`` is called as ``handler(options, user)`` (else ``handler(options)``).

    Decided, as in dask-gateway, by the number of positional parameters: one means no
    user. ``*args`` counts as room for the user.
    """
    try:
        parameters = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):  # some builtins and C callables have no signature
        return False
    positional = 0
    for parameter in parameters:
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            return True
        if parameter.kind in (
            inspect.Parameter.POSITIONAL_ONLY,
            inspect.Parameter.POSITIONAL_OR_KEYWORD,
        ):
            positional += 1
    if positional == 0:
        raise TypeError("an options handler must accept (options) or (options, user)")
    return positional >= 2


def _error_text(exc: BaseException) -> str:
    # An empty message would make an unhelpful 422; fall back to the exception's type.
    return str(exc) or type(exc).__name__


class Options:
    """The cluster options offered to users, and how they become cluster configuration.

    Parameters
    ----------
    *fields:
        The option fields, in the order clients show them.
    handler:
        ``handler(options)`` or ``handler(options, user)``, sync or async, returning a
        dict of ``ClusterConfig`` overrides. ``options`` is an :class:`OptionsView` of the
        transformed values; ``user`` a :class:`HandlerUser`. Without a handler the
        transformed options themselves are the overrides.
    """

    def __init__(self, *fields: Field, handler: Handler | None = None) -> None:
        names: set[str] = set()
        targets: set[str] = set()
        for f in fields:
            if not isinstance(f, Field):
                raise TypeError(f"Options takes Field instances, got {f!r}")
            if f.field in names:
                raise ValueError(f"option {f.field!r} is declared twice")
            if f.target in targets:
                raise ValueError(f"two options have the target {f.target!r}")
            names.add(f.field)
            targets.add(f.target)
        self.fields: tuple[Field, ...] = fields
        self.handler = handler
        self._handler_takes_user = False if handler is None else _takes_user(handler)

    def __repr__(self) -> str:
        return f"Options({', '.join(map(repr, self.fields))})"

    def get_specification(self) -> list[dict[str, Any]]:
        """The ``cluster_options`` list of ``GET /api/v1/options``."""
        return [f.specification() for f in self.fields]

    def parse_options(self, requested: object) -> dict[str, Any]:
        """Validate a user's requested options; return every field, defaults filled in.

        ``None`` counts as ``{}`` (the REST API treats a missing or null
        ``cluster_options`` so). Raises :class:`OptionsError` with dask-gateway's messages.
        """
        if requested is None:
            requested = {}
        if not isinstance(requested, MappingABC):
            raise OptionsError(f"options must be a dict, got {type(requested).__name__!r}")
        known = {f.field for f in self.fields}
        unknown = sorted(str(key) for key in requested if key not in known)
        if unknown:
            raise OptionsError(f"Unknown fields {unknown}")
        return {
            f.field: f.validate(requested[f.field] if f.field in requested else f.default)
            for f in self.fields
        }

    def transform_options(self, options: MappingABC[str, Any]) -> dict[str, Any]:
        """Rename fields to their targets and map ``Select`` keys to their values.

        ``options`` are normalised options (the output of :meth:`parse_options`); a field
        missing from them takes its default.
        """
        result: dict[str, Any] = {}
        for f in self.fields:
            value = options[f.field] if f.field in options else f.validate(f.default)
            result[f.target] = f.transform(value)
        return result

    async def get_configuration(
        self, options: MappingABC[str, Any], user: Identity
    ) -> dict[str, Any]:
        """The ``ClusterConfig`` overrides for normalised ``options`` requested by ``user``.

        Any exception raised by the handler (or a handler returning something other than
        a mapping) becomes an :class:`OptionsError` carrying its message.
        """
        transformed = self.transform_options(options)
        if self.handler is None:
            return transformed
        view = OptionsView(transformed)
        try:
            if self._handler_takes_user:
                result = self.handler(view, HandlerUser.from_identity(user))
            else:
                result = self.handler(view)
            if inspect.isawaitable(result):
                result = await result
        except OptionsError:
            raise
        except Exception as exc:
            raise OptionsError(_error_text(exc)) from exc
        if not isinstance(result, MappingABC):
            raise OptionsError(
                f"cluster options handler must return a dict, got {type(result).__name__!r}"
            )
        return dict(result)


OptionsSpec: TypeAlias = "Options | Callable[[HandlerUser], Options | Awaitable[Options]]"


async def resolve_options(spec: OptionsSpec, user: Identity) -> Options:
    """The :class:`Options` offered to ``user``.

    ``spec`` is an :class:`Options`, or a callable ``f(user) -> Options`` (sync or async)
    for per-user options; it receives the same :class:`HandlerUser` view as handlers.
    Exceptions from the callable propagate unchanged: they are deployment bugs, not bad
    requests. A callable returning anything but an ``Options`` raises ``TypeError``.
    """
    if isinstance(spec, Options):
        return spec
    result = spec(HandlerUser.from_identity(user))
    if inspect.isawaitable(result):
        result = await result
    if not isinstance(result, Options):
        raise TypeError(f"cluster options callable must return Options, got {result!r}")
    return result
