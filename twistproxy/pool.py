# -*- test-case-name: tests.test_client -*-
"""
The upstream connection pool: idle keep-alive connections to origins (or
to an upstream proxy), keyed by :class:`~twistproxy.client.PoolKey`.

A :class:`ConnectionPool` hands a request an idle connection for its key
(:meth:`~ConnectionPool.take_idle`) or opens a new one
(:meth:`~ConnectionPool.connect`, TLS added for ``https``), takes each
connection back when its exchange ends (:meth:`~ConnectionPool.release`)
and closes those past its caps or idle too long.  It also adopts the
connection a ``CONNECT`` opened to its target, for the requests that come
through the tunnel (:meth:`~ConnectionPool.adopt`).  The connections
themselves are :class:`~twistproxy.client.ProxyClient` protocols.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from typing import Protocol as TypingProtocol

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    HostnameEndpoint,
    TCP4ClientEndpoint,
    TCP6ClientEndpoint,
)
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from twistproxy._tls import UpstreamTLS
from twistproxy.client import PoolKey, ProxyClient, ProxyClientFactory, host_and_port
from twistproxy.connection import Server
from twistproxy.errors import upstream_error

if TYPE_CHECKING:
    from twistproxy._tunnel import Relay

EndpointFactory = Callable[[str, str, int], IStreamClientEndpoint]
"""
Makes the TCP endpoint for a new upstream connection from ``(scheme, host,
port)``; the pool adds TLS for ``https`` itself.
"""


def hostname_endpoints(reactor: Any, connect_timeout: float) -> EndpointFactory:
    """
    The production :data:`EndpointFactory`: plain TCP endpoints for IP
    literals (no resolver round trip), and ``HostnameEndpoint``
    (resolution, IPv4 and IPv6 attempts) for names.
    """

    def endpoint(scheme: str, host: str, port: int) -> Any:
        tcp: Any
        if isIPAddress(host):
            tcp = TCP4ClientEndpoint(reactor, host, port, timeout=connect_timeout)
        elif isIPv6Address(host):
            tcp = TCP6ClientEndpoint(reactor, host, port, timeout=connect_timeout)
        else:
            tcp = HostnameEndpoint(reactor, host, port, timeout=connect_timeout)
        return tcp

    return endpoint


class _Proxy(TypingProtocol):
    """An upstream proxy (:class:`~twistproxy._upstream_proxy.UpstreamProxy`) to the pool."""

    @property
    def address(self) -> tuple[str, int]:
        """Its ``(host, port)``, which the connections' records name."""


