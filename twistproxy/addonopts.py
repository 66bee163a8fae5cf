# -*- test-case-name: tests.test_lifecycle -*-
"""
Addon options, as mitmproxy's: an addon declares them in its ``load`` hook
with ``loader.add_option(name, typespec, default, help)`` and reads them as
``ctx.options.NAME`` (:mod:`twistproxy.ctx`); ``twistd twistproxy --set
NAME=VALUE`` sets them and ``--options`` lists them.

:class:`AddonOptions` holds the declared options and their values, checks
every value against its type, reads ``NAME=VALUE`` texts the way mitmproxy's
``--set`` does, and tells its subscribers (the
:class:`~twistproxy.lifecycle.AddonManager`, which calls the addons'
``configure``) which options changed. :class:`Loader` is what ``load``
receives.
"""

from __future__ import annotations

import collections.abc
import math
import typing
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from twisted.logger import Logger

from twistproxy.errors import AddonError

__all__ = ["TYPESPECS", "AddonOptions", "Loader", "Option", "OptionsError"]

TYPESPECS: dict[Any, str] = {
    bool: "bool",
    str: "str",
    int: "int",
    float: "float",
    # typing.Optional[str] (the spelling addons use) is equal to str | None.
    str | None: "optional str",
    int | None: "optional int",
    float | None: "optional float",
    typing.Sequence[str]: "sequence of str",  # noqa: UP006
    collections.abc.Sequence[str]: "sequence of str",
}
"""The option types an addon may declare, and how ``--options`` names them."""

_SCALARS: dict[str, type] = {
    "bool": bool, "str": str, "int": int, "float": float,
    "optional str": str, "optional int": int, "optional float": float,
}


class OptionsError(AddonError):
    """
    An option cannot be declared or set: an unknown name, a value of the
    wrong type, a text that does not parse, or an addon's ``configure``
    refused the new value.
    """


@attrs.frozen
class Option:
    """
    A declared option.

    :ivar name: The option's name (``ctx.options.NAME``, ``--set NAME=...``).
    :ivar typespec: Its type: one of :data:`TYPESPECS`.
    :ivar default: Its value until it is set.
    :ivar help: What it does, in a sentence.
    :ivar choices: The values it may take, or ``None`` for any of its type.
    """

    name: str
    typespec: Any
    default: Any
    help: str
    choices: tuple[str, ...] | None = None

    @property
    def type_name(self) -> str:
        """The type's name in listings and errors: ``int``, ``optional str``..."""
        return TYPESPECS[self.typespec]

    def check(self, value: Any) -> Any:
        """
        Check *value* for this option.

        :returns: The value to keep (a sequence as a list, an int as a float
            for a float option).
        :raises OptionsError: if *value* is not of the option's type or not
            one of its choices.
        """
        kind = self.type_name
        if kind == "sequence of str":
            if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(
                isinstance(item, str) for item in value
            ):
                raise OptionsError(f"{self.name}: expected a sequence of str, not {value!r}")
            return list(value)
        if value is None and kind.startswith("optional"):
            return None
        expected = _SCALARS[kind]
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise OptionsError(f"{self.name}: expected {kind}, not {value!r}")
        if self.choices is not None and value not in self.choices:
            raise OptionsError(
                f"{self.name}: {value!r} is not one of {', '.join(map(repr, self.choices))}"
            )
        return value

    def parse(self, texts: list[str], current: Any) -> Any:
        """
        Read the values given for this option with ``--set`` as mitmproxy
        does: ``NAME`` alone is ``true`` for a bool, ``None`` for an
        optional option and an empty sequence; a sequence takes every value
        given (``--set NAME=a --set NAME=b``); a bool also takes ``toggle``.

        :param texts: The values given, in order (none for ``--set NAME``).
        :param current: The option's value now (for ``toggle``).
        :raises OptionsError: with a one-line reason.
        """
        kind = self.type_name
        if kind == "sequence of str":
            return self.check(texts)
        if len(texts) > 1:
            raise OptionsError(f"{self.name}: given {len(texts)} values, takes one")
        text = texts[0] if texts else None
        if kind == "bool":
            value: Any = _parse_bool(self.name, text, current)
        elif text is None or (text == "" and kind in ("optional int", "optional float")):
            if not kind.startswith("optional"):
                raise OptionsError(f"{self.name}: needs a value ({kind})")
            value = None
        elif kind in ("str", "optional str"):
            value = text
        else:
            value = _parse_number(self.name, kind, text)
        return self.check(value)

    def show(self, value: Any) -> str:
        """*value* as ``--options`` shows it: as it would be given to ``--set``."""
        if value is None:
            return "None"
        if isinstance(value, bool):
            return "true" if value else "false"
        if isinstance(value, list):
            return "[" + ", ".join(map(repr, value)) + "]"
        return repr(value) if isinstance(value, str) else str(value)


