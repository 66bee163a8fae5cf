# -*- test-case-name: tests.test_socks -*-
"""
A transparent listener (Linux): connections the kernel redirected to it
(iptables or nftables ``REDIRECT``), sent where they were going.

The original destination is asked of the accepted socket
(:func:`original_destination`: ``SO_ORIGINAL_DST``, or
``IP6T_SO_ORIGINAL_DST`` for IPv6); then the tunnel to it opens as a
``CONNECT``'s would (:class:`~twistproxy._opening.TunnelOpening`: the
``http_connect`` hook, where the host policy answers, an eager connection,
passthrough by ``ignore_hosts``), and what the client sends is detected
as in an intercepted tunnel: TLS intercepted with a certificate for its
SNI, HTTP served as flows to the original destination (``Host`` kept as
sent), anything else relayed raw.  A connection that was not redirected
(its original destination is the listener itself, or the kernel knows of
none) is closed with a log line, never sent back to the listener.
"""

from __future__ import annotations

import socket
import sys
from typing import Any

from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistproxy._connect import TunnelEnd, hand_over
from twistproxy._opening import TunnelOpening
from twistproxy._target import join_host_port
from twistproxy.channel import Proxy
from twistproxy.errors import describe

_log = Logger(namespace="twistproxy.transparent")

SO_ORIGINAL_DST = 80
"""``getsockopt(SOL_IP, SO_ORIGINAL_DST)``: a redirected IPv4 connection's ``sockaddr_in``."""

IP6T_SO_ORIGINAL_DST = 80
"""``getsockopt(SOL_IPV6, IP6T_SO_ORIGINAL_DST)``: the same for IPv6, a ``sockaddr_in6``."""

_SOL_IP = getattr(socket, "SOL_IP", 0)
_SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)
_SOCKADDR_IN = 16
_SOCKADDR_IN6 = 28
_MAX_EARLY = 64 * 1024  # bytes a client may send before its tunnel opened


def decode_sockaddr(raw: bytes) -> tuple[str, int]:
    """
    The address and port of a ``sockaddr_in`` or ``sockaddr_in6`` as the
    kernel writes it (the family in host byte order, the port and address
    in network byte order).

    :raises ValueError: for another family, or too few bytes.
    """
    if len(raw) < 8:
        raise ValueError(f"a socket address of {len(raw)} bytes")
    family = int.from_bytes(raw[:2], sys.byteorder)
    port = int.from_bytes(raw[2:4], "big")
    if family == socket.AF_INET:
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port
    if family == socket.AF_INET6 and len(raw) >= 24:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port
    raise ValueError(f"a socket address of family {family} ({len(raw)} bytes)")


def original_destination(sock: Any) -> tuple[str, int] | None:
    """
    Where the accepted connection *sock* was going before the kernel
    redirected it, or ``None`` if the kernel knows of no such address
    (no connection tracking, not Linux).  An IPv6 socket is asked for the
    IPv6 address first, then (a dual-stack socket's IPv4 client) the IPv4
    one.
    """
    queries = [(_SOL_IP, SO_ORIGINAL_DST, _SOCKADDR_IN)]
    if sock.family == socket.AF_INET6:
        queries.insert(0, (_SOL_IPV6, IP6T_SO_ORIGINAL_DST, _SOCKADDR_IN6))
    for level, option, size in queries:
        try:
            return decode_sockaddr(sock.getsockopt(level, option, size))
        except (OSError, ValueError):
            continue
    return None


def transparent_entry(channel: Proxy) -> None:
    """
    A transparent listener's new connection: open the tunnel to its
    original destination, or close a connection that was not redirected.
    """
    here = channel.getHost()
    destination = original_destination(channel.transport.getHandle())
    if destination is None or _same(destination, (here.host, here.port)):
        peer = channel.client_conn.peername
        _log.warn(
            "transparent listener {here}: the connection from {client} was not redirected "
            "to it ({why}): closed. Send traffic here with an iptables or nftables REDIRECT "
            "rule (see docs/modes.rst).",
            here=join_host_port(here.host, here.port),
            client=join_host_port(*peer) if peer else "?",
            why="the kernel knows no original destination" if destination is None
            else "its original destination is the listener itself",
        )
        channel.transport.loseConnection()
        return
    protocol = _Redirected(channel, *destination)
    hand_over(channel, protocol, b"")
    channel.stop_deadlines()
    protocol.start()


def _same(a: tuple[str, int], b: tuple[str, int]) -> bool:
    """Whether two addresses are one, an IPv4-mapped IPv6 address as IPv4."""
    return a[1] == b[1] and a[0].removeprefix("::ffff:") == b[0].removeprefix("::ffff:")


class _Redirected(Protocol):
    """A redirected client's connection until the tunnel to its original destination opens."""

    transport: Any
    _opening: TunnelOpening | None = None
    _done = False

    def __init__(self, channel: Proxy, host: str, port: int) -> None:
        self._channel = channel
        self._host = host
        self._port = port
        self._received = b""

    def start(self) -> None:
        """Open the tunnel."""
        self._opening = opening = TunnelOpening(self._channel, self, self._host, self._port)
        opening.start()

    def dataReceived(self, data: bytes) -> None:
        """The client spoke first (it does, TLS and HTTP): kept for the tunnel."""
        self._received += data
        if len(self._received) > _MAX_EARLY and not self._done:
            self._done = True
            self.transport.pauseProducing()  # the tunnel's opening resumes it

    def tunnel_opened(self, end: TunnelEnd) -> bytes:
        """Nothing to answer: the client's bytes go in."""
        buffered, self._received = self._received, b""
        return buffered

    def tunnel_refused(self, status: int | None, reason: Failure | None) -> None:
        """Say why in the log (the connection closes next)."""
        _log.info("transparent connection to {destination} refused: {why}",
                  destination=join_host_port(self._host, self._port),
                  why=describe(reason) if reason is not None else f"answered {status}")

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The client left before its tunnel opened."""
        if self._opening is not None:
            self._opening.client_gone()
        self._channel.relay_closed()
