# -*- test-case-name: tests.test_tls -*-
"""
TLS on both sides of an intercepted connection.

Towards the client, :class:`InterceptingServerTLS` presents a certificate
minted by the :class:`~twistproxy.certs.CertificateStore` for the name the
client asks for in its ClientHello (SNI), or for the CONNECT host when it
sends none.  Twisted has no server-side SNI hook, so the servername callback
is pyOpenSSL's, installed on every context; each host gets one immutable
``SSL.Context`` (pyOpenSSL warns when a context changes after use).

Towards origins, :class:`UpstreamTLS` makes the client connection creators:
verified (service-identity) against the system's trust store or a CA file
the user names, or unverified with ``--insecure``; SNI and ALPN
``http/1.1`` either way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

from OpenSSL import SSL
from service_identity import VerificationError
from service_identity.pyopenssl import verify_hostname, verify_ip_address
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IOpenSSLServerConnectionCreator,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twistproxy.flow import Certificate

if TYPE_CHECKING:
    from twistproxy.certs import CertificateStore, IssuedCertificate
    from twistproxy.flow import Server

_log = Logger()

ALPN_HTTP11 = b"http/1.1"
"""The only application protocol offered until HTTP/2 exists here."""

_SERVER_OPTIONS = SSL.OP_NO_COMPRESSION | SSL.OP_CIPHER_SERVER_PREFERENCE


class GivenCertificate:
    """
    A certificate of the user's own (``--certs [DOMAIN=]PATH``), presented
    instead of a minted one for the host names matching *pattern*.

    :param pattern: A host name, or a glob (``*.example.com``; ``*``: every
        name), matched case-insensitively.
    :param path: A PEM file holding the private key and the certificate,
        followed by its chain (mitmproxy's format).
    :raises ValueError: with one line, if the file cannot be read or does
        not hold a key and a certificate that belong together.
    """

    def __init__(self, pattern: str, path: str) -> None:
        from cryptography.hazmat.primitives.serialization import load_pem_private_key
        from cryptography.x509 import load_pem_x509_certificates

        self.pattern = pattern.lower()
        try:
            data = Path(path).expanduser().read_bytes()
        except OSError as e:
            raise ValueError(f"{path}: {e.strerror}") from None
        try:
            key = load_pem_private_key(data, password=None)
            certificates = load_pem_x509_certificates(data)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: not a PEM key and certificate ({e})") from None
        context = _server_context()
        try:
            context.use_certificate(certificates[0])
            context.use_privatekey(key)  # type: ignore[arg-type]
            context.check_privatekey()
        except SSL.Error:
            raise ValueError(f"{path}: the key is not the certificate's") from None
        for extra in certificates[1:]:
            context.add_extra_chain_cert(extra)
        self.context = context

    def matches(self, hostname: str) -> bool:
        """Whether *hostname* gets this certificate."""
        return fnmatchcase(hostname.lower(), self.pattern)


def _server_context() -> SSL.Context:
    """A server context with the options every intercepting context has."""
    context = SSL.Context(SSL.TLS_SERVER_METHOD)
    context.set_min_proto_version(SSL.TLS1_2_VERSION)
    context.set_options(_SERVER_OPTIONS)
    context.set_alpn_select_callback(_select_alpn)
    # Session resumption towards clients: IDs scoped to this process.
    context.set_session_id(b"twistproxy")
    return context


class ServerContexts:
    """
    One ``SSL.Context`` per host name, each presenting that host's minted
    certificate (or a *given* one: the first whose pattern matches).  A
    context is rebuilt when the store hands out a new certificate for the
    name (renewed near expiry, or evicted and minted again), so the store's
    cache is the one that decides.

    :ivar built: How many contexts were built (a cache-miss counter).
    """

    def __init__(
        self, store: CertificateStore, *, capacity: int = 1024,
        given: Sequence[GivenCertificate] = (),
    ) -> None:
        self.store = store
        self.capacity = capacity
        self.built = 0
        self.given = tuple(given)
        for own in self.given:
            own.context.set_tlsext_servername_callback(self._servername)
        self._contexts: OrderedDict[str, tuple[IssuedCertificate, SSL.Context]] = OrderedDict()

    def context_for(self, hostname: str) -> SSL.Context:
        """The context presenting *hostname*'s certificate."""
        for own in self.given:
            if own.matches(hostname):
                return own.context
        issued = self.store.certificate_for(hostname)
        key = issued.hostname
        cached = self._contexts.get(key)
        if cached is not None and cached[0] is issued:
            self._contexts.move_to_end(key)
            return cached[1]
        context = _server_context()
        context.use_certificate(issued.certificate)
        context.use_privatekey(issued.key)
        for certificate in issued.chain:
            context.add_extra_chain_cert(certificate)
        context.set_tlsext_servername_callback(self._servername)
        self.built += 1
        self._contexts[key] = (issued, context)
        self._contexts.move_to_end(key)
        if len(self._contexts) > self.capacity:
            self._contexts.popitem(last=False)
        return context

    def _servername(self, connection: SSL.Connection) -> None:
        """pyOpenSSL's SNI callback: switch to the named host's context."""
        name = connection.get_servername()
        if not name:
            return
        try:
            hostname = name.decode("ascii")
        except UnicodeDecodeError:
            return  # keep the CONNECT host's certificate
        try:
            context = self.context_for(hostname)
        except Exception:
            # OpenSSL's callback cannot raise usefully: keep the CONNECT
            # host's certificate, and say why in the log.
            _log.failure("no certificate for SNI name {name}", name=hostname)
            return
        connection.set_context(context)


def _select_alpn(connection: SSL.Connection, offered: list[bytes]) -> bytes | Any:
    """Choose ``http/1.1`` when the client offers it, else no ALPN at all."""
    if ALPN_HTTP11 in offered:
        return ALPN_HTTP11
    return SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLServerConnectionCreator)