def _parse_bool(name: str, text: str | None, current: Any) -> bool:
    """A bool option's ``--set`` value: omitted or ``true``, ``false``, ``toggle``."""
    if text is None or text.lower() == "true":
        return True
    if text.lower() == "false":
        return False
    if text.lower() == "toggle":
        return not current
    raise OptionsError(f"{name}: {text!r} is not a bool (true, false or toggle)")


def _parse_number(name: str, kind: str, text: str) -> int | float:
    """An int or float option's ``--set`` value."""
    try:
        if kind.endswith("int"):
            return int(text)
        number = float(text)
    except ValueError:
        article = "an int" if kind.endswith("int") else "a float"
        raise OptionsError(f"{name}: {text!r} is not {article}") from None
    if not math.isfinite(number):
        raise OptionsError(f"{name}: {text!r} is not a finite number")
    return number


class AddonOptions:
    """
    The options the addons declared, and their values.

    Read a value as an attribute (``options.NAME``), as addons do through
    ``ctx.options.NAME``; change values with :meth:`update` (or by
    assigning the attribute), or from ``NAME=VALUE`` texts with :meth:`set`.
    Every change is checked against the option's type and reported to the
    subscribers; if one of them (an addon's ``configure``) raises, the
    values are put back and the change fails with :class:`OptionsError`.
    """

    log = Logger(namespace="twistproxy")

    def __init__(self) -> None:
        object.__setattr__(self, "_declared", {})
        object.__setattr__(self, "_values", {})
        object.__setattr__(self, "_subscribers", [])

    _declared: dict[str, Option]
    _values: dict[str, Any]
    _subscribers: list[Callable[[set[str]], object]]

    def add_option(
        self,
        name: str,
        typespec: Any,
        default: Any,
        help: str,
        choices: Iterable[str] | None = None,
    ) -> None:
        """
        Declare an option (mitmproxy's ``Loader.add_option``). Declaring it
        again the same way (an addon file reloaded) keeps its value; another
        way replaces it (logged), with its new default.

        :raises OptionsError: if *name* is not an identifier or is taken by
            this class's own methods, *typespec* is not one of
            :data:`TYPESPECS`, or *default* is not of that type.
        """
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise OptionsError(f"option name {name!r}: must be an identifier without a leading _")
        if hasattr(type(self), name):
            raise OptionsError(f"option name {name!r}: taken by the options' own {name}()")
        try:
            known = typespec in TYPESPECS
        except TypeError:  # unhashable
            known = False
        if not known:
            raise OptionsError(
                f"option {name}: type {typespec!r} is not supported (bool, str, int, float, "
                "typing.Optional[str|int|float] or typing.Sequence[str])"
            )
        option = Option(name, typespec, None, help,
                        None if choices is None else tuple(choices))
        option = attrs.evolve(option, default=option.check(default))
        existing = self._declared.get(name)
        if existing == option:
            return
        if existing is not None:
            self.log.warn("option {name} declared again differently: its value is reset",
                          name=name)
        self._declared[name] = option
        self._values[name] = option.default

    def __getattr__(self, name: str) -> Any:
        values = self.__dict__.get("_values", {})
        if name in values:
            return values[name]
        raise AttributeError(f"no option named {name!r} (declared: {_names(values)})")

    def __setattr__(self, name: str, value: Any) -> None:
        self.update(**{name: value})

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def keys(self) -> set[str]:
        """The names of the declared options."""
        return set(self._values)

    def declared(self) -> list[Option]:
        """The declared options, sorted by name."""
        return [self._declared[name] for name in sorted(self._declared)]

    def subscribe(self, callback: Callable[[set[str]], object]) -> None:
        """Call *callback* with the names of the options whose values change."""
        self._subscribers.append(callback)

    def update(self, **values: Any) -> None:
        """
        Give options new values and tell the subscribers which changed.

        :raises OptionsError: if a name is not declared or a value is not of
            its type (nothing is changed), or a subscriber raised (the old
            values are put back).
        """
        checked = {self._option(name).name: self._option(name).check(value)
                   for name, value in values.items()}
        old = dict(self._values)
        changed = {name for name, value in checked.items() if old[name] != value}
        self._values.update(checked)
        if not changed:
            return
        try:
            for callback in list(self._subscribers):
                callback(changed)
        except Exception as e:
            self._values.update({name: old[name] for name in changed})
            if isinstance(e, OptionsError):
                raise
            raise OptionsError(f"{', '.join(sorted(changed))}: {type(e).__name__}: {e}") from e

    def parse(self, *specs: str) -> dict[str, Any]:
        """
        Read ``NAME=VALUE`` (or ``NAME``) texts as ``--set`` does (see
        :meth:`Option.parse`), without setting anything.

        :raises OptionsError: naming the option, for an unknown name or a
            value that does not parse.
        """
        given: dict[str, list[str]] = {}
        for spec in specs:
            name, equals, text = spec.partition("=")
            given.setdefault(name.strip(), [])
            if equals:
                given[name.strip()].append(text)
        return {name: self._option(name).parse(texts, self._values[name])
                for name, texts in given.items()}

    def set(self, *specs: str) -> None:
        """
        Set options from ``NAME=VALUE`` texts (mitmproxy's
        ``options.set``): :meth:`parse`, then :meth:`update`.

        :raises OptionsError: as those do.
        """
        self.update(**self.parse(*specs))

    def listing(self) -> str:
        """The declared options as ``--options`` prints them: name, type, default, help."""
        if not self._declared:
            return "No addon declares an option.\n"
        lines = []
        for option in self.declared():
            choices = "" if option.choices is None else f", one of {', '.join(option.choices)}"
            lines.append(f"{option.name} ({option.type_name}{choices}, "
                         f"default: {option.show(option.default)})")
            lines.append(f"    {option.help}")
        return "\n".join(lines) + "\n"

    def _option(self, name: str) -> Option:
        option = self._declared.get(name)
        if option is None:
            raise OptionsError(f"unknown option {name!r} (declared: {_names(self._values)})")
        return option


def _names(values: Iterable[str]) -> str:
    """The names of *values* for an error message, or ``none``."""
    return ", ".join(sorted(values)) or "none"


class Loader:
    """
    What an addon's ``load(loader)`` hook receives, as in mitmproxy.

    :ivar options: The options the proxy's addons share (also
        ``ctx.options``): an addon may keep it.
    """

    def __init__(self, options: AddonOptions) -> None:
        self.options = options

    def add_option(
        self,
        name: str,
        typespec: Any,
        default: Any,
        help: str,
        choices: Iterable[str] | None = None,
    ) -> None:
        """Declare an option: see :meth:`AddonOptions.add_option`."""
        self.options.add_option(name, typespec, default, help, choices)
