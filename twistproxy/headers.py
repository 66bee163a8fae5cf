# -*- test-case-name: tests.test_headers_model -*-
"""
:class:`Headers`: the header fields of a request or response, an ordered
list of fields that keeps every field with its name spelt as received.

The proxy builds one for every message it handles, from the fields it
parsed, so building one copies the list and does nothing else: no field is
checked or decoded on construction.

Text conventions: names and values are stored as bytes.  The ``str`` API
decodes them as UTF-8 with ``surrogateescape`` and encodes ``str``
arguments the same way, so any byte survives a round trip through ``str``.
Methods that take a header name or value accept ``str`` or ``bytes``; the
``str`` API refuses a name that is not a token and a value with CR, LF or
NUL.
"""

from __future__ import annotations

import re
from collections.abc import ItemsView, Iterable, Iterator, Mapping, MutableMapping
from typing import Literal, Self, TypeVar, overload

_T = TypeVar("_T")

# RFC 9110 field-name (token) and a field value without CR, LF or NUL: what
# the str API accepts, so that no header set through it can split a message.
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")


def _to_bytes(value: str | bytes) -> bytes:
    """
    Encode a ``str`` with UTF-8/``surrogateescape``; pass ``bytes`` through.
    """
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    raise TypeError(f"expected str or bytes, not {type(value).__name__}")


