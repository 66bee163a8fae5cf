# -*- test-case-name: tests.test_proxy -*-
"""
Tests for :mod:`twistproxy.proxy` with fake transports: what the proxy asks
for and writes, byte for byte, without sockets.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeEndpointFactory
from twistproxy.client import PoolKey
from twistproxy.connection import Client, Server
from twistproxy.errors import AddonError, HookTimeout
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow
from twistproxy.proxy import ProxyFactory, ProxyRequest


class ProxyRequestTests(SynchronousTestCase):
    """
    Tests for :class:`ProxyRequest` driven through a :class:`Proxy` channel.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoints = FakeEndpointFactory()
        self.factory = ProxyFactory(reactor=self.reactor, endpoint_factory=self.endpoints)
        self.channel = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        self.channel.makeConnection(self.transport)

    def test_absolute_form_connects_upstream(self) -> None:
        """
        An absolute-form target makes the proxy ask for an endpoint to the
        host and port it names and send an origin-form request; nothing is
        written to the client yet.
        """
        self.channel.dataReceived(
            b"GET http://example.com:8080/a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n"
        )
        self.assertEqual(self.endpoints.requested, [("http", "example.com", 8080)])
        [(_, upstream)] = self.endpoints.connections
        self.assertEqual(
            upstream.value(),
            b"GET /a?b=1 HTTP/1.1\r\nHost: example.com:8080\r\nVia: %s\r\n\r\n"
            % (self.factory.via,),
        )
        self.assertRegex(self.factory.via, rb"^1\.1 twistproxy-[0-9a-f]{8}$")
        self.assertEqual(self.transport.value(), b"")

    def test_empty_body_keeps_its_length(self) -> None:
        """
        A POST that declares ``Content-Length: 0`` goes upstream with it
        (origins may answer 411 without); a GET without a body goes without.
        """
        self.channel.dataReceived(
            b"POST http://example.com/a HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        )
        [(_, upstream)] = self.endpoints.connections
        self.assertEqual(
            upstream.value(),
            b"POST /a HTTP/1.1\r\nContent-Length: 0\r\nHost: example.com\r\nVia: %s\r\n\r\n"
            % (self.factory.via,),
        )

    def test_response_relayed_and_connection_pooled(self) -> None:
        """
        The origin's response reaches the client with its framing, and the
        upstream connection goes back to the pool afterwards.
        """
        self.channel.dataReceived(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
        [(client, _)] = self.endpoints.connections
        client.dataReceived(b"HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 2\r\n\r\nhi")
        self.assertEqual(
            self.transport.value(), b"HTTP/1.1 200 OK\r\nX-A: 1\r\ncontent-length: 2\r\n\r\nhi"
        )
        self.assertEqual(self.factory.pool.idle_count(PoolKey("http", "example.com", 80)), 1)

    def test_client_gone_closes_upstream(self) -> None:
        """A client that goes away mid-exchange closes the upstream connection."""
        self.channel.dataReceived(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
        [(client, upstream)] = self.endpoints.connections
        self.channel.connectionLost(None)
        self.assertTrue(upstream.disconnecting)
        self.assertEqual(self.factory.pool.idle_count(), 0)

    def test_twisted_request_headers_in_a_subclass(self) -> None:
        """
        A subclass hook reading Twisted's ``getHeader``/``requestHeaders``
        sees the fields the client sent (made from :attr:`fields` when
        first asked for), and the request goes on unchanged.
        """
        seen: list[object] = []

        class Reader(ProxyRequest):
            def request(self, flow: HTTPFlow) -> None:
                seen.append(self.getHeader(b"x-a"))
                seen.append(self.requestHeaders.getRawHeaders(b"X-B"))
                seen.append(self.getHeader(b"missing"))

        factory = ProxyFactory(reactor=self.reactor, endpoint_factory=self.endpoints,
                               request_factory=Reader)
        channel = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        channel.makeConnection(StringTransport())
        channel.dataReceived(b"GET http://example.com/ HTTP/1.1\r\nX-A:  one \r\n"
                             b"X-B: 2\r\nx-b: 3\r\n\r\n")
        self.assertEqual(seen, [b"one", [b"2", b"3"], None])
        [(_, upstream)] = self.endpoints.connections
        self.assertIn(b"X-A: one\r\nX-B: 2\r\nx-b: 3\r\n", upstream.value())


class ProxyFactoryTests(SynchronousTestCase):
    """
    Tests for :class:`ProxyFactory`'s checks of its hooks.
    """

    def test_misspelt_subclass_hook_refused_at_once(self) -> None:
        """A ProxyRequest subclass with a misspelt hook is refused by the factory."""

        class Typo(ProxyRequest):
            def reqeust(self, flow: HTTPFlow) -> None:
                pass

        with self.assertRaises(AddonError) as caught:
            ProxyFactory(reactor=MemoryReactorClock(), request_factory=Typo)
        self.assertIn("request", str(caught.exception))

    def test_connection_hooks_on_subclass_refused(self) -> None:
        """Connection hooks on a ProxyRequest subclass are refused: they would never run."""

        class Connections(ProxyRequest):
            def client_connected(self, client: object) -> None:
                pass

        with self.assertRaises(AddonError) as caught:
            ProxyFactory(reactor=MemoryReactorClock(), request_factory=Connections)
        self.assertIn("client_connected", str(caught.exception))


class NeverAnswers(Addon):
    """
    An addon whose ``request`` hook returns a Deferred that never fires,
    recording its cancellation.
    """

    def __init__(self) -> None:
        self.cancelled: list[Deferred[None]] = []

    def request(self, flow: HTTPFlow) -> Deferred[None]:
        """
        :returns: A Deferred that fires only when cancelled.
        """
        return Deferred(self.cancelled.append)


def _flow() -> HTTPFlow:
    """
    A flow with no request, for running hooks on.
    """
    return HTTPFlow(Client(), Server(), now=lambda: 0.0)


class HookDeadlineTests(SynchronousTestCase):
    """
    Tests for ``hook_timeout`` and ``intercept_timeout``, which the factory
    gives its hook chain.
    """

    def test_default_hook_timeout(self) -> None:
        """
        By default a hook's Deferred may take 60 seconds.
        """
        clock = MemoryReactorClock()
        addon = NeverAnswers()
        factory = ProxyFactory(reactor=clock, addons=[addon])
        result = factory.chain.run("request", _flow())
        assert result is not None
        clock.advance(59.9)
        self.assertNoResult(result)
        clock.advance(0.1)
        self.assertEqual(self.failureResultOf(result, HookTimeout).value.seconds, 60)
        self.assertEqual(len(addon.cancelled), 1)
        self.flushLoggedErrors(HookTimeout)

    def test_no_hook_timeout(self) -> None:
        """
        ``hook_timeout=None`` waits as long as it takes.
        """
        clock = MemoryReactorClock()
        factory = ProxyFactory(reactor=clock, addons=[NeverAnswers()], hook_timeout=None)
        result = factory.chain.run("request", _flow())
        self.assertEqual(clock.getDelayedCalls(), [])
        assert result is not None
        self.assertNoResult(result)

    def test_bad_timeouts(self) -> None:
        """
        A deadline that is not positive is refused with ``ValueError``.
        """
        for kwargs in ({"hook_timeout": 0}, {"intercept_timeout": -1}):
            with self.subTest(**kwargs):
                self.assertRaises(
                    ValueError, ProxyFactory, reactor=MemoryReactorClock(), **kwargs
                )

    def test_timed_out_request_hook_answered_500(self) -> None:
        """
        A ``request`` hook that outlives ``hook_timeout`` is cancelled and
        the client is answered 500 naming it; the origin is not contacted.
        """
        reactor = MemoryReactorClock()
        endpoints = FakeEndpointFactory()
        addon = NeverAnswers()
        factory = ProxyFactory(
            reactor=reactor, endpoint_factory=endpoints, addons=[addon], hook_timeout=5
        )
        channel = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport()
        channel.makeConnection(transport)
        channel.dataReceived(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
        reactor.advance(4.9)
        self.assertEqual(transport.value(), b"")
        reactor.advance(0.1)
        self.assertEqual(len(addon.cancelled), 1)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 500 Internal Server Error\r\n"))
        self.assertIn(
            b"hook 'request' of NeverAnswers timed out after 5 s", transport.value()
        )
        self.assertEqual(endpoints.requested, [])
        self.flushLoggedErrors(HookTimeout)


class StreamBufferTests(SynchronousTestCase):
    """
    A streamed response lets the client's write buffer hold a few reads
    before the origin is paused.
    """

    def test_client_buffer_raised_for_streams(self) -> None:
        """
        Streaming raises the client transport's pause threshold from
        Twisted's 64 KiB to 512 KiB, so each read no longer pauses and
        resumes the origin; buffered responses leave it alone.
        """
        reactor = MemoryReactorClock()
        endpoints = FakeEndpointFactory()
        factory = ProxyFactory(reactor=reactor, endpoint_factory=endpoints, body_limit=4)
        channel = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport()
        transport.bufferSize = 64 * 1024  # type: ignore[attr-defined]
        channel.makeConnection(transport)
        channel.dataReceived(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
        [(origin, _)] = endpoints.connections
        origin.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        self.assertEqual(transport.bufferSize, 512 * 1024)  # type: ignore[attr-defined]
