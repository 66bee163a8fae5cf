"""
Tests for :mod:`twistproxy._io`, through real sockets on 127.0.0.1.
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from twisted.internet.testing import StringTransport

from twistproxy._io import send_now


class _Sink(Protocol):
    """Collects what it receives; fires *done* when the peer closes."""

    def __init__(self, done: Deferred[bytes]) -> None:
        self.received: list[bytes] = []
        self.done = done

    def dataReceived(self, data: bytes) -> None:
        self.received.append(data)

    def connectionLost(self, reason: Any) -> None:
        self.done.callback(b"".join(self.received))


class _Sender(Protocol):
    def __init__(self, ready: Deferred[Protocol]) -> None:
        self._ready = ready

    def connectionMade(self) -> None:
        self._ready.callback(self)


async def _pair() -> tuple[Any, Deferred[bytes], Any]:
    """A TCP client transport, the bytes its server receives, and the port."""
    done: Deferred[bytes] = Deferred()
    server = Factory.forProtocol(lambda: _Sink(done))
    port = reactor.listenTCP(0, server, interface="127.0.0.1")
    connected: Deferred[Protocol] = Deferred()
    client = ClientFactory.forProtocol(lambda: _Sender(connected))
    reactor.connectTCP("127.0.0.1", port.getHost().port, client)
    sender = await connected
    return sender.transport, done, port


@pytest_twisted.ensureDeferred
async def test_sends_at_once_when_nothing_is_queued() -> None:
    """With an empty buffer the bytes leave at once: nothing is left queued."""
    transport, done, port = await _pair()
    send_now(transport, [b"GET / HTTP/1.1\r\n", b"\r\n"])
    assert transport._tempDataLen == 0 and transport.dataBuffer == b""
    transport.loseConnection()
    assert await done == b"GET / HTTP/1.1\r\n\r\n"
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_order_kept_behind_queued_bytes() -> None:
    """Behind bytes already queued, the new ones queue too: order is kept."""
    transport, done, port = await _pair()
    transport.write(b"first ")
    send_now(transport, [b"second"])
    transport.loseConnection()
    assert await done == b"first second"
    await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_more_than_the_socket_takes() -> None:
    """What the kernel does not take is queued and follows, in order, whole."""
    transport, done, port = await _pair()
    data = bytes(range(256)) * (32 * 1024)  # 8 MiB, more than socket buffers
    send_now(transport, [data])
    send_now(transport, [b"tail"])
    transport.loseConnection()
    assert await done == data + b"tail"
    await port.stopListening()


def test_other_transports_use_write_sequence() -> None:
    """A transport that is not plain TCP gets the pieces through writeSequence."""
    transport = StringTransport()
    send_now(transport, [b"a", b"b"])
    assert transport.value() == b"ab"