class ConnectionPool:
    """
    Idle keep-alive connections to origins, keyed by scheme, host and port.

    :param reactor: Schedules the idle timeouts.
    :param endpoint_factory: Makes the endpoint for a new connection.
    :param max_idle_per_host: At most this many idle connections are kept per
        key; a connection released beyond that is closed.  The default is
        as many as a busy proxy has in flight at once: a keep-alive load on
        more connections than the cap would have every connection past it
        closed when its exchange ends and another opened for the next
        request (the reactor hands a batch of responses over before the
        clients' next requests arrive, so most are idle at the same moment).
        *idle_timeout* trims them after a burst.
    :param max_idle_adopted: The cap for a connection the pool adopted from
        a ``CONNECT`` (:meth:`adopt`): each intercepted tunnel opens one for
        itself, so a tunnel per request (a client that closes its
        connections) would otherwise add an idle connection per request
        until the cap, when none of them is needed for more than the
        tunnel's own requests.
    :param idle_timeout: Seconds an idle connection is kept before it is
        closed.
    :param tls: Makes the TLS settings for ``https`` origins; by default
        verified against the system's trust store.
    :param max_response_header_size: Bytes a response's header fields may
        take; more is a 502.
    :ivar on_disconnect: Called with each connection that closes, after it
        has carried an exchange (the proxy runs ``server_disconnected``).
    :ivar clock: The *reactor* given, for the connections' idle deadlines.
    :ivar proxy: The upstream proxy every connection goes through
        (:class:`~twistproxy._upstream_proxy.UpstreamPool`), or ``None``.
    :ivar reused: How many idle connections were taken for a request
        (:meth:`take_idle`), for metrics.
    """

    on_disconnect: Callable[[ProxyClient], object] | None = None
    proxy: _Proxy | None = None
    reused = 0

    def __init__(
        self,
        *,
        reactor: IReactorTime,
        endpoint_factory: EndpointFactory,
        max_idle_per_host: int = 1000,
        max_idle_adopted: int = 100,
        idle_timeout: float = 30.0,
        tls: UpstreamTLS | None = None,
        max_response_header_size: int = 64 * 1024,
    ) -> None:
        self.clock = reactor
        self.tls = tls if tls is not None else UpstreamTLS()
        self.max_response_header_size = max_response_header_size
        self.endpoint_factory = endpoint_factory
        self.max_idle_per_host = max_idle_per_host
        self.max_idle_adopted = max_idle_adopted
        self.idle_timeout = idle_timeout
        self._idle: dict[PoolKey, list[ProxyClient]] = {}
        self._pooled: set[ProxyClient] = set()

    def take_idle(self, key: PoolKey) -> ProxyClient | None:
        """
        An idle connection for *key*, removed from the pool, or ``None``.
        The most recently used one is taken: it is the least likely to have
        been closed by the server.
        """
        idle = self._idle.get(key)
        if not idle:
            return None
        client = idle.pop()
        if not idle:
            del self._idle[key]
        self._pooled.discard(client)
        client.deadline.stop()
        self.reused += 1
        return client

    def key_for(
        self, scheme: str, host: str, port: int, server_name: str | None = None,
        *, tunnel: bool = False,
    ) -> PoolKey:
        """
        The key of the connections a request to *scheme*://*host*:*port*
        goes on (*tunnel*: it came inside a ``CONNECT`` tunnel).
        """
        return PoolKey(scheme, host, port, server_name)

    def proxy_fields(self, key: PoolKey) -> list[tuple[bytes, bytes]] | None:
        """
        For a *key* to an upstream proxy, the fields its absolute-form
        requests carry (``Proxy-Authorization``); ``None``: origin form.
        """
        return None

    def endpoint_for(self, key: PoolKey) -> IStreamClientEndpoint:
        """The endpoint of a new connection for *key*, before TLS (:meth:`connect` adds it)."""
        return self.endpoint_factory(key.scheme, key.host, key.port)

    def connect(self, key: PoolKey) -> Deferred[ProxyClient]:
        """
        Open a new connection for *key*.

        :returns: A Deferred firing with the connected :class:`ProxyClient`,
            or failing with a :class:`~twistproxy.errors.TwistProxyError`
            (refused, name not resolved, timed out).
        """
        endpoint = self.endpoint_for(key)
        if key.scheme == "https":
            endpoint = self.tls.wrap(endpoint, key.server_name or key.host)
        d: Deferred[ProxyClient] = endpoint.connect(  # type: ignore[assignment]
            ProxyClientFactory(self, key)
        )
        d.addCallbacks(self._record, upstream_error)
        return d

    def adopt(self, key: PoolKey, relay: Relay) -> ProxyClient | None:
        """
        Keep a connection opened elsewhere (a ``CONNECT``'s to its target,
        whose ``server_connected`` hook ran then) as an idle connection for
        *key*, with its record; for ``https`` a
        :class:`~twistproxy._memorytls.ClientTLS` with *key*'s server name
        goes between the connection and the new protocol, verified as on a
        connection of the pool's own.

        :returns: The connection's protocol, or ``None`` when it could not be
            kept (closed already; the origin sent bytes nobody asked for;
            :attr:`max_idle_adopted` idle connections for *key* already)
            and was closed.
        """
        transport = relay.transport
        if relay.lost:
            return None
        if relay.early or len(self._idle.get(key, ())) >= min(
                self.max_idle_adopted, self.max_idle_per_host):
            # Enough idle already (:attr:`max_idle_adopted`): the tunnel's
            # requests take one of those, and this one is closed before TLS
            # starts on it.
            transport.loseConnection()
            return None
        client = ProxyClientFactory(self, key).buildProtocol(None)
        client.server = relay.server
        client.reused = True  # it waited: as stale as a kept-alive connection
        client.adopted = True
        protocol: Any = client
        if key.scheme == "https":
            protocol = self.tls.client(key.server_name or key.host, client)
        relay.give_to(protocol)
        protocol.makeConnection(transport)
        self.release(client)
        return client

    def _record(self, client: ProxyClient) -> ProxyClient:
        transport = client.transport
        assert transport is not None
        proxy = self.proxy
        client.server = Server(
            address=proxy.address if proxy is not None else (client.key[1], client.key[2]),
            peername=host_and_port(transport.getPeer()),
            sockname=host_and_port(transport.getHost()),
            timestamp_start=self.clock.seconds(),
        )
        client.record_tls()  # in case the handshake was over before the record was made
        return client

    def disconnected(self, client: ProxyClient) -> None:
        """A connection closed: stamp its record and tell :attr:`on_disconnect`."""
        server = client.server
        if server is not None and server.timestamp_end is None:
            server.timestamp_end = self.clock.seconds()
            if self.on_disconnect is not None:
                self.on_disconnect(client)

    def release(self, client: ProxyClient) -> None:
        """
        Take back a connection whose exchange ended; it is kept idle, or
        closed when the key already has :attr:`max_idle_per_host` idle ones
        (:attr:`max_idle_adopted` for an adopted connection).
        """
        idle = self._idle.setdefault(client.key, [])
        cap = self.max_idle_adopted if client.adopted else self.max_idle_per_host
        if len(idle) >= cap or client in self._pooled:
            client.abandon()
            return
        idle.append(client)
        self._pooled.add(client)
        transport = client.transport
        if transport is not None:
            transport.resumeProducing()
        client.deadline.start(self.idle_timeout, client.abandon)

    def forget(self, client: ProxyClient) -> None:
        """Remove *client* from the pool (it closed or was closed)."""
        client.deadline.cancel()
        if client not in self._pooled:
            return
        self._pooled.discard(client)
        idle = self._idle.get(client.key)
        if idle is not None and client in idle:
            idle.remove(client)
            if not idle:
                del self._idle[client.key]

    def idle_count(self, key: PoolKey | None = None) -> int:
        """How many idle connections are kept (for *key*, or in all)."""
        if key is not None:
            return len(self._idle.get(key, ()))
        return sum(len(idle) for idle in self._idle.values())

    def close(self) -> None:
        """Close every idle connection."""
        for idle in list(self._idle.values()):
            for client in list(idle):
                client.abandon()
