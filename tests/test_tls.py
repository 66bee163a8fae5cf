"""
Tests for :mod:`twistproxy._tls`: the per-host server contexts, real TLS
handshakes (in memory) against the intercepting server side, and verified
and unverified TLS towards origins.
"""

from __future__ import annotations

import shutil
import ssl
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from tests.e2e.pki import OriginCert, make_ca, make_leaf
from tests.fakes import TLSConnection, connect_tls
from twistproxy._memorytls import ServerTLS
from twistproxy._tls import (
    GivenCertificate,
    ServerContexts,
    UpstreamTLS,
    describe_tls_failure,
    record_server_tls,
)
from twistproxy.certs import CertificateAuthority, CertificateStore
from twistproxy.connection import Certificate, Server

# OpenSSL checks validity against the real clock, so the certificates the
# handshakes see are made around the real current time.
NOW = datetime.now(UTC).replace(microsecond=0)

_PROXY_CA = CertificateAuthority.generate(now=NOW, common_name="twistproxy test CA")
"""The CA the intercepting side mints with, made once (EC keys: fast)."""


class _Clock:
    """A settable stand-in for the store's ``now`` callable."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _temporary_directory(case: SynchronousTestCase) -> Path:
    """A new directory, removed when *case* ends."""
    directory = tempfile.mkdtemp()
    case.addCleanup(shutil.rmtree, directory)
    return Path(directory)


def _write_pem(case: SynchronousTestCase, certificate: x509.Certificate) -> str:
    """*certificate* in a PEM file (removed when *case* ends); returns its path."""
    path = _temporary_directory(case) / "ca.pem"
    path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return str(path)


# -- a minimal PKI for the origins (tests/e2e/pki.py builds it) -----------


_ORIGIN_CA = make_ca("origin test CA")
_ORIGIN_NAMES = ["localhost", "127.0.0.1"]
_GOOD = make_leaf(_ORIGIN_CA, _ORIGIN_NAMES)
_EXPIRED = make_leaf(_ORIGIN_CA, _ORIGIN_NAMES, expired=True)
_WRONG_HOST = make_leaf(_ORIGIN_CA, ["elsewhere.example"])
_UNKNOWN_CA = make_leaf(make_ca("nobody trusts me"), _ORIGIN_NAMES)


@implementer(IOpenSSLServerConnectionCreator)
class _OriginTLS:
    """
    Server TLS for a test origin presenting a certificate; it records the
    ALPN protocols the client offered and picks ``http/1.1`` if offered.

    :ivar offered: The protocol lists clients offered, one per handshake.
    """

    def __init__(self, leaf: OriginCert) -> None:
        self.offered: list[list[bytes]] = []
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate(leaf.certificate)
        context.use_privatekey(leaf.key)
        context.set_alpn_select_callback(self._select)
        self.context = context

    def _select(self, connection: SSL.Connection, offered: list[bytes]) -> Any:
        self.offered.append(offered)
        return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        return connection


@implementer(IOpenSSLClientConnectionCreator)
class _TrustingClientTLS:
    """
    A browser-like TLS client that trusts only the CA in *ca_file*: the
    handshake fails unless the server's chain leads to it.  It sends
    *server_name* as SNI (none if ``None``) and offers *alpn*.
    """

    def __init__(
        self, ca_file: str, server_name: str | None, alpn: list[bytes] | None = None
    ) -> None:
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_verify(SSL.VERIFY_PEER)
        context.load_verify_locations(ca_file)
        if alpn is not None:
            context.set_alpn_protos(alpn)
        self.context = context
        self.server_name = server_name

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tlsProtocol)
        if self.server_name is not None:
            connection.set_tlsext_host_name(self.server_name.encode("ascii"))
        connection.set_connect_state()
        return connection


def _peer_certificate(connection: TLSConnection) -> x509.Certificate:
    """The certificate the client was shown."""
    certificate = connection.client.getHandle().get_peer_certificate(as_cryptography=True)
    assert certificate is not None
    return certificate


def _names(certificate: x509.Certificate) -> tuple[list[str], list[Any]]:
    """*certificate*'s subject common names and subject alternative names."""
    common = [
        str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    ]
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return common, [name.value for name in san]


