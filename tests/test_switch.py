"""
Tests for :mod:`twistproxy._connect`, on real :class:`~twistproxy.channel.Proxy`
channels over ``StringTransport`` s, and for the ``CONNECT`` passthrough
tunnel that uses it, in memory end to end.
"""

from __future__ import annotations

import contextlib
import ssl
from datetime import UTC, datetime
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeEndpointFactory, Recorder
from twistproxy._connect import hand_over
from twistproxy._tunnel import Relay
from twistproxy._twisted_compat import take_buffered
from twistproxy.certs import CertificateAuthority, CertificateStore
from twistproxy.channel import Proxy
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow
from twistproxy.proxy import ProxyFactory

_ESTABLISHED = b"HTTP/1.1 200 Connection established\r\n\r\n"
_CONNECT = b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n"
_CLIENT_HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03client-hello"


class _Holding(Addon):
    """
    An addon whose *hook* waits, each time, on a Deferred the test fires.

    :ivar waiting: The Deferreds handed out, in order.
    """

    def __init__(self, hook: str) -> None:
        self.waiting: list[Deferred[None]] = []
        setattr(self, hook, self._hold)

    def _hold(self, subject: object) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiting.append(d)
        return d


class _TCPTransport(StringTransport):
    """A ``StringTransport`` with TCP's ``setTcpNoDelay`` (which it claims)."""

    def setTcpNoDelay(self, enabled: bool) -> None:  # noqa: N802  (Twisted's name)
        """Nothing to set."""


class _Channel:
    """A proxy channel on a ``StringTransport``, and what it connects upstream."""

    def __init__(
        self, addons: tuple[object, ...] = (), timeout: float = 60.0, **kwargs: Any
    ) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoints = FakeEndpointFactory()
        self.factory = ProxyFactory(
            reactor=self.reactor, endpoint_factory=self.endpoints, addons=addons,
            timeout=timeout, **kwargs,
        )
        self.channel: Proxy = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        self.transport = _TCPTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        self.channel.makeConnection(self.transport)


class SwitchTests(SynchronousTestCase):
    """
    Tests for :func:`take_buffered` and :func:`hand_over`.
    """

    def setUp(self) -> None:
        self.proxy = _Channel()
        self.channel = self.proxy.channel
        self.transport = self.proxy.transport

    def _request_in_progress(self) -> None:
        """Send a request that waits for its (fake) origin's answer."""
        self.channel.dataReceived(b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n")
        self.assertEqual(len(self.proxy.endpoints.connections), 1)

    def test_take_buffered_returns_and_clears(self) -> None:
        """
        Bytes the client sends while a request is being handled are kept by
        the channel; ``take_buffered`` returns them all, in order, and leaves
        none behind.
        """
        self._request_in_progress()
        self.channel.dataReceived(b"\x16\x03\x01")
        self.channel.dataReceived(b"more")
        self.assertEqual(take_buffered(self.channel), b"\x16\x03\x01more")
        self.assertEqual(take_buffered(self.channel), b"")

    def test_take_buffered_nothing(self) -> None:
        """A channel holding no unparsed bytes gives back nothing."""
        self._request_in_progress()
        self.assertEqual(take_buffered(self.channel), b"")

    def test_hand_over_feeds_buffered_first(self) -> None:
        """
        The new protocol is connected to the channel's transport and gets
        the buffered bytes before anything the client sends later.
        """
        self._request_in_progress()
        self.channel.dataReceived(b"early")
        protocol = Recorder()
        hand_over(self.channel, protocol, take_buffered(self.channel))
        self.channel.dataReceived(b"later")
        self.assertIs(protocol.transport, self.transport)
        self.assertEqual(protocol.received, [b"early", b"later"])

    def test_hand_over_twice(self) -> None:
        """
        The protocol given the connection may hand it on in turn (a
        channel inside a tunnel to a WebSocket relay): bytes and the end
        follow to the last one.
        """
        first, then = Recorder(), Recorder()
        hand_over(self.channel, first, b"")
        first.transport = self.transport  # as makeConnection left it
        hand_over(first, then, b"")
        self.channel.dataReceived(b"later")
        reason = Failure(ConnectionDone())
        self.channel.connectionLost(reason)
        self.assertEqual((first.received, then.received), ([], [b"later"]))
        self.assertIs(then.reason, reason)
        self.assertIs(then.transport, self.transport)

    def test_hand_over_routes_connection_lost(self) -> None:
        """
        After the hand-over, the end of the connection goes to the new
        protocol, with its reason.
        """
        protocol = Recorder()
        hand_over(self.channel, protocol, b"")
        reason = Failure(ConnectionDone())
        self.channel.connectionLost(reason)
        self.assertIs(protocol.reason, reason)
        self.assertEqual(protocol.received, [])

    def test_hand_over_stops_idle_timeout(self) -> None:
        """
        The channel's idle timeout is stopped: the connection outlives the
        timeout, and the timer's call (a stopped deadline's call comes due
        and does nothing) is not armed again.
        """
        self.assertEqual(len(self.proxy.reactor.getDelayedCalls()), 1)
        hand_over(self.channel, Recorder(), b"")
        self.proxy.reactor.advance(3600)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.proxy.reactor.getDelayedCalls(), [])

    def test_hand_over_unregisters_channel_as_producer(self) -> None:
        """
        The channel stops being the transport's producer, and the transport
        reads again (the channel may have paused it while buffering).
        """
        self._request_in_progress()
        self.assertIs(self.transport.producer, self.channel)
        self.transport.pauseProducing()
        hand_over(self.channel, Recorder(), b"")
        self.assertIsNone(self.transport.producer)
        self.assertEqual(self.transport.producerState, "producing")


