"""
Tests for :mod:`twistproxy.proxyprotocol`: the PROXY protocol header in
front of a proxy channel, on in-memory transports.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeEndpointFactory
from twistproxy.connection import Client
from twistproxy.hooks import Addon
from twistproxy.limits import Limits, with_backlog
from twistproxy.proxy import ProxyFactory
from twistproxy.proxyprotocol import (
    ProxyHeaderEndpoint,
    ProxyHeaderFactory,
    server_endpoint,
    split_prefix,
)

BALANCER = IPv4Address("TCP", "127.0.0.1", 40000)
LISTENER = IPv4Address("TCP", "127.0.0.1", 8080)
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
REQUEST = b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n"


def v2_header(source: str, sport: int, dest: str, dport: int, *, local: bool = False) -> bytes:
    """A PROXY protocol v2 header for TCP over IPv4 (or a LOCAL one)."""
    if local:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    addresses = (socket.inet_aton(source) + socket.inet_aton(dest)
                 + struct.pack("!HH", sport, dport))
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(addresses)) + addresses


class Clients(Addon):
    """Records the connections the proxy saw."""

    def __init__(self) -> None:
        self.seen: list[Client] = []

    def client_connected(self, client: Client) -> None:
        self.seen.append(client)


class ProxyHeaderTests(SynchronousTestCase):
    """
    A channel behind :class:`ProxyHeaderFactory` is built once the header
    is read, for the client the header names; a connection without a valid
    header is closed and no channel is built.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.clients = Clients()
        self.proxy = ProxyFactory(reactor=self.reactor, addons=[self.clients],
                                  endpoint_factory=FakeEndpointFactory(),
                                  limits=Limits(header_timeout=5.0))
        self.factory = ProxyHeaderFactory(self.proxy, clock=self.reactor)

    def connect(self) -> tuple[Any, StringTransport]:
        protocol = self.factory.buildProtocol(BALANCER)
        transport = StringTransport(hostAddress=LISTENER, peerAddress=BALANCER)
        protocol.makeConnection(transport)
        return protocol, transport

    def test_v1_names_the_client(self) -> None:
        """
        A v1 header: the channel, its client record and its requests see the
        client the header names, and the request after it is read.
        """
        protocol, transport = self.connect()
        self.assertEqual(self.proxy.connections, 0)
        protocol.dataReceived(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8080\r\n" + REQUEST)
        self.assertEqual(self.proxy.connections, 1)
        [client] = self.clients.seen
        self.assertEqual(client.peername, ("203.0.113.7", 5555))
        self.assertEqual(client.sockname, ("127.0.0.1", 8080))
        self.assertEqual(protocol.getPeer(), IPv4Address("TCP", "203.0.113.7", 5555))
        self.assertEqual(protocol.wrappedProtocol.requests[0].flow.request.host, "example.com")
        self.assertFalse(transport.disconnecting)

    def test_v2_in_pieces(self) -> None:
        """A v2 header arriving a byte at a time names the client too."""
        protocol, _ = self.connect()
        header = v2_header("198.51.100.9", 6000, "127.0.0.1", 8080)
        for i in range(len(header) - 1):
            protocol.dataReceived(header[i:i + 1])
        self.assertEqual(self.clients.seen, [])
        protocol.dataReceived(header[-1:] + REQUEST)
        self.assertEqual(protocol.wrappedProtocol.requests[0].flow.request.host, "example.com")
        [client] = self.clients.seen
        self.assertEqual(client.peername, ("198.51.100.9", 6000))

    def test_v1_ipv6(self) -> None:
        """A TCP6 header gives an IPv6 client."""
        protocol, _ = self.connect()
        protocol.dataReceived(b"PROXY TCP6 2001:db8::1 ::1 5555 8080\r\n")
        self.assertEqual(protocol.getPeer(), IPv6Address("TCP", "2001:db8::1", 5555))
        self.assertEqual(self.clients.seen[0].peername, ("2001:db8::1", 5555))

    def test_local_keeps_the_connection_addresses(self) -> None:
        """A v2 LOCAL header (the balancer's own connection) keeps the real peer."""
        protocol, _ = self.connect()
        protocol.dataReceived(v2_header("", 0, "", 0, local=True))
        self.assertEqual(self.clients.seen[0].peername, ("127.0.0.1", 40000))

    def assert_refused(self, data: bytes) -> None:
        protocol, transport = self.connect()
        protocol.dataReceived(data)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.clients.seen, [])
        self.assertEqual(self.proxy.connections, 0)
        self.assertEqual(self.factory.refused, 1)
        protocol.dataReceived(REQUEST)  # bytes after the refusal go nowhere
        self.assertEqual(self.clients.seen, [])
        protocol.connectionLost(Exception("closed"))  # type: ignore[arg-type]
        self.assertEqual(self.factory.protocols, {})

    def test_no_header(self) -> None:
        """A plain request, without a header, is refused, not served."""
        self.assert_refused(REQUEST)

    def test_invalid_address(self) -> None:
        """A v1 header whose address is not an IP address is refused."""
        self.assert_refused(b"PROXY TCP4 evil.example 127.0.0.1 5555 8080\r\n")

    def test_invalid_port(self) -> None:
        """A v1 header whose port is not a number is refused."""
        self.assert_refused(b"PROXY TCP4 203.0.113.7 127.0.0.1 port 8080\r\n")

    def test_overlong_v1(self) -> None:
        """A v1 line longer than the protocol allows is refused."""
        self.assert_refused(b"PROXY TCP4 " + b"1" * 120)

    def test_bad_v2_version(self) -> None:
        """A v2 signature with another version is refused."""
        self.assert_refused(V2_SIGNATURE + bytes([0x31, 0x11, 0, 0]))

    def test_header_too_late(self) -> None:
        """A connection that sends no header within the head timeout is closed."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"PRO")
        self.reactor.advance(4.9)
        self.assertFalse(transport.disconnecting)
        self.reactor.advance(0.2)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.factory.refused, 1)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_closed_before_the_header(self) -> None:
        """A connection closed before its header leaves no timer and no channel."""
        protocol, _ = self.connect()
        protocol.connectionLost(Exception("gone"))  # type: ignore[arg-type]
        self.assertEqual(self.reactor.getDelayedCalls(), [])
        self.assertEqual(self.proxy.connections, 0)

    def test_channel_closes(self) -> None:
        """The channel's connection ends: the proxy counts it closed."""
        protocol, _ = self.connect()
        protocol.dataReceived(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8080\r\n")
        protocol.connectionLost(Exception("gone"))  # type: ignore[arg-type]
        self.assertEqual(self.proxy.connections, 0)
        self.assertIsNotNone(self.clients.seen[0].timestamp_end)

    def test_disconnecting(self) -> None:
        """``disconnecting`` says the connection is closing, wherever it was closed."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"PROXY TCP4 203.0.113.7 127.0.0.1 5555 8080\r\n")
        self.assertFalse(protocol.disconnecting)
        transport.abortConnection()
        self.assertTrue(protocol.disconnecting)


class DescriptionTests(SynchronousTestCase):
    """The ``haproxy:`` prefix of an endpoint description."""

    def test_split(self) -> None:
        self.assertEqual(split_prefix("haproxy:tcp:8080"), ("tcp:8080", True))
        self.assertEqual(split_prefix("HAProxy:tcp:8080"), ("tcp:8080", True))
        self.assertEqual(split_prefix("tcp:8080"), ("tcp:8080", False))

    def test_backlog_on_the_wrapped_endpoint(self) -> None:
        """``with_backlog`` puts the backlog on the endpoint the prefix wraps."""
        self.assertEqual(with_backlog("haproxy:tcp:8080", 7), "haproxy:tcp:8080:backlog=7")
        self.assertEqual(with_backlog("haproxy:tcp:8080:backlog=3", 7),
                         "haproxy:tcp:8080:backlog=3")

    def test_server_endpoint(self) -> None:
        """A ``haproxy:`` description listens through ProxyHeaderFactory, with the backlog."""
        reactor = MemoryReactorClock()
        endpoint = server_endpoint(reactor, "haproxy:tcp:8080:interface=127.0.0.1", 77)
        self.assertIsInstance(endpoint, ProxyHeaderEndpoint)
        proxy = ProxyFactory(reactor=reactor)
        endpoint.listen(proxy)
        port, factory, backlog, interface = reactor.tcpServers[0]
        self.assertEqual((port, backlog, interface), (8080, 77, "127.0.0.1"))
        self.assertIsInstance(factory, ProxyHeaderFactory)
        self.assertIs(factory.wrappedFactory, proxy)
        self.assertEqual(factory.timeout, proxy.limits.header_timeout)

    def test_plain_endpoint(self) -> None:
        """Without the prefix the factory is the proxy's own."""
        reactor = MemoryReactorClock()
        proxy = ProxyFactory(reactor=reactor)
        server_endpoint(reactor, "tcp:8080", 77).listen(proxy)
        self.assertIs(reactor.tcpServers[0][1], proxy)

    def test_timeout_without_limits(self) -> None:
        """A factory without limits gets the default header timeout."""
        factory = ProxyHeaderFactory(ProxyFactory(reactor=Clock()), clock=Clock(), timeout=2.0)
        self.assertEqual(factory.timeout, 2.0)