class ServerContextsTests(SynchronousTestCase):
    """
    Tests for :class:`ServerContexts`: one context per host, rebuilt only
    when the store hands out a new certificate, and at most ``capacity`` kept.
    """

    def setUp(self) -> None:
        self.clock = _Clock()
        self.store = CertificateStore(_PROXY_CA, now=self.clock)

    def test_one_context_per_host_reused(self) -> None:
        """
        Asking twice for a host gives the same context and builds it once;
        another host gets a context of its own.
        """
        contexts = ServerContexts(self.store)
        first = contexts.context_for("example.com")
        self.assertIs(contexts.context_for("example.com"), first)
        self.assertEqual(contexts.built, 1)
        other = contexts.context_for("other.example")
        self.assertIsNot(other, first)
        self.assertEqual(contexts.built, 2)

    def test_spellings_of_a_name_share_a_context(self) -> None:
        """
        Names the store normalises to one host (case, a trailing dot) share
        one context.
        """
        contexts = ServerContexts(self.store)
        first = contexts.context_for("Example.COM")
        self.assertIs(contexts.context_for("example.com."), first)
        self.assertEqual(contexts.built, 1)

    def test_rebuilt_when_certificate_renewed(self) -> None:
        """
        Once the store renews a host's certificate near its expiry, the
        host's context is built again, and the new one is then reused.
        """
        contexts = ServerContexts(self.store)
        first = contexts.context_for("example.com")
        not_after = self.store.certificate_for("example.com").certificate.not_valid_after_utc
        self.clock.now = not_after - timedelta(hours=12)
        renewed = contexts.context_for("example.com")
        self.assertIsNot(renewed, first)
        self.assertEqual(contexts.built, 2)
        self.assertIs(contexts.context_for("example.com"), renewed)
        self.assertEqual(contexts.built, 2)

    def test_rebuilt_when_certificate_minted_again(self) -> None:
        """
        When the store evicted a host's certificate and mints it again, the
        host's context is rebuilt even though it is still cached here.
        """
        store = CertificateStore(_PROXY_CA, now=self.clock, capacity=1)
        contexts = ServerContexts(store)
        first = contexts.context_for("a.example")
        contexts.context_for("b.example")  # evicts a.example's certificate
        again = contexts.context_for("a.example")
        self.assertIsNot(again, first)
        self.assertEqual((contexts.built, store.minted), (3, 3))

    def test_least_recently_used_dropped_beyond_capacity(self) -> None:
        """
        With ``capacity`` contexts kept, a new host drops the least recently
        used one, which is built again when asked for; the others are kept.
        """
        contexts = ServerContexts(self.store, capacity=2)
        a = contexts.context_for("a.example")
        contexts.context_for("b.example")
        contexts.context_for("a.example")  # a is now the most recently used
        contexts.context_for("c.example")  # drops b
        self.assertEqual(contexts.built, 3)
        self.assertIs(contexts.context_for("a.example"), a)
        self.assertEqual(contexts.built, 3)
        contexts.context_for("b.example")
        self.assertEqual(contexts.built, 4)


def _memory_handshake(
    client: ssl.SSLContext, contexts: ServerContexts, session: ssl.SSLSession | None
) -> ssl.SSLObject:
    """
    A standard-library client's handshake, in memory, with the intercepting
    side for ``sni.example`` (started on ``default.example``'s context), and
    one application record after it (which carries TLS 1.3's tickets).
    """
    server_in, server_out, client_in, client_out = (ssl.MemoryBIO() for _ in range(4))
    server = contexts.context_for("default.example").wrap_bio(
        server_in, server_out, server_side=True)
    tls = client.wrap_bio(client_in, client_out, server_hostname="sni.example", session=session)
    for _ in range(4):
        for side, out, peer in ((tls, client_out, server_in), (server, server_out, client_in)):
            try:
                side.do_handshake()
            except ssl.SSLWantReadError:
                pass
            peer.write(out.read())
    server.write(b"x")
    client_in.write(server_out.read())
    assert tls.read(1) == b"x"
    return tls


