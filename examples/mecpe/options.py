"""Settings declared once as dataclass fields, with the command line generated from them.

A setting is one field whose default is :func:`option`: the default (or a ``factory``),
the help text, and optionally the allowed ``choices``, a value ``check`` and how a resumed run
may change it. :func:`add_options` turns the fields of a dataclass into ``argparse`` options —
flag ``--field-name``, type, choices, default and help all taken from the field — and
:func:`values_from` reads them back; :func:`check_options` validates an instance field by field
with messages that name the setting and its flag. Supported field types:

* ``bool`` → ``--name`` / ``--no-name``;
* ``int``, ``float``, ``str`` and their ``| None`` forms (``none`` on the command line is
  ``None`` for numbers);
* ``tuple[int, ...]`` / ``tuple[str, ...]`` → one comma-separated value;
* ``dict[str, Any]`` → a repeatable ``KEY=VALUE`` flag (values read as JSON scalars).

Example::

    >>> import argparse
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo:
    ...     lr: float = option(1e-3, "learning rate", check=POSITIVE)
    ...     quiet: bool = option(False, "no progress output")
    >>> ap = argparse.ArgumentParser()
    >>> add_options(ap, Demo)
    >>> Demo(**values_from(ap.parse_args(["--lr", "0.1", "--quiet"]), Demo))
    Demo(lr=0.1, quiet=True)
"""

from __future__ import annotations

import argparse
import json
import types
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any, NamedTuple

__all__ = [
    "AT_LEAST_1",
    "NON_NEGATIVE",
    "NOT_ABSENT",
    "POSITIVE",
    "UNIT_INTERVAL",
    "UNIT_OPEN",
    "Check",
    "HelpFormatter",
    "OptionInfo",
    "add_options",
    "check_options",
    "flag_of",
    "info",
    "option",
    "parse_key_values",
    "values_from",
]

_META_KEY = "option"


class _NotAbsent:
    """The type of :data:`NOT_ABSENT`."""

    def __repr__(self) -> str:
        return "NOT_ABSENT"


#: :attr:`OptionInfo.absent` of a setting that every stored file must hold.
NOT_ABSENT: Any = _NotAbsent()


class Check(NamedTuple):
    """A value check: ``predicate(value)`` must hold; ``rule`` completes "must be ..."."""

    predicate: Callable[[Any], bool]
    rule: str


POSITIVE = Check(lambda v: v > 0, "> 0")
NON_NEGATIVE = Check(lambda v: v >= 0, ">= 0")
AT_LEAST_1 = Check(lambda v: v >= 1, ">= 1")
UNIT_INTERVAL = Check(lambda v: 0 <= v < 1, "in [0, 1)")
UNIT_OPEN = Check(lambda v: 0 < v < 1, "in (0, 1)")


@dataclass(frozen=True)
class OptionInfo:
    """What :func:`option` records about a setting (kept in the field's metadata).

    Attributes:
        help: the help text.
        choices: allowed values, or a function returning them (evaluated when used).
        check: a value check (``None`` values of ``X | None`` fields are not checked).
        flag: the command-line flag (default ``--field-name``).
        metavar: the help's placeholder for the value.
        scope: ``"shared"`` (any run), ``"arm"`` (an arm of a study sets it) or ``"run"``
            (a study sets it for each run: seed, fold, output folder, ...).
        on_resume: ``"any"``: may differ when a run is resumed or a finished run is reused;
            ``"interrupted"``: may differ only when an unfinished run is resumed; ``None``:
            must match.
        data: the setting changes the loaded examples (runs that agree on every such setting
            can share them).
        required: the command line must give it.
        absent: the value that a run file or checkpoint written before this setting existed
            ran with, for a setting whose one value before it existed is unambiguous (a new
            switch, off); such a file lacks the key and reads as this value. Unset
            (:data:`NOT_ABSENT`): a file without the key is refused (bump the file format).
    """

    help: str
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    check: Check | None = None
    flag: str | None = None
    metavar: str | None = None
    scope: str = "shared"
    on_resume: str | None = None
    data: bool = False
    required: bool = False
    absent: Any = NOT_ABSENT

    @property
    def has_absent(self) -> bool:
        """Whether a file without this setting's key reads as :attr:`absent`."""
        return self.absent is not NOT_ABSENT

    def allowed(self) -> Sequence[Any] | None:
        """The allowed values (``None``: any)."""
        return self.choices() if callable(self.choices) else self.choices


def option(default: Any, help: str, *, factory: Callable[[], Any] | None = None, **kw: Any) -> Any:
    """A dataclass field holding one setting (keywords: see :class:`OptionInfo`).

    ``factory`` builds a mutable default (``default`` must then be ``None``).
    """
    meta = {_META_KEY: OptionInfo(help, **kw)}
    if factory is not None:
        if default is not None:
            raise ValueError("give default or factory, not both")
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def info(f: Field[Any]) -> OptionInfo:
    """The :class:`OptionInfo` of a field made by :func:`option` (``KeyError`` otherwise)."""
    meta = f.metadata.get(_META_KEY)
    if not isinstance(meta, OptionInfo):
        raise KeyError(f"field {f.name!r} is not declared with option()")
    return meta


def flag_of(f: Field[Any]) -> str:
    """The command-line flag of a field."""
    return info(f).flag or "--" + f.name.replace("_", "-")


