# -*- test-case-name: tests.test_framing -*-
"""
How a message's body is delimited: one rule per direction for what arrives,
and one for what the proxy forwards.

A framing is an ``int``: a body length (``0`` or more), or one of
:data:`CHUNKED`, :data:`NO_BODY` and :data:`UNTIL_CLOSE`.  The rules are RFC
9112 section 6.3's, the way h11's ``_body_framing`` writes them: a response
to ``HEAD``, an interim (1xx), ``204`` and ``304`` response and a ``2xx``
answer to ``CONNECT`` have no body whatever their fields say; otherwise a
``Transfer-Encoding`` whose last coding is ``chunked`` wins over any
``Content-Length``; a response with neither ends when the connection does,
a request with neither has no body.

The client side (:class:`~twistproxy._channel.Proxy`) and the upstream side
(:class:`~twistproxy.client.ProxyClient`) both read their framings here, and
the exchange passes the framing along with the head, so no side reads it back
from the other.  Nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

from twistproxy.errors import BadFraming, UpstreamProtocolError

CHUNKED = -1
"""Framing: the body is sent with chunked transfer coding."""

NO_BODY = -2
"""Framing: the message has no body (and no framing field is written)."""

UNTIL_CLOSE = -3
"""Framing: the body ends when the connection closes (a response only)."""

NO_BODY_STATUSES = frozenset({204, 304})
"""Final statuses whose responses never have a body."""

_Fields = Iterable[tuple[bytes, bytes]]


MAX_LENGTH = 2**63 - 1
"""The largest body or chunk length accepted (llhttp's limit)."""


def transfer_coding(value: bytes, version: bytes) -> int:
    """
    The framing a request's ``Transfer-Encoding`` field gives its body.

    :param value: The field's value.
    :param version: The request's HTTP version.
    :returns: :data:`CHUNKED`.
    :raises BadFraming: for anything but exactly ``chunked`` in HTTP/1.1:
        another coding or a list of them (``chunked`` must be the last
        coding, and the proxy would have to undo the others), or any
        transfer coding in HTTP/1.0, which has none.
    """
    if value.strip(b" \t").lower() != b"chunked" or version != b"HTTP/1.1":
        raise BadFraming("unsupported Transfer-Encoding")
    return CHUNKED


def content_length(value: bytes) -> int:
    """
    The length a ``Content-Length`` field value gives a body.

    :raises BadFraming: if it is not a decimal number up to
        :data:`MAX_LENGTH`.
    """
    digits = value.strip(b" \t")
    if not digits.isdigit() or int(digits) > MAX_LENGTH:
        raise BadFraming("Content-Length out of range")
    return int(digits)


def request_framing(fields: _Fields, version: bytes = b"HTTP/1.1") -> int:
    """
    How a received (or recorded) request's body is delimited.

    :param fields: The request's header fields.
    :param version: Its HTTP version.
    :returns: :data:`CHUNKED`, the ``Content-Length``, or :data:`NO_BODY`.
    :raises BadFraming: as :func:`transfer_coding` and
        :func:`content_length` do, and for both fields at once or
        ``Content-Length`` fields that disagree.
    """
    framing = NO_BODY
    for name, value in fields:
        size = len(name)
        if size == 17 and name.lower() == b"transfer-encoding":
            coding = transfer_coding(value, version)
            if framing != NO_BODY and framing != coding:
                raise BadFraming("both Transfer-Encoding and Content-Length")
            framing = coding
        elif size == 14 and name.lower() == b"content-length":
            length = content_length(value)
            if framing != NO_BODY and framing != length:
                raise BadFraming("conflicting Content-Length and Transfer-Encoding fields")
            framing = length
    return framing


def response_framing(method: bytes, status: int, fields: _Fields) -> int:
    """
    How a received response's body is delimited.

    :param method: The method of the request it answers.
    :param status: Its status code.
    :returns: :data:`NO_BODY`, :data:`CHUNKED`, the ``Content-Length``, or
        :data:`UNTIL_CLOSE`.
    :raises UpstreamProtocolError: for a transfer coding other than exactly
        ``chunked``: the proxy could not relay it without corrupting the body
        (``Transfer-Encoding`` is hop-by-hop, so the client would never learn
        of the coding).
    """
    if (
        method == b"HEAD"
        or status < 200
        or status in NO_BODY_STATUSES
        or (method == b"CONNECT" and status < 300)
    ):
        return NO_BODY
    framing = UNTIL_CLOSE
    for name, value in fields:
        size = len(name)
        if size == 17 and name.lower() == b"transfer-encoding":
            if value.strip(b" \t").lower() != b"chunked":
                raise UpstreamProtocolError("unsupported transfer coding in the response")
            return CHUNKED
        if size == 14 and name.lower() == b"content-length":
            value = value.strip(b" \t")
            if value.isdigit():
                framing = int(value)
    return framing


def chunk(data: bytes) -> tuple[bytes, bytes, bytes]:
    """*data* as one chunk of a chunked body (the last chunk is ``b"0\\r\\n\\r\\n"``)."""
    return (b"%x\r\n" % len(data), data, b"\r\n")


def forwarded_request(received: int, size: int | None) -> int:
    """
    How the proxy frames a request body it sends upstream.

    :param received: The request's framing as it arrived
        (:func:`request_framing`).
    :param size: The body's length when the whole body is in hand (buffered,
        or a streamed body that ended before the request went out), ``None``
        while it is still arriving.
    :returns: The length of a whole body (:data:`NO_BODY` for an empty one
        that arrived without any framing); for a body still arriving, its
        ``Content-Length`` or :data:`CHUNKED`.
    """
    if size is not None:
        return NO_BODY if size == 0 and received == NO_BODY else size
    return received


def forwarded_response(
    method: bytes, status: int, received: int, size: int | None, version: bytes
) -> int:
    """
    How the proxy frames a response body it sends to the client.

    :param method: The client's request method.
    :param status: The status being sent.
    :param received: The response's framing as it arrived
        (:func:`response_framing`); ignored when *size* is given.
    :param size: The body's length when the whole body is in hand (buffered,
        or made by a hook), ``None`` while it is still arriving.
    :param version: The client's HTTP version: an ``HTTP/1.0`` client
        cannot read chunked coding, so a body of unknown length is
        delimited by the connection's end instead.
    :returns: :data:`NO_BODY` for ``HEAD`` and bodiless statuses; otherwise
        the length, or for a body of unknown length :data:`CHUNKED` or
        :data:`UNTIL_CLOSE`.
    """
    if method == b"HEAD" or status < 200 or status in NO_BODY_STATUSES:
        return NO_BODY
    if size is not None:
        return size
    if received >= 0 or received == NO_BODY:
        return received
    return CHUNKED if version == b"HTTP/1.1" else UNTIL_CLOSE
