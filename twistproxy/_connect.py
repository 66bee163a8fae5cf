# -*- test-case-name: tests.test_switch -*-
"""
The ``CONNECT`` path: the tunnel's far end, and the switch from HTTP to it.

A ``CONNECT`` is an exchange like any other (its flow runs ``http_connect``,
then ``response``), whose upstream side is a :class:`TunnelEnd`: a raw
connection to the origin, opened before the client is answered, so that a
refused port or an unknown name is a 502 (a connect timeout a 504) rather
than a ``200`` followed by a dead tunnel; to intercept, the certificate the
proxy will present is minted first, for the same reason.  Once the flow's
hooks are done, :func:`switch` answers ``200 Connection established`` and
hands the connection to the tunnel's protocol (:func:`hand_over`) the way
Twisted's own websocket upgrade does: the channel's ``dataReceived`` and
``connectionLost`` become the new protocol's, and the bytes the client sent
right behind its ``CONNECT`` (often the TLS ClientHello), already read by
the channel, are handed on first.  A tunnel passed through goes to a raw
relay; an intercepted one to a :class:`Sniffer`, which hands it on once
more when the client's first bytes say what it carries: TLS, plain HTTP, or
anything else (relayed raw).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IHandshakeListener, IProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure
from zope.interface import alsoProvides

from twistproxy._drain import OpenChannels
from twistproxy._memorytls import ServerTLS
from twistproxy._sniff import Carried, sniff
from twistproxy._target import Tunnel
from twistproxy._tls import ServerContexts
from twistproxy._tunnel import Relay, RelayFactory
from twistproxy._twisted_compat import take_buffered
from twistproxy._upstream import IUpstreamReceiver, checked
from twistproxy.channel import Proxy
from twistproxy.client import host_and_port
from twistproxy.connection import Server
from twistproxy.errors import UpstreamConnectionLost, describe, upstream_error

_log = Logger()
_CLOSED_EARLY = "the server closed before the tunnel opened"


class TunnelEnd:
    """
    The far end of one ``CONNECT`` tunnel, made ready for its exchange: it
    reports :meth:`~IUpstreamReceiver.upstream_ready` or
    :meth:`~IUpstreamReceiver.response_failed` to the *receiver*, as an
    :class:`~twistproxy._upstream.UpstreamExchange` does.

    :param factory: The proxy factory (endpoints, certificates, hooks).
    :param receiver: The CONNECT's request.
    :param host: Where the tunnel goes.
    :param port: Where the tunnel goes.
    :param passthrough: Relay the tunnel untouched rather than intercept
        it (which mints the certificate first).
    :param here: The address the client reached the proxy on: a
        connection that leads there fails with
        :class:`~twistproxy.errors.LoopDetected`.
    :param on_connected: Runs with the connection's record (the
        ``server_connected`` hook); a Deferred it returns is waited for.
    :param eager: To intercept, connect to the origin before the client is
        answered too (the ``eager`` connection strategy); with ``False``
        (``lazy``) only the certificate is minted, and the requests inside
        (or a raw tunnel) connect when they need to.
    :ivar relay: The origin's side of the tunnel, once connected.
    :ivar passthrough: The *passthrough* given.
    """

    relay: Relay | None = None
    _pending: Deferred[Any] | None = None
    _ready = False
    _over = False

    def __init__(
        self,
        factory: Any,
        receiver: IUpstreamReceiver,
        *,
        host: str,
        port: int,
        passthrough: bool,
        here: Any,
        on_connected: Callable[[Server], Deferred[Any] | None] | None,
        eager: bool = True,
    ) -> None:
        self._factory = factory
        self._receiver = receiver
        self._host = host
        self._port = port
        self.passthrough = passthrough
        self._here = here
        self._on_connected = on_connected
        self._eager = eager

    def open(self) -> None:
        """
        Mint the certificate (to intercept), then connect to the origin
        (unless intercepting lazily): both fail the CONNECT rather than its
        tunnel.
        """
        factory = self._factory
        if not self.passthrough:
            try:
                factory.intercept_context(self._host)
            except Exception:
                _log.failure("no certificate for {host}", host=self._host)
                self._fail(Failure())
                return
            if not self._eager:
                self._ready = True
                self._receiver.upstream_ready(None)
                return
        endpoint = factory.pool.endpoint_factory("tcp", self._host, self._port)
        relay = Relay(on_close=self._relay_closed)
        self._pending = d = endpoint.connect(RelayFactory(relay))
        d.addErrback(upstream_error)
        d.addCallbacks(self._connected, self._fail)

    def _connected(self, relay: Relay) -> None:
        self._pending = None
        self.relay = relay
        transport = relay.transport
        proxy = self._factory.pool.proxy  # upstream mode: where the tunnel was asked for
        server = relay.server = Server(
            address=proxy.address if proxy is not None else (self._host, self._port),
            peername=host_and_port(transport.getPeer()),
            sockname=host_and_port(transport.getHost()),
            timestamp_start=self._factory.reactor.seconds(),
        )
        self._pending = checked(
            transport, server, here=self._here, on_connected=self._on_connected,
            ready=self._connected_ready, failed=self._fail, what="tunnel",
        )

    def _connected_ready(self) -> None:
        self._pending = None
        relay = self.relay
        if relay is not None and relay.lost:
            self._fail(Failure(UpstreamConnectionLost(_CLOSED_EARLY)))
            return
        self._ready = True
        self._receiver.upstream_ready(relay.server if relay is not None else None)

    def _relay_closed(self, relay: Relay) -> None:
        """The origin's side closed: before the switch, the tunnel failed."""
        self._factory.server_closed(relay)
        if self._ready and not self._over:
            self._over = True
            self._receiver.response_failed(Failure(UpstreamConnectionLost(_CLOSED_EARLY)))

    def _fail(self, reason: Failure) -> None:
        self._pending = None
        if self._over or reason.check(CancelledError):
            return
        self._over = True
        self._close()
        self._receiver.response_failed(reason)

    def _close(self) -> None:
        relay = self.relay
        if relay is not None and not relay.lost:
            relay.transport.loseConnection()

    def abandon(self) -> None:
        """The tunnel will not open: stop connecting, close the origin's side."""
        if self._over:
            return
        self._over = True
        pending, self._pending = self._pending, None
        if pending is not None:
            pending.addErrback(lambda reason: reason.trap(CancelledError))
            pending.cancel()
        self._close()

    def switched(self) -> None:
        """The tunnel opened: what happens to the connection is not ours any more."""
        self._over = True


