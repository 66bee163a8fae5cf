"""
Tests for :mod:`twistproxy.service`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from twistproxy.client import PoolKey, ProxyClientFactory
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
        Stopping the service stops listening; its Deferred is the port's.
        """
        service = self.service(FakeEndpoint(lambda: succeed(self.port)))
        service.startService()
        stopped = service.stopService()
        assert stopped is not None
        self.assertIs(stopped, self.port.stopped)
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
        self.assertIsNone(service.stopService())
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
