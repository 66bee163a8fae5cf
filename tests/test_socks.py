"""
Tests for :mod:`twistproxy._socks` (the SOCKS5 messages, and the listener
on a fake transport), :mod:`twistproxy._opening` through it, and
:mod:`twistproxy._transparent` (the original destination's decoding).
"""

from __future__ import annotations

import socket
import struct
import sys
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, DNSLookupError
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase as TestCase

from tests.fakes import FakeEndpointFactory
from tests.test_switch import _Channel, _TCPTransport
from twistproxy._socks import (
    BIND,
    CONNECT,
    NO_ACCEPTABLE_METHODS,
    NO_AUTHENTICATION,
    USERNAME_PASSWORD,
    Reply,
    SocksError,
    SocksRequest,
    choose_method,
    read_greeting,
    read_login,
    read_request,
    reply,
    reply_for,
)
from twistproxy._transparent import decode_sockaddr, original_destination
from twistproxy.addons.access import HostPolicy, ProxyAuth
from twistproxy.errors import LoopDetected, UpstreamTimeout, upstream_error
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow
from twistproxy.limits import Limits
from twistproxy.modes import parse_mode
from twistproxy.proxy import ProxyFactory


class MessageTests(TestCase):
    """The SOCKS5 messages, read and written without I/O."""

    def test_greeting(self) -> None:
        """A greeting reads whole or not at all; another version or no method is refused."""
        self.assertEqual(read_greeting(b"\x05\x02\x00\x02rest"), (frozenset({0, 2}), 4))
        for part in (b"\x05", b"\x05\x02\x00"):
            self.assertIsNone(read_greeting(part))
        for bad in (b"\x04\x01\x00", b"G", b"\x05\x00"):
            self.assertRaises(SocksError, read_greeting, bad)

    def test_choose_method(self) -> None:
        """Username/password only when required; no-auth preferred otherwise."""
        self.assertEqual(choose_method(frozenset({0, 2}), login=False), NO_AUTHENTICATION)
        self.assertEqual(choose_method(frozenset({2}), login=False), USERNAME_PASSWORD)
        self.assertEqual(choose_method(frozenset({0, 2}), login=True), USERNAME_PASSWORD)
        self.assertEqual(choose_method(frozenset({0}), login=True), NO_ACCEPTABLE_METHODS)
        self.assertEqual(choose_method(frozenset({1}), login=False), NO_ACCEPTABLE_METHODS)

    def test_login(self) -> None:
        """RFC 1929: version 1, user and password each with its length."""
        self.assertEqual(read_login(b"\x01\x03bob\x02pw!"), (b"bob", b"pw", 8))
        for part in (b"\x01", b"\x01\x03bo", b"\x01\x03bob", b"\x01\x03bob\x02p"):
            self.assertIsNone(read_login(part))
        for bad in (b"\x05\x03bob\x02pw", b"\x01\x00\x02pw", b"\x01\x03bob\x00"):
            self.assertRaises(SocksError, read_login, bad)

    def test_request_addresses(self) -> None:
        """IPv4, IPv6 and names; the bytes after it are not read."""
        v4 = b"\x05\x01\x00\x01\x7f\x00\x00\x01\x00\x50"
        self.assertEqual(read_request(v4 + b"GET"), (SocksRequest(CONNECT, "127.0.0.1", 80), 10))
        v6 = b"\x05\x02\x00\x04" + socket.inet_pton(socket.AF_INET6, "::1") + b"\x01\xbb"
        self.assertEqual(read_request(v6), (SocksRequest(BIND, "::1", 443), 22))
        name = b"\x05\x01\x00\x03\x0bexample.com\x1f\x90"
        self.assertEqual(read_request(name), (SocksRequest(CONNECT, "example.com", 8080), 18))
        for cut in range(1, len(name)):
            self.assertIsNone(read_request(name[:cut]), cut)

    def test_request_refusals(self) -> None:
        """An unknown address type is owed reply 8; a bad name or version just closes."""
        with self.assertRaises(SocksError) as caught:
            read_request(b"\x05\x01\x00\x09\x00\x00\x00")
        self.assertEqual(caught.exception.reply, Reply.ADDRESS_TYPE_NOT_SUPPORTED)
        for bad in (b"\x04\x01\x00\x01", b"\x05\x01\x00\x03\x00\x00\x50",
                    b"\x05\x01\x00\x03\x03a b\x00\x50", b"\x05\x01\x00\x03\x02\xc3\xa9\x00\x50"):
            self.assertRaises(SocksError, read_request, bad)

    def test_reply(self) -> None:
        """A reply carries its code and the bound address, IPv4 or IPv6."""
        self.assertEqual(reply(Reply.SUCCEEDED, "10.0.0.2", 4242),
                         b"\x05\x00\x00\x01\x0a\x00\x00\x02\x10\x92")
        self.assertEqual(reply(Reply.CONNECTION_REFUSED, "::1", 1),
                         b"\x05\x05\x00\x04" + bytes(15) + b"\x01\x00\x01")
        self.assertEqual(reply(Reply.NOT_ALLOWED), b"\x05\x02\x00\x01" + bytes(6))

    def test_reply_for(self) -> None:
        """Each way a tunnel fails to open has its code."""
        self.assertEqual(reply_for(403, None), Reply.NOT_ALLOWED)
        self.assertEqual(reply_for(407, None), Reply.NOT_ALLOWED)
        self.assertEqual(reply_for(502, None), Reply.GENERAL_FAILURE)
        cases = [
            (upstream_error(Failure(ConnectionRefusedError())), Reply.CONNECTION_REFUSED),
            (upstream_error(Failure(DNSLookupError("nx"))), Reply.HOST_UNREACHABLE),
            (Failure(UpstreamTimeout("slow")), Reply.TTL_EXPIRED),
            (Failure(LoopDetected("here")), Reply.NOT_ALLOWED),
            (Failure(ValueError("bug")), Reply.GENERAL_FAILURE),
        ]
        for reason, code in cases:
            self.assertEqual(reply_for(None, reason), code, reason)