def _to_str(value: str | bytes) -> str:
    """
    Decode ``bytes`` with UTF-8/``surrogateescape``; pass ``str`` through.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    raise TypeError(f"expected str or bytes, not {type(value).__name__}")


def _field(name: str | bytes, value: str | bytes) -> tuple[bytes, bytes]:
    """
    Turn a name and value from the ``str`` API into a checked wire field.

    :raises ValueError: if the name is not a token or the value contains
        CR, LF or NUL.
    """
    bname = _to_bytes(name)
    bvalue = _to_bytes(value)
    if not _TOKEN.match(bname):
        raise ValueError(f"invalid header name {bname!r}")
    if _BAD_VALUE.search(bvalue):
        raise ValueError(f"invalid header value {bvalue!r} for {bname!r}")
    return (bname, bvalue)


class Headers(MutableMapping[str, str]):
    """
    An ordered list of header fields that keeps every field, in order, with
    its name spelt as received, and looks names up case-insensitively.

    The mapping API works on ``str`` and sees one entry per distinct name:
    reading joins repeated fields with ``", "``, :meth:`get_all` and
    :meth:`set_all` work on every field of a name.  :meth:`get_raw` and
    :meth:`get_all_raw` are the ``bytes`` API for the proxy's hot path, and
    :attr:`fields` is the wire form.

    Two :class:`Headers` are equal when their fields are, in the same order
    and case.
    """

    __slots__ = ("_fields",)

    _fields: list[tuple[bytes, bytes]]

    def __init__(self, fields: Iterable[tuple[bytes, bytes]] = (), **headers: str | bytes) -> None:
        """
        :param fields: ``(name, value)`` byte pairs in wire order.  They are
            copied as they are, without checks or decoding, so the proxy can
            pass its parsed header list cheaply; they must be ``bytes``.
        :param headers: More fields to append, checked, with ``_`` in each
            name replaced by ``-`` (``content_type="text/html"``).
        :raises ValueError: if a keyword field is not a valid header.
        """
        self._fields = list(fields)
        for name, value in headers.items():
            self._fields.append(_field(name.replace("_", "-"), value))

    @property
    def fields(self) -> tuple[tuple[bytes, bytes], ...]:
        """
        Every field as ``(name, value)`` bytes, in order, names as received.
        Setting it replaces all fields, each checked as :meth:`add` checks it
        (``str`` names and values are encoded).

        :raises ValueError: on setting, if a name or value is not a valid
            header; the fields are left as they were.
        """
        return tuple(self._fields)

    @fields.setter
    def fields(self, value: Iterable[tuple[str | bytes, str | bytes]]) -> None:
        self._fields = [_field(name, field_value) for name, field_value in value]

    # The bytes API

    def get_raw(self, name: bytes) -> bytes | None:
        """
        :param name: A header name, any case.
        :returns: The first value of that header, or ``None``.
        """
        lname = name.lower()
        for n, v in self._fields:
            if n.lower() == lname:
                return v
        return None

    def get_all_raw(self, name: bytes) -> list[bytes]:
        """
        :param name: A header name, any case.
        :returns: Every value of that header, in order (maybe none).
        """
        lname = name.lower()
        return [v for n, v in self._fields if n.lower() == lname]

    # The str mapping API

    def __getitem__(self, name: str | bytes) -> str:
        """
        :returns: Every value of *name* joined with ``", "``.
        :raises KeyError: if there is no such header.
        """
        values = self.get_all_raw(_to_bytes(name))
        if not values:
            raise KeyError(name)
        return _to_str(b", ".join(values))

    def __setitem__(self, name: str | bytes, value: str | bytes) -> None:
        """
        Set *name* to the single value *value*: the first field of that name
        keeps its place and spelling, later ones are removed; the field is
        appended if there is none.

        :raises ValueError: if the name or value is not a valid header.
        """
        self.set_all(name, (value,))

    def __delitem__(self, name: str | bytes) -> None:
        """
        Remove every field of *name*.

        :raises KeyError: if there is no such header.
        """
        lname = _to_bytes(name).lower()
        kept = [f for f in self._fields if f[0].lower() != lname]
        if len(kept) == len(self._fields):
            raise KeyError(name)
        self._fields = kept

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str | bytes):
            return False
        return self.get_raw(_to_bytes(name)) is not None

    def __len__(self) -> int:
        """
        :returns: The number of distinct header names.
        """
        return len({n.lower() for n, _ in self._fields})

    def __iter__(self) -> Iterator[str]:
        """
        Iterate over the distinct names, in order of first appearance, spelt
        as they first appear.
        """
        seen = set()
        for n, _ in self._fields:
            lname = n.lower()
            if lname not in seen:
                seen.add(lname)
                yield _to_str(n)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._fields == other._fields
        return NotImplemented

    def __repr__(self) -> str:
        return f"Headers({self._fields!r})"

    @overload
    def get(self, name: str | bytes, /) -> str | None: ...

    @overload
    def get(self, name: str | bytes, default: str, /) -> str: ...

    @overload
    def get(self, name: str | bytes, default: _T, /) -> str | _T: ...

    def get(self, name: str | bytes, default: object = None, /) -> object:
        """
        :returns: The values of *name* joined with ``", "``, or *default*.
        """
        values = self.get_all_raw(_to_bytes(name))
        if not values:
            return default
        return _to_str(b", ".join(values))

    @overload
    def items(self, multi: Literal[False] = False) -> ItemsView[str, str]: ...

    @overload
    def items(self, multi: Literal[True]) -> list[tuple[str, str]]: ...

    def items(self, multi: bool = False) -> ItemsView[str, str] | list[tuple[str, str]]:
        """
        :param multi: Give every field rather than one entry per name.
        :returns: With *multi*, a list of every ``(name, value)`` field in
            order; otherwise a view of ``(name, joined values)`` per name.
        """
        if multi:
            return [(_to_str(n), _to_str(v)) for n, v in self._fields]
        return ItemsView(self)

    def clear(self) -> None:
        """
        Remove every field.
        """
        self._fields = []

    def get_all(self, name: str | bytes) -> list[str]:
        """
        :returns: Every value of *name*, in order (maybe none).
        """
        return [_to_str(v) for v in self.get_all_raw(_to_bytes(name))]

    def set_all(self, name: str | bytes, values: Iterable[str | bytes]) -> None:
        """
        Replace every field of *name* with one field per value.  The new
        fields take the place (and spelling) of the first existing field of
        that name, or are appended if there is none.  No values removes the
        header.

        :raises ValueError: if the name or a value is not a valid header.
        """
        bname = _to_bytes(name)
        new = [_field(bname, value) for value in values]
        if not new:
            _field(bname, b"")
        lname = bname.lower()
        size = len(lname)
        fields = self._fields
        for i, (n, _) in enumerate(fields):
            if len(n) == size and n.lower() == lname:
                rest = [f for f in fields[i + 1 :] if len(f[0]) != size or f[0].lower() != lname]
                self._fields = fields[:i] + [(n, v) for _, v in new] + rest
                return
        fields.extend(new)

    def add(self, name: str | bytes, value: str | bytes) -> None:
        """
        Append a field, even if the header is already present.

        :raises ValueError: if the name or value is not a valid header.
        """
        self._fields.append(_field(name, value))

    def insert(self, index: int, name: str | bytes, value: str | bytes) -> None:
        """
        Insert a field before position *index* of :attr:`fields`.

        :raises ValueError: if the name or value is not a valid header.
        """
        self._fields.insert(index, _field(name, value))

    def copy(self) -> Headers:
        """
        :returns: An independent copy.
        """
        return Headers(self._fields)

    def get_state(self) -> list[list[bytes]]:
        """
        :returns: The fields as plain data: ``[name, value]`` byte pairs.
        """
        return [[n, v] for n, v in self._fields]

    @classmethod
    def from_state(cls, state: Iterable[Iterable[bytes]]) -> Self:
        """
        Build headers from :meth:`get_state`'s output (pairs may be lists).

        :raises ValueError: if an entry is not a pair of ``bytes``.
        """
        fields = []
        for entry in state:
            pair = tuple(entry)
            if len(pair) != 2 or not all(isinstance(x, bytes) for x in pair):
                raise ValueError(f"invalid header field in state: {entry!r}")
            fields.append((pair[0], pair[1]))
        return cls(fields)


def _make_headers(headers: Headers | Mapping[str, str] | Iterable[tuple[bytes, bytes]]) -> Headers:
    """
    Build a new, checked :class:`Headers` for the ``make`` constructors of
    :class:`~twistproxy.http.Request` and :class:`~twistproxy.http.Response`.
    """
    if isinstance(headers, Headers):
        return headers.copy()
    result = Headers()
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    for name, value in pairs:
        result.add(name, value)
    return result
