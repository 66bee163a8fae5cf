"""
Tests for :mod:`twistproxy._upstream_proxy`: the credentials, the pool's
keys and endpoints in upstream mode, and the ``CONNECT`` handshake with a
fake transport and clock.
"""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from tests.fakes import FakeEndpointFactory, Recorder
from twistproxy._framing import NO_BODY
from twistproxy._headers import request_head
from twistproxy._upstream_proxy import (
    TunnelEndpoint,
    UpstreamPool,
    UpstreamProxy,
    basic_authorization,
    check_upstream_auth,
    connect_request,
    make_pool,
)
from twistproxy.client import PoolKey
from twistproxy.errors import (
    UpstreamConnectFailed,
    UpstreamConnectionLost,
    UpstreamProxyRefused,
    UpstreamTimeout,
    error_status,
)
from twistproxy.http import Request
from twistproxy.modes import REGULAR, parse_mode
from twistproxy.pool import ConnectionPool

PROXY = UpstreamProxy("http", "proxy.test", 3128, basic_authorization("u:p"))


class CredentialsTests(SynchronousTestCase):
    """``USER:PASS`` as ``Proxy-Authorization`` and the option's checks."""

    def test_basic(self) -> None:
        """Basic, base64 of the UTF-8 text; a password may hold colons."""
        self.assertEqual(basic_authorization("u:p"), b"Basic dTpw")
        self.assertEqual(basic_authorization("ü:a:b"), b"Basic w7w6YTpi")

    def test_bad(self) -> None:
        """No colon, no user, or a control character: refused with a message."""
        for text in ("nocolon", ":pw", "u:p\r\nX: y"):
            with self.assertRaises(ValueError):
                basic_authorization(text)

    def test_check(self) -> None:
        """--upstream-auth needs an upstream listener."""
        check_upstream_auth(None, [REGULAR])
        check_upstream_auth("u:p", [REGULAR, parse_mode("upstream:http://p:1@9")])
        with self.assertRaisesRegex(ValueError, "needs a --mode upstream"):
            check_upstream_auth("u:p", [REGULAR])

    def test_connect_request(self) -> None:
        """The CONNECT names host:port (IPv6 in brackets), in Host too, with the fields."""
        self.assertEqual(
            connect_request("::1", 443, PROXY.fields),
            b"CONNECT [::1]:443 HTTP/1.1\r\nHost: [::1]:443\r\n"
            b"Proxy-Authorization: Basic dTpw\r\n\r\n")


