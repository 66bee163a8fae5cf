# -*- test-case-name: tests.test_tunnel -*-
"""
The raw byte relay of a CONNECT tunnel passed through, or found to carry
neither TLS nor HTTP.

Two :class:`Relay` protocols, one on the client's connection and one on the
origin's, hand each other's bytes on.  Each transport is registered as the
producer of the other, so a slow reader on one side pauses reading on the
other, and a half-close (one side done sending) is passed on as a
half-close, so protocols that shut down their sending side first still work.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import IHalfCloseableProtocol, IProtocol
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure
from zope.interface import implementer

from twistproxy.connection import Server


@implementer(IHalfCloseableProtocol)
class Relay(Protocol):
    """
    One side of a tunnel.

    :ivar peer: The other side, once joined.
    :ivar relayed: Bytes received on this side and handed to the peer.
    :ivar on_close: Called once with this side when its connection ends.
    :ivar on_early: Called with this side when it receives bytes or a
        half-close before it is joined (the origin spoke first).
    :ivar server: The origin's connection record, on the origin's side.
    :ivar lost: This side's connection has ended.
    """

    peer: Relay | None = None
    server: Server | None = None
    transport: Any
    lost = False
    on_early: Callable[[Relay], object] | None = None
    _read_done = False
    _write_done = False
    _paused = False  # reading stopped until the join: bytes nobody takes yet

    def __init__(self, on_close: Any = None) -> None:
        self.relayed = 0
        self.on_close = on_close
        self._pending: list[bytes] = []

    def join(self, peer: Relay) -> None:
        """
        Pair this side with *peer*: bytes flow both ways from now on, each
        transport producing for the other.
        """
        if self.lost or peer.lost:
            # One side ended before the tunnel opened: end the other too.
            for side in (self, peer):
                if not side.lost:
                    side.transport.loseConnection()
            return
        self.peer = peer
        peer.peer = self
        self.transport.registerProducer(peer.transport, True)
        peer.transport.registerProducer(self.transport, True)
        for side in (self, peer):
            if side._paused:  # before the replay: its writes may pause it again
                side._paused = False
                side.transport.resumeProducing()
            pending, side._pending = side._pending, []
            for data in pending:
                side.dataReceived(data)
        for side in (self, peer):
            if side._read_done:
                side.readConnectionLost()  # a half-close that came before the join

    @property
    def early(self) -> bool:
        """Bytes or a half-close arrived on this side before it was joined."""
        return bool(self._pending) or (self._read_done and self.peer is None)

    def give_to(self, protocol: IProtocol) -> None:
        """
        Give this side's connection, unjoined, to *protocol*: from now on its
        bytes and its end go there (its half-close as the whole end).  The
        caller connects *protocol* to :attr:`transport`.  *protocol*'s
        methods are looked up at each call, so that it may hand the
        connection on in turn (:func:`~twistproxy._connect.hand_over`: a
        connection an origin switched to a WebSocket).
        """
        assert self.peer is None, "a joined relay carries its tunnel"
        self.dataReceived = lambda data: protocol.dataReceived(data)  # type: ignore[method-assign]
        self.connectionLost = (  # type: ignore[method-assign]
            lambda reason=connectionDone: protocol.connectionLost(reason)
        )
        self.readConnectionLost = self.transport.loseConnection  # type: ignore[method-assign]
        self.on_close = self.on_early = None
        if self._paused:
            self._paused = False
            self.transport.resumeProducing()

    def dataReceived(self, data: bytes) -> None:
        """Hand *data* to the peer (kept until the peer is joined)."""
        peer = self.peer
        if peer is None:
            # Kept for the peer; reading stops meanwhile, so an origin that
            # talks before the tunnel opens cannot fill the proxy's memory.
            self._pending.append(data)
            if not self._paused:
                self._paused = True
                self.transport.pauseProducing()
            self._spoke_early()
            return
        self.relayed += len(data)
        peer.transport.write(data)

    def readConnectionLost(self) -> None:
        """This side is done sending: tell the peer the same way."""
        self._read_done = True
        peer = self.peer
        if peer is None:
            self._spoke_early()
        elif peer.transport is not None:
            half_close = getattr(peer.transport, "loseWriteConnection", None)
            if half_close is not None:
                half_close()
            else:
                peer.transport.loseConnection()
        self._maybe_close()

    def _spoke_early(self) -> None:
        on_early = self.on_early
        if on_early is not None:
            self.on_early = None
            on_early(self)

    def writeConnectionLost(self) -> None:
        """Our sending side closed."""
        self._write_done = True
        self._maybe_close()

    def _maybe_close(self) -> None:
        if self._read_done and self._write_done:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """This side ended: end the other side too."""
        self.lost = True
        peer, self.peer = self.peer, None
        if peer is not None and peer.transport is not None:
            peer.transport.unregisterProducer()
            peer.transport.loseConnection()
        if self.on_close is not None:
            on_close, self.on_close = self.on_close, None
            on_close(self)


class RelayFactory(ClientFactory):
    """Connects a given :class:`Relay` (the origin's side of a tunnel)."""

    noisy = False

    def __init__(self, relay: Relay) -> None:
        self.relay = relay

    def buildProtocol(self, addr: Any) -> Relay:
        """The relay this factory was made for."""
        return self.relay