class InterceptingServerTLS:
    """
    The server side of an intercepted tunnel.

    :param contexts: Where the per-host contexts come from.
    :param default_host: The CONNECT host: its certificate is presented when
        the client sends no SNI.
    """

    def __init__(self, contexts: ServerContexts, default_host: str) -> None:
        self.contexts = contexts
        self.default_host = default_host

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        """Make the connection; the SNI callback may switch its context."""
        connection = SSL.Connection(self.contexts.context_for(self.default_host), None)
        connection.set_app_data(tlsProtocol)
        return connection


@implementer(IOpenSSLClientConnectionCreator)
class _Creator:
    """A client connection creator: SNI (for names) on a shared context."""

    def __init__(self, upstream: UpstreamTLS, server_name: str) -> None:
        self._upstream = upstream
        self._server_name = server_name

    def clientConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self._upstream.context, None)
        connection.set_app_data(tlsProtocol)
        if not _is_ip(self._server_name):
            connection.set_tlsext_host_name(self._server_name.encode("idna"))
        self._upstream.names[connection] = self._server_name
        connection.set_connect_state()
        return connection


def _is_ip(name: str) -> bool:
    return isIPAddress(name) or isIPv6Address(name)


class UpstreamTLS:
    """
    TLS towards origins: one client context, with SNI and ALPN ``http/1.1``
    per connection; the chain verified against the system's trust store (or
    *ca_file*), and the name checked with service-identity once the
    handshake is done, unless *insecure*.

    :param ca_file: A PEM file of CA certificates to trust instead of the
        system's store.
    :param insecure: Verify nothing (the certificate chain, nor the name).
    :raises ValueError: if *ca_file* cannot be read.
    :ivar context: The shared ``SSL.Context``.
    """

    def __init__(self, *, ca_file: str | None = None, insecure: bool = False) -> None:
        self.insecure = insecure
        self.ca_file = ca_file
        self.names: WeakKeyDictionary[SSL.Connection, str] = WeakKeyDictionary()
        self._errors: WeakKeyDictionary[SSL.Connection, int] = WeakKeyDictionary()
        context = SSL.Context(SSL.TLS_CLIENT_METHOD)
        context.set_min_proto_version(SSL.TLS1_2_VERSION)
        context.set_alpn_protos([ALPN_HTTP11])
        if insecure:
            context.set_verify(SSL.VERIFY_NONE)
        else:
            context.set_verify(SSL.VERIFY_PEER, self._verify)
            context.set_info_callback(self._check_name)
            if ca_file is None:
                context.set_default_verify_paths()
            else:
                if not Path(ca_file).is_file():
                    raise ValueError(f"{ca_file}: no such file")
                try:
                    context.load_verify_locations(ca_file)
                except SSL.Error as e:
                    raise ValueError(f"{ca_file}: no PEM certificate could be read") from e
        self.context = context

    def creator_for(self, server_name: str) -> Any:
        """The connection creator for an origin called *server_name*."""
        return _Creator(self, server_name)

    def verify_error(self, connection: Any) -> int:
        """The X.509 verification error OpenSSL reported for *connection*, or 0."""
        return self._errors.get(connection, 0)

    def _verify(
        self, connection: SSL.Connection, certificate: Any, error: int, depth: int, ok: int
    ) -> bool:
        if not ok and connection not in self._errors:
            self._errors[connection] = error
        return bool(ok)

    def _check_name(self, connection: SSL.Connection, where: int, ret: int) -> None:
        if not where & SSL.SSL_CB_HANDSHAKE_DONE:
            return
        name = self.names.get(connection)
        if name is None:
            return
        try:
            if _is_ip(name):
                verify_ip_address(connection, name)
            else:
                verify_hostname(connection, name)
        except VerificationError:
            connection.get_app_data().failVerification(Failure())