class PassthroughTunnelTests(SynchronousTestCase):
    """
    Tests for ``CONNECT`` tunnels passed through untouched (no certificate
    store): the proxy connects to the origin, answers ``200`` and relays.
    """

    def _connect(self, proxy: _Channel, data: bytes = _CONNECT) -> tuple[Relay, StringTransport]:
        """Send *data* and return the origin's relay and transport."""
        proxy.channel.dataReceived(data)
        self.assertEqual(proxy.endpoints.requested, [("tcp", "example.com", 443)])
        [(relay, upstream)] = proxy.endpoints.connections
        self.assertIsInstance(relay, Relay)
        return relay, upstream

    def test_connect_relays_both_ways(self) -> None:
        """
        ``CONNECT`` opens a connection to the origin, answers ``200
        Connection established``, and then relays bytes both ways
        untouched.
        """
        proxy = _Channel()
        self.assertIsNone(proxy.channel.client_conn.tunnel)
        relay, upstream = self._connect(proxy)
        self.assertEqual(proxy.transport.value(), _ESTABLISHED)
        self.assertEqual(proxy.channel.client_conn.tunnel, ("example.com", 443))
        proxy.transport.clear()
        proxy.channel.dataReceived(_CLIENT_HELLO)
        self.assertEqual(upstream.value(), _CLIENT_HELLO)
        relay.dataReceived(b"\x16\x03\x03server-hello")
        self.assertEqual(proxy.transport.value(), b"\x16\x03\x03server-hello")

    def test_bytes_behind_connect_reach_origin(self) -> None:
        """
        Bytes sent in the same read as the ``CONNECT`` (the TLS ClientHello)
        go to the origin after the ``200``, and are not parsed as HTTP.
        """
        proxy = _Channel()
        _, upstream = self._connect(proxy, _CONNECT + _CLIENT_HELLO)
        self.assertEqual(proxy.transport.value(), _ESTABLISHED)
        self.assertEqual(upstream.value(), _CLIENT_HELLO)
        self.assertFalse(proxy.transport.disconnecting)

    def test_bytes_sent_while_hook_runs_reach_origin(self) -> None:
        """
        Bytes the client sends while an ``http_connect`` hook is still
        running are kept, and reach the origin once the tunnel opens.
        """
        holding = _Holding("http_connect")
        proxy = _Channel((holding,))
        proxy.channel.dataReceived(_CONNECT)
        proxy.channel.dataReceived(_CLIENT_HELLO)
        self.assertEqual(proxy.endpoints.connections, [])
        holding.waiting[0].callback(None)
        [(_, upstream)] = proxy.endpoints.connections
        self.assertEqual(proxy.transport.value(), _ESTABLISHED)
        self.assertEqual(upstream.value(), _CLIENT_HELLO)

    def test_tunnel_outlives_idle_timeout(self) -> None:
        """
        An open tunnel is not closed by the HTTP channel's idle timeout:
        no timer is left on the clock for it.
        """
        proxy = _Channel(timeout=60)
        self._connect(proxy)
        proxy.reactor.advance(3600)
        self.assertFalse(proxy.transport.disconnecting)

    def test_origin_close_closes_client(self) -> None:
        """When the origin's connection ends, the client's is closed."""
        proxy = _Channel()
        relay, _ = self._connect(proxy)
        relay.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(proxy.transport.disconnecting)

    def test_client_close_closes_origin(self) -> None:
        """When the client's connection ends, the origin's is closed."""
        proxy = _Channel()
        _, upstream = self._connect(proxy)
        proxy.channel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(upstream.disconnecting)

    def test_client_disconnected_hook_runs(self) -> None:
        """
        The end of the client's side of a tunnel runs ``client_disconnected``
        with the connection's record.
        """
        seen: list[Any] = []

        class Watch(Addon):
            def client_disconnected(self, client: Any) -> None:
                seen.append(client)

        proxy = _Channel((Watch(),))
        self._connect(proxy)
        proxy.channel.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(seen, [proxy.channel.client_conn])

    def test_origin_gone_before_tunnel_opens(self) -> None:
        """
        An origin whose connection ends while a ``server_connected`` hook
        still runs does not leave the client tunnelled to nothing: once the
        hook finishes, the CONNECT is answered 502 instead of 200.
        """
        holding = _Holding("server_connected")
        proxy = _Channel((holding,))
        relay, _ = self._connect(proxy)
        relay.connectionLost(Failure(ConnectionDone()))
        holding.waiting[0].callback(None)
        written = proxy.transport.value()
        self.assertTrue(written.startswith(b"HTTP/1.1 502 "), written)
        self.assertNotIn(b"200 Connection established", written)


