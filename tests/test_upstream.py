"""
Tests for :class:`twistproxy._upstream.UpstreamExchange`, the one path every
request upstream takes (live and replayed): connections from the pool, the
``server_connected`` hook, the loop check, the origin's silence and the one
retry rule.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.test_client import KEY, OK_HI, REQUEST, FakeEndpointFactory, RecordingReceiver
from twistproxy._request import may_retry
from twistproxy._upstream import UpstreamExchange
from twistproxy.client import PoolKey, ProxyClient
from twistproxy.connection import Server
from twistproxy.errors import LoopDetected, UpstreamConnectionLost, UpstreamTimeout
from twistproxy.pool import ConnectionPool, hostname_endpoints

POST = b"POST / HTTP/1.1\r\nHost: example.com\r\nContent-Length: 1\r\n\r\nx"


class Receiver(RecordingReceiver):
    """A recording receiver that sends *data* whole as soon as it may."""

    upstream: UpstreamExchange

    def __init__(self, data: bytes = REQUEST, *, send: bool = True) -> None:
        super().__init__()
        self.data = data
        self.send = send
        self.servers: list[Server | None] = []

    def upstream_ready(self, server: Server | None) -> None:
        self.servers.append(server)
        if self.send:
            self.upstream.send([self.data], complete=True)


class UpstreamExchangeTests(SynchronousTestCase):
    """
    Tests for :class:`UpstreamExchange` on a pool of in-memory connections.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoints = FakeEndpointFactory()
        self.pool = ConnectionPool(reactor=self.reactor, endpoint_factory=self.endpoints)
        self.hooked: list[Server] = []

    def start(
        self,
        receiver: Receiver,
        method: bytes = b"GET",
        here: Any = None,
        on_connected: Any = None,
    ) -> UpstreamExchange:
        upstream = UpstreamExchange(
            self.pool, KEY, receiver, method=method, timeout=10.0, here=here,
            on_connected=on_connected,
        )
        receiver.upstream = upstream
        upstream.open()
        return upstream

    def pooled(self) -> ProxyClient:
        """A connection that carried one exchange and waits in the pool."""
        receiver = Receiver()
        upstream = self.start(receiver)
        client = upstream._client
        assert client is not None
        client.dataReceived(OK_HI)
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertEqual(self.pool.idle_count(KEY), 1)
        return client

    def transport(self, client: ProxyClient) -> StringTransport:
        transport = client.transport
        assert isinstance(transport, StringTransport)
        return transport

    def test_new_connection(self) -> None:
        """
        Without an idle connection one is made, ``on_connected`` runs with
        its record, then the receiver sends; the response is handed on.
        """
        receiver = Receiver()
        upstream = self.start(receiver, on_connected=self.hooked.append)
        client = upstream._client
        assert client is not None
        self.assertEqual(self.hooked, [client.server])
        self.assertEqual(receiver.servers, [client.server])
        self.assertIs(upstream.server, client.server)
        self.assertEqual(self.transport(client).value(), REQUEST)
        client.dataReceived(OK_HI)
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertEqual(receiver.framings, [2])

    def test_idle_connection_reused_without_hook(self) -> None:
        """An idle connection is used at once; ``server_connected`` does not run again."""
        client = self.pooled()
        receiver = Receiver()
        self.start(receiver, on_connected=self.hooked.append)
        self.assertEqual(self.hooked, [])
        self.assertEqual(receiver.servers, [client.server])
        self.assertEqual(len(self.endpoints.requested), 1)

    def test_server_hook_waited_for(self) -> None:
        """A Deferred from ``on_connected`` is waited for before the receiver sends."""
        waiting: Deferred[None] = Deferred()
        receiver = Receiver()
        self.start(receiver, on_connected=lambda server: waiting)
        self.assertEqual(receiver.servers, [])
        waiting.callback(None)
        self.assertEqual(len(receiver.servers), 1)

    def test_server_hook_failure_fails_the_exchange(self) -> None:
        """A failing ``on_connected`` fails the exchange; the connection closes."""
        waiting: Deferred[None] = Deferred()
        receiver = Receiver()
        upstream = self.start(receiver, on_connected=lambda server: waiting)
        client = upstream._client
        assert client is not None
        waiting.errback(ValueError("no"))
        self.assertEqual(receiver.kinds, ["failed"])
        receiver.failures[0].trap(ValueError)
        self.assertTrue(self.transport(client).disconnecting)

    def test_abandon_cancels_the_server_hook(self) -> None:
        """Abandoning while ``on_connected`` is waited for cancels it, silently."""
        cancelled: list[object] = []
        waiting: Deferred[None] = Deferred(cancelled.append)
        receiver = Receiver()
        upstream = self.start(receiver, on_connected=lambda server: waiting)
        client = upstream._client
        assert client is not None
        upstream.abandon()
        self.assertEqual(cancelled, [waiting])
        self.assertTrue(self.transport(client).disconnecting)
        self.assertEqual(receiver.events, [])

    def test_abandon_while_connecting_over_tcp(self) -> None:
        """
        Abandoning while a TCP endpoint still connects (an IP literal's)
        stops connecting and reports nothing: the endpoint fails the
        cancelled connect with ``ConnectingCancelledError``, not
        ``CancelledError`` (a client gone meanwhile raised ``InvalidEvent``).
        """
        self.pool = ConnectionPool(reactor=self.reactor,
                                   endpoint_factory=hostname_endpoints(self.reactor, 30))
        receiver = Receiver()
        upstream = UpstreamExchange(self.pool, PoolKey("http", "127.0.0.1", 9999), receiver,
                                    method=b"GET", timeout=10.0)
        upstream.open()
        [connector] = self.reactor.connectors
        upstream.abandon()
        self.assertTrue(connector.stoppedConnecting)
        self.assertEqual(receiver.events, [])

    def test_loop_refused(self) -> None:
        """A new connection whose peer is the proxy's own address fails with 508."""
        receiver = Receiver()
        here = IPv4Address("TCP", "203.0.113.5", 80)  # the fake endpoint's peer
        self.start(receiver, here=here, on_connected=self.hooked.append)
        [failure] = receiver.failures
        failure.trap(LoopDetected)
        self.assertEqual(self.hooked, [])
        self.assertEqual(receiver.servers, [])

    def test_other_port_is_no_loop(self) -> None:
        """The same address on another port is not the proxy."""
        receiver = Receiver()
        self.start(receiver, here=IPv4Address("TCP", "203.0.113.5", 8080))
        self.assertEqual(len(receiver.servers), 1)

    def test_get_retried_once_on_a_stale_connection(self) -> None:
        """
        A GET on a reused connection that closes before any response byte
        goes once more on a new connection; the receiver sees only the
        response from the second one, and is not asked to send again.
        """
        stale = self.pooled()
        receiver = Receiver()
        upstream = self.start(receiver)
        self.assertIs(upstream._client, stale)
        stale.connectionLost(Failure(ConnectionDone()))
        fresh = upstream._client
        assert fresh is not None and fresh is not stale
        self.assertEqual(self.transport(fresh).value(), REQUEST)
        self.assertEqual(len(receiver.servers), 1)
        self.assertIs(upstream.server, fresh.server)
        fresh.dataReceived(OK_HI)
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])

    def test_retry_takes_a_new_connection(self) -> None:
        """The retry connects anew even when another idle connection waits."""
        first = self.pooled()
        second = self.pooled_beside(first)
        receiver = Receiver()
        upstream = self.start(receiver)
        used = upstream._client
        assert used in (first, second)
        used.connectionLost(Failure(ConnectionDone()))  # type: ignore[union-attr]
        self.assertNotIn(upstream._client, (first, second))
        self.assertEqual(len(self.endpoints.requested), 3)
        self.assertEqual(len(receiver.servers), 1)

    def pooled_beside(self, busy: ProxyClient) -> ProxyClient:
        """A second idle connection: *busy* is taken while it is made."""
        taken = self.pool.take_idle(KEY)
        self.assertIs(taken, busy)
        second = self.pooled()
        self.pool.release(busy)
        self.assertEqual(self.pool.idle_count(KEY), 2)
        return second

    def test_second_loss_not_retried(self) -> None:
        """The retried request failing the same way fails the exchange."""
        self.pooled()
        receiver = Receiver()
        upstream = self.start(receiver)
        assert upstream._client is not None
        upstream._client.connectionLost(Failure(ConnectionDone()))
        fresh = upstream._client
        assert fresh is not None
        fresh.connectionLost(Failure(ConnectionDone()))
        [failure] = receiver.failures
        failure.trap(UpstreamConnectionLost)

    def test_post_not_retried(self) -> None:
        """
        A POST on a stale connection fails instead of being sent twice
        (RFC 9110 section 9.2.2): the origin may have acted on it.
        """
        stale = self.pooled()
        receiver = Receiver(POST)
        self.start(receiver, method=b"POST")
        stale.connectionLost(Failure(ConnectionDone()))
        [failure] = receiver.failures
        failure.trap(UpstreamConnectionLost)
        self.assertEqual(len(self.endpoints.requested), 1)

    def test_not_retried_after_a_response_byte(self) -> None:
        """A connection lost after part of a response head is not retried."""
        stale = self.pooled()
        receiver = Receiver()
        self.start(receiver)
        stale.dataReceived(b"HTTP/1.1 200")
        stale.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(receiver.kinds, ["failed"])
        self.assertEqual(len(self.endpoints.requested), 1)

    def test_streamed_request_not_retried(self) -> None:
        """A request whose body was streamed is not in hand to send again."""
        stale = self.pooled()
        receiver = Receiver(send=False)
        upstream = self.start(receiver)
        upstream.send([b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"], complete=False)
        upstream.end_body([b"0\r\n\r\n"])
        stale.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(receiver.kinds, ["failed"])

    def test_new_connection_not_retried(self) -> None:
        """A connection made for this request that closes is no stale one."""
        receiver = Receiver()
        upstream = self.start(receiver)
        assert upstream._client is not None
        upstream._client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(receiver.kinds, ["failed"])
        self.assertEqual(len(self.endpoints.requested), 1)

    def test_silence_times_out(self) -> None:
        """
        An origin silent for the timeout after the whole request was sent
        fails the exchange with a 504 and loses its connection; a response
        byte restarts the clock.
        """
        receiver = Receiver()
        upstream = self.start(receiver)
        client = upstream._client
        assert client is not None
        self.reactor.advance(9)
        client.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab")
        self.reactor.advance(9)
        self.assertEqual(receiver.kinds, ["started", "data"])
        self.reactor.advance(1)
        self.assertEqual(receiver.kinds, ["started", "data", "failed"])
        receiver.failures[0].trap(UpstreamTimeout)
        self.assertIn("10 s", receiver.failures[0].getErrorMessage())
        self.assertTrue(self.transport(client).disconnecting)

    def test_no_silence_before_the_request_is_complete(self) -> None:
        """While the request body still streams, the origin's silence is no fault."""
        receiver = Receiver(send=False)
        upstream = self.start(receiver)
        upstream.send([b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"], complete=False)
        self.reactor.advance(60)
        self.assertEqual(receiver.events, [])
        upstream.end_body([b"0\r\n\r\n"])
        self.reactor.advance(10)
        self.assertEqual(receiver.kinds, ["failed"])

    def test_held_back_is_not_silence(self) -> None:
        """
        Time the proxy holds the response back (a hook, the client's
        backpressure) is not the origin's silence; reading is paused then.
        """
        receiver = Receiver()
        upstream = self.start(receiver)
        client = upstream._client
        assert client is not None
        transport = self.transport(client)
        upstream.hold(True)
        self.assertEqual(transport.producerState, "paused")
        self.reactor.advance(30)
        upstream.hold(False)
        upstream.pauseProducing()
        self.assertEqual(transport.producerState, "paused")
        self.reactor.advance(30)
        self.assertEqual(receiver.events, [])
        upstream.resumeProducing()
        self.assertEqual(transport.producerState, "producing")
        self.reactor.advance(10)
        self.assertEqual(receiver.kinds, ["failed"])

    def test_no_deadline_after_the_end(self) -> None:
        """Once the response is complete the silence deadline is gone."""
        self.pooled()
        self.reactor.advance(20)
        self.assertEqual(self.pool.idle_count(KEY), 1)

    def test_abandon_closes_quietly(self) -> None:
        """Abandoning closes the connection and reports nothing more."""
        receiver = Receiver()
        upstream = self.start(receiver)
        client = upstream._client
        assert client is not None
        upstream.abandon()
        self.assertTrue(self.transport(client).disconnecting)
        self.reactor.advance(60)
        client.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(receiver.events, [])


class MayRetryTests(SynchronousTestCase):
    """
    Tests for :func:`twistproxy._exchange.may_retry`, the one retry rule.
    """

    facts = dict(reused=True, complete=True, answered=False, lost=True, attempts=1)

    def test_idempotent_methods(self) -> None:
        """GET, HEAD, OPTIONS, TRACE, PUT and DELETE may go again; POST, PATCH may not."""
        for method in (b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"):
            self.assertTrue(may_retry(method, **self.facts), method)  # type: ignore[arg-type]
        for method in (b"POST", b"PATCH", b"CONNECT", b"LOCK"):
            self.assertFalse(may_retry(method, **self.facts), method)  # type: ignore[arg-type]

    def test_every_condition_counts(self) -> None:
        """Each fact on its own forbids the retry."""
        for fact, value in (("reused", False), ("complete", False), ("answered", True),
                            ("lost", False), ("attempts", 2)):
            facts = {**self.facts, fact: value}
            self.assertFalse(may_retry(b"GET", **facts), fact)  # type: ignore[arg-type]
