# -*- test-case-name: tests.test_socks -*-
"""
A SOCKS5 listener (RFC 1928, with RFC 1929 username/password).

The messages are read and written by plain functions without I/O
(:func:`read_greeting`, :func:`read_login`, :func:`read_request`,
:func:`reply`); :class:`Socks5` is the protocol a ``socks5`` listener's
channel hands its connection to (:func:`~twistproxy._connect.hand_over`).
It speaks the handshake, then opens the tunnel the client asked for the
way a ``CONNECT`` opens one (:class:`~twistproxy._opening.TunnelOpening`:
the ``http_connect`` hook with proxy authentication and the host policy,
an eager connection that may not lead back to the proxy), answers with the
reply code that says how it went, and hands the connection to the tunnel,
whose contents are detected as an intercepted ``CONNECT`` tunnel's (TLS
intercepted, HTTP served as flows, anything else relayed raw) or relayed
raw when the tunnel is passed through.

Only ``CONNECT`` is served; ``BIND`` and ``UDP ASSOCIATE`` are answered
"command not supported".  With a :class:`~twistproxy.addons.access.ProxyAuth`
addon, username/password is required (no-auth is not offered) and checked
against its users; the credentials also go to the ``CONNECT`` flow as a
``Proxy-Authorization`` field, where the addon checks them once more,
removes them and records the user, as for an HTTP ``CONNECT``.  A client
that sends something else, or takes longer than ``limits.header_timeout``
seconds over its handshake, is disconnected.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from enum import IntEnum
from typing import Any

import attrs
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from twistproxy._connect import TunnelEnd
from twistproxy._opening import TunnelOpening
from twistproxy.addons.access import ProxyAuth
from twistproxy.channel import Proxy
from twistproxy.errors import (
    LoopDetected,
    UpstreamConnectFailed,
    UpstreamNameNotResolved,
    UpstreamTimeout,
    describe,
)

_log = Logger(namespace="twistproxy.socks")

VERSION = 5
"""The SOCKS version this listener speaks."""

NO_AUTHENTICATION = 0x00
USERNAME_PASSWORD = 0x02
NO_ACCEPTABLE_METHODS = 0xFF

CONNECT, BIND, UDP_ASSOCIATE = 1, 2, 3
"""The commands of a SOCKS5 request; only ``CONNECT`` is served."""

_IPV4, _DOMAIN, _IPV6 = 1, 3, 4
_LOGIN_VERSION = 1  # RFC 1929's subnegotiation
_HOST_NAME = re.compile(rb"[!-~]+\Z")  # visible ASCII, no spaces
_MAX_EARLY = 64 * 1024  # bytes a client may send after its request, before the reply


class Reply(IntEnum):
    """The reply codes of RFC 1928 section 6."""

    SUCCEEDED = 0
    GENERAL_FAILURE = 1
    NOT_ALLOWED = 2
    NETWORK_UNREACHABLE = 3
    HOST_UNREACHABLE = 4
    CONNECTION_REFUSED = 5
    TTL_EXPIRED = 6
    COMMAND_NOT_SUPPORTED = 7
    ADDRESS_TYPE_NOT_SUPPORTED = 8


class SocksError(Exception):
    """
    A client message that cannot be served.

    :ivar reply: The reply to send before closing, if the client is owed
        one (an unsupported address type); ``None``: just close.
    """

    def __init__(self, message: str, reply: Reply | None = None) -> None:
        super().__init__(message)
        self.reply = reply


@attrs.frozen(slots=True)
class SocksRequest:
    """
    A SOCKS5 request.

    :ivar command: :data:`CONNECT`, :data:`BIND` or :data:`UDP_ASSOCIATE`
        (or another number, not supported).
    :ivar host: An IP address (IPv6 without brackets) or a host name.
    :ivar port: The destination port.
    """

    command: int
    host: str
    port: int


def read_greeting(data: bytes) -> tuple[frozenset[int], int] | None:
    """
    Read the client's greeting: ``VER NMETHODS METHODS...``.

    :returns: The methods offered and the bytes read, or ``None`` while
        *data* holds only part of it.
    :raises SocksError: if it is not SOCKS5, or offers no method.
    """
    if data[:1] and data[0] != VERSION:
        raise SocksError(f"not SOCKS5 (version byte {data[0]:#04x})")
    if len(data) < 2:
        return None
    count = data[1]
    if count == 0:
        raise SocksError("the greeting offers no authentication method")
    if len(data) < 2 + count:
        return None
    return frozenset(data[2:2 + count]), 2 + count


def choose_method(offered: frozenset[int], *, login: bool) -> int:
    """
    The authentication method to answer a greeting offering *offered*
    with: username/password when *login* is required (else, no
    authentication, or username/password from a client that offers only
    that), or :data:`NO_ACCEPTABLE_METHODS`.
    """
    if login:
        return USERNAME_PASSWORD if USERNAME_PASSWORD in offered else NO_ACCEPTABLE_METHODS
    for method in (NO_AUTHENTICATION, USERNAME_PASSWORD):
        if method in offered:
            return method
    return NO_ACCEPTABLE_METHODS


def read_login(data: bytes) -> tuple[bytes, bytes, int] | None:
    """
    Read an RFC 1929 username/password request: ``VER ULEN UNAME PLEN PASSWD``.

    :returns: The user name, the password and the bytes read, or ``None``
        while *data* holds only part of it.
    :raises SocksError: for another subnegotiation version, or an empty
        user name or password.
    """
    if data[:1] and data[0] != _LOGIN_VERSION:
        raise SocksError(f"not a username/password request (version {data[0]:#04x})")
    if len(data) < 2:
        return None
    end = 2 + data[1]
    if len(data) < end + 1:
        return None
    last = end + 1 + data[end]
    if len(data) < last:
        return None
    user, password = data[2:end], data[end + 1:last]
    if not user or not password:
        raise SocksError("an empty user name or password")
    return user, password, last


def read_request(data: bytes) -> tuple[SocksRequest, int] | None:
    """
    Read a request: ``VER CMD RSV ATYP DST.ADDR DST.PORT``.

    :returns: The request and the bytes read, or ``None`` while *data*
        holds only part of it.
    :raises SocksError: if it is not SOCKS5, or names its destination in a
        way that cannot be used (an unknown address type, owed
        :attr:`Reply.ADDRESS_TYPE_NOT_SUPPORTED`; an empty or non-ASCII
        host name).
    """
    if data[:1] and data[0] != VERSION:
        raise SocksError(f"not a SOCKS5 request (version byte {data[0]:#04x})")
    if len(data) < 5:
        return None
    kind = data[3]
    if kind == _IPV4:
        start, end = 4, 8
    elif kind == _IPV6:
        start, end = 4, 20
    elif kind == _DOMAIN:
        start, end = 5, 5 + data[4]
    else:
        raise SocksError(f"address type {kind} is not supported", Reply.ADDRESS_TYPE_NOT_SUPPORTED)
    if len(data) < end + 2:
        return None
    address = data[start:end]
    if kind == _DOMAIN:
        if _HOST_NAME.match(address) is None:
            raise SocksError("the host name is empty or not visible ASCII", Reply.GENERAL_FAILURE)
        host = address.decode("ascii")
    else:
        host = str(ipaddress.ip_address(address))
    port = int.from_bytes(data[end:end + 2], "big")
    return SocksRequest(data[1], host, port), end + 2


def reply(code: Reply, host: str = "0.0.0.0", port: int = 0) -> bytes:
    """
    The reply to a request: *code*, and the address the proxy connected
    from (*host*, an IP address, and *port*).
    """
    address = ipaddress.ip_address(host)
    kind = _IPV4 if address.version == 4 else _IPV6
    return bytes((VERSION, code, 0, kind)) + address.packed + port.to_bytes(2, "big")


def reply_for(status: int | None, reason: Failure | None) -> Reply:
    """
    The reply code for a tunnel that did not open: a hook answered its
    ``CONNECT`` flow with *status* (a refusal: 403, 407; a 5xx a failure),
    or it failed for *reason*.
    """
    if reason is None:
        return Reply.NOT_ALLOWED if status is not None and status < 500 else Reply.GENERAL_FAILURE
    error = reason.value
    if isinstance(error, LoopDetected):
        return Reply.NOT_ALLOWED
    if isinstance(error, UpstreamTimeout):
        return Reply.TTL_EXPIRED
    if isinstance(error, UpstreamNameNotResolved):
        return Reply.HOST_UNREACHABLE
    if isinstance(error, UpstreamConnectFailed):
        text = str(error).lower()
        if "refused" in text:
            return Reply.CONNECTION_REFUSED
        if "network is unreachable" in text:
            return Reply.NETWORK_UNREACHABLE
        return Reply.HOST_UNREACHABLE
    return Reply.GENERAL_FAILURE


def _login_checkers(factory: Any) -> list[ProxyAuth]:
    return [addon for addon in factory.chain.addons if isinstance(addon, ProxyAuth)]


class Socks5(Protocol):
    """
    A SOCKS5 client's connection, handed over by its channel (see the
    module's description): the handshake, then the tunnel it asked for.

    :param channel: The client's channel.
    """

    transport: Any
    _timer: Any = None
    _opening: TunnelOpening | None = None
    _destination = ""
    _closed = False  # the connection is gone
    _done = False  # ... or closing

    def __init__(self, channel: Proxy) -> None:
        self._channel = channel
        factory = channel.factory
        self._checkers = _login_checkers(factory)
        self._received = b""
        self._step = self._greeting
        self._fields: list[tuple[bytes, bytes]] = []

    def start(self) -> None:
        """Bound the handshake's time."""
        factory = self._channel.factory
        self._timer = factory.reactor.callLater(
            factory.limits.header_timeout, self._timed_out)

    def dataReceived(self, data: bytes) -> None:
        """Read the handshake's messages as they complete."""
        if self._done:
            return
        self._received += data
        if self._opening is not None:  # early bytes of the tunnel, before the reply
            if len(self._received) > _MAX_EARLY:
                self._drop("sent too much before the tunnel opened")
            return
        try:
            while self._received and not self._done and self._opening is None:
                used = self._step(self._received)
                if used is None:
                    return
                self._received = self._received[used:]
        except SocksError as e:
            if e.reply is not None:
                self.transport.write(reply(e.reply))
            self._drop(str(e))
            return
        if self._opening is not None:
            # The request is read (and out of the buffer): open its tunnel.
            self._opening.start()

    # -- the handshake's steps: each reads one message, or returns None ----

    def _greeting(self, data: bytes) -> int | None:
        greeting = read_greeting(data)
        if greeting is None:
            return None
        offered, used = greeting
        method = choose_method(offered, login=bool(self._checkers))
        self.transport.write(bytes((VERSION, method)))
        if method == NO_ACCEPTABLE_METHODS:
            raise SocksError("no acceptable authentication method offered"
                             + (" (username/password is required)" if self._checkers else ""))
        self._step = self._login if method == USERNAME_PASSWORD else self._request
        return used

    def _login(self, data: bytes) -> int | None:
        login = read_login(data)
        if login is None:
            return None
        user, password, used = login
        if self._checkers:
            if not all(checker.verify(user, password) for checker in self._checkers):
                self.transport.write(bytes((_LOGIN_VERSION, 1)))
                raise SocksError(f"authentication failed for user "
                                 f"{user.decode('utf-8', 'replace')[:100]!r}")
            # For the addon's http_connect, which records the user.
            token = base64.b64encode(user + b":" + password)
            self._fields = [(b"Proxy-Authorization", b"Basic " + token)]
        self.transport.write(bytes((_LOGIN_VERSION, 0)))
        self._step = self._request
        return used

    def _request(self, data: bytes) -> int | None:
        request = read_request(data)
        if request is None:
            return None
        socks, used = request
        self._stop_timer()
        if socks.command != CONNECT:
            self.transport.write(reply(Reply.COMMAND_NOT_SUPPORTED))
            raise SocksError(f"command {socks.command} is not supported (CONNECT only)")
        self._destination = f"{socks.host}:{socks.port}"
        self._opening = TunnelOpening(
            self._channel, self, socks.host, socks.port, self._fields)
        self._fields = []
        return used

    # -- how the tunnel opening ends (IOpeningListener) ---------------------

    def tunnel_opened(self, end: TunnelEnd) -> bytes:
        """Reply "succeeded" with the address the proxy connected from."""
        relay = end.relay
        if relay is not None:
            bound = relay.transport.getHost()
            self.transport.write(reply(Reply.SUCCEEDED, bound.host, bound.port))
        else:  # intercepted lazily: no connection yet
            self.transport.write(reply(Reply.SUCCEEDED))
        buffered, self._received = self._received, b""
        return buffered

    def tunnel_refused(self, status: int | None, reason: Failure | None) -> None:
        """Reply with the code that says why (the connection closes next)."""
        code = reply_for(status, reason)
        _log.info("SOCKS5 CONNECT to {destination} refused ({code}): {why}",
                  destination=self._destination, code=code.name.lower().replace("_", " "),
                  why=describe(reason) if reason is not None else f"answered {status}")
        if not self._closed:
            self.transport.write(reply(code))

    # -- the end -------------------------------------------------------------

    def _timed_out(self) -> None:
        self._timer = None
        self._drop(f"no SOCKS5 request within {self._channel.factory.limits.header_timeout:g} s")

    def _drop(self, why: str) -> None:
        if self._done:
            return
        self._done = True
        peer = self._channel.client_conn.peername
        _log.info("SOCKS5 client {client} closed: {why}",
                  client=f"{peer[0]}:{peer[1]}" if peer else "?", why=why)
        self._stop_timer()
        self.transport.loseConnection()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The client left before its tunnel opened."""
        self._closed = self._done = True
        self._stop_timer()
        if self._opening is not None:
            self._opening.client_gone()
        self._channel.relay_closed()
