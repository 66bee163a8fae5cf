"""
Tests for :mod:`twistproxy.service`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import CannotListenError, ConnectionDone
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, Logger
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.fakes import FakeEndpointFactory
from twistproxy._drain import LAST_WORD
from twistproxy.client import PoolKey, ProxyClientFactory
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow
from twistproxy.proxy import ProxyFactory
from twistproxy.service import ProxyService


@implementer(IListeningPort)
class FakePort:
    """
    A listening port that records being stopped.
    """

    def __init__(self, address: Any = None) -> None:
        self.address = address or IPv4Address("TCP", "127.0.0.1", 8080)
        self.stopped: Deferred[None] | None = None

    def startListening(self) -> None:
        """
        Nothing to start.
        """

    def stopListening(self) -> Deferred[None]:
        """
        Record the call; the test fires the returned Deferred.
        """
        self.stopped = Deferred()
        return self.stopped

    def getHost(self) -> Any:
        """
        The address given to the constructor.
        """
        return self.address


@implementer(IStreamServerEndpoint)
class FakeEndpoint:
    """
    An endpoint whose ``listen`` returns a Deferred the test fires, or one
    made by the *result* function it was given.
    """

    def __init__(self, result: Callable[[], Deferred[Any]] | None = None) -> None:
        self.result = result
        self.factories: list[IProtocolFactory] = []
        self.pending: list[Deferred[IListeningPort]] = []

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Record *factory*; return the given result or a new Deferred.
        """
        self.factories.append(factory)
        if self.result is not None:
            return self.result()
        d: Deferred[IListeningPort] = Deferred()
        self.pending.append(d)
        return d


def recording_logger(events: list[dict[str, Any]]) -> Logger:
    """
    A logger that appends every event to *events*.
    """
    return Logger(observer=cast(ILogObserver, events.append))