class PoolTests(SynchronousTestCase):
    """Which connection a request goes on, and how it is made."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoints = FakeEndpointFactory()
        self.pool = UpstreamPool(PROXY, reactor=self.clock, endpoint_factory=self.endpoints)

    def test_keys(self) -> None:
        """
        Plain http outside a tunnel shares the connections to the proxy;
        https, and http inside a tunnel, are keyed by origin as usual.
        """
        key = self.pool.key_for("http", "a.test", 80)
        self.assertEqual(key, PoolKey("http", "proxy.test", 3128, None, proxy=True))
        self.assertEqual(self.pool.key_for("http", "b.test", 8080), key)
        self.assertNotEqual(key, PoolKey("http", "proxy.test", 3128))
        self.assertEqual(self.pool.key_for("http", "a.test", 80, tunnel=True),
                         PoolKey("http", "a.test", 80))
        self.assertEqual(self.pool.key_for("https", "a.test", 443, "a.test"),
                         PoolKey("https", "a.test", 443, "a.test"))
        self.assertEqual(self.pool.proxy_fields(key), PROXY.fields)
        self.assertIsNone(self.pool.proxy_fields(PoolKey("https", "a.test", 443)))
        https = UpstreamPool(UpstreamProxy("https", "p.test", 8443), reactor=self.clock,
                             endpoint_factory=self.endpoints)
        self.assertEqual(https.key_for("http", "a.test", 80),
                         PoolKey("https", "p.test", 8443, "p.test", proxy=True))

    def test_absolute_form(self) -> None:
        """A request to the proxy goes in absolute form with its credentials."""
        request = Request.make("GET", "http://a.test:8080/x?y=1", headers={"Host": "a.test:8080"})
        head = request_head(request, NO_BODY, None, proxy=PROXY.fields)
        self.assertEqual(head, b"GET http://a.test:8080/x?y=1 HTTP/1.1\r\nHost: a.test:8080\r\n"
                               b"Proxy-Authorization: Basic dTpw\r\n\r\n")
        self.assertTrue(request_head(request, NO_BODY, None).startswith(b"GET /x?y=1 HTTP/1.1"))

    def test_connect_to_the_proxy(self) -> None:
        """A key to the proxy connects to it directly, and records it as the address."""
        d = self.pool.connect(self.pool.key_for("http", "a.test", 80))
        client = self.successResultOf(d)
        self.assertEqual(self.endpoints.requested, [("http", "proxy.test", 3128)])
        self.assertEqual(client.server.address, ("proxy.test", 3128))

    def test_tunnel(self) -> None:
        """
        Any other key is a CONNECT to the proxy: after its 200 the
        connection is the pool's protocol's, the bytes behind the answer
        its first, and its record names the proxy.
        """
        d = self.pool.connect(PoolKey("http", "a.test", 80))
        [(handshake, transport)] = self.endpoints.connections
        self.assertEqual(self.endpoints.requested, [("tcp", "proxy.test", 3128)])
        self.assertEqual(transport.value(), connect_request("a.test", 80, PROXY.fields))
        self.assertNoResult(d)
        handshake.dataReceived(b"HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.1 2")
        client = self.successResultOf(d)
        self.assertIs(client.transport, transport)
        self.assertEqual(client.server.address, ("proxy.test", 3128))
        handshake.dataReceived(b"more")  # passed on: the client owes nobody a response
        self.assertTrue(transport.disconnecting)

    def test_make_pool(self) -> None:
        """A regular listener's pool is the usual one; upstream_auth needs upstream mode."""
        kwargs = {"reactor": self.clock, "endpoint_factory": self.endpoints,
                  "connect_timeout": 1.0}
        pool = make_pool(None, REGULAR, None, **kwargs)  # type: ignore[arg-type]
        self.assertIs(type(pool), ConnectionPool)
        self.assertIsNone(pool.proxy)
        with self.assertRaisesRegex(ValueError, "upstream_auth is for an upstream mode"):
            make_pool(None, REGULAR, "u:p", **kwargs)  # type: ignore[arg-type]
        mode = parse_mode("upstream:http://proxy.test:3128")
        with self.assertRaisesRegex(ValueError, "upstream_auth must be USER:PASS"):
            make_pool(None, mode, "nope", **kwargs)  # type: ignore[arg-type]
        with self.assertRaisesRegex(ValueError, "does not go through"):
            make_pool(pool, mode, None, **kwargs)  # type: ignore[arg-type]
        self.assertEqual(make_pool(None, mode, "u:p", **kwargs).proxy, PROXY)  # type: ignore[arg-type]


