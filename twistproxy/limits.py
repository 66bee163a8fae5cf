# -*- test-case-name: tests.test_limits -*-
"""
The bounds that keep one client or server from taking more than its share:
sizes, counts and times, each with a default chosen to let real traffic
through and stop abuse, and the status the proxy answers with when one is
crossed.
"""

from __future__ import annotations

import re

import attrs
from attrs.validators import ge, instance_of

DEFAULT_BACKLOG = 1024
"""
Connections the kernel queues for a listener before the proxy accepts them
(proxy.py's default too).  Twisted's own default, 50, overflows in a burst:
a dropped connection attempt is retried by the client a second later.  The
kernel caps it at ``net.core.somaxconn`` (4096 on current Linux).
"""

# Endpoint types whose descriptions take backlog=: Twisted's own listeners.
_BACKLOG_KINDS = frozenset({"tcp", "tcp6", "ssl", "unix"})
_HAS_BACKLOG = re.compile(r"(?:^|(?<!\\):)backlog=", re.IGNORECASE)


def with_backlog(description: str, backlog: int = DEFAULT_BACKLOG) -> str:
    """
    The server endpoint *description* (``tcp:8080:interface=127.0.0.1``)
    listening with *backlog*, unless it names a backlog itself; a
    description of another endpoint type (``systemd:``, plugins) comes back
    unchanged.  Every listener the proxy opens from a description goes
    through here.  A ``haproxy:`` description (the PROXY protocol) gets the
    backlog on the endpoint it wraps.
    """
    kind, _, rest = description.partition(":")
    if kind.strip().lower() == "haproxy":
        return f"{kind}:{with_backlog(rest, backlog)}"
    kind = kind.strip().lower()
    if kind not in _BACKLOG_KINDS or _HAS_BACKLOG.search(description):
        return description
    return f"{description}:backlog={backlog}"


def _positive_number(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if not value > 0:
        raise ValueError(f"{attribute.name} must be positive, not {value!r}")


@attrs.frozen(kw_only=True)
class Limits:
    """
    Limits the proxy enforces.

    :ivar max_request_line: Bytes in a request line; longer is ``414 URI Too
        Long`` (nginx allows 8 KiB by default, as here).
    :ivar max_header_size: Bytes in a request's whole header block (request
        line included); more is ``431 Request Header Fields Too Large``.
    :ivar max_header_count: Header fields in a request; more is ``431``.
    :ivar max_response_header_size: Bytes in a response's header block from
        the origin; more is ``502 Bad Gateway``.
    :ivar header_timeout: Seconds a client may take to send a request's
        head once it started it; a client dribbling bytes (slowloris) gets
        ``408 Request Timeout`` and is disconnected.
    :ivar upstream_timeout: Seconds the origin may stay silent: before the
        first response byte that is ``504 Gateway Timeout``, during the body
        the connections are aborted.  Time the proxy itself holds the origin
        back for a slow client does not count.
    :ivar sniff_timeout: Seconds an intercepted tunnel waits for the
        client's first bytes, which say whether it carries TLS, HTTP or
        something else; a client that has not said enough to tell, that
        long after the ``200``, gets a raw tunnel (an origin that speaks
        first makes it raw at once).
    :ivar max_connections: Client connections served at once; more are
        answered ``503 Service Unavailable`` and closed.  ``0`` means no
        limit.
    :ivar body_timeout: The window, in seconds, over which a request body's
        pace is measured: in every such window of reading, at least
        ``body_timeout × body_min_rate`` bytes (and at least one) must
        arrive, or the request fails with ``408 Request Timeout`` (nothing
        answered yet) or an aborted connection (an answer started).  Time
        the proxy itself holds the client back (a slow origin, a hook) does
        not count.
    :ivar body_min_rate: Bytes per second a request body must keep up, on
        average over each ``body_timeout`` window (``0``: only one byte per
        window).
    :ivar max_websocket_message: Bytes one WebSocket message may have
        (uncompressed, all its frames together); a bigger one closes the
        WebSocket both ways with ``1009 Message Too Big``.
    """

    max_request_line: int = attrs.field(default=8 * 1024, validator=[instance_of(int), ge(64)])
    max_header_size: int = attrs.field(default=64 * 1024, validator=[instance_of(int), ge(256)])
    max_header_count: int = attrs.field(default=256, validator=[instance_of(int), ge(1)])
    max_response_header_size: int = attrs.field(
        default=64 * 1024, validator=[instance_of(int), ge(256)]
    )
    header_timeout: float = attrs.field(default=30.0, validator=_positive_number)
    upstream_timeout: float = attrs.field(default=120.0, validator=_positive_number)
    sniff_timeout: float = attrs.field(default=3.0, validator=_positive_number)
    max_connections: int = attrs.field(default=0, validator=[instance_of(int), ge(0)])
    body_timeout: float = attrs.field(default=30.0, validator=_positive_number)
    body_min_rate: int = attrs.field(default=500, validator=[instance_of(int), ge(0)])
    max_websocket_message: int = attrs.field(
        default=10 * 1024 * 1024, validator=[instance_of(int), ge(1)]
    )
