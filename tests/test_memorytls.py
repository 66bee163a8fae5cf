"""
Tests for :mod:`twistproxy._memorytls`: :class:`ServerTLS` as the transport
of the protocol above it, with real handshakes in memory against a
pyOpenSSL client (Twisted's TLS), as a browser would make them; and
:class:`ClientTLS` against a :class:`ServerTLS` in memory.
"""

from __future__ import annotations

import ssl
from datetime import UTC, datetime
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import SSL
from OpenSSL.crypto import X509
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.fakes import Recorder, TLSConnection, connect_tls
from twistproxy._memorytls import ClientTLS, ServerTLS
from twistproxy._tls import ServerContexts
from twistproxy.certs import CertificateAuthority, CertificateStore

_NOW = datetime.now(UTC).replace(microsecond=0)  # OpenSSL checks the real clock
_CA = CertificateAuthority.generate(now=_NOW, common_name="memorytls test CA")
_CONTEXTS = ServerContexts(CertificateStore(_CA, now=lambda: _NOW))


@implementer(IOpenSSLClientConnectionCreator)
class _Client:
    """A TLS client sending SNI ``example.com``, trusting the test CA (or none)."""

    def __init__(self, *, trusting: bool = True) -> None:
        self.context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        self.context.set_verify(SSL.VERIFY_PEER)
        if trusting:
            self.context.get_cert_store().add_cert(  # type: ignore[union-attr]
                X509.from_cryptography(_CA.certificate))

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        connection.set_tlsext_host_name(b"example.com")
        connection.set_connect_state()
        return connection


def _server(inner: Any) -> ServerTLS:
    return ServerTLS(_CONTEXTS.context_for("default.example"), inner)


class _Greeter(Recorder):
    """Writes a line as soon as it is connected: before the handshake."""

    def connectionMade(self) -> None:
        self.transport.write(b"hello before the handshake\r\n")


def _close_after_last_words(case: SynchronousTestCase, c: TLSConnection, closer: str) -> None:
    """
    *closer*'s side (``"server"`` or ``"client"``) writes, closes, and
    writes again: the other side reads only the first bytes, and both see
    a clean close.
    """
    writer, reader = ((c.server_app, c.client_app) if closer == "server"
                      else (c.client_app, c.server_app))
    writer.transport.write(b"last words")
    writer.transport.loseConnection()
    writer.transport.write(b"dropped")
    c.pump.flush()
    case.assertEqual(reader.data(), b"last words")
    assert c.client_app.reason is not None and c.server_app.reason is not None
    case.assertTrue(c.client_app.reason.check(ConnectionDone), c.client_app.reason)
    case.assertTrue(c.server_app.reason.check(ConnectionDone), c.server_app.reason)


