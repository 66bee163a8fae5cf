# -*- test-case-name: tests.test_proxyprotocol -*-
"""
Listeners behind a load balancer that speaks the PROXY protocol (HAProxy's
``send-proxy`` or ``send-proxy-v2``): the balancer opens each connection
with a header naming the real client, and the proxy serves the connection
as that client's.

``--port haproxy:tcp:8080`` (or ``--proxy-protocol``, which wraps every
listener) listens this way; so does a :class:`~twistproxy.service.ProxyService`
given a ``haproxy:`` description, through :func:`server_endpoint`.

Twisted parses the headers (``twisted.protocols.haproxy``, v1 and v2), but
its own wrapper connects the wrapped protocol before the header is read:
a :class:`~twistproxy.channel.Proxy` channel would record the balancer as
its client.  :class:`ProxyHeaderFactory` builds the proxy's channel only
once the header is in, for the client it names, so that
``flow.client_conn.peername``, the flow log, ``--proxy-auth`` and the host
policy all see the real client.  A connection without a valid header (or
whose header does not arrive within the deadline) is closed, never served:
a PROXY listener must only be reachable from the balancer, since the header
is believed.  A ``LOCAL`` (v2) or ``UNKNOWN`` (v1) header, which a balancer
sends for its own connections, leaves the connection's own addresses.
"""

from __future__ import annotations

import ipaddress
import struct
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import directlyProvides, implementer, providedBy

from twistproxy._twisted_compat import InvalidProxyHeader, ProxyHeaderV1, ProxyHeaderV2
from twistproxy.limits import with_backlog

PREFIX = "haproxy:"
"""The endpoint description prefix of a listener that takes the PROXY protocol."""

HEADER_TIMEOUT = 30.0
"""
Seconds a connection may take to send its PROXY header when the wrapped
factory has no ``limits.header_timeout`` to go by.
"""

_V2_SIGNATURE = ProxyHeaderV2.PREFIX  # 12 bytes, then version/command and family
_V1_SIGNATURE = b"PROXY "
_log = Logger(namespace="twistproxy")


def split_prefix(description: str) -> tuple[str, bool]:
    """
    The endpoint description *description* without its ``haproxy:``
    prefix, and whether it had one (``haproxy:tcp:8080`` is
    ``("tcp:8080", True)``).
    """
    if description[: len(PREFIX)].lower() == PREFIX:
        return description[len(PREFIX):], True
    return description, False


def server_endpoint(reactor: Any, description: str, backlog: int) -> IStreamServerEndpoint:
    """
    The server endpoint of *description*, listening with *backlog* unless it
    names its own (:func:`~twistproxy.limits.with_backlog`); a ``haproxy:``
    description is the endpoint after the prefix, wrapped in
    :class:`ProxyHeaderEndpoint`.
    """
    from twisted.internet.endpoints import serverFromString

    inner, proxied = split_prefix(description)
    endpoint = serverFromString(reactor, with_backlog(inner, backlog))
    return ProxyHeaderEndpoint(endpoint, reactor) if proxied else endpoint


