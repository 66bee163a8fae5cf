# -*- test-case-name: tests.test_sniff -*-
"""
What an intercepted tunnel carries, from the client's first bytes:
:func:`sniff` answers TLS, HTTP or raw TCP, or that it needs more bytes.

It decides only; the shell (:class:`~twistproxy._connect.Sniffer`) reads the
bytes, keeps the time (a client that says nothing), watches the origin (one
that speaks first is a raw tunnel) and hands the connection on.
"""

from __future__ import annotations

import re
from enum import Enum


class Carried(Enum):
    """What a tunnel carries."""

    #: A TLS ClientHello: intercepted with the proxy's certificate.
    TLS = "tls"
    #: An HTTP/1 request line: plain HTTP flows.
    HTTP = "http"
    #: Anything else: relayed untouched.
    RAW = "raw"


_TCHAR = rb"[-!#$%&'*+.^_`|~0-9A-Za-z]"
_TARGET = rb"[^\x00-\x20\x7f]"
_REQUEST_LINE = re.compile(_TCHAR + rb"+ " + _TARGET + rb"+ HTTP/1\.[01]\r?\n")
# A start that may still become a request line: the version is matched a
# byte at a time ("H", "HT", ... "HTTP/1.1\r").
_VERSION_PREFIX = rb"(?:H(?:T(?:T(?:P(?:/(?:1(?:\.(?:[01]\r?)?)?)?)?)?)?)?)?"
_PARTIAL = re.compile(
    _TCHAR + rb"*(?: " + _TARGET + rb"*(?: " + _VERSION_PREFIX + rb")?)?"
)

MAX_REQUEST_LINE = 8 * 1024
"""A first line longer than this, still unended, is not an HTTP request's."""


def sniff(data: bytes, max_line: int = MAX_REQUEST_LINE) -> Carried | None:
    """
    What a tunnel whose client sent *data* first carries, or ``None`` while
    *data* could still become either a ClientHello or a request line.

    - TLS: a handshake record (``0x16``) of version ``0x03 0x0X``.
    - HTTP: a whole first line ``method SP target SP HTTP/1.x`` (a method
      token alone could start any text protocol, ``EHLO x`` say).
    - Anything else is raw TCP, as soon as it cannot be either.

    :param data: The client's bytes so far (at least one).
    :param max_line: How long a request line may be.
    """
    first = data[0]
    if first == 0x16:
        if len(data) >= 2 and data[1] != 0x03:
            return Carried.RAW
        if len(data) >= 3:
            return Carried.TLS if data[2] < 0x10 else Carried.RAW
        return None
    end = data.find(b"\n", 0, max_line + 1)
    if end != -1:
        return Carried.HTTP if _REQUEST_LINE.fullmatch(data, 0, end + 1) else Carried.RAW
    if len(data) > max_line or _PARTIAL.fullmatch(data) is None:
        return Carried.RAW
    return None