def open_tunnel(request: Any, passthrough: bool) -> None:
    """
    The ``OPEN_TUNNEL`` action of a CONNECT's request: make its
    :class:`TunnelEnd` the exchange's upstream side, and open it.
    """
    target = request.flow.request
    end = TunnelEnd(
        request.channel.factory, request, host=target.host, port=target.port,
        passthrough=passthrough, here=request.channel.getHost(),
        on_connected=request.server_hook(), eager=request.channel.factory.connect_eagerly,
    )
    request.swap_upstream(end)
    end.open()


def switch(request: Any, _: object) -> None:
    """
    The ``SWITCH`` action of a CONNECT's request: answer ``200 Connection
    established`` and hand the connection to the tunnel: a raw relay joined
    to the tunnel end's when it is passed through, or a :class:`Sniffer`
    that lets the client's first bytes decide.
    """
    channel: Proxy = request.channel
    end: TunnelEnd = request.swap_upstream(None)
    target = request.flow.request
    channel.transport.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    buffered = take_buffered(channel)
    channel.persistent = True  # the tunnel outlives this request
    request.startedWriting = 1  # the 200 went out raw: finish() writes no head
    request.finish()
    enter_tunnel(channel, end, target.host, target.port, buffered)


def enter_tunnel(channel: Proxy, end: TunnelEnd, host: str, port: int, buffered: bytes) -> None:
    """
    Give *channel*'s connection to the tunnel to *host*:*port* whose far
    end is *end* (opened, its exchange over), starting with *buffered*, the
    client's bytes read already: a raw relay joined to *end*'s when it is
    passed through, else a :class:`Sniffer` that lets the client's first
    bytes decide.  (A ``CONNECT``'s, after its ``200``; a SOCKS5 or
    transparent listener's, after its own answer.)
    """
    end.switched()
    channel.client_conn.tunnel = (host, port)
    relay = end.relay
    if relay is not None:
        relay.on_close = channel.factory.server_closed
    if end.passthrough:
        assert relay is not None
        protocol = Relay(on_close=channel.relay_closed)
        hand_over(channel, protocol, buffered)
        channel.stop_deadlines()
        protocol.join(relay)
        return
    sniffer = Sniffer(channel, host, port, relay)
    hand_over(channel, sniffer, buffered)
    channel.stop_deadlines()
    sniffer.start()


