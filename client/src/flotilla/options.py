"""Cluster options as the gateway describes them (dask-gateway's option spec).

The server sends a list of field specs::

    {"field": "worker_cores", "label": "Worker Cores", "default": 1,
     "spec": {"type": "int", "min": 1, "max": 4}}

:class:`Options` turns them into a mutable mapping with attribute access that validates
every assignment the way the server will, with the same messages.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterator, MutableMapping, Sequence
from collections.abc import Mapping as _Mapping
from keyword import iskeyword
from typing import Any, ClassVar, NoReturn

__all__ = [
    "Bool",
    "Field",
    "Float",
    "Integer",
    "InvalidOptionError",
    "Mapping",
    "OptionSpecError",
    "Options",
    "Select",
    "String",
]


class InvalidOptionError(ValueError, TypeError):
    """An option value was rejected.

    A ``ValueError``; also a ``TypeError`` because dask-gateway raises ``TypeError`` for
    values of the wrong type, and code written for it may catch that.
    """


class OptionSpecError(ValueError, KeyError):
    """The server's option spec is malformed (missing key, unknown type...).

    Also a ``KeyError``, which is what dask-gateway raises for an unknown type.
    """

    __str__ = BaseException.__str__


class Field:
    """One option field.

    Parameters
    ----------
    field : str
        The option's name.
    default : object
        The default value; validated like any other value.
    label : str, optional
        A human-readable label; defaults to ``field``.
    """

    type_name: ClassVar[str] = ""
    _types: ClassVar[dict[str, type[Field]]] = {}

    def __init__(self, field: str, default: Any, label: str | None = None) -> None:
        self.field = field
        self.label = label or field
        self.default = default
        self.value = self.validate(default)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.type_name:
            Field._types[cls.type_name] = cls

    @classmethod
    def from_spec(cls, spec: _Mapping[str, Any]) -> Field:
        """Build a field from one server spec entry.

        Parameters
        ----------
        spec : mapping
            ``{"field", "label", "default", "spec": {"type", ...}}``.

        Returns
        -------
        field : Field
        """
        if not isinstance(spec, _Mapping):
            raise OptionSpecError(f"Option spec must be a mapping, got {spec!r}")
        missing = [k for k in ("field", "label", "default", "spec") if k not in spec]
        if missing:
            raise OptionSpecError(f"Option spec {spec!r} is missing {missing}")
        type_spec = dict(spec["spec"])
        typ = type_spec.pop("type", None)
        try:
            field_cls = Field._types[typ]
        except (KeyError, TypeError):
            raise OptionSpecError(
                f"Unknown option type {typ!r} for field {spec['field']!r} (this client "
                f"supports {sorted(Field._types)}); upgrading flotilla may help"
            ) from None
        return field_cls(spec["field"], spec["default"], label=spec["label"], **type_spec)

    def to_spec(self) -> dict[str, Any]:
        """The server spec entry this field corresponds to.

        Returns
        -------
        spec : dict
        """
        return {
            "field": self.field,
            "label": self.label,
            "default": self.default,
            "spec": {"type": self.type_name, **self._spec_extra()},
        }

    def _spec_extra(self) -> dict[str, Any]:
        return {}

    def _invalid(self, msg: str) -> NoReturn:
        raise InvalidOptionError(msg)

    def validate(self, x: Any) -> Any:
        """Check ``x`` and return its normalised value.

        Raises
        ------
        InvalidOptionError
            (a ``ValueError``) naming the field when ``x`` is not acceptable.
        """
        raise NotImplementedError

    def set(self, value: Any) -> None:
        """Validate and store ``value``."""
        self.value = self.validate(value)

    def get(self) -> Any:
        """The current value."""
        return self.value

    def __repr__(self) -> str:
        return f"{type(self).__name__}<{self.field}={self.value!r}>"


class String(Field):
    """A string option (``{"type": "string"}``)."""

    type_name = "string"

    def validate(self, x: Any) -> Any:
        if not isinstance(x, str):
            self._invalid(f"{self.field} must be a string, got {x!r}")
        return x


class Bool(Field):
    """A boolean option (``{"type": "bool"}``)."""

    type_name = "bool"

    def validate(self, x: Any) -> Any:
        if not isinstance(x, bool):
            self._invalid(f"{self.field} must be a bool, got {x!r}")
        return x


class _Number(Field):
    def __init__(
        self,
        field: str,
        default: Any,
        label: str | None = None,
        min: Any = None,
        max: Any = None,
    ) -> None:
        self.field = field
        self.min = self.max = None
        # Bounds go through the same type check as values (an int field gets int bounds).
        self.min = None if min is None else self.validate(min)
        self.max = None if max is None else self.validate(max)
        super().__init__(field, default, label=label)

    def _check_bounds(self, x: Any) -> Any:
        if self.min is not None and x < self.min:
            self._invalid(f"{self.field} must be >= {self.min:f}, got {x}")
        if self.max is not None and x > self.max:
            self._invalid(f"{self.field} must be <= {self.max:f}, got {x}")
        return x

    def _spec_extra(self) -> dict[str, Any]:
        return {"min": self.min, "max": self.max}


class Integer(_Number):
    """An integer option (``{"type": "int", "min": .., "max": ..}``).

    Like dask-gateway, ``True``/``False`` pass as integers.
    """

    type_name = "int"

    def validate(self, x: Any) -> Any:
        if not isinstance(x, int):
            self._invalid(f"{self.field} must be an integer, got {x!r}")
        return self._check_bounds(x)


class Float(_Number):
    """A float option (``{"type": "float", "min": .., "max": ..}``); ints become floats."""

    type_name = "float"

    def validate(self, x: Any) -> Any:
        if isinstance(x, int):
            x = float(x)
        if not isinstance(x, float):
            self._invalid(f"{self.field} must be a float, got {x!r}")
        return self._check_bounds(x)


class Select(Field):
    """One of a fixed set of strings (``{"type": "select", "options": [...]}``)."""

    type_name = "select"

    def __init__(
        self,
        field: str,
        default: Any,
        label: str | None = None,
        options: Sequence[str] | None = None,
    ) -> None:
        if isinstance(options, str) or not isinstance(options, Sequence):
            raise OptionSpecError(f"Select options for {field} must be a list, got {options!r}")
        if not options:
            raise OptionSpecError(f"Select field {field} must have at least one option")
        for o in options:
            if not isinstance(o, str):
                raise OptionSpecError(f"Select options must be strings, got {o!r}")
        self.options = tuple(options)
        super().__init__(field, default, label=label)

    def validate(self, x: Any) -> Any:
        if not isinstance(x, str):
            self._invalid(f"{self.field} must be a string, got {x!r}")
        if x not in self.options:
            self._invalid(f"{x!r} is not a valid option for {self.field}")
        return x

    def _spec_extra(self) -> dict[str, Any]:
        return {"options": list(self.options)}


class Mapping(Field):
    """A dict option, e.g. environment variables (``{"type": "mapping"}``)."""

    type_name = "mapping"

    def validate(self, x: Any) -> Any:
        if not isinstance(x, dict):
            # dask-gateway's client names the type, not the value.
            self._invalid(f"{self.field} must be a dict, got {type(x).__name__!r}")
        return x


class Options(MutableMapping[str, Any]):
    """The cluster options a gateway offers, with their current values.

    A mutable mapping with attribute access. Fields cannot be added or removed; every
    assignment is validated (``ValueError`` naming the field when invalid).

    Parameters
    ----------
    *fields : Field
        The option fields, in display order.

    Examples
    --------
    >>> options = gateway.cluster_options()  # doctest: +SKIP
    >>> options.worker_cores = 2  # doctest: +SKIP
    >>> options["worker_cores"]  # doctest: +SKIP
    2
    """

    _fields: dict[str, Field]

    def __init__(self, *fields: Field) -> None:
        object.__setattr__(self, "_fields", {f.field: f for f in fields})

    @classmethod
    def _from_spec(cls, spec: Sequence[_Mapping[str, Any]]) -> Options:
        return cls(*(Field.from_spec(s) for s in spec))

    @classmethod
    def from_spec(cls, spec: Sequence[_Mapping[str, Any]]) -> Options:
        """Build options from the server's list of field specs.

        Parameters
        ----------
        spec : list of mapping
            As returned by the gateway (``cluster_options`` of dask-gateway's REST API).

        Returns
        -------
        options : Options
        """
        return cls._from_spec(spec)

    def to_spec(self) -> list[dict[str, Any]]:
        """The field specs these options were built from.

        Returns
        -------
        spec : list of dict
        """
        return [f.to_spec() for f in self._fields.values()]

    @property
    def fields(self) -> dict[str, Field]:
        """The fields, by name."""
        return dict(self._fields)

    def _field(self, key: str, exc_cls: type[Exception]) -> Field:
        try:
            return self._fields[key]
        except KeyError:
            raise exc_cls(f"No option {key!r} available") from None

    def __getattr__(self, key: str) -> Any:
        if key.startswith("__"):
            raise AttributeError(key)
        return self._field(key, AttributeError).get()

    def __setattr__(self, key: str, value: Any) -> None:
        self._field(key, AttributeError).set(value)

    def __getitem__(self, key: str) -> Any:
        return self._field(key, KeyError).get()

    def __setitem__(self, key: str, value: Any) -> None:
        self._field(key, KeyError).set(value)

    def __delitem__(self, key: str) -> NoReturn:
        raise TypeError("Cannot delete fields")

    def __delattr__(self, key: str) -> NoReturn:
        raise TypeError("Cannot delete fields")

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        names.update(f for f in self._fields if f.isidentifier() and not iskeyword(f))
        return sorted(names)

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={f.value!r}" for k, f in self._fields.items())
        return f"Options<{inner}>"

    def _repr_pretty_(self, p: Any, cycle: bool) -> None:
        p.text("Options<...>" if cycle else repr(self))

    def _repr_html_(self) -> str:
        esc: Callable[[object], str] = lambda x: html.escape(str(x))  # noqa: E731
        rows = "".join(
            f"<tr><th style='text-align: left'>{esc(f.label)}</th>"
            f"<td><code>{esc(k)}</code></td><td>{esc(repr(f.value))}</td></tr>"
            for k, f in self._fields.items()
        )
        return (
            "<table><thead><tr><th>Option</th><th>Field</th><th>Value</th></tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )
