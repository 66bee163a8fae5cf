"""
Tests for :mod:`twistproxy.client` and :mod:`twistproxy.pool`: a connection
to an origin, and the pool it returns to.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.serialization import Encoding
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import (
    ConnectionDone,
    ConnectionLost,
    ConnectionRefusedError,
    DNSLookupError,
    TimeoutError,
)
from twisted.internet.interfaces import (
    IHandshakeListener,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer
from zope.interface.verify import verifyObject

from tests.e2e.pki import OriginTLS, make_ca, make_leaf
from tests.fakes import connect_tls, write_temp_file
from twistproxy._framing import CHUNKED, NO_BODY, UNTIL_CLOSE
from twistproxy._memorytls import ClientTLS
from twistproxy._tls import UpstreamTLS
from twistproxy._tunnel import Relay
from twistproxy.client import PoolKey, ProxyClient, ProxyClientFactory
from twistproxy.connection import Server
from twistproxy.errors import (
    TwistProxyError,
    UpstreamConnectFailed,
    UpstreamConnectionLost,
    UpstreamNameNotResolved,
    UpstreamProtocolError,
    UpstreamTimeout,
)
from twistproxy.pool import ConnectionPool

KEY = PoolKey("http", "example.com", 80)
OTHER_KEY = PoolKey("http", "example.org", 80)
REQUEST = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n"
HEAD_REQUEST = b"HEAD / HTTP/1.1\r\nHost: example.com\r\n\r\n"
PEER = IPv4Address("TCP", "203.0.113.5", 80)
LOCAL = IPv4Address("TCP", "10.1.2.3", 40000)

OK_HI = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi"
"""A complete keep-alive response with a two-byte body."""


class RecordingReceiver:
    """
    An `IResponseReceiver` that records every call made to it, in order.
    """

    def __init__(self) -> None:
        self.events: list[tuple[object, ...]] = []
        self.framings: list[int] = []
        self.reads_done: list[list[str]] = []  # the kinds of events so far, at each

    def response_started(
        self,
        status: int,
        reason: bytes,
        version: bytes,
        fields: list[tuple[bytes, bytes]],
        framing: int,
    ) -> None:
        self.events.append(("started", status, reason, version, fields))
        self.framings.append(framing)

    def response_data(self, data: bytes) -> None:
        self.events.append(("data", data))

    def read_done(self) -> None:
        self.reads_done.append(list(self.kinds))

    def response_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        self.events.append(("trailers", fields))

    def response_interim(
        self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]]
    ) -> None:
        self.events.append(("interim", status, reason, fields))

    def response_ended(self) -> None:
        self.events.append(("ended",))

    def response_failed(self, reason: Failure) -> None:
        self.events.append(("failed", reason))

    @property
    def kinds(self) -> list[object]:
        """The kind of each call, in order, with the data calls merged."""
        kinds: list[object] = []
        for event in self.events:
            if not (event[0] == "data" and kinds and kinds[-1] == "data"):
                kinds.append(event[0])
        return kinds

    @property
    def started(self) -> list[tuple[object, ...]]:
        """The arguments of each ``response_started`` call."""
        return [event[1:] for event in self.events if event[0] == "started"]

    @property
    def body(self) -> bytes:
        """Every ``response_data`` piece, joined."""
        return b"".join(event[1] for event in self.events if event[0] == "data")  # type: ignore[misc]

    @property
    def failures(self) -> list[Failure]:
        """The reasons of each ``response_failed`` call."""
        return [event[1] for event in self.events if event[0] == "failed"]  # type: ignore[misc]


@implementer(IStreamClientEndpoint)
class FakeEndpoint:
    """
    An endpoint whose connection attempts complete at once: with a
    `ProxyClient` on a `StringTransport`, or with the given error.
    """

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error
        self.transports: list[StringTransport] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[IProtocol]:
        if self.error is not None:
            return fail(self.error)
        protocol = factory.buildProtocol(PEER)
        assert protocol is not None
        transport = StringTransport(hostAddress=LOCAL, peerAddress=PEER)
        protocol.makeConnection(transport)
        self.transports.append(transport)
        return succeed(protocol)


class FakeEndpointFactory:
    """
    An endpoint factory recording what it was asked for; keys listed in
    *errors* get an endpoint failing with that error.
    """

    def __init__(self, errors: dict[tuple[str, str, int], BaseException] | None = None) -> None:
        self.errors = errors or {}
        self.requested: list[tuple[str, str, int]] = []

    def __call__(self, scheme: str, host: str, port: int) -> FakeEndpoint:
        key = (scheme, host, port)
        self.requested.append(key)
        return FakeEndpoint(self.errors.get(key))


class FakeEndpointTests(SynchronousTestCase):
    """
    Tests for the `FakeEndpoint` test double.
    """

    def test_provides_interface(self) -> None:
        """
        `FakeEndpoint` provides `IStreamClientEndpoint`.
        """
        self.assertTrue(verifyObject(IStreamClientEndpoint, FakeEndpoint()))


def transport_of(client: ProxyClient) -> StringTransport:
    """The `StringTransport` a client is connected to."""
    transport = client.transport
    assert isinstance(transport, StringTransport)
    return transport


class ProxyClientTests(SynchronousTestCase):
    """
    Tests for `ProxyClient` on its own, outside any pool: a finished
    exchange closes the connection.
    """

    def setUp(self) -> None:
        self.client = ProxyClient(KEY)
        self.transport = StringTransport(peerAddress=PEER)
        self.client.makeConnection(self.transport)
        self.receiver = RecordingReceiver()

    def send(self, head: bool = False) -> None:
        self.client.send(
            self.receiver, [HEAD_REQUEST if head else REQUEST], method=b"HEAD" if head else b"GET"
        )

    def assert_failed(self, error: type[Exception]) -> Failure:
        """
        Assert that the exchange failed exactly once, with *error*, after
        no ``response_ended``, and that the connection was aborted.
        """
        self.assertNotIn("ended", self.receiver.kinds)
        self.assertEqual(self.receiver.kinds[-1:], ["failed"])
        [reason] = self.receiver.failures
        self.assertIsInstance(reason.value, error)
        self.assertTrue(self.transport.disconnected)
        return reason

    def test_request_written(self) -> None:
        """
        `ProxyClient.send` writes the request bytes in order and reports
        nothing yet.
        """
        self.client.send(self.receiver, [b"POST / HTTP/1.1\r\n", b"\r\n", b"body"], method=b"POST")
        self.assertEqual(self.transport.value(), b"POST / HTTP/1.1\r\n\r\nbody")
        self.assertEqual(self.receiver.events, [])

    def test_streamed_body_written(self) -> None:
        """
        An incomplete request's body goes out through `write_body` and
        `end_body`, in order.
        """
        self.client.send(self.receiver, [b"HEAD"], method=b"POST", complete=False)
        self.client.write_body([b"a", b"b"])
        self.client.end_body([b"c"])
        self.assertEqual(self.transport.value(), b"HEADabc")

    def test_content_length_response(self) -> None:
        """
        A ``Content-Length`` response is reported as its head, its body and
        its end; the head carries status, reason, version and the fields in
        their order and case.
        """
        self.send()
        self.client.dataReceived(
            b"HTTP/1.1 201 Created Fine\r\nx-one: 1\r\nContent-Length: 5\r\nX-Two: 2\r\n\r\nhel"
        )
        self.assertEqual(self.receiver.kinds, ["started", "data"])
        # The read that brought the head is over, said once, after its body piece.
        self.assertEqual(self.receiver.reads_done, [["started", "data"]])
        self.client.dataReceived(b"lo")
        self.assertEqual(self.receiver.kinds, ["started", "data", "ended"])
        self.assertEqual(len(self.receiver.reads_done), 1)
        self.assertEqual(
            self.receiver.started,
            [
                (
                    201,
                    b"Created Fine",
                    b"HTTP/1.1",
                    [(b"x-one", b"1"), (b"Content-Length", b"5"), (b"X-Two", b"2")],
                )
            ],
        )
        self.assertEqual(self.receiver.framings, [5])
        self.assertEqual(self.receiver.body, b"hello")

    def test_no_pool_closes_after_exchange(self) -> None:
        """
        A connection outside a pool is closed when its exchange ends.
        """
        self.send()
        self.client.dataReceived(OK_HI)
        self.assertEqual(self.receiver.kinds, ["started", "data", "ended"])
        self.assertTrue(self.transport.disconnected)

    def test_chunked_response(self) -> None:
        """
        A chunked body is reported without its transfer coding, and the
        exchange ends at the last chunk.
        """
        self.send()
        self.client.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n6;ext=1\r\n world\r\n"
        )
        self.assertEqual(self.receiver.kinds, ["started", "data"])
        self.client.dataReceived(b"0\r\nX-Trailer: t\r\n\r\n")
        self.assertEqual(self.receiver.kinds, ["started", "data", "trailers", "ended"])
        self.assertIn(("trailers", [(b"X-Trailer", b"t")]), self.receiver.events)
        self.assertEqual(self.receiver.framings, [CHUNKED])
        self.assertEqual(self.receiver.body, b"hello world")

    def test_chunked_one_byte_at_a_time(self) -> None:
        """
        A chunked response delivered one byte per read gives the same body
        and ends once.
        """
        self.send()
        response = (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        for index in range(len(response)):
            self.client.dataReceived(response[index : index + 1])
        self.assertEqual(self.receiver.kinds, ["started", "data", "ended"])
        self.assertEqual(self.receiver.body, b"abcde")

    def test_close_delimited_body(self) -> None:
        """
        A body without ``Content-Length`` or chunking lasts until the
        connection closes; the close ends the exchange successfully.
        """
        self.send()
        self.client.dataReceived(b"HTTP/1.1 200 OK\r\nServer: s\r\n\r\nabc")
        self.client.dataReceived(b"def")
        self.assertEqual(self.receiver.kinds, ["started", "data"])
        self.client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.receiver.kinds, ["started", "data", "ended"])
        self.assertEqual(self.receiver.framings, [UNTIL_CLOSE])
        self.assertEqual(self.receiver.body, b"abcdef")

    def test_close_delimited_body_reset(self) -> None:
        """
        A close-delimited body cut by a reset rather than a clean close is a
        failure: only a clean close marks the end of such a body, and
        relaying a truncated one as complete would mislead the client.
        """
        self.send()
        self.client.dataReceived(b"HTTP/1.0 200 OK\r\n\r\nabc")
        self.client.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.receiver.kinds, ["started", "data", "failed"])

    def test_non_chunked_transfer_coding_is_refused(self) -> None:
        """
        A response with a transfer coding other than ``chunked`` fails as a
        protocol error: relaying its body without the hop-by-hop
        ``Transfer-Encoding`` field would hand the client bytes it cannot
        decode.
        """
        self.send()
        self.client.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nabc")
        self.assertEqual(self.receiver.kinds, ["failed"])
        self.receiver.failures[0].trap(UpstreamProtocolError)
        self.assertIn("transfer coding", self.receiver.failures[0].getErrorMessage())

    def test_end_of_message_then_connection_loss(self) -> None:
        """
        When the message ends first and the connection is lost afterwards,
        the receiver hears ``response_ended`` once and never
        ``response_failed``.
        """
        self.send()
        self.client.dataReceived(OK_HI)
        self.client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.receiver.kinds, ["started", "data", "ended"])

    def test_end_of_chunked_message_then_reset(self) -> None:
        """
        A complete chunked response followed by a connection reset is still
        a success, reported once.
        """
        self.send()
        self.client.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n"
        )
        self.client.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.receiver.kinds, ["started", "data", "ended"])

    def test_connection_loss_then_end_of_message(self) -> None:
        """
        When the connection's loss ends a close-delimited message first, a
        later `handleResponseEnd` (the parser reaching the end of the
        message) reports nothing more.
        """
        self.send()
        self.client.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nabc")
        self.client.connectionLost(Failure(ConnectionDone()))
        self.client.handleResponseEnd()
        self.client.on_message_complete()
        self.assertEqual(self.receiver.kinds, ["started", "data", "ended"])

    def test_handle_response_end_twice(self) -> None:
        """
        Calling `handleResponseEnd` twice reports the end once, and a later
        connection loss reports no failure.
        """
        self.send()
        self.client.dataReceived(b"HTTP/1.1 200 OK\r\n\r\nabc")
        self.client.handleResponseEnd()
        self.client.handleResponseEnd()
        self.client.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.receiver.kinds, ["started", "data", "ended"])

    def test_head_response_ends_at_headers(self) -> None:
        """
        A response to HEAD ends at its headers even though it declares a
        ``Content-Length``; that length is reported as the origin sent it.
        """
        self.send(head=True)
        self.client.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n")
        self.assertEqual(self.receiver.kinds, ["started", "ended"])
        self.assertEqual(
            self.receiver.started, [(200, b"OK", b"HTTP/1.1", [(b"Content-Length", b"1234")])]
        )
        self.assertEqual(self.receiver.framings, [NO_BODY])

    def test_head_chunked_response_ends_at_headers(self) -> None:
        """
        A response to HEAD that declares chunking also ends at its headers.
        """
        self.send(head=True)
        self.client.dataReceived(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        self.assertEqual(self.receiver.kinds, ["started", "ended"])

    def test_no_content(self) -> None:
        """
        A 204 response ends at its headers.
        """
        self.send()
        self.client.dataReceived(b"HTTP/1.1 204 No Content\r\n\r\n")
        self.assertEqual(self.receiver.kinds, ["started", "ended"])
        self.assertEqual(self.receiver.framings, [NO_BODY])

    def test_not_modified_with_length(self) -> None:
        """
        A 304 response ends at its headers, whatever ``Content-Length`` it
        declares.
        """
        self.send()
        self.client.dataReceived(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n")
        self.assertEqual(self.receiver.kinds, ["started", "ended"])
        self.assertEqual(self.receiver.started[0][0], 304)
        self.assertEqual(self.receiver.framings, [NO_BODY])

    def test_interim_responses_reported(self) -> None:
        """
        ``100 Continue`` and ``103 Early Hints`` are reported as interim
        responses; the final response is reported with only its own status
        and fields.
        """
        self.send()
        self.client.dataReceived(
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
        )
        self.assertEqual(self.receiver.kinds,
                         ["interim", "interim", "started", "data", "ended"])
        self.assertEqual(self.receiver.events[:2], [
            ("interim", 100, b"Continue", []),
            ("interim", 103, b"Early Hints", [(b"Link", b"</s.css>; rel=preload")]),
        ])
        self.assertEqual(
            self.receiver.started, [(200, b"OK", b"HTTP/1.1", [(b"Content-Length", b"2")])]
        )
        self.assertEqual(self.receiver.body, b"ok")

    def test_final_response_without_reason(self) -> None:
        """
        A final response without a reason phrase is reported with an empty
        reason, not the reason of the interim response before it.
        """
        self.send()
        self.client.dataReceived(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"
        )
        self.assertEqual(
            self.receiver.started, [(200, b"", b"HTTP/1.1", [(b"Content-Length", b"0")])]
        )

    def test_interim_response_body_dropped(self) -> None:
        """
        A body an interim response declares (llhttp reads one for a 199) is
        not the final response's.
        """
        self.send()
        self.client.dataReceived(
            b"HTTP/1.1 199 Odd\r\nContent-Length: 3\r\n\r\nxyz" + OK_HI
        )
        self.assertEqual(self.receiver.kinds, ["interim", "started", "data", "ended"])
        self.assertEqual(self.receiver.body, b"hi")

    def test_interim_response_in_separate_read(self) -> None:
        """
        An interim response arriving on its own is reported alone; the
        final response that follows later is reported.
        """
        self.send()
        self.client.dataReceived(b"HTTP/1.1 100 Continue\r\n\r\n")
        self.assertEqual(self.receiver.kinds, ["interim"])
        self.client.dataReceived(OK_HI)
        self.assertEqual(self.receiver.kinds, ["interim", "started", "data", "ended"])
        self.assertEqual(self.receiver.started[0][:2], (200, b"OK"))

    def test_switching_protocols_fails(self) -> None:
        """
        A ``101 Switching Protocols`` the proxy did not ask for fails the
        exchange with `UpstreamProtocolError`.
        """
        self.send()
        self.client.dataReceived(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n"
        )
        self.assert_failed(UpstreamProtocolError)
        self.assertEqual(self.receiver.kinds, ["failed"])

    def test_status_outside_http_fails(self) -> None:
        """
        A status below 100 (llhttp reads ``000``: it would be relayed as an
        interim ``0``) or above 599 fails the exchange with
        `UpstreamProtocolError`, whatever follows.
        """
        for head in (b"HTTP/1.1 000 Continue\r\n\r\n", b"HTTP/1.1 099 Odd\r\n\r\n",
                     b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n"):
            self.setUp()
            self.send()
            self.client.dataReceived(head + OK_HI)
            self.assert_failed(UpstreamProtocolError)
            self.assertEqual(self.receiver.kinds, ["failed"], head)

    def test_garbage_fails(self) -> None:
        """
        Bytes that are not an HTTP response fail the exchange with
        `UpstreamProtocolError` and close the connection.
        """
        self.send()
        self.client.dataReceived(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        self.assert_failed(UpstreamProtocolError)
        self.assertEqual(self.receiver.kinds, ["failed"])

    def test_garbage_after_failure_ignored(self) -> None:
        """
        Once an exchange has failed, further bytes report nothing more.
        """
        self.send()
        self.client.dataReceived(b"garbage\r\n\r\n")
        self.client.dataReceived(b"more garbage")
        self.client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.receiver.kinds, ["failed"])

    def test_bad_chunk_size_fails(self) -> None:
        """
        A malformed chunk size fails the exchange after its head was
        reported.
        """
        self.send()
        self.client.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n"
        )
        self.assert_failed(UpstreamProtocolError)
        self.assertEqual(self.receiver.kinds, ["started", "failed"])

    def test_length_and_chunked_fails(self) -> None:
        """
        A response with both ``Content-Length`` and ``Transfer-Encoding``
        is ambiguous (request smuggling) and fails the exchange.
        """
        self.send()
        self.client.dataReceived(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        self.assert_failed(UpstreamProtocolError)
        self.assertEqual(self.receiver.body, b"")

    def test_lost_before_response(self) -> None:
        """
        A connection closed before any response byte fails the exchange
        with `UpstreamConnectionLost`, a `TwistProxyError`.
        """
        self.send()
        self.client.connectionLost(Failure(ConnectionDone()))
        reason = self.assert_failed(UpstreamConnectionLost)
        self.assertIsInstance(reason.value, TwistProxyError)
        self.assertEqual(self.receiver.kinds, ["failed"])

    def test_reset_during_response_head(self) -> None:
        """
        A connection reset while the response head is incomplete fails the
        exchange with `UpstreamConnectionLost`.
        """
        self.send()
        self.client.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Le")
        self.client.connectionLost(Failure(ConnectionLost()))
        self.assert_failed(UpstreamConnectionLost)
        self.assertEqual(self.receiver.kinds, ["failed"])

    def test_lost_mid_body(self) -> None:
        """
        A connection lost before a ``Content-Length`` body is complete fails
        the exchange; it does not end it.
        """
        self.send()
        self.client.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        self.client.connectionLost(Failure(ConnectionDone()))
        self.assert_failed(UpstreamConnectionLost)
        self.assertEqual(self.receiver.kinds, ["started", "data", "failed"])
        self.assertEqual(self.receiver.body, b"hello")

    def test_lost_mid_chunked_body(self) -> None:
        """
        A connection lost before the last chunk fails the exchange.
        """
        self.send()
        self.client.dataReceived(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n"
        )
        self.client.connectionLost(Failure(ConnectionDone()))
        self.assert_failed(UpstreamConnectionLost)
        self.assertEqual(self.receiver.kinds, ["started", "data", "failed"])

    def test_data_while_idle_aborts(self) -> None:
        """
        Bytes arriving when no exchange is in progress are a response nobody
        asked for: the connection is aborted.
        """
        self.client.dataReceived(OK_HI)
        self.assertTrue(self.transport.disconnected)

    def test_abandon(self) -> None:
        """
        `ProxyClient.abandon` aborts the connection, and the receiver hears
        nothing more about the exchange: not its response, not the loss.
        """
        self.send()
        self.client.abandon()
        self.assertTrue(self.transport.disconnected)
        self.client.dataReceived(OK_HI)
        self.client.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.receiver.events, [])

    def test_abandon_mid_body(self) -> None:
        """
        After `ProxyClient.abandon` during a body, the rest of the body is
        not reported.
        """
        self.send()
        self.client.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab")
        self.client.abandon()
        self.client.dataReceived(b"cd")
        self.client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.receiver.kinds, ["started", "data"])
        self.assertEqual(self.receiver.body, b"ab")

    def test_abandon_from_response_started(self) -> None:
        """
        A receiver may abandon the exchange while its head is reported, even
        for HEAD; it hears nothing after that.
        """
        client = self.client

        class Abandoning(RecordingReceiver):
            def response_started(self, *args: object) -> None:
                super().response_started(*args)  # type: ignore[arg-type]
                client.abandon()

        receiver = Abandoning()
        client.send(receiver, [HEAD_REQUEST], method=b"HEAD")
        client.dataReceived(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n")
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(receiver.kinds, ["started"])
        self.assertTrue(self.transport.disconnected)

    def test_peer(self) -> None:
        """
        `ProxyClient.peer` is the transport's peer address.
        """
        self.assertEqual(self.client.peer, PEER)
        self.assertIsNone(ProxyClient(KEY).peer)

    def test_no_delay(self) -> None:
        """
        A new connection turns Nagle's algorithm off when the transport
        allows it.
        """
        calls: list[bool] = []

        class TCPTransport(StringTransport):
            def setTcpNoDelay(self, enabled: bool) -> None:
                calls.append(enabled)

        ProxyClient(KEY).makeConnection(TCPTransport())
        self.assertEqual(calls, [True])


class ProxyClientFactoryTests(SynchronousTestCase):
    """
    Tests for `ProxyClientFactory`.
    """

    def test_build_protocol(self) -> None:
        """
        The factory builds a `ProxyClient` for its key, attached to the
        factory.
        """
        pool = ConnectionPool(reactor=MemoryReactorClock(), endpoint_factory=FakeEndpointFactory())
        factory = ProxyClientFactory(pool, KEY)
        client = factory.buildProtocol(PEER)
        self.assertIsInstance(client, ProxyClient)
        self.assertEqual(client.key, KEY)
        self.assertIs(client.factory, factory)
        self.assertIsNone(client.father)
        self.assertFalse(client.reused)


class ConnectionPoolTests(SynchronousTestCase):
    """
    Tests for `ConnectionPool` and how `ProxyClient` returns to it.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.endpoints = FakeEndpointFactory(
            errors={
                ("http", "refused.example", 80): ConnectionRefusedError(),
                ("http", "nx.example", 80): DNSLookupError("nx.example"),
                ("https", "slow.example", 443): TimeoutError(),
            }
        )
        self.pool = ConnectionPool(
            reactor=self.reactor,
            endpoint_factory=self.endpoints,
            max_idle_per_host=2,
            idle_timeout=30.0,
        )
        self.disconnected: list[ProxyClient] = []
        self.pool.on_disconnect = self.disconnected.append

    def connect(self, key: PoolKey = KEY) -> ProxyClient:
        """A new connection from the pool."""
        return self.successResultOf(self.pool.connect(key))

    def exchange(
        self, client: ProxyClient, response: bytes = OK_HI, head: bool = False
    ) -> RecordingReceiver:
        """Run one exchange on *client*, the server answering *response*."""
        receiver = RecordingReceiver()
        client.send(
            receiver, [HEAD_REQUEST if head else REQUEST], method=b"HEAD" if head else b"GET"
        )
        client.dataReceived(response)
        return receiver

    def test_connect(self) -> None:
        """
        `ConnectionPool.connect` asks the endpoint factory for the key's
        scheme, host and port and fires with a connected `ProxyClient`
        carrying a `Server` record stamped with the reactor's time.
        """
        self.reactor.advance(12.5)
        client = self.connect(PoolKey("http", "example.com", 8443))
        self.assertEqual(self.endpoints.requested, [("http", "example.com", 8443)])
        self.assertIsInstance(client, ProxyClient)
        self.assertEqual(client.key, PoolKey("http", "example.com", 8443))
        server = client.server
        assert server is not None
        self.assertEqual(server.address, ("example.com", 8443))
        self.assertEqual(server.peername, ("203.0.113.5", 80))
        self.assertEqual(server.sockname, ("10.1.2.3", 40000))
        self.assertEqual(server.timestamp_start, 12.5)
        self.assertIsNone(server.timestamp_end)
        self.assertEqual(self.pool.idle_count(), 0)

    def test_connect_https(self) -> None:
        """
        For ``https`` the connection's protocol sits on a ``ClientTLS`` with
        the key's server name, which sends its ClientHello as soon as the
        TCP connection is made; the record has the TCP connection's
        addresses, and no TLS facts before the handshake.
        """
        client = self.connect(PoolKey("https", "example.com", 443, "sni.example"))
        self.assertIsInstance(client, ProxyClient)
        tls = client.transport
        self.assertIsInstance(tls, ClientTLS)
        self.assertIs(tls.inner, client)
        self.assertEqual(tls.getHandle().server_hostname, "sni.example")
        self.assertEqual(tls.transport.value()[:1], b"\x16")  # a handshake record
        server = client.server
        assert server is not None
        self.assertEqual(server.peername, ("203.0.113.5", 80))
        self.assertFalse(server.tls_established)

    def test_connect_refused(self) -> None:
        """
        A refused connection fails with `UpstreamConnectFailed`.
        """
        failure = self.failureResultOf(
            self.pool.connect(PoolKey("http", "refused.example", 80)), UpstreamConnectFailed
        )
        self.assertNotIsInstance(failure.value, UpstreamNameNotResolved)

    def test_connect_name_not_resolved(self) -> None:
        """
        A DNS failure fails with `UpstreamNameNotResolved`.
        """
        self.failureResultOf(
            self.pool.connect(PoolKey("http", "nx.example", 80)), UpstreamNameNotResolved
        )

    def test_connect_timeout(self) -> None:
        """
        A connect timeout fails with `UpstreamTimeout`.
        """
        self.failureResultOf(
            self.pool.connect(PoolKey("https", "slow.example", 443)), UpstreamTimeout
        )

    def test_released_connection_reused(self) -> None:
        """
        A keep-alive connection whose exchange ended waits in the pool and
        is handed out again by `take_idle`, once.
        """
        client = self.connect()
        receiver = self.exchange(client)
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertFalse(transport_of(client).disconnected)
        self.assertTrue(client.reused)
        self.assertEqual(self.pool.idle_count(KEY), 1)
        self.assertIs(self.pool.take_idle(KEY), client)
        self.assertIsNone(self.pool.take_idle(KEY))
        self.assertEqual(self.pool.idle_count(), 0)

    def test_reuse_only_same_key(self) -> None:
        """
        An idle connection is only handed out for its own key.
        """
        client = self.connect()
        self.exchange(client)
        self.assertIsNone(self.pool.take_idle(OTHER_KEY))
        self.assertIsNone(self.pool.take_idle(PoolKey("https", "example.com", 80)))
        self.assertIsNone(self.pool.take_idle(PoolKey("http", "example.com", 8080)))
        self.assertEqual(self.pool.idle_count(OTHER_KEY), 0)
        self.assertIs(self.pool.take_idle(KEY), client)

    def test_most_recent_taken_first(self) -> None:
        """
        With several idle connections for a key, the one released last is
        taken first.
        """
        first, second = self.connect(), self.connect()
        self.exchange(first)
        self.exchange(second)
        self.assertIs(self.pool.take_idle(KEY), second)
        self.assertIs(self.pool.take_idle(KEY), first)

    def test_reused_connection_carries_next_exchange(self) -> None:
        """
        A connection taken from the pool parses its next response from a
        clean state.
        """
        client = self.connect()
        self.exchange(client, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n")
        self.assertIs(self.pool.take_idle(KEY), client)
        receiver = self.exchange(client, b"HTTP/1.1 404 Nope\r\nContent-Length: 1\r\n\r\nx")
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertEqual(receiver.started[0][:2], (404, b"Nope"))
        self.assertEqual(receiver.body, b"x")

    def test_reason_not_carried_to_next_exchange(self) -> None:
        """
        A response without a reason phrase on a reused connection is
        reported with an empty reason, not the previous response's.
        """
        client = self.connect()
        self.exchange(client, b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
        self.assertIs(self.pool.take_idle(KEY), client)
        receiver = self.exchange(client, b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(receiver.started[0][:2], (200, b""))

    def test_head_then_next_exchange(self) -> None:
        """
        A response to HEAD with a ``Content-Length`` but no body ends at its
        headers, and the next exchange on the same connection is parsed
        correctly.
        """
        client = self.connect()
        head = self.exchange(client, b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n", head=True)
        self.assertEqual(head.kinds, ["started", "ended"])
        self.assertIs(self.pool.take_idle(KEY), client)
        receiver = self.exchange(client, b"HTTP/1.1 200 Fine\r\nContent-Length: 3\r\n\r\nabc")
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertEqual(receiver.started[0][:2], (200, b"Fine"))
        self.assertEqual(receiver.body, b"abc")
        self.assertEqual(self.pool.idle_count(KEY), 1)

    def test_head_response_followed_by_body_not_reused(self) -> None:
        """
        A response to HEAD followed by body bytes the server should not have
        sent still ends at its headers, but the connection is not reused.
        """
        client = self.connect()
        head = self.exchange(client, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc", head=True)
        self.assertEqual(head.kinds, ["started", "ended"])
        self.assertTrue(transport_of(client).disconnected)
        self.assertIsNone(self.pool.take_idle(KEY))

    def test_bodiless_statuses_then_next_exchange(self) -> None:
        """
        204 and 304 responses end at their headers and leave the connection
        ready for the next exchange.
        """
        client = self.connect()
        for response in (
            b"HTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
        ):
            with self.subTest(response=response):
                receiver = self.exchange(client, response)
                self.assertEqual(receiver.kinds, ["started", "ended"])
                self.assertIs(self.pool.take_idle(KEY), client)
        receiver = self.exchange(client, OK_HI)
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertEqual(receiver.body, b"hi")

    def test_not_reused_after_connection_close(self) -> None:
        """
        A connection whose response said ``Connection: close`` is closed,
        not pooled.
        """
        client = self.connect()
        receiver = self.exchange(
            client, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nhi"
        )
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertTrue(transport_of(client).disconnected)
        self.assertIsNone(self.pool.take_idle(KEY))

    def test_not_reused_after_close_delimited_body(self) -> None:
        """
        A connection whose body ended with the connection is not pooled.
        """
        client = self.connect()
        receiver = self.exchange(client, b"HTTP/1.1 200 OK\r\n\r\nabc")
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertIsNone(self.pool.take_idle(KEY))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_not_reused_after_http_10(self) -> None:
        """
        A connection that carried an HTTP/1.0 response (no keep-alive) is
        closed, not pooled.
        """
        client = self.connect()
        receiver = self.exchange(client, b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nhi")
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertEqual(receiver.started[0][2], b"HTTP/1.0")
        self.assertTrue(transport_of(client).disconnected)
        self.assertIsNone(self.pool.take_idle(KEY))

    def test_reused_after_http_10_keep_alive(self) -> None:
        """
        An HTTP/1.0 response that asks for keep-alive and has a length
        leaves a reusable connection.
        """
        client = self.connect()
        self.exchange(
            client, b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nhi"
        )
        self.assertIs(self.pool.take_idle(KEY), client)

    def test_not_reused_before_request_sent(self) -> None:
        """
        A connection whose response ended before the streamed request body
        was finished is closed, not pooled.
        """
        client = self.connect()
        receiver = RecordingReceiver()
        client.send(
            receiver,
            [b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\n"],
            method=b"POST",
            complete=False,
        )
        client.dataReceived(b"HTTP/1.1 413 Too Large\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(receiver.kinds, ["started", "ended"])
        self.assertTrue(transport_of(client).disconnected)
        self.assertIsNone(self.pool.take_idle(KEY))

    def test_reused_after_streamed_request(self) -> None:
        """
        A streamed request whose body was finished leaves a reusable
        connection.
        """
        client = self.connect()
        receiver = RecordingReceiver()
        client.send(
            receiver,
            [b"POST / HTTP/1.1\r\nContent-Length: 2\r\n\r\n"],
            method=b"POST",
            complete=False,
        )
        client.end_body([b"ab"])
        client.dataReceived(OK_HI)
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertIs(self.pool.take_idle(KEY), client)

    def test_per_host_cap(self) -> None:
        """
        A connection released when its key already has
        ``max_idle_per_host`` idle ones is closed; other keys are not
        affected.
        """
        clients = [self.connect() for _ in range(3)]
        other = self.connect(OTHER_KEY)
        for client in clients:
            self.assertEqual(self.exchange(client).kinds, ["started", "data", "ended"])
        self.exchange(other)
        self.assertEqual(self.pool.idle_count(KEY), 2)
        self.assertEqual(self.pool.idle_count(OTHER_KEY), 1)
        self.assertEqual(self.pool.idle_count(), 3)
        self.assertEqual([transport_of(c).disconnected for c in clients], [False, False, True])
        self.assertEqual({self.pool.take_idle(KEY), self.pool.take_idle(KEY)}, set(clients[:2]))

    def test_idle_timeout(self) -> None:
        """
        An idle connection is aborted and forgotten once it has waited
        ``idle_timeout`` seconds.
        """
        client = self.connect()
        self.exchange(client)
        self.reactor.advance(29.9)
        self.assertFalse(transport_of(client).disconnected)
        self.assertEqual(self.pool.idle_count(KEY), 1)
        self.reactor.advance(0.1)
        self.assertTrue(transport_of(client).disconnected)
        self.assertEqual(self.pool.idle_count(), 0)
        self.assertIsNone(self.pool.take_idle(KEY))

    def test_take_idle_stops_timer(self) -> None:
        """
        A connection taken from the pool is not closed by its idle timer,
        whose call, when it comes due, is not armed again.
        """
        client = self.connect()
        self.exchange(client)
        self.assertIs(self.pool.take_idle(KEY), client)
        self.reactor.advance(60)
        self.assertFalse(transport_of(client).disconnected)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_idle_timer_restarts_on_release(self) -> None:
        """
        The idle timeout counts from the latest release, not the first.
        """
        client = self.connect()
        self.exchange(client)
        self.reactor.advance(20)
        self.assertIs(self.pool.take_idle(KEY), client)
        self.exchange(client)
        self.reactor.advance(20)
        self.assertFalse(transport_of(client).disconnected)
        self.assertIs(self.pool.take_idle(KEY), client)

    def test_server_closes_idle_connection(self) -> None:
        """
        An idle connection the server closes leaves the pool, and its idle
        timer is cancelled.
        """
        client = self.connect()
        self.exchange(client)
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.pool.idle_count(), 0)
        self.assertIsNone(self.pool.take_idle(KEY))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_data_on_idle_connection(self) -> None:
        """
        Bytes arriving on an idle pooled connection abort it and remove it
        from the pool.
        """
        client = self.connect()
        self.exchange(client)
        client.dataReceived(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        self.assertTrue(transport_of(client).disconnected)
        self.assertIsNone(self.pool.take_idle(KEY))
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_bytes_after_response_in_same_read(self) -> None:
        """
        Bytes the server sends after a complete response, in the same read,
        are a response nobody asked for: the exchange still ends once, the
        connection is aborted and not pooled, and nothing is raised.
        """
        client = self.connect()
        receiver = self.exchange(client, OK_HI + b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertTrue(transport_of(client).disconnected)
        self.assertIsNone(self.pool.take_idle(KEY))

    def test_partial_head_after_response_in_same_read(self) -> None:
        """
        The start of an unasked-for response after a complete one, in the
        same read, means the connection cannot carry another exchange: it is
        aborted and not pooled, so the stale bytes cannot corrupt the next
        exchange's response.
        """
        client = self.connect()
        receiver = self.exchange(client, OK_HI + b"HTTP/1.1 2")
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertTrue(transport_of(client).disconnected)
        self.assertIsNone(self.pool.take_idle(KEY))

    def test_garbage_after_response_in_same_read(self) -> None:
        """
        Garbage after a complete response, in the same read, aborts the
        connection without reporting anything more.
        """
        client = self.connect()
        receiver = self.exchange(client, OK_HI + b"\x00\x01garbage\r\n\r\n")
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertTrue(transport_of(client).disconnected)
        self.assertIsNone(self.pool.take_idle(KEY))

    def test_close(self) -> None:
        """
        `ConnectionPool.close` aborts every idle connection, of every key,
        and forgets them.
        """
        clients = [self.connect(), self.connect(), self.connect(OTHER_KEY)]
        for client in clients:
            self.exchange(client)
        self.assertEqual(self.pool.idle_count(), 3)
        self.pool.close()
        self.assertEqual([transport_of(c).disconnected for c in clients], [True, True, True])
        self.assertEqual(self.pool.idle_count(), 0)
        self.assertEqual(self.reactor.getDelayedCalls(), [])

    def test_close_leaves_busy_connections(self) -> None:
        """
        `ConnectionPool.close` does not touch a connection carrying an
        exchange.
        """
        busy = self.connect()
        receiver = RecordingReceiver()
        busy.send(receiver, [REQUEST], method=b"GET")
        self.pool.close()
        self.assertFalse(transport_of(busy).disconnected)
        busy.dataReceived(OK_HI)
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])

    def test_on_disconnect(self) -> None:
        """
        Each connection with a server record that closes is reported once
        to `on_disconnect`, with its end time stamped from the reactor.
        """
        first, second = self.connect(), self.connect()
        self.exchange(first)
        self.reactor.advance(5)
        first.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.disconnected, [first])
        assert first.server is not None
        self.assertEqual(first.server.timestamp_end, 5)
        self.reactor.advance(2)
        second.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.disconnected, [first, second])
        assert second.server is not None
        self.assertEqual(second.server.timestamp_end, 7)

    def test_on_disconnect_once(self) -> None:
        """
        A connection is reported to `on_disconnect` only once, and its end
        time is not moved, however often the pool hears it closed.
        """
        client = self.connect()
        self.reactor.advance(1)
        client.connectionLost(Failure(ConnectionDone()))
        self.reactor.advance(1)
        self.pool.disconnected(client)
        self.assertEqual(self.disconnected, [client])
        assert client.server is not None
        self.assertEqual(client.server.timestamp_end, 1)

    def test_on_disconnect_after_idle_timeout(self) -> None:
        """
        A connection closed by its idle timeout is reported when its
        transport reports the loss.
        """
        client = self.connect()
        self.exchange(client)
        self.reactor.advance(30)
        self.assertEqual(self.disconnected, [])
        client.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.disconnected, [client])

    def test_on_disconnect_needs_server_record(self) -> None:
        """
        A connection that never got a server record is not reported.
        """
        client = ProxyClientFactory(self.pool, KEY).buildProtocol(PEER)
        client.makeConnection(StringTransport())
        client.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.disconnected, [])


class AdoptTests(SynchronousTestCase):
    """
    Tests for `ConnectionPool.adopt`: a connection a ``CONNECT`` opened is
    kept as an idle connection of the pool.
    """

    def setUp(self) -> None:
        self.reactor = MemoryReactorClock()
        self.pool = ConnectionPool(reactor=self.reactor, endpoint_factory=FakeEndpointFactory())
        self.disconnected: list[ProxyClient] = []
        self.pool.on_disconnect = self.disconnected.append

    def relay(self, transport: StringTransport | None = None) -> Relay:
        """An unjoined relay (a CONNECT's origin side) with its record."""
        relay = Relay()
        relay.makeConnection(transport if transport is not None else StringTransport(
            hostAddress=LOCAL, peerAddress=PEER))
        relay.server = Server(address=("example.com", 80), timestamp_start=1.0)
        return relay

    def test_plain_connection_kept_idle(self) -> None:
        """
        An ``http`` connection is idle in the pool for its key, keeps the
        CONNECT's record, and carries the next exchange for that key: the
        origin's bytes reach the new protocol, not the relay.
        """
        relay = self.relay()
        adopted = self.pool.adopt(KEY, relay)
        self.assertEqual(self.pool.idle_count(KEY), 1)
        client = self.pool.take_idle(KEY)
        self.assertIs(client, adopted)
        assert client is not None
        self.assertIs(client.server, relay.server)
        self.assertIs(client.transport, relay.transport)
        receiver = RecordingReceiver()
        client.send(receiver, [REQUEST], method=b"GET")
        self.assertEqual(transport_of(client).value(), REQUEST)
        relay.dataReceived(OK_HI)  # a TCP transport still delivers to the relay
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])
        self.assertEqual(receiver.body, b"hi")

    def test_adopted_cap(self) -> None:
        """
        Adopted connections are kept while their key has fewer than
        ``max_idle_adopted`` idle ones (a tunnel per request must not fill
        the pool up to ``max_idle_per_host``); the pool's own connections
        still go up to ``max_idle_per_host``.
        """
        self.pool.max_idle_per_host, self.pool.max_idle_adopted = 5, 2
        transports = [StringTransport(hostAddress=LOCAL, peerAddress=PEER) for _ in range(3)]
        adopted = [self.pool.adopt(KEY, self.relay(t)) for t in transports]
        self.assertEqual(self.pool.idle_count(KEY), 2)
        # The third is closed as it comes (no TLS, no protocol built for it).
        self.assertIsNone(adopted[2])
        self.assertEqual([t.disconnecting for t in transports], [False, False, True])
        # Used and given back, an adopted connection is still capped at 2.
        client = self.pool.take_idle(KEY)
        assert client is not None and client.adopted
        self.pool.adopt(KEY, self.relay())
        self.pool.release(client)
        self.assertEqual(self.pool.idle_count(KEY), 2)
        self.assertTrue(transport_of(client).disconnected)

    def test_counts_as_reused(self) -> None:
        """
        The adopted connection waited idle, as a kept-alive one does: it
        counts as reused, so a request it loses before any answer may be
        sent again on a new connection (the retry rule).
        """
        client = self.pool.adopt(KEY, self.relay())
        assert client is not None
        self.assertTrue(client.reused)

    def test_end_reaches_the_pool(self) -> None:
        """
        The adopted connection's end is the pool's to see (it leaves the
        pool, ``server_disconnected`` runs), as for a connection it made.
        """
        relay = self.relay()
        client = self.pool.adopt(KEY, relay)
        relay.connectionLost(Failure(ConnectionDone()))
        self.assertEqual(self.pool.idle_count(), 0)
        self.assertEqual(self.disconnected, [client])

    def test_half_close_closes(self) -> None:
        """The origin closing its side of an adopted connection closes it."""
        relay = self.relay()
        self.pool.adopt(KEY, relay)
        relay.readConnectionLost()
        self.assertTrue(relay.transport.disconnecting)

    def test_https_puts_tls_under_the_client(self) -> None:
        """
        For ``https``, a ``ClientTLS`` with the key's server name goes between
        the connection and the new protocol, and sends its ClientHello at
        once; the connection is idle in the pool for the key.
        """
        relay = self.relay()
        key = PoolKey("https", "example.com", 443, "sni.example")
        client = self.pool.adopt(key, relay)
        assert client is not None
        self.assertIsInstance(client.transport, ClientTLS)
        self.assertIs(client.transport.transport, relay.transport)
        self.assertEqual(client.transport.getHandle().server_hostname, "sni.example")
        self.assertEqual(transport_of(relay).value()[:1], b"\x16")  # a handshake record
        self.assertEqual(self.pool.idle_count(key), 1)

    def test_https_handshake_recorded(self) -> None:
        """
        The handshake of an adopted ``https`` connection (with a real origin,
        in memory) completes and its facts go on the CONNECT's record; the
        exchange then goes through TLS.
        """
        ca = make_ca("adopt test CA")
        ca_file = write_temp_file(self, ca[0].public_bytes(Encoding.PEM), "ca.pem")
        self.pool.tls = UpstreamTLS(ca_file=ca_file)
        relays: list[Relay] = []

        def relay_for(app: object) -> Relay:
            relays.append(Relay())
            return relays[-1]

        connection = connect_tls(
            server_creator=OriginTLS(make_leaf(ca, ["localhost"])), client_tls=relay_for
        )
        [relay] = relays
        relay.server = Server(address=("localhost", 443), timestamp_start=1.0)
        key = PoolKey("https", "localhost", 443, "localhost")
        client = self.pool.adopt(key, relay)
        assert client is not None
        connection.pump.flush()
        self.assertTrue(client.tls_done)
        self.assertTrue(relay.server.tls_established)
        self.assertEqual(relay.server.sni, "localhost")
        self.assertIs(self.pool.take_idle(key), client)
        receiver = RecordingReceiver()
        client.send(receiver, [REQUEST], method=b"GET")
        connection.pump.flush()
        self.assertEqual(connection.server_app.data(), REQUEST)
        connection.server_app.transport.write(OK_HI)
        connection.pump.flush()
        self.assertEqual(receiver.kinds, ["started", "data", "ended"])

    def test_origin_spoke_first_closed(self) -> None:
        """A connection on which the origin sent bytes nobody asked for is closed."""
        relay = self.relay()
        relay.dataReceived(b"220 smtp.example ESMTP\r\n")
        self.assertIsNone(self.pool.adopt(KEY, relay))
        self.assertTrue(relay.transport.disconnecting)
        self.assertEqual(self.pool.idle_count(), 0)

    def test_closed_connection_not_kept(self) -> None:
        """A connection that already ended is not kept."""
        relay = self.relay()
        relay.connectionLost(Failure(ConnectionDone()))
        self.assertIsNone(self.pool.adopt(KEY, relay))
        self.assertEqual(self.pool.idle_count(), 0)


class ServerTLSTests(SynchronousTestCase):
    """
    Tests for the TLS facts a `ProxyClient` records on its `Server` record
    when the handshake completes (``IHandshakeListener``), over a real TLS
    connection in memory.
    """

    def setUp(self) -> None:
        ca = make_ca("client test CA")
        self.leaf = make_leaf(ca, ["localhost", "127.0.0.1"])
        ca_file = write_temp_file(self, ca[0].public_bytes(Encoding.PEM), "ca.pem")
        self.pool = ConnectionPool(reactor=MemoryReactorClock(),
                                   endpoint_factory=FakeEndpointFactory(),
                                   tls=UpstreamTLS(ca_file=ca_file))

    def handshake(self, name: str) -> ProxyClient:
        """A client on a TLS connection to an origin called *name*, handshake done."""
        connection = connect_tls(
            server_creator=OriginTLS(self.leaf),
            client_tls=lambda app: self.pool.tls.client(name, app),
        )
        self.assertTrue(connection.client_app.handshake_done)
        client = ProxyClient(PoolKey("https", name, 443, name))
        client.transport = connection.client
        return client

    def test_recorded_at_handshake(self) -> None:
        """
        With its record made first (the usual order), the handshake puts
        on it: TLS up, the SNI sent, ALPN, the version and the origin's
        certificate.
        """
        self.assertTrue(IHandshakeListener.implementedBy(ProxyClient))
        client = self.handshake("localhost")
        server = client.server = Server()
        client.handshakeCompleted()
        self.assertTrue(server.tls_established)
        self.assertEqual((server.sni, server.alpn), ("localhost", b"http/1.1"))
        self.assertIn(server.tls_version, ("TLSv1.2", "TLSv1.3"))
        certificate = server.certificate
        assert certificate is not None
        self.assertEqual(certificate.subject, "CN=localhost")
        self.assertEqual(certificate.issuer, "CN=client test CA")
        self.assertEqual(certificate.dns_names, ("localhost",))
        self.assertEqual(certificate.ip_addresses, ("127.0.0.1",))
        self.assertEqual(int(certificate.serial, 16), self.leaf.certificate.serial_number)

    def test_recorded_when_record_made_after(self) -> None:
        """
        A handshake over before the connection has its record leaves the
        facts for the record the pool makes (``_record``); an IP address
        gets no SNI.
        """
        client = self.handshake("127.0.0.1")
        client.handshakeCompleted()
        self.assertIsNone(client.server)
        self.pool._record(client)
        server = client.server
        assert server is not None
        self.assertTrue(server.tls_established)
        self.assertIsNone(server.sni)
        assert server.certificate is not None
        self.assertEqual(server.certificate.subject, "CN=localhost")

    def test_nothing_without_tls(self) -> None:
        """A connection without TLS keeps a record without TLS facts."""
        client = ProxyClient(KEY)
        client.makeConnection(StringTransport())
        self.pool._record(client)
        assert client.server is not None
        self.assertFalse(client.server.tls_established)
        self.assertIsNone(client.server.certificate)