class Sniffer(Protocol):
    """
    The client's side of an intercepted tunnel until its first bytes say
    what it carries (:func:`~twistproxy._sniff.sniff`): a TLS ClientHello
    is intercepted (:meth:`~twistproxy.proxy.ProxyFactory.intercepting_protocol`),
    an HTTP request line is served as plain ``http`` flows on a channel of
    its own, anything else is relayed raw to *origin*, the connection the
    ``CONNECT`` opened (or, with the ``lazy`` connection strategy, a
    connection opened then).

    An origin that speaks (or closes) before the client has said enough
    makes the tunnel raw at once: TLS and HTTP clients speak first, so that
    is a server-speaks-first protocol (SMTP, SSH, FTP...).  A client that
    has not said enough ``limits.sniff_timeout`` seconds after the ``200``
    gets a raw tunnel too (the only way without an *origin* to watch).

    With *fixed*, a reverse proxy's origin, the client addressed the proxy
    itself: its requests go to *fixed*, over TLS when its first byte starts
    a TLS record, in the clear otherwise (never raw).

    :ivar carried: What the tunnel was found to carry, once decided.
    """

    carried: Carried | None = None
    _next: IProtocol | None = None
    _timer: Any = None
    _late: TunnelEnd | None = None  # the raw tunnel's origin, connecting lazily

    def __init__(
        self, channel: Proxy, host: str, port: int, origin: Relay | None,
        *, fixed: Tunnel | None = None,
    ) -> None:
        self._channel = channel
        self._host = host
        self._port = port
        self._origin = origin
        self._fixed = fixed
        self._received = b""

    def start(self) -> None:
        """Watch the origin, and the clock, unless the client decided already."""
        if self.carried is not None:
            return
        factory = self._channel.factory
        if self._fixed is not None:
            # A reverse proxy's client: TLS or HTTP, whenever it speaks.
            self._timer = factory.reactor.callLater(
                factory.limits.sniff_timeout, self._decide, Carried.HTTP)
            return
        origin = self._origin
        if origin is not None:
            if origin.early or origin.lost:
                self._decide(Carried.RAW)
                return
            origin.on_early = self._origin_spoke
            origin.on_close = self._origin_closed
        self._timer = factory.reactor.callLater(
            factory.limits.sniff_timeout, self._decide, Carried.RAW)

    def dataReceived(self, data: bytes) -> None:
        """The client's bytes: kept until they decide."""
        if self._next is not None:  # decided while hand_over fed the first bytes
            self._next.dataReceived(data)
            return
        self._received += data
        if self._fixed is not None:
            self._decide(Carried.TLS if self._received[0] == 0x16 else Carried.HTTP)
            return
        carried = sniff(self._received, self._channel.factory.limits.max_request_line)
        if carried is not None:
            self._decide(carried)

    def _origin_spoke(self, origin: Relay) -> None:
        self._decide(Carried.RAW)

    def _origin_closed(self, origin: Relay) -> None:
        self._channel.factory.server_closed(origin)
        self._decide(Carried.RAW)

    def _decide(self, carried: Carried) -> None:
        if self.carried is not None:
            return
        if carried is Carried.TLS and self._channel.factory.contexts is None:
            # Only a reverse proxy's client gets here: there is no CA to
            # answer its TLS with (--no-intercept).
            _log.warn("a client spoke TLS to the reverse proxy for {host}:{port}, but "
                      "there is no CA to answer it with (--no-intercept): closed",
                      host=self._host, port=self._port)
            self._stop_watching()
            self._channel.transport.loseConnection()
            return
        self.carried = carried
        self._stop_watching()
        channel, origin = self._channel, self._origin
        factory = channel.factory
        buffered, self._received = self._received, b""
        _log.debug("tunnel to {host}:{port} carries {carried}", host=self._host,
                   port=self._port, carried=carried.value)
        protocol: Any
        fixed = self._fixed
        if carried is Carried.TLS:
            protocol = factory.intercepting_protocol(
                channel, fixed or Tunnel(self._host, self._port), origin)
        elif carried is Carried.HTTP:
            protocol = factory.tunnel_channel(
                channel, fixed or Tunnel(self._host, self._port, "http"), origin)
            protocol.pool_origin(None)
        else:
            protocol = Relay(on_close=self._client_closed)
        self._next = protocol
        hand_over(channel, protocol, buffered)
        if carried is not Carried.RAW:
            return
        if origin is not None:
            protocol.join(origin)
            return
        chain = factory.chain
        self._late = late = TunnelEnd(
            factory, cast(IUpstreamReceiver, self), host=self._host, port=self._port,
            passthrough=True, here=channel.getHost(),
            on_connected=(lambda server: chain.run("server_connected", server))
            if chain.has("server_connected") else None,
        )
        late.open()

    # -- a raw tunnel's origin, connected lazily (as TunnelEnd's receiver) -------

    def upstream_ready(self, server: Server | None) -> None:
        """The raw tunnel's origin is connected: join the client's side to it."""
        late, self._late = self._late, None
        assert late is not None and late.relay is not None
        late.switched()
        late.relay.on_close = self._channel.factory.server_closed
        self._next.join(late.relay)  # type: ignore[union-attr]

    def response_failed(self, reason: Failure) -> None:
        """The raw tunnel's origin could not be reached: close the client's side."""
        self._late = None
        _log.info("tunnel to {host}:{port} failed: {why}", host=self._host,
                  port=self._port, why=describe(reason))
        client = self._next
        if client is not None and client.transport is not None:  # type: ignore[attr-defined]
            client.transport.loseConnection()  # type: ignore[attr-defined]

    def _client_closed(self, relay: Relay) -> None:
        """The client's side of a raw tunnel closed: stop connecting, if still."""
        late, self._late = self._late, None
        if late is not None:
            late.abandon()
        self._channel.relay_closed(relay)

    def _stop_watching(self) -> None:
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        origin = self._origin
        if origin is None:
            return
        origin.on_early = None
        if origin.on_close == self._origin_closed:
            origin.on_close = self._channel.factory.server_closed

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """The client left before it said anything decisive: close the origin."""
        if self.carried is not None:
            return
        self.carried = Carried.RAW  # nothing more to decide
        self._stop_watching()
        origin = self._origin
        if origin is not None and not origin.lost:
            origin.transport.loseConnection()
        self._channel.relay_closed()