def _client_hello() -> bytes:
    """A real TLS ClientHello, made by Python's ssl module."""
    context = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname="example.com")
    with contextlib.suppress(ssl.SSLWantReadError):
        tls.do_handshake()
    return outgoing.read()


_REAL_HELLO = _client_hello()
_NOW = datetime.now(UTC).replace(microsecond=0)  # OpenSSL checks against the real clock
_CA = CertificateAuthority.generate(now=_NOW, common_name="twistproxy test CA")


class SniffingTunnelTests(SynchronousTestCase):
    """
    Tests for intercepted ``CONNECT`` tunnels (a certificate store is
    given): the proxy connects to the origin, answers ``200``, and the
    client's first bytes (:class:`Sniffer`) decide what the tunnel carries.
    """

    def setUp(self) -> None:
        self.open()

    def open(self, *addons: object) -> None:
        """Open the tunnel on a new proxy with *addons*."""
        self.proxy = _Channel(addons, cert_store=CertificateStore(_CA, now=lambda: _NOW))
        self.proxy.channel.dataReceived(_CONNECT)
        self.assertEqual(self.proxy.transport.value(), _ESTABLISHED)
        self.assertEqual(self.proxy.channel.client_conn.tunnel, ("example.com", 443))
        self.proxy.transport.clear()
        [(self.origin, self.upstream)] = self.proxy.endpoints.connections
        self.assertIsInstance(self.origin, Relay)

    def test_tls_intercepted(self) -> None:
        """
        A ClientHello, even one that arrives a byte at a time, is
        intercepted: it goes to the proxy's TLS (which answers), not to the
        origin, and the origin's connection waits in the pool.
        """
        for byte in _REAL_HELLO[:2]:
            self.proxy.channel.dataReceived(bytes([byte]))
        self.assertEqual(self.proxy.transport.value(), b"")
        self.proxy.channel.dataReceived(_REAL_HELLO[2:])
        self.assertEqual(self.upstream.value(), b"")
        self.assertTrue(self.proxy.transport.value().startswith(b"\x16\x03"))  # ServerHello
        self.assertFalse(self.upstream.disconnecting)

    def test_http_served_as_flows(self) -> None:
        """
        An HTTP request line, even split, makes an ``http`` flow for the
        tunnel's host and port, sent on the connection the CONNECT opened.
        """
        seen: list[HTTPFlow] = []

        class Watch(Addon):
            def request(self, flow: HTTPFlow) -> None:
                seen.append(flow)

        self.open(Watch())
        self.proxy.channel.dataReceived(b"GET /a HT")
        self.assertEqual(seen, [])
        self.proxy.channel.dataReceived(b"TP/1.1\r\nHost: example.com:443\r\n\r\n")
        [flow] = seen
        self.assertEqual(flow.request.url, "http://example.com:443/a")
        self.assertEqual(len(self.proxy.endpoints.connections), 1)
        self.assertTrue(self.upstream.value().startswith(b"GET /a HTTP/1.1\r\n"))
        self.origin.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        written = self.proxy.transport.value()
        self.assertTrue(written.startswith(b"HTTP/1.1 200 OK\r\n"), written)
        self.assertTrue(written.endswith(b"\r\n\r\nhi"), written)

    def test_other_bytes_relayed_raw(self) -> None:
        """Bytes that are neither TLS nor HTTP go to the origin untouched, and back."""
        self.proxy.channel.dataReceived(b"\x00\x01binary")
        self.assertEqual(self.upstream.value(), b"\x00\x01binary")
        self.origin.dataReceived(b"answer")
        self.assertEqual(self.proxy.transport.value(), b"answer")

    def test_origin_speaks_first(self) -> None:
        """
        An origin that speaks before the client (SMTP's greeting) makes the
        tunnel raw at once: the greeting reaches the client, and what the
        client then sends reaches the origin, HTTP-looking or not.
        """
        self.origin.dataReceived(b"220 mail.example ESMTP\r\n")
        self.assertEqual(self.proxy.transport.value(), b"220 mail.example ESMTP\r\n")
        self.proxy.channel.dataReceived(b"GET / HTTP/1.1\r\n")
        self.assertEqual(self.upstream.value(), b"GET / HTTP/1.1\r\n")
        self.assertEqual(self.proxy.reactor.getDelayedCalls(), [])

    def test_silent_client_relayed_raw(self) -> None:
        """
        A client that says nothing for ``sniff_timeout`` gets a raw tunnel:
        a ClientHello sent later goes to the origin untouched.
        """
        self.proxy.reactor.advance(self.proxy.factory.limits.sniff_timeout - 0.1)
        self.proxy.channel.dataReceived(b"\x16")
        self.assertEqual(self.upstream.value(), b"")
        self.proxy.reactor.advance(0.1)
        self.assertEqual(self.upstream.value(), b"\x16")
        self.proxy.channel.dataReceived(b"\x03\x01")
        self.assertEqual(self.upstream.value(), b"\x16\x03\x01")

    def test_client_gone_while_sniffing(self) -> None:
        """A client that leaves before deciding closes the origin's connection."""
        seen: list[Any] = []

        class Watch(Addon):
            def client_disconnected(self, client: Any) -> None:
                seen.append(client)

        self.open(Watch())
        self.proxy.channel.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.upstream.disconnecting)
        self.assertEqual(seen, [self.proxy.channel.client_conn])
        self.assertEqual(self.proxy.reactor.getDelayedCalls(), [])

    def test_origin_closes_while_sniffing(self) -> None:
        """An origin that closes before the client speaks closes the client."""
        self.origin.connectionLost(Failure(ConnectionDone()))
        self.assertTrue(self.proxy.transport.disconnecting)