class InterceptingServerTLSTests(SynchronousTestCase):
    """
    Tests for the intercepting server side, :class:`ServerContexts`' contexts
    under a :class:`~twistproxy._memorytls.ServerTLS`: real handshakes in
    memory with a client that trusts only the proxy's CA.
    """

    def setUp(self) -> None:
        self.ca_file = _write_pem(self, _PROXY_CA.certificate)
        self.contexts = ServerContexts(CertificateStore(_PROXY_CA, now=_Clock()))

    def _server(self, inner: Any) -> ServerTLS:
        return ServerTLS(self.contexts.context_for("default.example"), inner)

    def _handshake(self, server_name: str | None, alpn: list[bytes] | None = None
                   ) -> TLSConnection:
        client = _TrustingClientTLS(self.ca_file, server_name, alpn)
        connection = connect_tls(client, server_tls=self._server)
        self.assertTrue(connection.client_app.handshake_done, connection.client_app.reason)
        self.assertTrue(connection.server_app.handshake_done)
        return connection

    def test_certificate_for_sni_name(self) -> None:
        """
        A client sending SNI completes the handshake, trusting only the CA,
        and is shown a certificate naming the SNI host (subject and SAN), not
        the default host; the server side knows the name.
        """
        connection = self._handshake("sni.example")
        self.assertEqual(_names(_peer_certificate(connection)), (["sni.example"], ["sni.example"]))
        self.assertEqual(connection.server.server_name, "sni.example")

    def test_certificate_for_default_host_without_sni(self) -> None:
        """
        A client sending no SNI is shown the default (CONNECT) host's
        certificate.
        """
        connection = self._handshake(None)
        self.assertEqual(
            _names(_peer_certificate(connection)), (["default.example"], ["default.example"])
        )
        self.assertIsNone(connection.server.server_name)

    def test_given_certificate(self) -> None:
        """
        A name matching a ``--certs`` pattern is shown the user's own
        certificate, chain included, not a minted one.
        """
        own = make_leaf(_ORIGIN_CA, ["own.example"])
        path = _temporary_directory(self) / "own.pem"
        path.write_bytes(
            own.key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
            + own.certificate.public_bytes(serialization.Encoding.PEM)
            + _ORIGIN_CA[0].public_bytes(serialization.Encoding.PEM))
        self.contexts = ServerContexts(self.contexts.store,
                                       given=[GivenCertificate("own.example", str(path))])
        client = _TrustingClientTLS(_write_pem(self, _ORIGIN_CA[0]), "own.example")
        connection = connect_tls(client, server_tls=self._server)
        self.assertTrue(connection.client_app.handshake_done, connection.client_app.reason)
        self.assertEqual(_peer_certificate(connection), own.certificate)

    def test_bytes_flow_after_handshake(self) -> None:
        """
        Application bytes written on either side arrive, decrypted, on the
        other.
        """
        connection = self._handshake("sni.example")
        connection.client_app.transport.write(b"GET / HTTP/1.1\r\n\r\n")
        connection.server_app.transport.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        connection.pump.flush()
        self.assertEqual(connection.server_app.data(), b"GET / HTTP/1.1\r\n\r\n")
        self.assertEqual(connection.client_app.data(), b"HTTP/1.1 204 No Content\r\n\r\n")

    def test_alpn_http11_selected(self) -> None:
        """A client offering ``h2`` and ``http/1.1`` gets ``http/1.1``."""
        connection = self._handshake("sni.example", [b"h2", b"http/1.1"])
        self.assertEqual(connection.client.negotiatedProtocol, b"http/1.1")
        self.assertEqual(connection.server.alpn(), b"http/1.1")

    def test_no_alpn_when_only_h2_offered(self) -> None:
        """
        A client offering only ``h2`` still completes the handshake, with no
        protocol negotiated.
        """
        connection = self._handshake("sni.example", [b"h2"])
        self.assertIsNone(connection.client.negotiatedProtocol)
        self.assertIsNone(connection.server.alpn())

    def test_tls12_and_up(self) -> None:
        """TLS 1.3 when the client has it; a client capped below 1.2 is refused."""
        self.assertEqual(self._handshake("sni.example").server.tls_version(), "TLSv1.3")
        client = _TrustingClientTLS(self.ca_file, "old.example")
        client.context.set_max_proto_version(SSL.TLS1_1_VERSION)
        connection = connect_tls(client, server_tls=self._server)
        self.assertFalse(connection.server_app.handshake_done)
        assert connection.server_app.reason is not None
        self.assertTrue(connection.server_app.reason.check(ssl.SSLError))

    def test_sessions_resumed(self) -> None:
        """
        A client coming back with its session (TLS 1.2 and 1.3) resumes it,
        although the SNI callback switched contexts.
        """
        client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        client.load_verify_locations(self.ca_file)
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            client.maximum_version = version
            first = _memory_handshake(client, self.contexts, None)
            again = _memory_handshake(client, self.contexts, first.session)
            self.assertEqual((first.session_reused, again.session_reused), (False, True))

    def test_sni_context_cached(self) -> None:
        """
        A second client for the same SNI name reuses the host's context: the
        only contexts built are the default host's and the SNI host's.
        """
        self._handshake("sni.example")
        self._handshake("sni.example")
        self.assertEqual(self.contexts.built, 2)


