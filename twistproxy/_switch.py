# -*- test-case-name: tests.test_switch -*-
"""
Switching a client connection from HTTP to a tunnel after ``CONNECT``.

Once the proxy has answered ``200 Connection established``, the bytes on the
connection are no longer HTTP requests for the :class:`~twistproxy.proxy.Proxy`
channel but TLS (intercepted) or opaque bytes (passthrough).  The channel
hands its connection to another protocol the way Twisted's own websocket
upgrade does (``HTTPChannel._protocolUpgradeForWebsockets``): its
``dataReceived`` and ``connectionLost`` become the new protocol's.  Bytes the
client sent right behind its ``CONNECT`` (often the TLS ClientHello) are
already in the channel's buffers; they are taken out first and handed on, so
they reach the new protocol instead of the HTTP parser.

This is the one module that reaches into ``HTTPChannel``'s private buffers
(``_dataBuffer`` and ``LineReceiver``'s line buffer); Twisted is pinned to a
tested range in ``setup.cfg`` for that reason.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IProtocol
from twisted.web.http import HTTPChannel


def take_buffered(channel: HTTPChannel) -> bytes:
    """
    Remove and return the bytes *channel* has read but not parsed: what the
    client sent after the request being handled.
    """
    pending: list[bytes] = channel._dataBuffer
    channel._dataBuffer = []
    return b"".join(pending) + channel.clearLineBuffer()


def hand_over(channel: HTTPChannel, protocol: IProtocol, buffered: bytes) -> None:
    """
    Give *channel*'s connection to *protocol*: from now on the transport's
    bytes and its end go to *protocol*, starting with *buffered*.

    The channel's idle timeout is stopped (the new protocol keeps its own)
    and it stops being the transport's producer.
    """
    transport: Any = channel.transport
    channel.setTimeout(None)
    transport.unregisterProducer()
    channel.dataReceived = protocol.dataReceived  # type: ignore[method-assign]
    channel.connectionLost = protocol.connectionLost  # type: ignore[method-assign]
    protocol.makeConnection(transport)
    transport.resumeProducing()  # HTTPChannel may have paused it while buffering
    if buffered:
        protocol.dataReceived(buffered)