def hand_over(old: Any, protocol: IProtocol, buffered: bytes) -> None:
    """
    Give the connection of *old* (a :class:`~twistproxy.channel.Proxy`
    channel, or a :class:`~twistproxy.client.ProxyClient` the origin
    switched to a WebSocket) to *protocol*: from now on the transport's
    bytes and its end go to *protocol*, starting with *buffered*.

    A channel's idle timeout is stopped (the new protocol keeps its own),
    and it is marked ``handed_over`` (a drain gives it the deadline);
    whatever produced for the transport stops doing so.  *protocol*'s
    methods are looked up at each call, so that it may hand the connection
    on in turn (a tunnel's sniffer to a channel, that channel to a
    WebSocket relay after a ``101``).
    """
    transport: Any = old.transport
    if isinstance(old, TimeoutMixin):
        old.setTimeout(None)
    if isinstance(old, Proxy):
        old.handed_over = True
    if getattr(transport, "producer", None) is not None:  # none on a second hand-over
        transport.unregisterProducer()
    old.dataReceived = lambda data: protocol.dataReceived(data)
    old.connectionLost = lambda reason=connectionDone: protocol.connectionLost(reason)
    protocol.makeConnection(transport)
    transport.resumeProducing()  # HTTPChannel may have paused it while buffering
    if buffered:
        protocol.dataReceived(buffered)