class UpstreamTLSTests(SynchronousTestCase):
    """
    Tests for :class:`UpstreamTLS` and :func:`describe_tls_failure`: a
    :class:`~twistproxy._memorytls.ClientTLS` made by ``UpstreamTLS.client``
    against in-memory origins (pyOpenSSL servers, as Twisted's TLS runs them).
    """

    def setUp(self) -> None:
        self.ca_file = _write_pem(self, _ORIGIN_CA[0])
        self.upstream = UpstreamTLS(ca_file=self.ca_file)

    def _connect(
        self,
        leaf: OriginCert,
        name: str,
        upstream: UpstreamTLS | None = None,
        greeting: bytes = b"",
    ) -> TLSConnection:
        upstream = upstream if upstream is not None else self.upstream
        self.origin = _OriginTLS(leaf)
        return connect_tls(
            server_creator=self.origin, client_tls=lambda app: upstream.client(name, app),
            client_greeting=greeting,
        )

    def _refusal(self, connection: TLSConnection, name: str) -> str:
        """
        How the client side's failure is described to the user (as
        ``ProxyClient.connectionLost`` does), once it is checked to be the
        standard library's ``ssl.SSLError`` and the handshake not done.
        """
        self.assertFalse(connection.client_app.handshake_done)
        reason = connection.client_app.reason
        assert reason is not None
        self.assertTrue(reason.check(ssl.SSLError), reason)
        return describe_tls_failure(reason, name)

    def _verify_code(self, connection: TLSConnection) -> int:
        """OpenSSL's X.509 verification error that ended *connection*."""
        reason = connection.client_app.reason
        assert reason is not None
        self.assertTrue(reason.check(ssl.SSLCertVerificationError), reason)
        return int(reason.value.verify_code)

    def test_verified_origin(self) -> None:
        """
        An origin whose certificate comes from a CA in ``ca_file`` and names
        the host is accepted: the handshake completes, the connection stays
        open, SNI names the host and ``http/1.1`` is offered and chosen, and
        bytes flow both ways.
        """
        connection = self._connect(_GOOD, "localhost")
        self.assertTrue(connection.client_app.handshake_done)
        self.assertIsNone(connection.client_app.reason)
        self.assertEqual(connection.server.getHandle().get_servername(), b"localhost")
        self.assertEqual(self.origin.offered, [[b"http/1.1"]])
        self.assertEqual(connection.client.alpn(), b"http/1.1")
        self.assertEqual(connection.client.tls_version(), "TLSv1.3")
        self.assertIsInstance(connection.client.getHandle(), ssl.SSLObject)
        self.assertEqual(
            x509.load_der_x509_certificate(connection.client.getPeerCertificate()),
            _GOOD.certificate,
        )
        connection.client_app.transport.write(b"ping")
        connection.pump.flush()
        connection.server_app.transport.write(b"pong")
        connection.pump.flush()
        self.assertEqual(connection.server_app.data(), b"ping")
        self.assertEqual(connection.client_app.data(), b"pong")

    def test_verified_ip_origin_without_sni(self) -> None:
        """
        For an IP literal no SNI is sent (RFC 6066 forbids it), and a
        certificate naming that address is accepted.
        """
        connection = self._connect(_GOOD, "127.0.0.1")
        self.assertTrue(connection.client_app.handshake_done)
        self.assertIsNone(connection.client_app.reason)
        self.assertIsNone(connection.server.getHandle().get_servername())

    def test_tls12_only_origin(self) -> None:
        """An origin that speaks no more than TLS 1.2 is still reached."""
        self.origin = _OriginTLS(_GOOD)
        self.origin.context.set_max_proto_version(SSL.TLS1_2_VERSION)
        connection = connect_tls(
            server_creator=self.origin,
            client_tls=lambda app: self.upstream.client("localhost", app),
        )
        self.assertTrue(connection.client_app.handshake_done)
        self.assertEqual(connection.client.tls_version(), "TLSv1.2")

    def test_origin_with_older_tls12_ciphers(self) -> None:
        """
        An origin offering only a TLS 1.2 suite that Python's default list
        leaves out (CBC with a SHA-1 MAC) is reached: the context has
        OpenSSL's default list.
        """
        self.origin = _OriginTLS(_GOOD)
        self.origin.context.set_max_proto_version(SSL.TLS1_2_VERSION)
        self.origin.context.set_cipher_list(b"ECDHE-ECDSA-AES128-SHA")
        connection = connect_tls(
            server_creator=self.origin,
            client_tls=lambda app: self.upstream.client("localhost", app),
        )
        self.assertTrue(connection.client_app.handshake_done, connection.client_app.reason)
        cipher = connection.client.getHandle().cipher()
        assert cipher is not None
        self.assertEqual(cipher[0], "ECDHE-ECDSA-AES128-SHA")

    def test_tls11_origin_refused(self) -> None:
        """An origin that speaks no more than TLS 1.1 is refused (1.2 at least)."""
        self.origin = _OriginTLS(_GOOD)
        self.origin.context.set_min_proto_version(SSL.TLS1_VERSION)
        self.origin.context.set_max_proto_version(SSL.TLS1_1_VERSION)
        connection = connect_tls(
            server_creator=self.origin,
            client_tls=lambda app: self.upstream.client("localhost", app),
        )
        self.assertFalse(connection.client_app.handshake_done)
        reason = connection.client_app.reason
        assert reason is not None
        self.assertTrue(reason.check(ssl.SSLError), reason)

    def test_wrong_name_refused(self) -> None:
        """
        A trusted certificate for another name fails the handshake (OpenSSL
        checks the name), described as not valid for the name.
        """
        connection = self._connect(_WRONG_HOST, "localhost")
        self.assertEqual(self._verify_code(connection), 62)  # X509_V_ERR_HOSTNAME_MISMATCH
        self.assertEqual(
            self._refusal(connection, "localhost"), "the certificate is not valid for localhost"
        )

    def test_nothing_sent_to_wrong_name(self) -> None:
        """
        Bytes the client wrote before the handshake (a request written as
        soon as the connection is made) never reach an origin whose
        certificate is for another name.
        """
        connection = self._connect(_WRONG_HOST, "localhost", greeting=b"GET /secret HTTP/1.1")
        self.assertIsNotNone(connection.client_app.reason)
        self.assertEqual(connection.server_app.data(), b"")

    def test_nothing_sent_to_unknown_issuer(self) -> None:
        """
        Bytes the client wrote before the handshake never reach an origin
        whose certificate is not trusted.
        """
        connection = self._connect(_UNKNOWN_CA, "localhost", greeting=b"GET /secret HTTP/1.1")
        self.assertIsNotNone(connection.client_app.reason)
        self.assertEqual(connection.server_app.data(), b"")

    def test_wrong_ip_refused(self) -> None:
        """
        A trusted certificate that does not name the IP address connected
        to is refused too.
        """
        connection = self._connect(_GOOD, "10.0.0.1")
        self.assertEqual(self._verify_code(connection), 64)  # X509_V_ERR_IP_ADDRESS_MISMATCH
        self.assertIn("not valid for 10.0.0.1", self._refusal(connection, "10.0.0.1"))

    def test_unknown_issuer_refused(self) -> None:
        """
        A certificate from a CA not in ``ca_file`` fails the handshake, and
        the failure is described as an unknown issuer.
        """
        connection = self._connect(_UNKNOWN_CA, "localhost")
        self.assertIn("unknown issuer", self._refusal(connection, "localhost"))

    def test_expired_refused(self) -> None:
        """
        An expired certificate fails the handshake, described as expired.
        """
        connection = self._connect(_EXPIRED, "localhost")
        self.assertEqual(self._verify_code(connection), 10)  # X509_V_ERR_CERT_HAS_EXPIRED
        self.assertEqual(
            self._refusal(connection, "localhost"),
            "certificate refused: the certificate has expired",
        )

    def test_self_signed_refused(self) -> None:
        """A self-signed certificate fails the handshake, described as self-signed."""
        connection = self._connect(OriginCert(*make_ca("localhost")), "localhost")
        self.assertEqual(self._verify_code(connection), 18)  # DEPTH_ZERO_SELF_SIGNED_CERT
        self.assertEqual(
            self._refusal(connection, "localhost"),
            "certificate refused: the certificate is self-signed",
        )

    def test_other_verification_errors_use_openssls_words(self) -> None:
        """A verification error without words of ours is described in OpenSSL's."""
        error = ssl.SSLCertVerificationError(1, "certificate verify failed")
        error.verify_code = 24  # X509_V_ERR_INVALID_CA
        error.verify_message = "invalid CA certificate"
        self.assertEqual(
            describe_tls_failure(Failure(error), "localhost"),
            "certificate refused: invalid CA certificate",
        )

    def test_other_tls_errors_without_openssl_decoration(self) -> None:
        """Another ``ssl.SSLError`` is described by its text, without ``[SSL: X]`` or ``_ssl.c``."""
        error = ssl.SSLError(1, "[SSL: TLSV1_ALERT_PROTOCOL_VERSION] tlsv1 alert protocol "
                                "version (_ssl.c:1000)")
        self.assertEqual(describe_tls_failure(Failure(error), "localhost"),
                         "tlsv1 alert protocol version")

    def test_insecure_accepts_anything(self) -> None:
        """
        With ``insecure=True`` an unknown issuer, an expired certificate and
        a wrong name are all accepted, and bytes flow.
        """
        insecure = UpstreamTLS(insecure=True)
        for leaf in (_UNKNOWN_CA, _EXPIRED, _WRONG_HOST):
            connection = self._connect(leaf, "localhost", insecure)
            self.assertTrue(connection.client_app.handshake_done)
            self.assertIsNone(connection.client_app.reason)
            connection.client_app.transport.write(b"ping")
            connection.pump.flush()
            self.assertEqual(connection.server_app.data(), b"ping")

    def test_insecure_still_sends_sni_and_alpn(self) -> None:
        """``insecure=True`` still sends SNI and offers ``http/1.1``."""
        connection = self._connect(_WRONG_HOST, "localhost", UpstreamTLS(insecure=True))
        self.assertEqual(connection.server.getHandle().get_servername(), b"localhost")
        self.assertEqual(self.origin.offered, [[b"http/1.1"]])

    def test_missing_ca_file(self) -> None:
        """A ``ca_file`` that does not exist is a ``ValueError`` naming it."""
        path = str(_temporary_directory(self) / "missing.pem")
        with self.assertRaises(ValueError) as caught:
            UpstreamTLS(ca_file=path)
        self.assertIn(path, str(caught.exception))

    def test_garbage_ca_file(self) -> None:
        """A ``ca_file`` holding no PEM certificate is a ``ValueError`` naming it."""
        path = _temporary_directory(self) / "garbage.pem"
        path.write_bytes(b"this is not a certificate\n")
        with self.assertRaises(ValueError) as caught:
            UpstreamTLS(ca_file=str(path))
        self.assertIn(str(path), str(caught.exception))