class ServerTLSTests(SynchronousTestCase):
    """:class:`ServerTLS` between a client's TLS and the protocol above it."""

    def _connect(self, server_tls: Any = _server, **kwargs: Any) -> TLSConnection:
        connection = connect_tls(_Client(**kwargs), server_tls=server_tls)
        return connection

    def test_handshake_then_both_ways(self) -> None:
        """
        The protocol above hears the handshake's end, then reads what the
        client wrote and what it writes reaches the client; the SNI name,
        the version and the handle are known.
        """
        c = self._connect()
        self.assertTrue(c.server_app.handshake_done)
        self.assertEqual(c.server.server_name, "example.com")
        self.assertEqual(c.server.tls_version(), "TLSv1.3")
        self.assertIsInstance(c.server.getHandle(), ssl.SSLObject)
        self.assertEqual(c.server.getPeer(), c.server.transport.getPeer())
        c.client_app.transport.write(b"ping")
        c.pump.flush()
        c.server_app.transport.writeSequence([b"po", b"ng"])
        c.pump.flush()
        self.assertEqual((c.server_app.data(), c.client_app.data()), (b"ping", b"pong"))

    def test_early_writes_wait_for_the_handshake(self) -> None:
        """What the protocol above writes before the handshake ends is sent after it."""
        greeter = _Greeter()
        c = self._connect(lambda _: ServerTLS(_CONTEXTS.context_for("x.example"), greeter))
        self.assertTrue(greeter.handshake_done)
        self.assertEqual(c.client_app.data(), b"hello before the handshake\r\n")

    def test_lose_connection_sends_close_notify(self) -> None:
        """
        ``loseConnection`` after a write: the client reads the bytes, then a
        clean TLS close (a ``close_notify``, not a truncation).
        """
        _close_after_last_words(self, self._connect(), closer="server")

    def test_client_close_notify_closes(self) -> None:
        """The client's ``close_notify`` closes the connection, cleanly."""
        c = self._connect()
        c.client_app.transport.loseConnection()
        c.pump.flush()
        assert c.server_app.reason is not None
        self.assertTrue(c.server_app.reason.check(ConnectionDone), c.server_app.reason)

    def test_tls_failure_is_the_reason(self) -> None:
        """
        A client that does not trust the CA aborts the handshake with an
        alert: the protocol above never hears of a handshake, and its
        connection ends with the ``ssl.SSLError`` as the reason.
        """
        c = self._connect(trusting=False)
        self.assertFalse(c.server_app.handshake_done)
        assert c.server_app.reason is not None
        self.assertTrue(c.server_app.reason.check(ssl.SSLError), c.server_app.reason)
        self.assertIn("unknown ca", str(c.server_app.reason.value).lower())

    def test_producer_registered_with_the_connection(self) -> None:
        """
        A producer registered with the TLS layer is the TCP transport's own
        (the only buffer), and pausing the TLS layer pauses the TCP side.
        """
        c = self._connect()
        producer = Protocol()
        tcp = c.server.transport
        c.server_app.transport.registerProducer(producer, True)
        self.assertIs(tcp.producer, producer)
        self.assertIs(c.server.producer, producer)
        c.server_app.transport.unregisterProducer()
        self.assertIsNone(tcp.producer)
        calls: list[str] = []
        tcp.pauseProducing = lambda: calls.append("pause")
        tcp.resumeProducing = lambda: calls.append("resume")
        c.server_app.transport.pauseProducing()
        c.server_app.transport.resumeProducing()
        self.assertEqual(calls, ["pause", "resume"])

    def test_data_after_a_hand_over_goes_to_the_new_reader(self) -> None:
        """
        Plaintext goes to whatever ``dataReceived`` the protocol above has
        at the time: a hand-over (to a WebSocket relay, say) replaces it on
        the instance, and the next bytes go to the new reader.
        """
        taken: list[bytes] = []

        class _HandsOver(Recorder):
            def dataReceived(self, data: bytes) -> None:
                super().dataReceived(data)
                self.dataReceived = taken.append  # type: ignore[method-assign]

        inner = _HandsOver()
        c = self._connect(lambda _: ServerTLS(_CONTEXTS.context_for("x.example"), inner))
        c.client_app.transport.write(b"first")
        c.pump.flush()
        c.client_app.transport.write(b"second")
        c.pump.flush()
        self.assertEqual((inner.data(), taken), (b"first", [b"second"]))

    def test_tcp_options_reach_the_tcp_transport(self) -> None:
        """What only the TCP transport has (``setTcpNoDelay``, ...) is its."""
        c = self._connect()
        self.assertEqual(c.server.getTcpNoDelay, c.server.transport.getTcpNoDelay)
        with self.assertRaises(AttributeError):
            c.server.no_such_thing  # noqa: B018