def record_server_tls(server: Server, connection: SSL.Connection) -> None:
    """
    Record the facts of the TLS *connection*, whose handshake with a server
    just completed, on its connection record *server*: that TLS is up, the
    SNI name sent (none for an IP address), the negotiated ALPN protocol
    and TLS version, and the server's certificate
    (:class:`~twistproxy.flow.Certificate`).
    """
    sni = connection.get_servername()
    server.tls_established = True
    server.sni = sni.decode("ascii", "replace") if sni else None
    server.alpn = connection.get_alpn_proto_negotiated() or None
    server.tls_version = connection.get_protocol_version_name()
    presented = connection.get_peer_certificate(as_cryptography=True)
    server.certificate = Certificate.from_x509(presented) if presented is not None else None


_VERIFY_REASONS = {
    2: "unknown issuer (the issuer's certificate is missing)",
    9: "the certificate is not yet valid",
    10: "the certificate has expired",
    18: "the certificate is self-signed",
    19: "a self-signed certificate is in the chain (unknown issuer)",
    20: "unknown issuer",
    21: "unknown issuer (cannot verify the first certificate)",
    26: "the certificate is not meant for a TLS server",
}


def describe_tls_failure(
    reason: Failure, handle: Any, server_name: str | None, upstream: UpstreamTLS | None = None
) -> str:
    """
    Say why TLS with an origin failed, in words a user can act on: the
    certificate's verification error (expired, unknown issuer, ...), a name
    the certificate does not cover, or OpenSSL's own reason.

    :param reason: The failure that ended the connection.
    :param handle: The ``SSL.Connection``, if there was one.
    :param server_name: The name the certificate was checked against.
    :param upstream: The settings the connection was made with.
    """
    if reason.check(VerificationError):
        return f"the certificate is not valid for {server_name}"
    code = upstream.verify_error(handle) if upstream is not None and handle is not None else 0
    if code:
        why = _VERIFY_REASONS.get(code, f"verification error {code}")
        return f"certificate refused: {why}"
    args = getattr(reason.value, "args", ())
    details = args[0] if args else None
    if isinstance(details, list):
        texts = [item[2] for item in details if isinstance(item, tuple) and len(item) == 3]
        if texts:
            return "; ".join(texts)
    return reason.getErrorMessage()