class _Handshaken:
    """What `record_server_tls` reads of an ``ssl.SSLObject`` after a handshake."""

    server_hostname = "origin.example"

    def __init__(self, der: bytes) -> None:
        self._der = der

    def selected_alpn_protocol(self) -> str:
        return "http/1.1"

    def version(self) -> str:
        return "TLSv1.3"

    def getpeercert(self, binary_form: bool = False) -> bytes:
        assert binary_form
        return self._der


class RecordServerTLSTests(SynchronousTestCase):
    """
    `record_server_tls` puts the handshake's facts and the server's
    certificate on the connection record; a certificate already read is
    not read again.
    """

    def test_facts_and_certificate(self) -> None:
        """The record names the SNI, ALPN, version and the certificate's facts."""
        leaf = make_leaf(make_ca("record CA"), ["origin.example", "127.0.0.1"])
        der = leaf.certificate.public_bytes(serialization.Encoding.DER)
        server = Server(address=("origin.example", 443))
        record_server_tls(server, _Handshaken(der))  # type: ignore[arg-type]
        self.assertTrue(server.tls_established)
        self.assertEqual((server.sni, server.alpn, server.tls_version),
                         ("origin.example", b"http/1.1", "TLSv1.3"))
        self.assertEqual(server.certificate, Certificate.from_x509(leaf.certificate))
        assert server.certificate is not None
        self.assertEqual(server.certificate.dns_names, ("origin.example",))
        self.assertEqual(server.certificate.ip_addresses, ("127.0.0.1",))

    def test_same_certificate_read_once(self) -> None:
        """
        Two connections presenting the same certificate share one record of
        it (it is frozen); another certificate gets its own.
        """
        ca = make_ca("record CA")
        first, other = make_leaf(ca, ["a.example"]), make_leaf(ca, ["b.example"])
        records = []
        for leaf in (first, first, other):
            server = Server(address=("a.example", 443))
            record_server_tls(server, _Handshaken(  # type: ignore[arg-type]
                leaf.certificate.public_bytes(serialization.Encoding.DER)))
            records.append(server.certificate)
        self.assertIs(records[0], records[1])
        self.assertIsNot(records[0], records[2])
        assert records[2] is not None
        self.assertEqual(records[2].dns_names, ("b.example",))
