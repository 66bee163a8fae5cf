# -*- test-case-name: tests.test_headers -*-
"""
Header rules for relaying a message: what is hop-by-hop, and how the
forwarded message is framed.

Both directions work on wire fields, a sequence of ``(name, value)`` byte
pairs in the order and case they arrived.  Hop-by-hop fields are removed, the
rest keep their order and case, and the framing headers (``Content-Length``,
``Transfer-Encoding``) are always written by the proxy itself, so a message
goes on with exactly one unambiguous framing.  Nothing here does I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from twistproxy._framing import CHUNKED, NO_BODY, UNTIL_CLOSE
from twistproxy._target import authority_for
from twistproxy.errors import InvalidMessage

if TYPE_CHECKING:
    from twistproxy.http import HTTPFlow, Request, Response

Fields = Sequence[tuple[bytes, bytes]]
"""Header fields as they are on the wire: ``(name, value)`` pairs."""

HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
"""Lower-cased names never forwarded (RFC 9110 section 7.6.1, plus the
legacy ``Proxy-Connection`` and the proxy's own authentication fields)."""

_FRAMING = frozenset({b"content-length", b"transfer-encoding"})

_NOT_IN_TRAILERS = HOP_BY_HOP | {
    b"content-length", b"host", b"content-encoding", b"content-type", b"content-range",
    b"authorization", b"cache-control", b"expect", b"range", b"set-cookie", b"cookie",
}
"""Fields a trailer must not carry: framing, routing, how to read the content
(RFC 9110 section 6.5.1); a recipient may not merge them into the head."""

VIA = b"1.1 twistproxy"
"""The token this proxy adds to the ``Via`` header of forwarded requests."""

def trailer_fields(fields: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The *fields* a trailer may pass on: those it must not carry are left out."""
    return [(name, value) for name, value in fields if name.lower() not in _NOT_IN_TRAILERS]


def last_chunk(trailers: Iterable[tuple[bytes, bytes]] | None) -> bytes:
    """
    The end of a chunked body: the last chunk and the *trailers* (those
    :func:`trailer_fields` lets through).
    """
    if not trailers:
        return b"0\r\n\r\n"
    lines = [b"0\r\n"]
    for name, value in trailer_fields(trailers):
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


def connection_tokens(fields: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """
    The lower-cased tokens of every ``Connection`` field in *fields*: the
    names of further hop-by-hop fields, and ``close``/``keep-alive``.
    """
    tokens: set[bytes] | None = None
    for name, value in fields:
        if len(name) == 10 and name.lower() == b"connection":
            tokens = _add_tokens(tokens, value)
    return frozenset(tokens) if tokens else frozenset()


def expects_continue(fields: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether the first ``Expect`` field of *fields* is ``100-continue``."""
    for name, value in fields:
        if len(name) == 6 and name.lower() == b"expect":
            return value.lower() == b"100-continue"
    return False


def _end_to_end(
    fields: Fields,
    framing: int,
    kinds: dict[bytes, str],
    host: bytes = b"",
    second: bool = False,
) -> tuple[list[tuple[bytes, bytes]], bool]:
    """
    Copy the end-to-end fields of *fields* in order, with the framing header
    *framing* asks for (a length, or :data:`~twistproxy._framing.CHUNKED`,
    :data:`~twistproxy._framing.NO_BODY` or
    :data:`~twistproxy._framing.UNTIL_CLOSE`) where the first framing field
    stood, or appended.

    :param kinds: What each special lower-cased name is (one dict look-up a
        field): framing, ``Connection``, hop-by-hop (dropped), or ``Host``
        (its first field gets the value *host*, the others are dropped).
    :param second: This is the second pass, with the further hop-by-hop
        names the ``Connection`` fields list in *kinds* (made only when they
        list any besides ``close`` and ``keep-alive``).
    :returns: The fields, and whether a ``Host`` field was placed.
    """
    out: list[tuple[bytes, bytes]] = []
    placed = False
    tokens: set[bytes] | None = None
    framed = framing == NO_BODY or framing == UNTIL_CLOSE
    get = kinds.get
    for name, value in fields:
        kind = get(name.lower())
        if kind is None:
            out.append((name, value))
        elif kind is _FRAMING_FIELD:
            if not framed:
                framed = True
                out.append(_framing_field(framing, name))
        elif kind is _CONNECTION_FIELD:
            tokens = _add_tokens(tokens, value)
        elif kind is _HOST_FIELD and not placed:
            placed = True
            out.append((name, host))
    if tokens is not None and not second and not tokens <= _CONNECTION_OPTIONS:
        named = dict.fromkeys(tokens - _CONNECTION_OPTIONS - _KINDS.keys(), _HOP_FIELD)
        return _end_to_end(fields, framing, {**kinds, **named}, host, second=True)
    if not framed:
        out.append(_framing_field(framing, b""))
    return out, placed


_FRAMING_FIELD = "framing"
_HOP_FIELD = "hop"
_CONNECTION_FIELD = "connection"
_HOST_FIELD = "host"
# Lower-cased name -> what it is to _end_to_end: one dict lookup per field.
_KINDS = {name: _HOP_FIELD for name in HOP_BY_HOP} | {
    b"connection": _CONNECTION_FIELD,
    b"content-length": _FRAMING_FIELD,
    b"transfer-encoding": _FRAMING_FIELD,
}
# A request also drops Expect (the proxy answers 100-continue itself) and
# gets the target's Host.
_REQUEST_KINDS = _KINDS | {b"expect": _HOP_FIELD, b"host": _HOST_FIELD}
# A WebSocket upgrade request keeps its Upgrade field (its Connection
# fields become the one ``Connection: Upgrade``).
_UPGRADE_KINDS = {name: kind for name, kind in _REQUEST_KINDS.items() if name != b"upgrade"}
_RESPONSE_UPGRADE_KINDS = {name: kind for name, kind in _KINDS.items() if name != b"upgrade"}
# Connection tokens that name no header field.
_CONNECTION_OPTIONS = frozenset({b"close", b"keep-alive"})
_UPGRADE_FIELD = (b"Connection", b"Upgrade")


def websocket_upgrade(request: Request) -> bool:
    """
    Whether *request* asks for a WebSocket (RFC 6455 section 4.1): an
    HTTP/1.1 ``GET`` whose ``Connection`` lists ``upgrade`` and whose
    ``Upgrade`` is ``websocket``.  Such a request keeps ``Upgrade`` and
    ``Connection: Upgrade`` when it is forwarded; any other upgrade is
    hop-by-hop and removed.
    """
    if request.method != "GET" or request.http_version != "HTTP/1.1":
        return False
    fields = request.headers.fields
    for name, value in fields:  # Upgrade first: most requests have none
        if len(name) == 7 and name.lower() == b"upgrade":
            if value.strip(b" \t").lower() != b"websocket":
                return False
            return b"upgrade" in connection_tokens(fields)
    return False


def _add_tokens(tokens: set[bytes] | None, value: bytes) -> set[bytes]:
    """Add the lower-cased tokens of one ``Connection`` value to *tokens*."""
    if tokens is None:
        tokens = set()
    for token in value.split(b","):
        token = token.strip(b" \t").lower()
        if token:
            tokens.add(token)
    return tokens




def _framing_field(framing: int, original: bytes) -> tuple[bytes, bytes]:
    """The framing field for *framing*, spelt like *original* when it is the same field."""
    if framing == CHUNKED:
        name = original if len(original) == 17 else b"Transfer-Encoding"
        return (name, b"chunked")
    name = original if len(original) == 14 else b"Content-Length"
    return (name, b"%d" % (framing,))


def request_fields(
    fields: Fields, *, authority: bytes, framing: int, via: bytes | None = VIA,
    upgrade: bool = False,
) -> list[tuple[bytes, bytes]]:
    """
    The header fields to send upstream for a request.

    Hop-by-hop fields and ``Expect`` (the proxy answers ``100-continue``
    itself) are removed; ``Host`` becomes *authority*, in place when the
    client sent one, first otherwise; *via* is added as a ``Via`` field.

    :param fields: The client's fields, in order and original case.
    :param authority: The ``Host`` value, from the request-target.
    :param framing: The body's length, :data:`CHUNKED` or :data:`NO_BODY`.
    :param via: The ``Via`` entry to add, or ``None`` for none.
    :param upgrade: The request asks for a WebSocket
        (:func:`websocket_upgrade`): ``Upgrade`` is kept, and the
        ``Connection`` fields become ``Connection: Upgrade``.
    """
    kinds = _UPGRADE_KINDS if upgrade else _REQUEST_KINDS
    out, placed = _end_to_end(fields, framing, kinds, authority)
    if not placed:
        out.insert(0, (b"Host", authority))
    if upgrade:
        out.append(_UPGRADE_FIELD)
    if via is not None:
        out.append((b"Via", via))
    return out


def response_fields(
    fields: Fields, *, framing: int, close: bool, own: bool = False, upgrade: bool = False
) -> list[tuple[bytes, bytes]]:
    """
    The header fields to send the client for a response.

    :param fields: The origin's fields, in order and original case.
    :param framing: The body's length, :data:`CHUNKED`, :data:`NO_BODY` (no
        framing header at all: HEAD, 1xx, 204, 304, whose ``Content-Length``
        the origin chose is kept as it is) or :data:`UNTIL_CLOSE`.
    :param close: Add ``Connection: close`` because the client connection
        ends after this response.
    :param own: The proxy (or a hook) made this response: its
        ``Proxy-Authenticate`` challenge is the proxy's own and is kept.
    :param upgrade: The ``101`` that switches to a WebSocket: ``Upgrade`` is
        kept and ``Connection: Upgrade`` written.
    """
    if upgrade:
        out = _end_to_end(fields, NO_BODY, _RESPONSE_UPGRADE_KINDS)[0]
        out.append(_UPGRADE_FIELD)
        return out
    challenge = [f for f in fields if f[0].lower() == b"proxy-authenticate"] if own else []
    if framing == NO_BODY:
        out = _keep_length(fields)
    else:
        out = _end_to_end(fields, framing, _KINDS)[0]
    out.extend(challenge)
    if close:
        out.append((b"Connection", b"close"))
    return out


def response_head(
    version: bytes, status: int, reason: bytes, fields: Fields, *, framing: int, close: bool,
    own: bool = False, upgrade: bool = False,
) -> bytes:
    """
    The status line and header fields to send the client, as one bytes
    object: the fields as :func:`response_fields` gives them.

    :param version: The client's HTTP version.
    """
    head = [version, b" %d " % status, reason, b"\r\n"]
    for name, value in response_fields(
        fields, framing=framing, close=close, own=own, upgrade=upgrade
    ):
        head += (name, b": ", value, b"\r\n")
    head.append(b"\r\n")
    return b"".join(head)


def interim_head(status: int, reason: bytes, fields: Fields) -> bytes:
    """
    An interim (1xx) response to relay to an HTTP/1.1 client: its
    end-to-end fields, without any framing field (an interim response has
    no body, whatever it declared).
    """
    named = connection_tokens(fields)
    head = [b"HTTP/1.1 %d " % status, reason, b"\r\n"]
    for name, value in fields:
        lower = name.lower()
        if lower not in HOP_BY_HOP and lower not in named and lower not in _FRAMING:
            head += (name, b": ", value, b"\r\n")
    head.append(b"\r\n")
    return b"".join(head)


def _keep_length(fields: Fields) -> list[tuple[bytes, bytes]]:
    """
    End-to-end fields of a bodiless response, keeping ``Content-Length`` (it
    describes the representation, e.g. for HEAD) but no transfer coding.
    """
    named = connection_tokens(fields)
    return [
        (name, value)
        for name, value in fields
        if (lower := name.lower()) not in HOP_BY_HOP and lower not in named
    ]


def request_head(
    request: Request, framing: int, via: bytes | None = VIA, upgrade: bool = False,
    proxy: Fields | None = None,
) -> bytes:
    """
    The head to send upstream for *request*: an origin-form request line,
    then its end-to-end fields framed by *framing* (see
    :func:`request_fields`), with ``Host`` from the request's ``Host``
    header, or its host and port when it has none, and *via* added; with
    *upgrade*, the WebSocket upgrade it asks for kept.  With *proxy* (to an
    upstream proxy), the request line is in absolute form and the *proxy*
    fields (its ``Proxy-Authorization``) are added.
    """
    host = request.headers.get_raw(b"host") or authority_for(
        request.scheme, request.host, request.port
    )
    fields = request_fields(
        request.headers.fields, authority=host, framing=framing, via=via, upgrade=upgrade
    )
    lines = [request.method.encode("ascii"), b" "]
    if proxy is not None:
        lines += (request.scheme.encode("ascii"), b"://",
                  authority_for(request.scheme, request.host, request.port))
        fields += proxy
    lines += (request.path.encode("utf-8", "surrogateescape"), b" HTTP/1.1\r\n")
    for name, value in fields:
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    return b"".join(lines)


# What may be written (RFC 9110 section 5.6.2, RFC 9112 sections 3 and 4).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_TOKENS = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+(?::[!#$%&'*+\-.^_`|~0-9A-Za-z]+)*\Z")
_ORIGIN_FORM = re.compile(rb"(?:/[\x21-\x7e]*|\*)\Z")
_REASON = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z")
# A host or authority: no controls, no white space, nothing that ends an
# authority in a URI; IPv6 literals keep their colons (and brackets in an
# authority).
_HOST = re.compile(r"[^\x00-\x20\x7f/?#@\[\]\\]+\Z")
_AUTHORITY = re.compile(r"[^\x00-\x20\x7f/?#@\\]*\Z")
_SCHEMES = frozenset({"http", "https"})


def check_fields(fields: Iterable[tuple[bytes, bytes]], what: str) -> None:
    """
    Check header fields before they are written: every name a token, no
    value holding CR, LF or NUL (the bytes that would end the field, or the
    message, early).

    :param what: ``"request"`` or ``"response"``, for the message.
    :raises InvalidMessage: naming the first bad field.
    """
    # All at once first (this runs after every hook that could change a
    # message): the names joined by a byte no token holds, the values by
    # none; the field at fault is looked for only when something is wrong.
    fields = tuple(fields)
    try:
        names = b":".join([name for name, _ in fields])
        values = b"".join([value for _, value in fields])
    except TypeError:
        pass  # not bytes: named below
    else:
        if (_TOKENS.match(names) or not fields) and not (
            b"\r" in values or b"\n" in values or b"\0" in values
        ):
            return
    for name, value in fields:
        if not isinstance(name, bytes) or not _TOKEN.match(name):
            raise InvalidMessage(f"{what} header name", f"{name!r} is not a token")
        if not isinstance(value, bytes):
            raise InvalidMessage(f"{what} header value", f"{name!r} has {value!r}, not bytes")
        if b"\r" in value or b"\n" in value or b"\0" in value:
            raise InvalidMessage(f"{what} header value", f"{name!r} holds a CR, LF or NUL")


def check_request(request: Request) -> None:
    """
    Check a request before it is written upstream, whoever set its fields:
    the method a token, the scheme ``http`` or ``https``, the host, port and
    authority usable, the path in origin form without spaces or controls,
    every header field as :func:`check_fields` says.

    :raises InvalidMessage: naming the first bad field.
    """
    method = _encoded(request.method, "request method")
    if not _TOKEN.match(method):
        raise InvalidMessage("request method", f"{request.method!r} is not a token")
    if not isinstance(request.host, str) or not _HOST.match(request.host):
        raise InvalidMessage("request host", f"{request.host!r} is not a host name or address")
    if not isinstance(request.port, int) or not 0 < request.port < 65536:
        raise InvalidMessage("request port", f"{request.port!r} is not a port number")
    if not isinstance(request.authority, str) or not _AUTHORITY.match(request.authority):
        raise InvalidMessage("request authority", f"{request.authority!r} is not an authority")
    if method != b"CONNECT":
        if request.scheme not in _SCHEMES:
            raise InvalidMessage("request scheme", f"{request.scheme!r} is not http or https")
        if not _ORIGIN_FORM.match(_encoded(request.path, "request path")):
            raise InvalidMessage(
                "request path",
                f"{request.path!r} is not a path starting with '/' without spaces or controls",
            )
    check_fields(request.headers.fields, "request")
    if request.trailers is not None:
        check_fields(request.trailers.fields, "request trailer")


def check_response(response: Response) -> None:
    """
    Check a response before it is written to a client, whoever set its
    fields: the status a three-digit number, the reason phrase without CR,
    LF or other controls, every header field as :func:`check_fields` says.

    :raises InvalidMessage: naming the first bad field.
    """
    status = response.status_code
    if type(status) is not int or not 100 <= status <= 999:
        raise InvalidMessage("response status", f"{status!r} is not a three-digit number")
    if not _REASON.match(_encoded(response.reason, "response reason")):
        raise InvalidMessage("response reason", f"{response.reason!r} holds a CR, LF or control")
    check_fields(response.headers.fields, "response")
    if response.trailers is not None:
        check_fields(response.trailers.fields, "response trailer")


def check_shape(flow: HTTPFlow) -> tuple[object, ...]:
    """
    What of a flow's messages the checks look at but the models do not
    check as it is set: the messages themselves, their plain attributes,
    their header lists (whose changes :class:`~twistproxy.headers.Headers`
    checks as they are made).  Equal before and after a hook, it tells that
    whatever was valid still is, and :func:`check_request` and
    :func:`check_response` need not run again.
    """
    request, response = flow.request, flow.response
    assert request is not None
    shape: tuple[object, ...] = (
        request, request.method, request.path, request.host, request.port, request.scheme,
        request.authority, request.headers, request.trailers, response,
    )
    if response is not None:
        shape += (response.status_code, response.reason, response.headers, response.trailers)
    return shape


def check_messages(
    flow: HTTPFlow, since: tuple[object, ...] | None = None, request: bool = True
) -> None:
    """
    Check that *flow*'s request (when *request*) and response (when it has
    one) could be written on the wire as they stand: :func:`check_request`
    and :func:`check_response`.  With *since*, the flow's
    :func:`check_shape` before a hook, nothing is checked again when the
    hook left that shape as it was.

    :raises InvalidMessage: naming the first bad field, in a one-line
        message (the bad value is shown as its ``repr``).
    """
    if since is not None and check_shape(flow) == since:
        return
    if request and flow.request is not None:
        check_request(flow.request)
    if flow.response is not None:
        check_response(flow.response)


def _encoded(text: str, field: str) -> bytes:
    """
    *text* as it goes on the wire (UTF-8, escaped bytes restored).

    :raises InvalidMessage: naming *field*, if *text* is not a ``str`` that
        encodes.
    """
    try:
        return text.encode("utf-8", "surrogateescape")
    except (AttributeError, UnicodeEncodeError):
        raise InvalidMessage(field, f"{text!r} is not text that can be sent") from None
