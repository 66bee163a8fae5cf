# -*- test-case-name: tests.test_flowfile -*-
"""
The JSON schema of a flow file line (:mod:`twistproxy.flowfile`): how each
field of a flow state is written as JSON and checked when read back.

:data:`FLOW` knows every field of
:meth:`HTTPFlow.get_state <twistproxy.http.HTTPFlow.get_state>` but its
``"version"``: header names and values and the TLS ALPN protocol are latin-1
strings, bodies base64 strings (``null`` when not captured), tuples lists,
and everything else as it is.  Core code: no I/O.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from twistproxy._flowerror import Invalid as _Invalid
from twistproxy._flowerror import describe_value as _describe_value
from twistproxy._flowerror import join_path as _join


class _Kind:
    """
    How one field of the flow state is written as JSON and read back.
    """

    def encode(self, value: Any) -> Any:
        """
        :returns: *value* as JSON data.
        :raises ValueError: if *value* is not of this kind.
        """
        return value

    def decode(self, value: Any, where: str) -> Any:
        """
        :returns: The state value for the JSON *value*.
        :raises _Invalid: naming *where* if *value* does not fit.
        """
        raise NotImplementedError


class _Plain(_Kind):
    """A JSON scalar kept as it is: checked against *types* on reading."""

    def __init__(self, what: str, *types: type) -> None:
        self._what = what
        self._types = types

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, self._types) or (
            isinstance(value, bool) and bool not in self._types
        ):
            raise _Invalid(where, f"expected {self._what}, got {_describe_value(value)}")
        return value


class _Optional(_Kind):
    """A value of *kind*, or ``None``."""

    def __init__(self, kind: _Kind) -> None:
        self._kind = kind

    def encode(self, value: Any) -> Any:
        return None if value is None else self._kind.encode(value)

    def decode(self, value: Any, where: str) -> Any:
        return None if value is None else self._kind.decode(value, where)


class _Latin1(_Kind):
    """Short protocol bytes as a latin-1 string: one character per byte."""

    def encode(self, value: Any) -> Any:
        if not isinstance(value, bytes):
            raise ValueError(f"expected bytes, got {value!r}")
        return value.decode("latin-1")

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, str):
            raise _Invalid(where, f"expected a string, got {_describe_value(value)}")
        try:
            return value.encode("latin-1")
        except UnicodeEncodeError:
            raise _Invalid(where, "has characters above U+00FF (bytes are latin-1)") from None


class _Base64(_Kind):
    """A body as a base64 string."""

    def encode(self, value: Any) -> Any:
        if not isinstance(value, bytes):
            raise ValueError(f"expected bytes, got {type(value).__name__}")
        return base64.b64encode(value).decode("ascii")

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, str):
            raise _Invalid(where, f"expected a base64 string, got {_describe_value(value)}")
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise _Invalid(where, "is not valid base64") from None


class _List(_Kind):
    """A list of *item* values."""

    def __init__(self, item: _Kind) -> None:
        self._item = item

    def encode(self, value: Any) -> Any:
        return [self._item.encode(x) for x in value]

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, list):
            raise _Invalid(where, f"expected a list, got {_describe_value(value)}")
        return [self._item.decode(x, f"{where}[{i}]") for i, x in enumerate(value)]


class _Pair(_Kind):
    """A two-item sequence (a tuple or list) as a two-item list."""

    def __init__(self, first: _Kind, second: _Kind) -> None:
        self._kinds = (first, second)

    def encode(self, value: Any) -> Any:
        a, b = value
        return [self._kinds[0].encode(a), self._kinds[1].encode(b)]

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, list) or len(value) != 2:
            raise _Invalid(where, f"expected a list of two items, got {_describe_value(value)}")
        first, second = self._kinds
        return [first.decode(value[0], f"{where}[0]"), second.decode(value[1], f"{where}[1]")]


class _Object(_Kind):
    """Free-form JSON data in an object (flow metadata), kept as it is."""

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(where, f"expected an object, got {_describe_value(value)}")
        return value


class _Record(_Kind):
    """An object with exactly the keys of *fields*, each of its kind."""

    def __init__(self, fields: Mapping[str, _Kind]) -> None:
        self._fields = dict(fields)

    def encode(self, value: Any) -> Any:
        unknown = set(value) - set(self._fields)
        if unknown:
            raise ValueError(f"the flow file format has no place for {sorted(unknown)!r}")
        return {key: self._fields[key].encode(x) for key, x in value.items()}

    def decode(self, value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise _Invalid(where, f"expected an object, got {_describe_value(value)}")
        unknown = set(value) - set(self._fields)
        if unknown:
            raise _Invalid(where, f"unknown keys {sorted(unknown)!r}")
        missing = [key for key in self._fields if key not in value]
        if missing:
            raise _Invalid(where, f"missing keys {missing!r}")
        return {
            key: kind.decode(value[key], _join(where, key)) for key, kind in self._fields.items()
        }


_NUMBER = _Plain("a number", int, float)
_TIME = _Optional(_NUMBER)
_STR = _Plain("a string", str)
_BOOL = _Plain("true or false", bool)
_INT = _Plain("an integer", int)
_ADDRESS = _Optional(_Pair(_STR, _INT))
_CONNECTION = {
    "id": _STR,
    "peername": _ADDRESS,
    "sockname": _ADDRESS,
    "timestamp_start": _TIME,
    "timestamp_end": _TIME,
    "error": _Optional(_STR),
    "tls_established": _BOOL,
    "sni": _Optional(_STR),
    "alpn": _Optional(_Latin1()),
    "tls_version": _Optional(_STR),
}
_CERTIFICATE = _Record(
    {
        "subject": _STR,
        "issuer": _STR,
        "dns_names": _List(_STR),
        "ip_addresses": _List(_STR),
        "not_before": _NUMBER,
        "not_after": _NUMBER,
        "serial": _STR,
        "sha256": _STR,
    }
)
_MESSAGE = {
    "http_version": _STR,
    "headers": _List(_Pair(_Latin1(), _Latin1())),
    "content": _Optional(_Base64()),
    "timestamp_start": _TIME,
    "timestamp_end": _TIME,
    "body_size": _Optional(_INT),
    "trailers": _Optional(_List(_Pair(_Latin1(), _Latin1()))),
}
FLOW = _Record(
    {
        "type": _STR,
        "id": _STR,
        "error": _Optional(_Record({"msg": _STR, "timestamp": _NUMBER})),
        "client_conn": _Record({**_CONNECTION, "proxy_mode": _STR}),
        "server_conn": _Record(
            {**_CONNECTION, "address": _ADDRESS, "certificate": _Optional(_CERTIFICATE)}
        ),
        "intercepted": _BOOL,
        "marked": _STR,
        "is_replay": _Optional(_STR),
        "live": _BOOL,
        "timestamp_created": _NUMBER,
        "metadata": _Object(),
        "comment": _STR,
        "passthrough": _BOOL,
        "request": _Optional(
            _Record(
                {
                    "host": _STR,
                    "port": _INT,
                    "method": _STR,
                    "scheme": _STR,
                    "authority": _STR,
                    "path": _STR,
                    **_MESSAGE,
                }
            )
        ),
        "response": _Optional(_Record({"status_code": _INT, "reason": _STR, **_MESSAGE})),
        "interim": _List(_Record({"status_code": _INT, "reason": _STR, **_MESSAGE})),
        "websocket": _Optional(
            _Record(
                {
                    "messages": _List(
                        _Record(
                            {
                                "type": _INT,
                                "from_client": _BOOL,
                                "content": _Base64(),
                                "timestamp": _NUMBER,
                                "dropped": _BOOL,
                                "injected": _BOOL,
                            }
                        )
                    ),
                    "closed_by_client": _Optional(_BOOL),
                    "close_code": _Optional(_INT),
                    "close_reason": _Optional(_STR),
                    "timestamp_end": _TIME,
                }
            )
        ),
    }
)
"""The schema of a line: a flow state without its ``"version"``."""
