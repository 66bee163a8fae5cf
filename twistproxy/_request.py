# -*- test-case-name: tests.test_exchange -*-
"""
What the proxy decides about one request apart from its exchange's life,
without I/O.

:func:`new_flow` is what its head decides before any hook runs: where the
request goes (an absolute-form target, a CONNECT authority, or inside an
intercepted tunnel its origin-form path on the tunnel's host), whether its
``Host`` agrees with that, whether it came through this proxy before (its
``Via``), and the flow it makes; or why it cannot be proxied.
:func:`may_retry` is the one rule for sending it again on the proxy's own.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from twistproxy._target import (
    Tunnel,
    check_host,
    parse_absolute_form,
    parse_authority,
)
from twistproxy.connection import Client, Server
from twistproxy.errors import BadRequestTarget, LoopDetected
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Request

CLIENT_HOST = "reverse.client_host"
"""
The ``flow.metadata`` key of the ``Host`` a reverse proxy's client sent,
when the request goes to the origin with the origin's own.
"""

IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
"""
The methods a proxy may send again on its own (RFC 9110 section 9.2.2):
sending one twice has the effect of sending it once.
"""

def may_retry(
    method: bytes, *, reused: bool, complete: bool, answered: bool, lost: bool, attempts: int
) -> bool:
    """
    The one retry rule: whether a request that failed upstream is sent once
    more, on a new connection, without telling anyone.

    Only when the failure is the one a kept-alive connection meets when the
    origin closed it meanwhile: an idempotent request (RFC 9110 section
    9.2.2: a proxy must not retry any other), written whole, on a reused
    connection, lost before a single byte of response, and only once.

    :param method: The request's method.
    :param reused: The connection had carried an exchange before.
    :param complete: The whole request was written (and is still in hand).
    :param answered: A byte of a response (even an interim one) arrived.
    :param lost: The failure is the connection closing or resetting.
    :param attempts: How many times the request was sent so far.
    """
    return (
        attempts == 1
        and reused
        and complete
        and lost
        and not answered
        and method in IDEMPOTENT_METHODS
    )


_VISIBLE = re.compile(rb"[\x21-\x7e]+\Z")


def new_flow(
    client: Client,
    method: bytes,
    uri: bytes,
    version: bytes,
    fields: list[tuple[bytes, bytes]],
    *,
    tunnel: Tunnel | None,
    via: bytes,
    passthrough: Callable[[str, int], bool],
    now: float,
    clock: Callable[[], float],
) -> HTTPFlow:
    """
    The flow for a request head, or why the request cannot be proxied.

    :param client: The client connection's record.
    :param method: The method from the request line.
    :param uri: The request-target from the request line.
    :param version: The HTTP version from the request line.
    :param fields: The header fields as they arrived (used, not copied).
    :param tunnel: Where origin-form targets go: for a request inside an
        intercepted tunnel, the tunnel's target (``https`` inside TLS,
        ``http`` in the clear); on a reverse proxy's listener, its origin
        (where absolute-form targets go too).
    :param via: This proxy's ``Via`` entry; a request carrying its token
        already came through here.
    :param passthrough: For a CONNECT, whether configuration passes the
        tunnel through untouched (``flow.passthrough``, which the
        ``http_connect`` hook may change).
    :param now: The time, for the request's timestamp.
    :param clock: The flow's clock (for the time a hook kills it at).
    :raises BadRequestTarget: for a target that cannot be proxied.
    :raises LoopDetected: if the request already passed this proxy.
    """
    if not _VISIBLE.match(uri):
        # Twisted lets bytes 0x7f-0xb0 through (it compares with 176 where
        # it meant octal 0o176); origins would not agree.
        raise BadRequestTarget("the request-target has invalid characters")
    if method == b"CONNECT":
        if tunnel is not None:
            raise BadRequestTarget(
                "CONNECT to a reverse proxy" if tunnel.reverse
                else "CONNECT inside an intercepted tunnel"
            )
        host, port = parse_authority(uri, 0)
        if port == 0:
            raise BadRequestTarget("CONNECT needs host:port")
        flow = HTTPFlow(client, Server(address=(host, port)), live=True, now=clock)
        flow.request = Request(
            host, port, method, b"", uri, b"", version, Headers(fields), None,
            timestamp_start=now,
        )
        flow.passthrough = passthrough(host, port)
        return flow
    headers = Headers(fields)
    asked = None  # a reverse proxy's client's own Host, when it is rewritten
    if tunnel is not None and (uri[:1] == b"/" or tunnel.reverse):
        if uri[:1] != b"/":  # absolute form, to a reverse proxy: its path only
            uri = parse_absolute_form(uri).path
        target = tunnel.target(uri)
        if tunnel.rewrite_host:
            asked = headers.get_raw(b"host")
            headers["Host"] = target.authority
        elif headers.get_raw(b"host") is None:
            headers["Host"] = target.authority
    else:
        target = parse_absolute_form(uri)
        if check_host(fields, target) != target.authority:
            headers["Host"] = target.authority
    token = via.split(b" ", 1)[1]
    for name, value in fields:
        if len(name) == 3 and name.lower() == b"via" and token in value:
            raise LoopDetected("the request came back to this proxy (Via)")
    flow = HTTPFlow(client, Server(address=(target.host, target.port)), live=True, now=clock)
    flow.request = Request(
        target.host, target.port, method, target.scheme, target.authority, target.path,
        version, headers, None, timestamp_start=now,
    )
    if asked is not None:
        flow.metadata[CLIENT_HOST] = asked.decode("latin-1")
    return flow