class Interception:
    """
    The part of :class:`~twistproxy.proxy.ProxyFactory` that decides
    whether a tunnel is intercepted, and takes its connection over to read
    the requests inside: a new channel for them, in the clear or inside TLS
    towards the client.
    """

    contexts: ServerContexts | None
    channels: OpenChannels
    reactor: Any

    _ignore_hosts: list[re.Pattern[str]]

    def _channel(self, addr: Any) -> Proxy:  # ProxyFactory's
        raise NotImplementedError

    def ignores(self, host: str, port: int) -> bool:
        """Whether ``ignore_hosts`` passes a CONNECT to *host*:*port* through."""
        hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        return any(pattern.search(hostport) for pattern in self._ignore_hosts)

    def passes_through(self, host: str, port: int) -> bool:
        """Whether a CONNECT to *host*:*port* is passed through untouched."""
        return self.contexts is None or self.ignores(host, port)

    def intercept_context(self, host: str) -> Any:
        """
        The TLS context presenting *host*'s certificate, minted if need be.

        :raises Exception: whatever minting raised (the CA expired, say).
        """
        assert self.contexts is not None
        return self.contexts.context_for(host)

    def intercepting_protocol(
        self, channel: Proxy, tunnel: Tunnel, origin: Relay | None = None
    ) -> Any:
        """
        The protocol that takes over *channel*'s connection to intercept a
        tunnel that carries TLS: TLS towards the client around a new channel
        (see :meth:`tunnel_channel`).
        """
        assert self.contexts is not None
        inner = self.tunnel_channel(channel, tunnel, origin)
        alsoProvides(inner, IHandshakeListener)
        # Without SNI, the name the client reached: the tunnel's host, or
        # for a reverse proxy (whose origin the client does not know) the
        # address it connected to.
        name = channel.getHost().host if tunnel.reverse else tunnel.host
        # The standard library's TLS, not Twisted's TLSMemoryBIOProtocol
        # over pyOpenSSL: 0.91 of the instructions per request of (e)
        # (bench/ANALYSIS.md).
        return ServerTLS(self.contexts.context_for(name), inner)

    def tunnel_channel(
        self, channel: Proxy, tunnel: Tunnel, origin: Relay | None = None
    ) -> Proxy:
        """
        A new channel for the requests inside an intercepted tunnel: it
        adopts *channel*'s client record, *tunnel* (where its origin-form
        requests go, and over which scheme) and *origin*, the connection the
        ``CONNECT`` opened, for the first of them.  Inside TLS it is
        :meth:`intercepting_protocol`'s; in the clear it takes *channel*'s
        connection itself.
        """
        inner = self._channel(channel.transport.getPeer())
        inner.adopt(channel.client_conn, tunnel, origin)
        self.channels.replace(channel, inner)
        return inner
