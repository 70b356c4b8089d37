"""Typed validation of plain YAML data against frozen dataclasses.

A component declares its parameters as a frozen dataclass; :func:`build` turns the mapping read
from YAML into an instance, or raises :class:`~cnmt.errors.ConfigError` naming the key path, the
bad value and what was expected. Supported field types: ``bool``, ``int``, ``float`` (ints are
accepted), ``str``, ``Literal[...]``, ``X | None``, ``list[X]``, ``tuple[X, ...]``,
``dict[str, X]``, nested dataclasses, and ``Annotated[T, marker]`` where the marker has a
``build_value(value, path, where)`` method that does the conversion (this is how a field selects
a registered component: :func:`cnmt.registry.component`). Fields without a default are required.

Every number must be finite (YAML's ``.inf`` and ``.nan`` are refused). A numeric field may
declare its range with :func:`ranged` (``threads: int = ranged(1, low=1, high=64)``); a value
outside it fails naming the key, the value and the range. :func:`range_rows` lists the ranges
of a schema, which is how docs/configuration.md's table of ranges is generated.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Annotated, Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from cnmt.errors import ConfigError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class NoParams:
    """Parameters of a component that takes none."""


RANGE_KEY = "cnmt_range"


@dataclasses.dataclass(frozen=True)
class Range:
    """Where a number may lie: ``low <= x <= high`` (``low < x`` with ``above``); a bound that
    is None is not checked."""

    low: float | None = None
    high: float | None = None
    above: bool = False  # the low bound is excluded

    def contains(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.above else value < self.low):
            return False
        return self.high is None or value <= self.high

    def describe(self) -> str:
        low = "" if self.low is None else f"{_bound(self.low)} {'<' if self.above else '<='} "
        high = "" if self.high is None else f" <= {_bound(self.high)}"
        return f"{low}x{high}"


def _bound(value: float) -> str:
    return f"{value:,}" if float(value).is_integer() else f"{value:g}"


def ranged(
    default: Any = dataclasses.MISSING,
    *,
    low: float | None = None,
    high: float | None = None,
    above: bool = False,
) -> Any:
    """A dataclass field with a range (see :class:`Range`) and a default (none: required); a
    None value of an optional field is not checked."""
    return dataclasses.field(
        default=default, metadata={RANGE_KEY: Range(low=low, high=high, above=above)}
    )


def field_range(field: dataclasses.Field[Any]) -> Range | None:
    value = field.metadata.get(RANGE_KEY)
    return value if isinstance(value, Range) else None


def range_rows(cls: Any, prefix: str = "") -> list[tuple[str, str, Any, bool]]:
    """``(key, range, default, integer)`` of every ranged field of ``cls`` and its nested
    dataclasses (``integer``: the field takes integers only)."""
    rows: list[tuple[str, str, Any, bool]] = []
    hints = get_type_hints(cls, include_extras=True)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        found = field_range(f)
        if found is not None:
            integer = int in (hints[f.name], *get_args(hints[f.name]))
            default = None if f.default is dataclasses.MISSING else to_plain(f.default)
            rows.append((key, found.describe(), default, integer))
        for option in (hints[f.name], *get_args(hints[f.name])):
            if dataclasses.is_dataclass(option):
                rows.extend(range_rows(option, f"{key}."))
    return rows


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return repr(value)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, int) and value.bit_length() > 200:  # repr() refuses beyond 4,300 digits
        return f"an integer of about {int(value.bit_length() * math.log10(2)) + 1} digits"
    return repr(value)


def _builder(tp: Any) -> Any:
    """The marker of an ``Annotated`` type that converts values itself, or None."""
    if get_origin(tp) is not Annotated:
        return None
    return next((m for m in tp.__metadata__ if hasattr(m, "build_value")), None)


def type_name(tp: Any) -> str:
    """A short human name for a field type, as used in error messages and `cnmt plugins`."""
    origin = get_origin(tp)
    marker = _builder(tp)
    if marker is not None:
        return str(getattr(marker, "description", "a mapping"))
    if tp is bool:
        return "a boolean"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        inner = [a for a in get_args(tp) if a is not type(None)]
        return " or ".join(type_name(a) for a in inner) + " or null"
    if origin in (list, tuple):
        return f"a list of {type_name(get_args(tp)[0]).removeprefix('a ').removeprefix('an ')}s"
    if origin is dict:
        return "a mapping"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return getattr(tp, "__name__", str(tp))


def fail(where: str, path: str, message: str) -> typing.NoReturn:
    """Raise the ConfigError of a bad value: ``FILE: key.path: message``."""
    prefix = f"{where}: " if where else ""
    raise ConfigError(f"{prefix}{path or '<top>'}: {message}")


def build(cls: type[T], data: Any, *, path: str = "", where: str = "") -> T:
    """Validate ``data`` against dataclass ``cls`` and return an instance.

    ``path`` is the dotted key path of ``data`` in its file and ``where`` names the file; both
    only serve error messages.
    """
    return _convert(cls, data, path, where)


def _convert(tp: Any, value: Any, path: str, where: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    marker = _builder(tp)
    if marker is not None:
        return marker.build_value(value, path, where)
    if dataclasses.is_dataclass(tp):
        return _build_dataclass(tp, value, path, where)
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        non_null = [a for a in args if a is not type(None)]
        errors = []
        for option in non_null:
            try:
                return _convert(option, value, path, where)
            except ConfigError as exc:
                errors.append(exc)
        if len(non_null) == 1:
            raise errors[0]
        fail(where, path, f"expected {type_name(tp)}, got {_describe(value)}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices or isinstance(value, bool) != any(
            isinstance(c, bool) for c in choices
        ):
            valid = ", ".join(repr(c) for c in choices)
            fail(where, path, f"{_describe(value)} is not a valid choice; valid: {valid}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list):
            fail(where, path, f"expected {type_name(tp)}, got {_describe(value)}")
        item = get_args(tp)[0]
        items = [_convert(item, v, f"{path}[{i}]", where) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            fail(where, path, f"expected a mapping, got {_describe(value)}")
        key_tp, value_tp = get_args(tp)
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                fail(where, path, f"keys must be strings, got {_describe(k)}")
            out[k] = _convert(value_tp, v, f"{path}.{k}" if path else k, where)
        return out
    if tp is bool:
        if not isinstance(value, bool):
            fail(where, path, f"expected a boolean (true/false), got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            fail(where, path, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            fail(where, path, f"expected a number, got {_describe(value)}")
        if isinstance(value, int) and value.bit_length() > 1000:
            fail(where, path, f"expected a finite number, got {_describe(value)}")
        if not math.isfinite(value):
            fail(where, path, f"expected a finite number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            fail(where, path, f"expected a string, got {_describe(value)}")
        return value
    raise TypeError(f"unsupported schema type {tp!r} at {path}")


def _build_dataclass(cls: Any, value: Any, path: str, where: str) -> Any:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        fail(where, path, f"expected a mapping, got {_describe(value)}")
    hints = get_type_hints(cls, include_extras=True)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(value) - set(fields))
    if unknown:
        key = unknown[0]
        valid = ", ".join(sorted(fields)) or "(none: this component takes no parameters)"
        fail(where, _join(path, str(key)), f"unknown key; valid keys: {valid}")
    kwargs = {}
    for name, field in fields.items():
        sub = _join(path, name)
        if name in value:
            kwargs[name] = _convert(hints[name], value[name], sub, where)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            fail(where, sub, f"missing required key ({type_name(hints[name])})")
    # The declared ranges first: one message for every key, naming its value and its range.
    for name, field in fields.items():
        limits = field_range(field)
        converted = kwargs.get(name)
        if (
            limits is not None
            and isinstance(converted, int | float)
            and not isinstance(converted, bool)
            and not limits.contains(converted)
        ):
            fail(
                where,
                _join(path, name),
                f"{_describe(converted)} is out of range: {limits.describe()}",
            )
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as exc:
        # __post_init__ checks of a component (consistency, further rules) become config
        # errors too.
        fail(where, path, str(exc))


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One parameter of a schema, as `cnmt plugins --params` shows it."""

    name: str
    type: str
    required: bool
    default: Any = None  # meaningful only when not required (it may itself be None)


def describe_fields(cls: Any) -> list[FieldInfo]:
    """Each field of a params dataclass: its type, and its default or that it is required."""
    hints = get_type_hints(cls, include_extras=True)
    rows = []
    for f in dataclasses.fields(cls):
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = None
        if not required:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        rows.append(FieldInfo(f.name, type_name(hints[f.name]), required, to_plain(default)))
    return rows


def to_plain(obj: Any) -> Any:
    """A dataclass tree as plain dicts and lists, for printing as YAML or JSON."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_plain(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_plain(v) for k, v in obj.items()}
    return obj