def parse_key_values(items: Iterable[str], flag: str) -> dict[str, Any]:
    """``KEY=VALUE`` strings → dict; a value is read as a JSON scalar, else kept as a string.

    >>> parse_key_values(["k=2", "where=output", "detach-negatives=false"], "--x")
    {'k': 2, 'where': 'output', 'detach_negatives': False}
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise ValueError(f"{flag} expects KEY=VALUE, got {item!r}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if isinstance(value, (dict, list)):
            raise ValueError(f"{flag} {key}: only scalar values are allowed, got {raw!r}")
        out[key] = value
    return out


# ------------------------------------------------------------------------------- field types


def _optional(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        return None if text.strip().lower() in ("none", "") else kind(text)

    parse.__name__ = f"{kind.__name__} or none"
    return parse


def _comma_list(kind: type) -> Callable[[str], tuple[Any, ...]]:
    def parse(text: str) -> tuple[Any, ...]:
        return tuple(kind(x.strip()) for x in text.split(",") if x.strip())

    parse.__name__ = f"comma-separated {kind.__name__}s"
    return parse


def _split_optional(hint: Any) -> tuple[Any, bool]:
    """``X | None`` → ``(X, True)``; anything else → ``(hint, False)``."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(hint)) == 2:
            return args[0], True
    return hint, False


def _argparse_kwargs(f: Field[Any], hint: Any, default: Any) -> dict[str, Any]:
    """``add_argument`` keywords for one field."""
    meta = info(f)
    kind, optional = _split_optional(hint)
    kw: dict[str, Any] = {"dest": f.name, "default": default, "help": meta.help}
    if meta.required:
        kw["required"] = True
    if meta.metavar:
        kw["metavar"] = meta.metavar
    origin = typing.get_origin(kind)
    if kind is bool:
        kw["action"] = argparse.BooleanOptionalAction
    elif origin is dict:
        kw.update(action="append", default=_as_items(default))
        kw.setdefault("metavar", "KEY=VALUE")
    elif origin is tuple:
        kw["type"] = _comma_list(typing.get_args(kind)[0])
    elif kind in (int, float, str):
        kw["type"] = _optional(kind) if optional and kind is not str else kind
    else:
        raise TypeError(f"option {f.name!r}: unsupported type {hint!r}")
    choices = meta.allowed()
    if choices is not None:
        kw["choices"] = list(choices)
    return kw


def _as_items(value: Any) -> list[str]:
    """A dict default as the ``KEY=VALUE`` strings its flag would take."""
    return [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in dict(value).items()]


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _default(f: Field[Any]) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    raise TypeError(f"option {f.name!r} has no default")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: ...)`` unless the help already says it, the option is required, or the
    default is ``None`` (the help then says what happens)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if "(default" in text or action.required or action.default is None:
            return text
        return super()._get_help_string(action)


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    include: Callable[[Field[Any]], bool] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """Add one option per field of dataclass ``cls`` (those ``include`` accepts).

    ``defaults`` overrides field defaults for this parser (e.g. a tool whose default differs).
    """
    hints = _hints(cls)
    overrides = dict(defaults or {})
    for f in fields(cls):
        if include is not None and not include(f):
            continue
        default = overrides.pop(f.name) if f.name in overrides else _default(f)
        parser.add_argument(flag_of(f), **_argparse_kwargs(f, hints[f.name], default))
    if overrides:
        raise ValueError(f"defaults for unknown options: {sorted(overrides)}")


def values_from(
    ns: argparse.Namespace, cls: type, *, include: Callable[[Field[Any]], bool] | None = None
) -> dict[str, Any]:
    """The keyword arguments of ``cls`` held by ``ns`` (as added by :func:`add_options`)."""
    hints = _hints(cls)
    out: dict[str, Any] = {}
    for f in fields(cls):
        if (include is not None and not include(f)) or not hasattr(ns, f.name):
            continue
        value = getattr(ns, f.name)
        if typing.get_origin(_split_optional(hints[f.name])[0]) is dict:
            value = parse_key_values(value or [], flag_of(f))
        out[f.name] = value
    return out


_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}


def _check_type(name: str, flag: str, kind: Any, value: Any) -> None:
    """Raise unless ``value`` is of field type ``kind`` (an int is a valid float)."""
    origin = typing.get_origin(kind) or kind
    if origin is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif origin is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif origin in (bool, str, dict, tuple):
        ok = isinstance(value, origin)
    else:
        ok = True
    if not ok:
        what = _TYPE_NAMES.get(origin, getattr(origin, "__name__", str(origin)))
        raise ValueError(f"{name} must be {what}, got {value!r} ({flag})")


def check_options(obj: Any) -> None:
    """Validate every field of dataclass instance ``obj`` against its choices and check.

    Raises ``ValueError`` naming the setting, its flag, the rule and the value.
    """
    hints = _hints(type(obj))
    for f in fields(obj):
        meta = f.metadata.get(_META_KEY)
        if not isinstance(meta, OptionInfo):
            continue
        value = getattr(obj, f.name)
        kind, optional = _split_optional(hints[f.name])
        if value is None and optional:
            continue
        _check_type(f.name, flag_of(f), kind, value)
        choices = meta.allowed()
        if choices is not None and value not in choices:
            raise ValueError(
                f"unknown {f.name} {value!r}; expected one of {', '.join(map(str, choices))} "
                f"({flag_of(f)})"
            )
        if meta.check is not None and not meta.check.predicate(value):
            none = " or None" if optional else ""
            raise ValueError(
                f"{f.name} must be {meta.check.rule}{none}, got {value!r} ({flag_of(f)})"
            )
