"""
Tests for :mod:`twistproxy._tunnel`: two :class:`Relay` protocols over
``StringTransport`` s, driven by hand.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from twistproxy._tunnel import Relay, RelayFactory


class HalfClosingTransport(StringTransport):
    """
    A ``StringTransport`` that can close its writing side alone, as TCP
    transports do (``loseWriteConnection``), and records that it did.

    :ivar write_closed: Whether ``loseWriteConnection`` was called.
    """

    write_closed = False

    def loseWriteConnection(self) -> None:
        """Record the half-close."""
        self.write_closed = True


def _relay(transport: StringTransport | None = None, closed: list[Relay] | None = None) -> Relay:
    """A relay connected to *transport* (a new half-closing one by default)."""
    relay = Relay(on_close=closed.append if closed is not None else None)
    relay.makeConnection(transport if transport is not None else HalfClosingTransport())
    return relay


class _Recording(Protocol):
    """Records what a protocol is given."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.lost: list[Failure] = []

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        self.received.append(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:  # noqa: N802
        self.lost.append(reason)


class RelayTests(SynchronousTestCase):
    """
    Tests for :class:`Relay`.
    """

    def setUp(self) -> None:
        self.closed: list[Relay] = []
        self.a = _relay(closed=self.closed)
        self.b = _relay(closed=self.closed)

    def test_provides_half_close(self) -> None:
        """A relay declares that it handles half-closes."""
        self.assertTrue(verifyObject(IHalfCloseableProtocol, self.a))

    def test_bytes_before_join_delivered_after(self) -> None:
        """
        Bytes either side receives before the two are joined are kept, in
        order, and written to the other side when they are joined.
        """
        self.a.dataReceived(b"one ")
        self.a.dataReceived(b"two")
        self.b.dataReceived(b"back")
        self.assertEqual((self.a.transport.value(), self.b.transport.value()), (b"", b""))
        self.a.join(self.b)
        self.assertEqual(self.b.transport.value(), b"one two")
        self.assertEqual(self.a.transport.value(), b"back")
        self.assertEqual((self.a.relayed, self.b.relayed), (7, 4))

    def test_reading_paused_until_join(self) -> None:
        """
        A side that receives bytes before the join stops reading (nobody
        takes them yet), says so once through ``on_early``, and reads again
        when joined.
        """
        early: list[Relay] = []
        self.a.on_early = early.append
        self.assertFalse(self.a.early)
        self.a.dataReceived(b"220 greeting\r\n")
        self.a.dataReceived(b"more")
        self.assertTrue(self.a.early)
        self.assertEqual(early, [self.a])
        self.assertEqual(self.a.transport.producerState, "paused")
        self.assertEqual(self.b.transport.producerState, "producing")
        self.a.join(self.b)
        self.assertEqual(self.a.transport.producerState, "producing")
        self.assertEqual(self.b.transport.value(), b"220 greeting\r\nmore")

    def test_early_half_close(self) -> None:
        """A half-close before the join is early too."""
        early: list[Relay] = []
        self.a.on_early = early.append
        self.a.readConnectionLost()
        self.assertTrue(self.a.early)
        self.assertEqual(early, [self.a])

    def test_give_to(self) -> None:
        """
        An unjoined side given to another protocol hands it its bytes and
        its end; a half-close ends the connection; ``on_close`` and
        ``on_early`` are not called any more, and reading goes on.
        """
        self.a.dataReceived(b"early")  # reading paused
        self.a.on_early = self.fail
        other = _Recording()
        self.a.give_to(other)
        self.assertEqual(self.a.transport.producerState, "producing")
        self.a.dataReceived(b"bytes")
        self.assertEqual(other.received, [b"bytes"])
        self.a.readConnectionLost()
        self.assertTrue(self.a.transport.disconnecting)
        self.a.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(len(other.lost), 1)
        self.assertEqual(self.closed, [])

    def test_given_on_again(self) -> None:
        """
        The protocol a side was given to may hand the connection on in turn
        (a connection an origin switched to a WebSocket): the side follows
        it, bytes and end.
        """
        first, then = _Recording(), _Recording()
        self.a.give_to(first)
        first.dataReceived = then.dataReceived  # type: ignore[method-assign]
        first.connectionLost = then.connectionLost  # type: ignore[method-assign]
        self.a.dataReceived(b"after")
        self.a.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((first.received, then.received), ([], [b"after"]))
        self.assertEqual((len(first.lost), len(then.lost)), (0, 1))

    def test_relayed_both_ways_and_counted(self) -> None:
        """
        Once joined, each side's bytes are written to the other's transport,
        and each side counts the bytes it handed on.
        """
        self.a.join(self.b)
        self.a.dataReceived(b"hello")
        self.b.dataReceived(b"hi")
        self.a.dataReceived(b"!")
        self.assertEqual(self.b.transport.value(), b"hello!")
        self.assertEqual(self.a.transport.value(), b"hi")
        self.assertEqual((self.a.relayed, self.b.relayed), (6, 2))
        self.assertIs(self.a.peer, self.b)
        self.assertIs(self.b.peer, self.a)

    def test_transports_produce_for_each_other(self) -> None:
        """
        Joining registers each transport as the other's streaming producer,
        so a slow writer on one side can pause reading on the other.
        """
        self.a.join(self.b)
        self.assertIs(self.a.transport.producer, self.b.transport)
        self.assertIs(self.b.transport.producer, self.a.transport)
        self.assertTrue(self.a.transport.streaming)
        self.assertTrue(self.b.transport.streaming)

    def test_full_buffer_pauses_peer(self) -> None:
        """
        When one side's transport pauses its producer (its write buffer is
        full), the other side's transport stops reading, and it reads again
        when resumed.
        """
        self.a.join(self.b)
        self.a.transport.producer.pauseProducing()
        self.assertEqual(self.b.transport.producerState, "paused")
        self.assertEqual(self.a.transport.producerState, "producing")
        self.a.transport.producer.resumeProducing()
        self.assertEqual(self.b.transport.producerState, "producing")

    def test_read_closed_half_closes_peer(self) -> None:
        """
        When one side is done sending, the other side's writing half is
        closed, and neither connection is closed entirely.
        """
        self.a.join(self.b)
        self.a.readConnectionLost()
        self.assertTrue(self.b.transport.write_closed)
        self.assertFalse(self.b.transport.disconnecting)
        self.assertFalse(self.a.transport.disconnecting)
        self.assertFalse(self.a.transport.write_closed)

    def test_read_closed_closes_peer_without_half_close(self) -> None:
        """
        A peer transport that cannot half-close is closed when this side is
        done sending.
        """
        plain = _relay(StringTransport())
        self.a.join(plain)
        self.a.readConnectionLost()
        self.assertTrue(plain.transport.disconnecting)

    def test_both_halves_closed_closes_connection(self) -> None:
        """
        A side whose reading and writing halves are both closed closes its
        connection, whichever half closed first.
        """
        self.a.join(self.b)
        self.a.readConnectionLost()
        self.assertFalse(self.a.transport.disconnecting)
        self.a.writeConnectionLost()
        self.assertTrue(self.a.transport.disconnecting)

        self.b.writeConnectionLost()
        self.assertFalse(self.b.transport.disconnecting)
        self.b.readConnectionLost()
        self.assertTrue(self.b.transport.disconnecting)

    def test_connection_lost_closes_peer(self) -> None:
        """
        When one side's connection ends, the other side's transport stops
        producing for it and is closed, and ``on_close`` is called once with
        the side that ended.
        """
        self.a.join(self.b)
        self.a.connectionLost(Failure(ConnectionLost()))
        self.assertTrue(self.b.transport.disconnecting)
        self.assertIsNone(self.b.transport.producer)
        self.assertEqual(self.closed, [self.a])
        self.a.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.closed, [self.a])

    def test_both_ends_reported_once_each(self) -> None:
        """
        When the closed peer's connection then ends too, it is reported in
        turn: ``on_close`` is called once per side, nothing raises.
        """
        self.a.join(self.b)
        self.a.connectionLost(Failure(ConnectionDone()))
        self.b.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.closed, [self.a, self.b])

    def test_connection_lost_before_join(self) -> None:
        """
        A side that ends before it is joined calls ``on_close`` and touches
        nothing else.
        """
        self.a.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.closed, [self.a])
        self.assertFalse(self.b.transport.disconnecting)

    def test_without_on_close(self) -> None:
        """A relay made without ``on_close`` ends quietly."""
        relay = _relay()
        relay.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(relay.peer)

    def test_half_close_before_join_passed_on(self) -> None:
        """
        A side that is done sending before it is joined (an origin that
        answers and half-closes while the ``CONNECT`` hooks still run) has
        its half-close passed on when joined, after its bytes.
        """
        self.a.dataReceived(b"banner")
        self.a.readConnectionLost()
        self.a.join(self.b)
        self.assertEqual(self.b.transport.value(), b"banner")
        self.assertTrue(self.b.transport.write_closed)

    def test_join_after_connection_lost_closes_peer(self) -> None:
        """
        Joining a side whose connection has already ended (an origin that
        went away while the ``CONNECT`` hooks still ran) closes the other
        side too, instead of leaving it tunnelled to nothing.
        """
        self.b.connectionLost(Failure(ConnectionDone()))
        self.a.join(self.b)
        self.assertTrue(self.a.transport.disconnecting)


class RelayFactoryTests(SynchronousTestCase):
    """
    Tests for :class:`RelayFactory`.
    """

    def test_builds_its_relay(self) -> None:
        """``buildProtocol`` returns the relay the factory was made for."""
        relay = Relay()
        factory = RelayFactory(relay)
        self.assertIs(factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 443)), relay)
        self.assertFalse(factory.noisy)
