# -*- test-case-name: tests.test_hardening -*-
"""
Tests for the proxy's refusals of hostile or ambiguous input and its limits,
driven through fake transports and a fake clock.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeEndpointFactory
from twistproxy._target import Target, check_host
from twistproxy.errors import BadRequestTarget
from twistproxy.limits import Limits
from twistproxy.proxy import ProxyFactory


class _Channel:
    """A Proxy channel on a StringTransport, with its fake reactor and upstreams."""

    def __init__(self, **limits: object) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoints = FakeEndpointFactory()
        self.factory = ProxyFactory(reactor=self.reactor, endpoint_factory=self.endpoints,
                                    limits=Limits(**limits))  # type: ignore[arg-type]
        self.channel = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 5000))
        self.transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 5000),
                                         hostAddress=IPv4Address("TCP", "127.0.0.1", 8080))
        self.channel.makeConnection(self.transport)

    def send(self, *pieces: bytes) -> bytes:
        for piece in pieces:
            self.channel.dataReceived(piece)
        return self.transport.value()


GET = b"GET http://example.com/ HTTP/1.1\r\n"


class FramingTests(SynchronousTestCase):
    """
    Ambiguous framing is refused with 400 and a closed connection, before
    a whole request reaches an upstream.
    """

    def assert_refused(self, data: bytes, status: bytes = b"400") -> None:
        proxy = _Channel()
        answer = proxy.send(data)
        self.assertTrue(answer.startswith(b"HTTP/1.1 " + status), answer)
        self.assertIn(b"Connection: close", answer)
        self.assertTrue(proxy.transport.disconnecting)
        proxy.channel.connectionLost(Failure(ConnectionDone()))  # the close completes
        # No whole request reaches an origin.  A request whose body streams
        # (nobody needs it whole) has gone upstream when its body's framing
        # turns out bad: that connection is aborted before the request is
        # complete (the proxy frames what it sends itself, so nothing the
        # client framed is passed on).
        for _, upstream in proxy.endpoints.connections:
            _, _, body = upstream.value().partition(b"\r\n\r\n")
            self.assertFalse(body.endswith(b"0\r\n\r\n"), upstream.value())
            self.assertNotIn(b"hello", body)
            self.assertTrue(upstream.disconnecting)

    def test_content_length_and_transfer_encoding(self) -> None:
        """Both Content-Length and Transfer-Encoding: refused."""
        self.assert_refused(GET + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")

    def test_differing_content_lengths(self) -> None:
        """Two Content-Length fields (differing or not) and a list: refused."""
        self.assert_refused(GET + b"Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd")
        self.assert_refused(GET + b"Content-Length: 3, 3\r\n\r\nabc")

    def test_transfer_encodings_other_than_chunked(self) -> None:
        """Padded, listed, misspelt or identity codings, or chunked in HTTP/1.0: refused."""
        for coding in (b"chunked\x0b", b"\x0cchunked", b"gzip, chunked", b"chunked, chunked",
                       b"chunkd", b"identity", b"chunked;x=1"):
            with self.subTest(coding=coding):
                self.assert_refused(GET + b"Transfer-Encoding: " + coding + b"\r\n\r\n")
        self.assert_refused(
            b"GET http://example.com/ HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")

    def test_invalid_chunk_sizes(self) -> None:
        """Signs, prefixes and overflowing sizes are refused."""
        head = GET + b"Transfer-Encoding: chunked\r\n\r\n"
        for size in (b"-5", b"+5", b"0x5", b"5 5", b"f" * 40, b""):
            with self.subTest(size=size):
                self.assert_refused(head + size + b"\r\nhello\r\n0\r\n\r\n")

    def test_bare_lf(self) -> None:
        """A head using bare LF line endings is refused at once."""
        self.assert_refused(b"GET http://example.com/ HTTP/1.1\nHost: example.com\n\n")
        self.assert_refused(GET + b"Host: example.com\n\r\n")

    def test_crlf_split_across_reads_is_fine(self) -> None:
        """
        A CRLF split between two reads, or a read starting right after one
        that ended a line, is not mistaken for a bare LF.
        """
        proxy = _Channel()
        proxy.send(b"GET http://example.com/ HTTP/1.1\r", b"\nHost: example.com\r\n",
                   b"X-A: 1\r\n", b"\r\n")
        self.assertEqual(proxy.endpoints.requested, [("http", "example.com", 80)])
        self.assertFalse(proxy.transport.disconnecting)

    def test_body_after_head_may_hold_lf(self) -> None:
        """LF bytes in a body sent in the same read as its head are no bare LF."""
        proxy = _Channel()
        proxy.send(GET + b"Content-Length: 5\r\n\r\na\nb\nc")
        [(_, upstream)] = proxy.endpoints.connections
        self.assertTrue(upstream.value().endswith(b"\r\n\r\na\nb\nc"))

    def test_obs_fold(self) -> None:
        """A folded header line (obs-fold) is refused."""
        self.assert_refused(GET + b"X-Long: a\r\n b\r\n\r\n")

    def test_control_characters_and_space_before_colon(self) -> None:
        """NUL in a value, or whitespace before the colon, is refused."""
        self.assert_refused(GET + b"X-A: a\x00b\r\n\r\n")
        self.assert_refused(GET + b"X-A : b\r\n\r\n")

    def test_field_names_that_are_not_tokens(self) -> None:
        """A field without a colon, with an empty name or one that is not a token: refused."""
        for line in (b"X-A", b": 1", b"X(A): 1", b"X\x80: 1", b"X/A: 1"):
            with self.subTest(line=line):
                self.assert_refused(GET + line + b"\r\n\r\n")

    def test_host_contradicting_target(self) -> None:
        """A Host header naming another host than the absolute URI is a 400 page."""
        proxy = _Channel()
        answer = proxy.send(GET + b"Host: attacker.example\r\n\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 400 "), answer)
        self.assertIn(b"contradicts", answer)
        self.assertEqual(proxy.endpoints.requested, [])


class HeadLimitTests(SynchronousTestCase):
    """
    Limits on the request head answer 414 and 431, and a slow head 408.
    """

    def test_long_request_line_is_414(self) -> None:
        """A request line over the limit is answered 414, even before its end."""
        proxy = _Channel(max_request_line=100)
        self.assertTrue(proxy.send(b"GET http://example.com/" + b"a" * 200 + b" HTTP/1.1\r\n")
                        .startswith(b"HTTP/1.1 414 "))
        unfinished = _Channel(max_request_line=100, max_header_size=256)
        self.assertTrue(unfinished.send(b"GET http://example.com/" + b"a" * 300)
                        .startswith(b"HTTP/1.1 414 "))

    def test_big_head_is_431(self) -> None:
        """A header block over the size limit is answered 431."""
        proxy = _Channel(max_header_size=512)
        answer = proxy.send(GET + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 50) for i in range(20)))
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer)

    def test_too_many_headers_is_431(self) -> None:
        """More header fields than the count limit is answered 431."""
        proxy = _Channel(max_header_count=5)
        answer = proxy.send(GET + b"".join(b"X-%d: v\r\n" % i for i in range(6)) + b"\r\n")
        self.assertTrue(answer.startswith(b"HTTP/1.1 431 "), answer)
        fine = _Channel(max_header_count=5)
        fine.send(GET + b"".join(b"X-%d: v\r\n" % i for i in range(5)) + b"\r\n")
        self.assertEqual(len(fine.endpoints.requested), 1)

    def test_slowloris_gets_408(self) -> None:
        """A client dribbling its head gets 408 after header_timeout, then a close."""
        proxy = _Channel(header_timeout=10.0)
        proxy.send(b"GET http://example.com/ HTTP/1.1\r\n")
        for _ in range(9):
            proxy.reactor.advance(1)
            proxy.send(b"X")  # a byte a second keeps an idle timeout happy
        self.assertEqual(proxy.transport.value(), b"")
        proxy.reactor.advance(1.5)
        self.assertTrue(proxy.transport.value().startswith(b"HTTP/1.1 408 "))
        self.assertTrue(proxy.transport.disconnecting)

    def test_head_timer_stops_at_end_of_head(self) -> None:
        """A complete head in time leaves no head timer behind."""
        proxy = _Channel(header_timeout=10.0)
        proxy.send(GET + b"Host: example.com\r\n\r\n")
        proxy.reactor.advance(11)
        self.assertNotIn(b"408", proxy.transport.value())


class IdleClientTests(SynchronousTestCase):
    """
    An idle keep-alive client connection is closed after the idle timeout.
    """

    def test_idle_keep_alive_closed(self) -> None:
        """After a complete exchange, a client that sends nothing is disconnected."""
        proxy = _Channel()
        proxy.factory.timeOut = 60
        proxy.channel.timeOut = 60
        proxy.channel.setTimeout(60)
        proxy.send(GET + b"\r\n")
        [(origin, _)] = proxy.endpoints.connections
        origin.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertIn(b"204", proxy.transport.value())
        proxy.reactor.advance(59)
        self.assertFalse(proxy.transport.disconnecting)
        proxy.reactor.advance(2)
        self.assertTrue(proxy.transport.disconnecting)


class UpstreamSilenceTests(SynchronousTestCase):
    """
    An origin that says nothing for ``upstream_timeout`` seconds: 504 before
    its response, an aborted client connection during it.
    """

    def test_no_first_byte_is_504(self) -> None:
        """No response byte within the timeout: 504, and the upstream is closed."""
        proxy = _Channel(upstream_timeout=5.0)
        proxy.send(GET + b"\r\n")
        [(_, upstream)] = proxy.endpoints.connections
        proxy.reactor.advance(4.9)
        self.assertEqual(proxy.transport.value(), b"")
        proxy.reactor.advance(0.2)
        self.assertTrue(proxy.transport.value().startswith(b"HTTP/1.1 504 "))
        self.assertTrue(upstream.disconnecting)

    def test_stall_mid_body_aborts(self) -> None:
        """An origin stalling mid-body makes the proxy abort the client connection."""
        proxy = _Channel(upstream_timeout=5.0)
        proxy.factory.body_limit = 4  # stream at once
        proxy.send(GET + b"\r\n")
        [(origin, _)] = proxy.endpoints.connections
        origin.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        self.assertIn(b"200 OK", proxy.transport.value())
        proxy.reactor.advance(4)
        origin.dataReceived(b"y" * 10)  # still talking: the clock starts again
        proxy.reactor.advance(4)
        self.assertFalse(proxy.transport.disconnecting)
        proxy.reactor.advance(1.5)
        self.assertTrue(proxy.transport.disconnecting)

    def test_slow_client_is_not_the_origins_silence(self) -> None:
        """
        While the client's backpressure holds the origin back, the origin's
        silence does not count against it.
        """
        proxy = _Channel(upstream_timeout=5.0)
        proxy.factory.body_limit = 4
        proxy.send(GET + b"\r\n")
        [(origin, _)] = proxy.endpoints.connections
        origin.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        proxy.channel.pauseProducing()  # the client's socket is full
        proxy.reactor.advance(20)
        self.assertFalse(proxy.transport.disconnecting)
        proxy.channel.resumeProducing()
        proxy.reactor.advance(5.5)
        self.assertTrue(proxy.transport.disconnecting)


class LoopTests(SynchronousTestCase):
    """
    Requests that would come back to this proxy are answered 508.
    """

    def test_own_via_token_is_508(self) -> None:
        """A request carrying this proxy's Via token is refused without a connection."""
        proxy = _Channel()
        token = proxy.factory.via.decode()
        answer = proxy.send(GET + f"Via: 1.0 other, {token}\r\n\r\n".encode())
        self.assertTrue(answer.startswith(b"HTTP/1.1 508 "), answer)
        self.assertEqual(proxy.endpoints.requested, [])

    def test_other_proxies_via_is_fine(self) -> None:
        """Another proxy's Via (even another twistproxy's) passes."""
        proxy = _Channel()
        proxy.send(GET + b"Via: 1.1 twistproxy-00000000\r\n\r\n")
        self.assertEqual(len(proxy.endpoints.requested), 1)