class HandshakeTests(SynchronousTestCase):
    """The CONNECT's answers, silence and cancellation."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.endpoints = FakeEndpointFactory()
        self.endpoint = TunnelEndpoint(self.endpoints("tcp", "proxy.test", 3128), PROXY,
                                       "a.test", 443, clock=self.clock, timeout=5.0)
        self.recorder = Recorder()
        self.d = self.endpoint.connect(Factory.forProtocol(lambda: self.recorder))
        [(self.handshake, self.transport)] = self.endpoints.connections

    def test_refused(self) -> None:
        """A 407 fails with the upstream's status and reason; the connection is dropped."""
        self.handshake.dataReceived(b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                                    b"Proxy-Authenticate: Basic\r\nContent-Length: 0\r\n\r\n")
        failure = self.failureResultOf(self.d, UpstreamProxyRefused)
        self.assertEqual(error_status(failure), (407, b"Proxy Authentication Required"))
        self.assertIn("refused CONNECT a.test:443: 407", str(failure.value))
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.recorder.received, [])

    def test_refused_without_reason(self) -> None:
        """A status line without a reason gets the standard phrase."""
        self.handshake.dataReceived(b"HTTP/1.1 403\r\n\r\n")
        failure = self.failureResultOf(self.d, UpstreamProxyRefused)
        self.assertEqual(error_status(failure), (403, b"Forbidden"))

    def test_not_http(self) -> None:
        """An answer that is not HTTP is a 502."""
        self.handshake.dataReceived(b"SSH-2.0-OpenSSH\r\n\r\n")
        failure = self.failureResultOf(self.d)
        self.assertEqual(error_status(failure)[0], 502)

    def test_silent(self) -> None:
        """No answer within the timeout: 504, naming the proxy."""
        self.clock.advance(5.0)
        failure = self.failureResultOf(self.d, UpstreamTimeout)
        self.assertIn("upstream proxy http://proxy.test:3128 did not answer", str(failure.value))

    def test_closed(self) -> None:
        """The proxy hangs up before answering: 502."""
        self.handshake.connectionLost(Failure(ConnectionError("gone")))
        self.failureResultOf(self.d, UpstreamConnectionLost)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_cancel(self) -> None:
        """Cancelling drops the connection and stops the clock."""
        self.d.cancel()
        self.failureResultOf(self.d, CancelledError)
        self.assertTrue(self.transport.disconnecting)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.handshake.dataReceived(b"HTTP/1.1 200 OK\r\n\r\n")
        self.assertEqual(self.recorder.received, [])

    def test_open_in_pieces(self) -> None:
        """The answer may come in pieces; then the protocol gets the connection."""
        self.handshake.dataReceived(b"HTTP/1.1 200 OK\r\nX: y\r\n")
        self.assertNoResult(self.d)
        self.handshake.dataReceived(b"\r\n")
        self.assertIs(self.successResultOf(self.d), self.recorder)
        self.handshake.dataReceived(b"hello")
        self.assertEqual(self.recorder.data(), b"hello")
        self.handshake.connectionLost(Failure(ConnectionError("end")))
        self.assertIsNotNone(self.recorder.reason)


class UnreachableTests(SynchronousTestCase):
    """A proxy that cannot be reached is named in the failure."""

    def test_named(self) -> None:
        """Connection refused: 502 naming the upstream proxy."""
        from twisted.internet.error import ConnectionRefusedError

        endpoints = FakeEndpointFactory()
        endpoints.fail_with = ConnectionRefusedError()
        pool = UpstreamPool(PROXY, reactor=Clock(), endpoint_factory=endpoints)
        for key in (pool.key_for("http", "a.test", 80), PoolKey("https", "a.test", 443)):
            failure = self.failureResultOf(pool.connect(key), UpstreamConnectFailed)
            self.assertEqual(str(failure.value),
                             "upstream proxy http://proxy.test:3128: connection refused")


class OptionTests(SynchronousTestCase):
    """``--upstream-auth`` on the command line: one-line errors."""

    def test_errors(self) -> None:
        """Without an upstream mode, or not USER:PASS: a usage error naming the option."""
        from twisted.python.usage import UsageError

        from twistproxy.options import Options

        for args, message in (
            (["--upstream-auth", "u:p"], "--upstream-auth needs a --mode upstream:"),
            (["--mode", "upstream:http://127.0.0.1:3128", "--upstream-auth", "nope"],
             "--upstream-auth must be USER:PASS"),
        ):
            with self.assertRaisesRegex(UsageError, message):
                Options().parseOptions(["--no-intercept", *args])