def _connect_request(host: str, port: int) -> bytes:
    return b"\x05\x01\x00\x01" + socket.inet_aton(host) + struct.pack("!H", port)


class ListenerTests(TestCase):
    """The SOCKS5 listener on a fake transport, with fake origins and a clock."""

    def _listener(self, **kwargs: Any) -> _Channel:
        return _Channel(mode=parse_mode("socks5"), **kwargs)

    def test_connect(self) -> None:
        """
        After the handshake the origin is connected first; the success
        reply names the proxy's side of that connection, and what follows
        goes to the tunnel.
        """
        proxy = self._listener()
        proxy.channel.dataReceived(b"\x05\x01\x00")
        self.assertEqual(proxy.transport.value(), b"\x05\x00")
        proxy.transport.clear()
        proxy.channel.dataReceived(_connect_request("127.0.0.1", 8000) + b"\x00raw")
        self.assertEqual(proxy.endpoints.requested, [("tcp", "127.0.0.1", 8000)])
        self.assertEqual(proxy.transport.value(), reply(Reply.SUCCEEDED, "127.0.0.1", 40000))
        [(_, origin)] = proxy.endpoints.connections
        self.assertEqual(origin.value(), b"\x00raw")  # no CA: relayed raw
        self.assertEqual(proxy.channel.client_conn.tunnel, ("127.0.0.1", 8000))

    def test_refused_by_policy(self) -> None:
        """A destination the host policy refuses gets "not allowed" and no connection."""
        proxy = self._listener(addons=[HostPolicy(block=["127.0.0.1"])])
        proxy.channel.dataReceived(b"\x05\x01\x00" + _connect_request("127.0.0.1", 8000))
        self.assertEqual(proxy.transport.value(), b"\x05\x00" + reply(Reply.NOT_ALLOWED))
        self.assertEqual(proxy.endpoints.requested, [])
        self.assertTrue(proxy.transport.disconnecting)

    def test_login_required(self) -> None:
        """With ProxyAuth, a wrong password is answered 1 and closed before any request."""
        proxy = self._listener(addons=[ProxyAuth({"ann": "pw"})])
        proxy.channel.dataReceived(b"\x05\x02\x00\x02\x01\x03ann\x02no")
        self.assertEqual(proxy.transport.value(), b"\x05\x02\x01\x01")
        self.assertTrue(proxy.transport.disconnecting)

    def test_handshake_timeout(self) -> None:
        """A handshake that stops half-way is closed once the head timeout passes."""
        proxy = self._listener(limits=Limits(header_timeout=5))
        proxy.channel.dataReceived(b"\x05\x01")
        proxy.reactor.advance(4.9)
        self.assertFalse(proxy.transport.disconnecting)
        proxy.reactor.advance(0.2)
        self.assertTrue(proxy.transport.disconnecting)

    def test_client_leaves_while_hook_runs(self) -> None:
        """
        A client gone while ``http_connect`` is waited for: the hook is
        cancelled, the flow ends with ``error``, nothing is connected and
        the connection is counted out.
        """
        ends: list[str] = []

        class Slow(Addon):
            def http_connect(self, flow: HTTPFlow) -> Deferred[None]:
                return Deferred()

            def error(self, flow: HTTPFlow) -> None:
                ends.append("error")

        proxy = self._listener(addons=[Slow()])
        proxy.channel.dataReceived(b"\x05\x01\x00" + _connect_request("127.0.0.1", 8000))
        proxy.channel.connectionLost(Failure(ConnectionRefusedError()))
        self.assertEqual(ends, ["error"])
        self.assertEqual(proxy.endpoints.requested, [])
        self.assertEqual(proxy.factory.connections, 0)