class LazyTunnelTests(SynchronousTestCase):
    """
    Tests for intercepted tunnels with the ``lazy`` connection strategy:
    the ``CONNECT`` is answered without a connection, and only a raw tunnel
    (or a request inside) connects.
    """

    def setUp(self) -> None:
        self.proxy = _Channel(cert_store=CertificateStore(_CA, now=lambda: _NOW),
                              connection_strategy="lazy")
        self.proxy.channel.dataReceived(_CONNECT)
        self.assertEqual(self.proxy.transport.value(), _ESTABLISHED)
        self.assertEqual(self.proxy.endpoints.requested, [])
        self.proxy.transport.clear()

    def test_tls_connects_nothing(self) -> None:
        """A ClientHello is intercepted; nothing connects before a request."""
        self.proxy.channel.dataReceived(_REAL_HELLO)
        self.assertTrue(self.proxy.transport.value().startswith(b"\x16\x03"))
        self.assertEqual(self.proxy.endpoints.requested, [])

    def test_raw_connects_then(self) -> None:
        """
        Bytes that are neither TLS nor HTTP connect to the origin then; they
        reach it, and its answer the client, once connected.
        """
        self.proxy.channel.dataReceived(b"\x00binary")
        [(origin, upstream)] = self.proxy.endpoints.connections
        self.assertEqual(self.proxy.endpoints.requested, [("tcp", "example.com", 443)])
        self.assertEqual(upstream.value(), b"\x00binary")
        origin.dataReceived(b"answer")
        self.assertEqual(self.proxy.transport.value(), b"answer")

    def test_silent_client_waits_then_raw(self) -> None:
        """
        With no origin to watch, only the wait ends a silent client's
        sniffing: then the origin is connected, and its greeting relayed.
        """
        self.proxy.reactor.advance(self.proxy.factory.limits.sniff_timeout)
        [(origin, _)] = self.proxy.endpoints.connections
        origin.dataReceived(b"220 mail.example ESMTP\r\n")
        self.assertEqual(self.proxy.transport.value(), b"220 mail.example ESMTP\r\n")

    def test_raw_origin_unreachable(self) -> None:
        """A raw tunnel whose origin cannot be reached closes the client."""
        self.proxy.endpoints.fail_with = ConnectionRefusedError()
        self.proxy.channel.dataReceived(b"\x00binary")
        self.assertTrue(self.proxy.transport.disconnecting)


class ConnectionStrategyTests(SynchronousTestCase):
    """Tests for ``ProxyFactory(connection_strategy=...)``."""

    def test_values(self) -> None:
        """``eager`` (the default) and ``lazy``; anything else is refused."""
        reactor = MemoryReactorClock()
        self.assertTrue(ProxyFactory(reactor=reactor).connect_eagerly)
        self.assertFalse(ProxyFactory(reactor=reactor, connection_strategy="lazy").connect_eagerly)
        with self.assertRaises(ValueError) as caught:
            ProxyFactory(reactor=reactor, connection_strategy="never")
        self.assertIn("eager, lazy", str(caught.exception))