class ProxyServiceTests(SynchronousTestCase):
    """
    Tests for :class:`twistproxy.service.ProxyService`.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.factory = ProxyFactory(reactor=self.reactor)
        self.port = FakePort()

    def test_description(self) -> None:
        """
        Given an endpoint description, the service listens on the factory's
        reactor with a backlog of 1024 (or the one given; one the
        description names wins).
        """
        for description, kwargs, expected in (
            ("tcp:8080:interface=127.0.0.1", {}, 1024),
            ("tcp:8080:interface=127.0.0.1", {"backlog": 3000}, 3000),
            ("tcp:8080:interface=127.0.0.1:backlog=9", {"backlog": 3000}, 9),
        ):
            reactor = MemoryReactorClock()
            service = ProxyService(description, ProxyFactory(reactor=reactor), **kwargs)
            service.startService()
            [(port, _, backlog, interface)] = reactor.tcpServers
            self.assertEqual((port, backlog, interface), (8080, expected, "127.0.0.1"))

    def service(self, endpoint: FakeEndpoint) -> ProxyService:
        """
        A service for *endpoint* and the test's factory.
        """
        verifyObject(IStreamServerEndpoint, endpoint)
        return ProxyService(endpoint, self.factory)

    def test_fakes(self) -> None:
        """
        The fakes provide the interfaces they stand for.
        """
        verifyObject(IStreamServerEndpoint, FakeEndpoint())
        verifyObject(IListeningPort, self.port)

    def test_not_listening_before_start(self) -> None:
        """
        Before it starts, the service has not listened and has no port;
        :meth:`ProxyService.when_listening` raises ``RuntimeError``.
        """
        endpoint = FakeEndpoint()
        service = self.service(endpoint)
        self.assertEqual(endpoint.factories, [])
        self.assertIsNone(service.port)
        self.assertRaises(RuntimeError, service.when_listening)

    def test_listens_on_start(self) -> None:
        """
        Starting the service listens on the endpoint once, with the factory.
        """
        endpoint = FakeEndpoint(lambda: succeed(self.port))
        service = self.service(endpoint)
        service.startService()
        self.assertTrue(service.running)
        self.assertEqual(endpoint.factories, [self.factory])
        self.assertIs(service.port, self.port)

    def test_when_listening_already(self) -> None:
        """
        Once listening, :meth:`ProxyService.when_listening` has the port at
        once.
        """
        service = self.service(FakeEndpoint(lambda: succeed(self.port)))
        service.startService()
        self.assertIs(self.successResultOf(service.when_listening()), self.port)

    def test_when_listening_later(self) -> None:
        """
        While the endpoint is still working, every
        :meth:`ProxyService.when_listening` Deferred waits, then fires with
        the port.
        """
        endpoint = FakeEndpoint()
        service = self.service(endpoint)
        service.startService()
        first, second = service.when_listening(), service.when_listening()
        self.assertNoResult(first)
        self.assertIsNone(service.port)
        endpoint.pending[0].callback(self.port)
        self.assertIs(self.successResultOf(first), self.port)
        self.assertIs(self.successResultOf(second), self.port)
        self.assertIs(service.port, self.port)

    def test_logs_address(self) -> None:
        """
        The address listened on is logged, IPv6 hosts in brackets.
        """
        events: list[dict[str, Any]] = []
        port = FakePort(IPv6Address("TCP", "::1", 8080))
        service = self.service(FakeEndpoint(lambda: succeed(port)))
        service.log = recording_logger(events)
        service.startService()
        self.assertEqual([event["address"] for event in events], ["[::1]:8080"])

    def test_listen_fails_at_once(self) -> None:
        """
        A failure to listen that the endpoint reports at once (a taken TCP
        port) is raised by ``startService``, and the service is not running.
        """
        error = CannotListenError("127.0.0.1", 8080, OSError("Address already in use"))
        service = self.service(FakeEndpoint(lambda: fail(error)))
        with self.assertRaises(CannotListenError):
            service.startService()
        self.assertFalse(service.running)
        self.assertIsNone(service.port)

    def test_listen_fails_later(self) -> None:
        """
        A failure to listen reported later is logged in one line and fails
        the waiting and later :meth:`ProxyService.when_listening` Deferreds;
        the service stops running.
        """
        events: list[dict[str, Any]] = []
        endpoint = FakeEndpoint()
        service = self.service(endpoint)
        service.log = recording_logger(events)
        service.startService()
        waiting = service.when_listening()
        endpoint.pending[0].errback(CannotListenError("127.0.0.1", 8080, OSError("taken")))
        self.failureResultOf(waiting, CannotListenError)
        self.failureResultOf(service.when_listening(), CannotListenError)
        self.assertFalse(service.running)
        [event] = events
        self.assertIn("taken", event["error"])

    def test_stop_stops_listening(self) -> None:
        """
        Stopping the service stops listening; its Deferred fires once the
        port is closed (no client connection to drain).
        """
        service = self.service(FakeEndpoint(lambda: succeed(self.port)))
        service.startService()
        stopped = service.stopService()
        self.assertNoResult(stopped)
        assert self.port.stopped is not None
        self.port.stopped.callback(None)
        self.successResultOf(stopped)
        self.assertFalse(service.running)
        self.assertIsNone(service.port)
        self.assertRaises(RuntimeError, service.when_listening)

    def test_stop_while_listening(self) -> None:
        """
        Stopping the service before the endpoint listens cancels the listen
        and fails the :meth:`ProxyService.when_listening` Deferreds with
        ``CancelledError``, without logging an error.
        """
        events: list[dict[str, Any]] = []
        endpoint = FakeEndpoint()
        service = self.service(endpoint)
        service.log = recording_logger(events)
        service.startService()
        waiting = service.when_listening()
        self.successResultOf(service.stopService())
        self.failureResultOf(waiting, CancelledError)
        self.assertTrue(endpoint.pending[0].called)
        self.assertEqual(events, [])

    def test_stop_closes_idle_connections(self) -> None:
        """
        Stopping the service closes the idle upstream connections of the
        factory's pool.
        """
        pool = self.factory.pool
        key = PoolKey("http", "example.com", 80)
        client = ProxyClientFactory(pool, key).buildProtocol(
            IPv4Address("TCP", "192.0.2.1", 80)
        )
        transport = StringTransport()
        client.makeConnection(transport)
        pool.release(client)
        self.assertEqual(pool.idle_count(key), 1)
        service = self.service(FakeEndpoint(lambda: succeed(self.port)))
        service.startService()
        service.stopService()
        self.assertEqual(pool.idle_count(), 0)
        self.assertTrue(transport.disconnecting)

    def test_restart(self) -> None:
        """
        A stopped service listens again when started again.
        """
        endpoint = FakeEndpoint(lambda: succeed(self.port))
        service = self.service(endpoint)
        service.startService()
        service.stopService()
        service.startService()
        self.assertEqual(len(endpoint.factories), 2)
        self.assertIs(service.port, self.port)


class Errors(Addon):
    """Keeps every flow its ``error`` hook sees (as ``--save`` would save it)."""

    def __init__(self) -> None:
        self.flows: list[HTTPFlow] = []

    def error(self, flow: HTTPFlow) -> None:
        """Keep *flow*."""
        self.flows.append(flow)


class DrainTests(SynchronousTestCase):
    """
    Stopping a :class:`ProxyService` drains its client connections
    (:mod:`twistproxy._drain`), on channels over fake transports.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoints = FakeEndpointFactory()
        self.errors = Errors()
        self.factory = ProxyFactory(reactor=self.reactor, endpoint_factory=self.endpoints,
                                    addons=[self.errors])
        self.events: list[dict[str, Any]] = []
        self.factory.channels.log = recording_logger(self.events)
        self.port = FakePort()
        self.service = ProxyService(FakeEndpoint(lambda: succeed(self.port)), self.factory,
                                    shutdown_timeout=10)
        self.service.startService()

    def stop(self) -> Deferred[None]:
        """Stop the service; its port closes at once."""
        stopped = self.service.stopService()
        assert self.port.stopped is not None
        self.port.stopped.callback(None)
        return stopped

    def connect(self) -> tuple[Any, StringTransport]:
        """A client connection: its channel and transport."""
        channel = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        channel.makeConnection(transport)
        return channel, transport

    def lose(self, channel: Any, transport: StringTransport) -> None:
        """Report the end of a connection its channel closed (a fake transport does not)."""
        self.assertTrue(transport.disconnecting)
        channel.connectionLost(Failure(ConnectionDone()))

    def test_idle_closes_at_once(self) -> None:
        """
        A connection between requests closes at once; the drain ends when it
        has, with nothing given up, and logs a line at either end.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
        [(origin, _)] = self.endpoints.connections
        origin.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertFalse(transport.disconnecting)  # kept alive
        stopped = self.stop()
        self.assertTrue(transport.disconnecting)
        self.assertNoResult(stopped)
        self.lose(channel, transport)
        self.successResultOf(stopped)
        self.assertEqual([e.get("count", e.get("aborted")) for e in self.events], [1, 0])
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_in_flight_finishes(self) -> None:
        """
        A response in flight is finished, announced with ``Connection:
        close``, and the connection closes after it; a connection that has
        not sent its first request yet gets one answered the same way.
        """
        channel, transport = self.connect()
        fresh, fresh_transport = self.connect()
        channel.dataReceived(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
        stopped = self.stop()
        self.assertFalse(transport.disconnecting)
        self.assertFalse(fresh_transport.disconnecting)
        [(origin, _)] = self.endpoints.connections
        self.reactor.advance(5)
        origin.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertEqual(transport.value(),
                         b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi")
        self.lose(channel, transport)
        fresh.dataReceived(b"GET http://example.com/b HTTP/1.1\r\n\r\n")
        origin, _ = self.endpoints.connections[-1]  # (pooled)
        origin.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertIn(b"Connection: close", fresh_transport.value())
        self.lose(fresh, fresh_transport)
        self.assertEqual(self.successResultOf(stopped), None)
        self.assertEqual(self.errors.flows, [])
        self.assertEqual(self.events[-1]["aborted"], 0)

    def test_deadline_gives_up(self) -> None:
        """
        At the deadline, a request with no response yet gets a 503 and its
        flow fails (error hook); one whose response started is aborted; an
        idle new connection is closed; the drain ends once all have, and
        counts the two given up.
        """
        waiting, waiting_transport = self.connect()
        streaming, streaming_transport = self.connect()
        fresh, fresh_transport = self.connect()
        waiting.dataReceived(b"GET http://example.com/slow HTTP/1.1\r\n\r\n")
        streaming.dataReceived(b"GET http://example.com/big HTTP/1.1\r\n\r\n")
        [_, (origin, origin_transport)] = self.endpoints.connections
        origin.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhi")
        stopped = self.stop()
        self.reactor.advance(9.9)
        self.assertFalse(waiting_transport.disconnecting)
        self.reactor.advance(0.1)
        self.assertTrue(waiting_transport.value().startswith(
            b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertIn(b"Connection: close", waiting_transport.value())
        self.assertTrue(streaming_transport.disconnected)  # aborted: 2 of 10 bytes
        self.assertTrue(origin_transport.disconnecting)
        self.assertTrue(fresh_transport.disconnecting)
        self.assertEqual(
            [flow.error.msg for flow in self.errors.flows],  # type: ignore[union-attr]
            ["the proxy shut down: the exchange was still going 10 s after the shutdown "
             "started"] * 2,
        )
        for channel, transport in ((waiting, waiting_transport), (fresh, fresh_transport),
                                   (streaming, streaming_transport)):
            self.lose(channel, transport)
        self.assertEqual(self.events[-1]["aborted"], 2)
        self.successResultOf(stopped)

    def test_head_arriving_at_deadline(self) -> None:
        """A request head still arriving at the deadline is answered 503."""
        channel, transport = self.connect()
        channel.dataReceived(b"GET http://example.com/ HTTP/1.1\r\nX-A: ")
        self.stop()
        self.reactor.advance(10)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 Service Unavailable\r\n"))
        self.assertTrue(transport.disconnecting)

    def test_tunnel_runs_until_deadline(self) -> None:
        """
        A tunnel passed through runs on while the proxy drains, then is
        aborted at the deadline.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 200 Connection established"))
        self.assertTrue(channel.handed_over)
        stopped = self.stop()
        self.reactor.advance(9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(1)
        self.assertTrue(transport.disconnected)
        channel.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(stopped)
        self.assertEqual(self.events[-1]["aborted"], 1)

    def test_abort_after_last_word(self) -> None:
        """
        A connection still open a moment after the deadline (a 503 not read,
        a body still coming) is aborted, and the drain ends even if the
        connection never reports its end.
        """
        channel, transport = self.connect()
        channel.dataReceived(b"POST http://example.com/ HTTP/1.1\r\nContent-Length: 9\r\n\r\n")
        stopped = self.stop()
        self.reactor.advance(10)
        self.assertIn(b"503", transport.value())
        self.assertFalse(transport.disconnected)
        self.reactor.advance(LAST_WORD)
        self.assertTrue(transport.disconnected)
        self.assertNoResult(stopped)
        self.reactor.advance(LAST_WORD)
        self.successResultOf(stopped)

    def test_restart_after_drain(self) -> None:
        """After a drain, the service serves keep-alive connections again."""
        self.successResultOf(self.stop())
        self.service.startService()
        channel, transport = self.connect()
        channel.dataReceived(b"GET http://example.com/ HTTP/1.1\r\n\r\n")
        [(origin, _)] = self.endpoints.connections
        origin.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertNotIn(b"Connection: close", transport.value())

    def test_timeout_checked(self) -> None:
        """A negative shutdown timeout is refused."""
        with self.assertRaises(ValueError):
            ProxyService(FakeEndpoint(), self.factory, shutdown_timeout=-1)