class MaxConnectionsTests(SynchronousTestCase):
    """
    Connections beyond ``max_connections`` get a 503 and are closed.
    """

    def test_over_the_limit(self) -> None:
        """The third connection with a limit of two is answered 503; a freed slot is reused."""
        factory = ProxyFactory(reactor=MemoryReactorClock(), limits=Limits(max_connections=2))
        channels = []
        for _ in range(2):
            channel = factory.buildProtocol(None)
            channel.makeConnection(StringTransport())
            channels.append(channel)
        busy = factory.buildProtocol(None)
        transport = StringTransport()
        busy.makeConnection(transport)
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 503 "))
        self.assertTrue(transport.disconnecting)
        channels[0].connectionLost(None)
        again = factory.buildProtocol(None)
        again.makeConnection(StringTransport())
        self.assertEqual(factory.connections, 2)


class CheckHostTests(SynchronousTestCase):
    """
    Tests for :func:`twistproxy._target.check_host`.
    """

    target = Target(scheme="http", host="example.com", port=80, path=b"/",
                    authority=b"example.com")

    def test_matching_spellings(self) -> None:
        """No Host, the same host, other case, and the explicit default port pass."""
        for fields in ([], [(b"Host", b"example.com")], [(b"host", b"EXAMPLE.com:80")]):
            check_host(fields, self.target)

    def test_contradictions(self) -> None:
        """Another host, another port, two Host fields or a malformed one are refused."""
        for fields in ([(b"Host", b"other.example")], [(b"Host", b"example.com:81")],
                       [(b"Host", b"example.com"), (b"Host", b"example.com")],
                       [(b"Host", b"exa mple.com")]):
            with self.subTest(fields=fields), self.assertRaises(BadRequestTarget):
                check_host(fields, self.target)