@implementer(IStreamServerEndpoint)
class ProxyHeaderEndpoint:
    """
    Listens on *endpoint* with each factory wrapped in a
    :class:`ProxyHeaderFactory`.

    :param clock: Times the headers' deadline.
    :param timeout: Seconds a connection may take to send its header (by
        default the wrapped factory's ``limits.header_timeout``).
    :ivar factories: The factories it listened with (their ``refused``
        counts are the listener's).
    """

    def __init__(
        self, endpoint: IStreamServerEndpoint, clock: IReactorTime, timeout: float | None = None
    ) -> None:
        self._endpoint = endpoint
        self._clock = clock
        self._timeout = timeout
        self.factories: list[ProxyHeaderFactory] = []

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Listen on the wrapped endpoint, expecting a PROXY header first."""
        wrapped = ProxyHeaderFactory(factory, clock=self._clock, timeout=self._timeout)
        self.factories.append(wrapped)
        return self._endpoint.listen(wrapped)


class ProxyHeaderFactory(WrappingFactory):
    """
    Serves each connection with *wrapped*'s protocol once its PROXY header
    (v1 or v2) is read, as a connection from the client the header names:
    ``wrapped.buildProtocol`` is called then, with that address, and the
    protocol's transport answers ``getPeer``/``getHost`` with the header's
    addresses.

    :param clock: Times the headers' deadline.
    :param timeout: Seconds a connection may take to send its header (by
        default *wrapped*'s ``limits.header_timeout``).
    :ivar refused: How many connections were closed for a missing, invalid
        or late header.
    """

    noisy = False

    def __init__(
        self, wrapped: IProtocolFactory, *, clock: IReactorTime, timeout: float | None = None
    ) -> None:
        super().__init__(wrapped)
        self.clock = clock
        if timeout is None:
            limits = getattr(wrapped, "limits", None)
            timeout = getattr(limits, "header_timeout", HEADER_TIMEOUT)
        self.timeout: float = timeout
        self.refused = 0

    def logPrefix(self) -> str:
        """The wrapped factory's log prefix, marked as behind the PROXY protocol."""
        inner = getattr(self.wrappedFactory, "logPrefix", None)
        name = inner() if callable(inner) else type(self.wrappedFactory).__name__
        return f"{name} (PROXY)"

    def buildProtocol(self, addr: IAddress | None) -> _ProxyHeaderProtocol:
        """A protocol that reads the header; the wrapped one comes after it."""
        return _ProxyHeaderProtocol(self)


class _ProxyHeaderProtocol(ProtocolWrapper):
    """
    Reads one connection's PROXY header, then hands the connection to the
    wrapped factory's protocol and is its transport.
    """

    factory: ProxyHeaderFactory
    wrappedProtocol: Any
    transport: Any
    _closing = False

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        super().__init__(factory, None)  # type: ignore[arg-type]
        self._head = b""
        self._parser: ProxyHeaderV1 | ProxyHeaderV2 | None = None
        self._source: IAddress | None = None
        self._destination: IAddress | None = None
        self._timer: IDelayedCall | None = None

    def logPrefix(self) -> str:
        """The wrapped protocol's prefix once there is one."""
        if self.wrappedProtocol is None:
            return "PROXY header"
        return super().logPrefix()

    @property  # type: ignore[override]
    def disconnecting(self) -> bool:
        """Whether this connection is closing, by this wrapper or below it."""
        transport = self.transport
        return self._closing or bool(transport is not None and transport.disconnecting)

    @disconnecting.setter
    def disconnecting(self, value: bool) -> None:
        self._closing = bool(value)

    def makeConnection(self, transport: Any) -> None:
        """Start waiting for the header; the wrapped protocol is not built yet."""
        directlyProvides(self, providedBy(transport))
        Protocol.makeConnection(self, transport)
        self.factory.registerProtocol(self)
        self._timer = self.factory.clock.callLater(self.factory.timeout, self._late)

    def getPeer(self) -> IAddress:
        """The client the header named (the connection's peer before it, or without one)."""
        return self._source if self._source is not None else self.transport.getPeer()

    def getHost(self) -> IAddress:
        """The address the client reached, as the header named it."""
        return self._destination if self._destination is not None else self.transport.getHost()

    def dataReceived(self, data: bytes) -> None:
        """Read the header; pass on whatever follows it."""
        protocol = self.wrappedProtocol
        if protocol is not None:
            protocol.dataReceived(data)
            return
        if self._timer is None:
            return  # refused: closing
        try:
            info, rest = self._feed(data)
            if info is None:
                return
            source, destination = _checked(info.source), _checked(info.destination)
        except (InvalidProxyHeader, ValueError, LookupError, struct.error) as e:
            self._refuse(str(e) if self._parser is None else "an invalid PROXY protocol header")
            return
        self._stop_timer()
        self._source, self._destination = source, destination
        protocol = self.factory.wrappedFactory.buildProtocol(self.getPeer())
        if protocol is None:
            self.loseConnection()
            return
        self.wrappedProtocol = protocol
        protocol.makeConnection(self)
        if rest and self.wrappedProtocol is protocol and self.connected:
            protocol.dataReceived(rest)

    def _feed(self, data: bytes) -> tuple[Any, bytes]:
        """
        Feed the header's parser, chosen by the first bytes (which may come
        a few at a time).

        :returns: The parsed header and the bytes after it, or ``(None,
            b"")`` while the header is incomplete.
        :raises InvalidProxyHeader: if the bytes are no PROXY header.
        """
        parser = self._parser
        if parser is None:
            buffer = self._head + data
            if buffer.startswith(_V2_SIGNATURE):
                if len(buffer) < 16:  # the fixed part, with the length
                    self._head = buffer
                    return None, b""
                parser = ProxyHeaderV2()
            elif buffer.startswith(_V1_SIGNATURE):
                parser = ProxyHeaderV1()
            elif _V2_SIGNATURE.startswith(buffer) or _V1_SIGNATURE.startswith(buffer):
                self._head = buffer
                return None, b""
            else:
                raise InvalidProxyHeader("no PROXY protocol header")
            self._parser, self._head, data = parser, b"", buffer
        info, rest = parser.feed(data)
        return info, rest or b""

    def _late(self) -> None:
        self._timer = None
        self._refuse(f"no PROXY protocol header within {self.factory.timeout:g} s")

    def _refuse(self, why: str) -> None:
        """Close a connection whose header is missing, invalid or late."""
        self._stop_timer()
        self.factory.refused += 1
        peer = self.transport.getPeer()
        _log.info("refused a connection from {peer}: {why}",
                  peer=f"{getattr(peer, 'host', peer)}:{getattr(peer, 'port', '')}", why=why)
        self.transport.abortConnection()

    def _stop_timer(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Tell the wrapped protocol, if the header was read and it was built."""
        self._stop_timer()
        self.factory.unregisterProtocol(self)
        protocol, self.wrappedProtocol = self.wrappedProtocol, None
        if protocol is not None:
            protocol.connectionLost(reason)


def _checked(address: IAddress | None) -> IAddress | None:
    """
    A header's address, if it is an IP address (Twisted's v1 parser takes
    any word for one); a UNIX address (v2) is kept as it is.

    :raises ValueError: for a host that is no IP address.
    """
    host = getattr(address, "host", None)
    if isinstance(host, str):
        ipaddress.ip_address(host)
    return address