class _FakeSocket:
    """A socket whose getsockopt answers from a table."""

    def __init__(self, family: int, answers: dict[tuple[int, int], bytes]) -> None:
        self.family = family
        self._answers = answers

    def getsockopt(self, level: int, option: int, size: int) -> bytes:
        try:
            return self._answers[level, option][:size]
        except KeyError:
            raise OSError(2, "No such file or directory") from None


def _sockaddr_in(host: str, port: int) -> bytes:
    return (socket.AF_INET.to_bytes(2, sys.byteorder) + struct.pack("!H", port)
            + socket.inet_aton(host) + bytes(8))


def _sockaddr_in6(host: str, port: int) -> bytes:
    return (socket.AF_INET6.to_bytes(2, sys.byteorder) + struct.pack("!H", port) + bytes(4)
            + socket.inet_pton(socket.AF_INET6, host) + bytes(4))


class OriginalDestinationTests(TestCase):
    """:func:`original_destination` decodes what ``SO_ORIGINAL_DST`` answers."""

    def test_ipv4(self) -> None:
        """An IPv4 socket is asked at SOL_IP, option 80."""
        sock = _FakeSocket(socket.AF_INET, {(0, 80): _sockaddr_in("93.184.216.34", 443)})
        self.assertEqual(original_destination(sock), ("93.184.216.34", 443))

    def test_ipv6_then_ipv4(self) -> None:
        """An IPv6 socket is asked at SOL_IPV6 first, then (an IPv4 client) SOL_IP."""
        six = _FakeSocket(socket.AF_INET6, {(41, 80): _sockaddr_in6("2001:db8::1", 80)})
        self.assertEqual(original_destination(six), ("2001:db8::1", 80))
        mapped = _FakeSocket(socket.AF_INET6, {(0, 80): _sockaddr_in("10.0.0.1", 8080)})
        self.assertEqual(original_destination(mapped), ("10.0.0.1", 8080))

    def test_none(self) -> None:
        """Without connection tracking (an error) or with garbage, there is none."""
        self.assertIsNone(original_destination(_FakeSocket(socket.AF_INET, {})))
        garbage = _FakeSocket(socket.AF_INET, {(0, 80): b"\x07\x00" + bytes(14)})
        self.assertIsNone(original_destination(garbage))
        self.assertRaises(ValueError, decode_sockaddr, b"\x02\x00")

    def _transparent(self, answers: dict[tuple[int, int], bytes]) -> _Channel:
        """A transparent listener's channel whose socket answers from *answers*."""
        proxy = _Channel.__new__(_Channel)
        proxy.reactor = MemoryReactorClock()
        proxy.endpoints = FakeEndpointFactory()
        proxy.factory = ProxyFactory(reactor=proxy.reactor, endpoint_factory=proxy.endpoints,
                                     mode=parse_mode("transparent@8080"))
        proxy.channel = proxy.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        proxy.transport = _TCPTransport(hostAddress=IPv4Address("TCP", "127.0.0.1", 8080),
                                        peerAddress=IPv4Address("TCP", "127.0.0.1", 5000))
        proxy.transport.getHandle = lambda: _FakeSocket(socket.AF_INET, answers)  # type: ignore[attr-defined]
        proxy.channel.makeConnection(proxy.transport)
        return proxy

    def test_not_redirected_is_closed(self) -> None:
        """
        A connection whose original destination is the listener itself
        (or unknown) is closed before anything is connected.
        """
        for answers in ({(0, 80): _sockaddr_in("127.0.0.1", 8080)}, {}):
            proxy = self._transparent(answers)
            self.assertTrue(proxy.transport.disconnecting)
            self.assertEqual(proxy.endpoints.requested, [])

    def test_redirected_connects(self) -> None:
        """
        A redirected connection opens the tunnel to its original
        destination, and the client's bytes go there.
        """
        proxy = self._transparent({(0, 80): _sockaddr_in("192.0.2.7", 80)})
        self.assertEqual(proxy.endpoints.requested, [("tcp", "192.0.2.7", 80)])
        self.assertEqual(proxy.channel.client_conn.tunnel, ("192.0.2.7", 80))
        proxy.channel.dataReceived(b"\x00raw")
        [(_, origin)] = proxy.endpoints.connections
        self.assertEqual(origin.value(), b"\x00raw")
        self.assertEqual(proxy.transport.value(), b"")