def _client_context(*, trusting: bool = True) -> ssl.SSLContext:
    """A verifying client context trusting the test CA (or nothing)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if trusting:
        context.load_verify_locations(cadata=_CA.certificate.public_bytes(Encoding.PEM).decode())
    return context


_CLIENT_CONTEXT = _client_context()


class _Closer(Recorder):
    """Writes a line and closes as soon as it is connected: before the handshake."""

    def connectionMade(self) -> None:
        self.transport.write(b"bye before the handshake\r\n")
        self.transport.loseConnection()


class ClientTLSTests(SynchronousTestCase):
    """:class:`ClientTLS` between a server's TLS (a :class:`ServerTLS`) and the protocol above."""

    def _connect(
        self, name: str = "example.com", context: ssl.SSLContext = _CLIENT_CONTEXT,
        inner: Any = None, **kwargs: Any,
    ) -> TLSConnection:
        def client_tls(app: Recorder) -> ClientTLS:
            return ClientTLS(context, name, inner if inner is not None else app)

        return connect_tls(client_tls=client_tls, server_tls=_server, **kwargs)

    def test_handshake_then_both_ways(self) -> None:
        """
        The client speaks first: the handshake completes without a write
        from the protocol above, which hears of it; the server got the SNI
        name; the version, the handle and the server's certificate are
        known; bytes flow both ways.
        """
        c = self._connect()
        self.assertTrue(c.client_app.handshake_done)
        self.assertTrue(c.client.handshake_done)
        self.assertEqual(c.server.server_name, "example.com")
        self.assertEqual(c.client.tls_version(), "TLSv1.3")
        self.assertIsNone(c.client.alpn())  # none offered
        self.assertIsInstance(c.client.getHandle(), ssl.SSLObject)
        self.assertIs(c.client.inner, c.client_app)
        certificate = x509.load_der_x509_certificate(c.client.getPeerCertificate())
        self.assertEqual(certificate.issuer, _CA.certificate.subject)
        c.client_app.transport.write(b"ping")
        c.pump.flush()
        c.server_app.transport.writeSequence([b"po", b"ng"])
        c.pump.flush()
        self.assertEqual((c.server_app.data(), c.client_app.data()), (b"ping", b"pong"))

    def test_no_sni_for_an_ip_address(self) -> None:
        """For an IP address no SNI is sent."""
        context = _client_context()
        context.check_hostname = False  # the minted certificate names no address here
        c = self._connect("127.0.0.1", context)
        self.assertTrue(c.client_app.handshake_done)
        self.assertIsNone(c.server.server_name)

    def test_early_writes_wait_for_the_handshake(self) -> None:
        """What the protocol above writes before the handshake ends is sent after it."""
        c = self._connect(client_greeting=b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(c.server_app.data(), b"GET / HTTP/1.1\r\n\r\n")

    def test_refused_certificate_is_the_reason(self) -> None:
        """
        A certificate the context does not trust fails the handshake: the
        protocol above never hears of a handshake, what it wrote is never
        sent, its connection ends with the ``ssl.SSLCertVerificationError``,
        and the server is told why with an alert.
        """
        c = self._connect(context=_client_context(trusting=False),
                          client_greeting=b"GET /secret HTTP/1.1\r\n\r\n")
        self.assertFalse(c.client_app.handshake_done)
        assert c.client_app.reason is not None and c.server_app.reason is not None
        self.assertTrue(c.client_app.reason.check(ssl.SSLCertVerificationError))
        self.assertEqual(c.client_app.reason.value.verify_code, 19)  # self-signed CA in the chain
        self.assertEqual(c.server_app.data(), b"")
        self.assertTrue(c.server_app.reason.check(ssl.SSLError), c.server_app.reason)
        self.assertIn("unknown ca", str(c.server_app.reason.value).lower())

    def test_lose_connection_sends_close_notify(self) -> None:
        """
        ``loseConnection`` after a write: the server reads the bytes, then a
        clean TLS close; what is written after is dropped.
        """
        _close_after_last_words(self, self._connect(), closer="client")

    def test_lose_connection_before_the_handshake(self) -> None:
        """
        A write and ``loseConnection`` before the handshake: the handshake
        runs, the bytes are sent after it, then the connection closes cleanly.
        """
        closer = _Closer()
        c = self._connect(inner=closer)
        self.assertTrue(closer.handshake_done)
        self.assertEqual(c.server_app.data(), b"bye before the handshake\r\n")
        assert closer.reason is not None and c.server_app.reason is not None
        self.assertTrue(closer.reason.check(ConnectionDone), closer.reason)
        self.assertTrue(c.server_app.reason.check(ConnectionDone), c.server_app.reason)

    def test_server_close_notify_closes(self) -> None:
        """The server's ``close_notify`` closes the connection, cleanly."""
        c = self._connect()
        c.server_app.transport.write(b"the end")
        c.server_app.transport.loseConnection()
        c.pump.flush()
        self.assertEqual(c.client_app.data(), b"the end")
        assert c.client_app.reason is not None
        self.assertTrue(c.client_app.reason.check(ConnectionDone), c.client_app.reason)

    def test_close_without_close_notify_is_connection_lost(self) -> None:
        """
        A server that closes the TCP connection without a ``close_notify``
        may have cut its data short: the protocol above sees
        ``ConnectionLost``, not a clean close.
        """
        c = self._connect()
        c.server_app.transport.write(b"cut sh")
        c.server.transport.loseConnection()  # under ServerTLS: no close_notify
        c.pump.flush()
        self.assertEqual(c.client_app.data(), b"cut sh")
        assert c.client_app.reason is not None
        self.assertTrue(c.client_app.reason.check(ConnectionLost), c.client_app.reason)

    def test_abort_connection(self) -> None:
        """``abortConnection`` closes at once, without ``close_notify``."""
        c = self._connect()
        c.client_app.transport.abortConnection()
        self.assertTrue(c.client.transport.disconnecting)
        self.assertTrue(c.client.disconnecting)