class WholeHeadTests(SynchronousTestCase):
    """
    A request head that arrives whole in one read is taken at once
    (``ChannelCompat.take_head``); it must be read exactly as the same bytes
    read line by line: the same answers, the same requests upstream.
    """

    CASES = (
        GET + b"Host: example.com\r\nUser-Agent: t\r\n\r\n",
        b"POST http://example.com/p HTTP/1.1\r\nHost: example.com\r\n"
        b"Content-Length: 5\r\n\r\nhello",
        b"POST http://example.com/p HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n",
        GET + b"Host: example.com\r\n\r\n" + GET + b"Host: example.com\r\n\r\n",
        b"GET http://twistproxy/ HTTP/1.1\r\n\r\n",
        b"GET http://example.com/ HTTP/1.0\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\n\r\n\x16\x03\x01\x00\x05hello",
        GET + b"Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        GET + b"X-A: 1\r\n folded\r\n\r\n",
        GET + b"X-A: 1\n\r\n",
        GET + b"Bad Name: 1\r\n\r\n",
        GET + b"X-A: \x01\r\n\r\n",
        b"GET http://example.com/" + b"a" * 200 + b" HTTP/1.1\r\n\r\n",
        GET + b"".join(b"X-%d: 1\r\n" % i for i in range(12)) + b"\r\n",
        b"GET  http://example.com/ HTTP/1.1\r\n\r\n",
        b"GET http://example.com/ HTTP/2.0\r\n\r\n",
        b"\r\n" + GET + b"\r\n",
        b"G\xe9T http://example.com/ HTTP/1.1\r\n\r\n",
    )

    def exchange(self, pieces: list[bytes]) -> tuple[bytes, list[bytes], bool]:
        """What the client got, what went upstream, whether it was closed."""
        proxy = _Channel(max_request_line=128, max_header_count=10)
        token = proxy.factory.via.split(b" ", 1)[1]
        for piece in pieces:
            if proxy.transport.disconnecting:
                break  # a closing transport reads no more
            proxy.channel.dataReceived(piece)
        answer = proxy.transport.value()
        upstream = [u.value().replace(token, b"VIA") for _, u in proxy.endpoints.connections]
        return answer, upstream, proxy.transport.disconnecting

    def test_whole_as_line_by_line(self) -> None:
        """Each case gives the same results with its head in one read or a byte at a time."""
        for data in self.CASES:
            whole = self.exchange([data])
            # The head a byte at a time, what follows it in one read (a body
            # read in pieces goes upstream in pieces).
            end = data.find(b"\r\n\r\n", 2) + 4
            piecemeal = self.exchange([data[i:i + 1] for i in range(end)] + [data[end:]])
            self.assertEqual(whole, piecemeal, data)

    def test_taken_whole(self) -> None:
        """A whole head in one read does not go through ``lineReceived``."""
        proxy = _Channel()
        lines: list[bytes] = []
        original = proxy.channel.lineReceived
        proxy.channel.lineReceived = lambda line: (lines.append(line), original(line))[1]
        proxy.send(GET + b"Host: example.com\r\n\r\n")
        self.assertEqual(lines, [])
        [(_, upstream)] = proxy.endpoints.connections
        self.assertTrue(upstream.value().startswith(b"GET / HTTP/1.1\r\n"))
        cut = _Channel()  # a head in two reads is read line by line
        original_cut = cut.channel.lineReceived
        cut.channel.lineReceived = lambda line: (lines.append(line), original_cut(line))[1]
        cut.send(b"GET http://example.com/2 HTTP/1.1\r\n", b"Host: example.com\r\n\r\n")
        self.assertEqual(lines, [b"GET http://example.com/2 HTTP/1.1", b"Host: example.com", b""])
