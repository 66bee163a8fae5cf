# -*- test-case-name: tests.test_tls -*-
"""
TLS on both sides of an intercepted connection.

Towards the client, :class:`ServerContexts` hands out the standard
library's ``ssl.SSLContext`` that presents a certificate minted by the
:class:`~twistproxy.certs.CertificateStore` for the name the client asks for
in its ClientHello (SNI), or for the CONNECT host when it sends none; the
connection itself is a :class:`~twistproxy._memorytls.ServerTLS`.  Each
host gets one context, switched to by the SNI callback every context has.

Towards origins, :class:`UpstreamTLS` holds the standard library's client
context and puts a :class:`~twistproxy._memorytls.ClientTLS` on each
connection: verified (the chain, and the name or IP address, by OpenSSL
during the handshake) against the system's trust store or a CA file the
user names, or unverified with ``--insecure``; SNI and ALPN ``http/1.1``
either way.
"""

from __future__ import annotations

import functools
import os
import re
import ssl
import tempfile
from collections import OrderedDict
from collections.abc import Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import TYPE_CHECKING, Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twistproxy._memorytls import ClientTLS, note_server_name
from twistproxy.connection import Certificate

if TYPE_CHECKING:
    from twistproxy.certs import CertificateStore, IssuedCertificate
    from twistproxy.connection import Server

_log = Logger()

ALPN_HTTP11 = b"http/1.1"
"""The only application protocol offered until HTTP/2 exists here."""

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
            _load_chain(context, key, certificates)
        except ssl.SSLError:
            raise ValueError(f"{path}: the key is not the certificate's") from None
        self.context = context

    def matches(self, hostname: str) -> bool:
        """Whether *hostname* gets this certificate."""
        return fnmatchcase(hostname.lower(), self.pattern)


def _server_context() -> ssl.SSLContext:
    """A server context with the options every intercepting context has."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_COMPRESSION
    # http/1.1 when the client offers it, else no ALPN at all.
    context.set_alpn_protocols([ALPN_HTTP11.decode("ascii")])
    return context


def _load_chain(context: ssl.SSLContext, key: Any, certificates: Sequence[Any]) -> None:
    """
    Give *context* the private *key* and *certificates* (the leaf first,
    then its chain; ``cryptography`` objects).  The standard library reads
    them only from a file: an anonymous memory file where the system has
    them (Linux), else a private temporary file, removed at once.

    :raises ssl.SSLError: if the key is not the leaf's.
    """
    from cryptography.hazmat.primitives.serialization import (
        Encoding,
        NoEncryption,
        PrivateFormat,
    )

    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())
    pem += b"".join(certificate.public_bytes(Encoding.PEM) for certificate in certificates)
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("twistproxy-certificate", os.MFD_CLOEXEC)
        try:
            os.write(fd, pem)
            context.load_cert_chain(f"/proc/self/fd/{fd}")
        finally:
            os.close(fd)
        return
    with tempfile.NamedTemporaryFile(prefix="twistproxy-") as file:  # mode 0600
        file.write(pem)
        file.flush()
        context.load_cert_chain(file.name)


class ServerContexts:
    """
    One ``ssl.SSLContext`` per host name, each presenting that host's minted
    certificate (or a *given* one: the first whose pattern matches).  A
    context is rebuilt when the store hands out a new certificate for the
    name (renewed near expiry, or evicted and minted again), so the store's
    cache is the one that decides.  Every context switches a connection to
    the context of the name the client asks for (SNI).

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
            own.context.sni_callback = self._servername
        self._contexts: OrderedDict[str, tuple[IssuedCertificate, ssl.SSLContext]] = OrderedDict()

    def context_for(self, hostname: str) -> ssl.SSLContext:
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
        _load_chain(context, issued.key, (issued.certificate, *issued.chain))
        context.sni_callback = self._servername
        self.built += 1
        self._contexts[key] = (issued, context)
        self._contexts.move_to_end(key)
        if len(self._contexts) > self.capacity:
            self._contexts.popitem(last=False)
        return context

    def _servername(self, tls: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> None:
        """The standard library's SNI callback: switch to the named host's context."""
        note_server_name(tls, name)
        if not name:
            return
        try:
            tls.context = self.context_for(name)
        except Exception:
            # The callback cannot raise usefully: keep the CONNECT host's
            # certificate, and say why in the log.
            _log.failure("no certificate for SNI name {name}", name=name)


class UpstreamTLS:
    """
    TLS towards origins (and an ``https`` upstream proxy): one standard
    library client context, TLS 1.2 or later, ALPN ``http/1.1``, and SNI
    per connection (none for an IP address).  Unless *insecure*, OpenSSL
    verifies the chain against the system's trust store (or *ca_file*)
    and checks during the handshake that the certificate is valid for the
    name or IP address connected to, so that nothing is sent to a server
    that fails either check.

    :param ca_file: A PEM file of CA certificates to trust instead of the
        system's store.
    :param insecure: Verify nothing (the certificate chain, nor the name).
    :raises ValueError: if *ca_file* cannot be read.
    :ivar context: The shared ``ssl.SSLContext``.
    """

    def __init__(self, *, ca_file: str | None = None, insecure: bool = False) -> None:
        self.insecure = insecure
        self.ca_file = ca_file
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, check_hostname
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # OpenSSL's default cipher list, as the pyOpenSSL context before had:
        # Python's own leaves out TLS 1.2 suites browsers still offer and
        # older origins may need (RSA key exchange, CBC with SHA-1 MACs).
        context.set_ciphers("DEFAULT")
        context.set_alpn_protocols([ALPN_HTTP11.decode("ascii")])
        if insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif ca_file is None:
            context.set_default_verify_paths()
        else:
            if not Path(ca_file).is_file():
                raise ValueError(f"{ca_file}: no such file")
            try:
                context.load_verify_locations(cafile=ca_file)
            except ssl.SSLError as e:
                raise ValueError(f"{ca_file}: no PEM certificate could be read") from e
        self.context = context

    def client(self, server_name: str, inner: IProtocol) -> ClientTLS:
        """TLS with a server called *server_name* (SNI, verified name), around *inner*."""
        return ClientTLS(self.context, server_name, inner)

    def wrap(self, endpoint: IStreamClientEndpoint, server_name: str) -> IStreamClientEndpoint:
        """
        *endpoint* with TLS with *server_name* on each connection it makes:
        the protocols it connects sit on a :class:`~twistproxy._memorytls.ClientTLS`,
        and its Deferred fires with the protocol (as ``wrapClientTLS``'s does).
        """
        return _TLSEndpoint(self, server_name, endpoint)


@implementer(IStreamClientEndpoint)
class _TLSEndpoint:
    """An endpoint whose connections carry TLS (:meth:`UpstreamTLS.wrap`)."""

    def __init__(
        self, upstream: UpstreamTLS, server_name: str, endpoint: IStreamClientEndpoint
    ) -> None:
        self._upstream = upstream
        self._server_name = server_name
        self._endpoint = endpoint

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:  # noqa: N803
        """Connect, with TLS between the connection and *protocolFactory*'s protocol."""
        factory = _TLSFactory(self._upstream, self._server_name, protocolFactory)
        d: Deferred[Any] = self._endpoint.connect(factory)
        d.addCallback(_inner)
        return d


def _inner(tls: ClientTLS) -> IProtocol:
    """The protocol above *tls*."""
    return tls.inner


class _TLSFactory(Factory):
    """Builds *factory*'s protocol, under a :class:`~twistproxy._memorytls.ClientTLS`."""

    noisy = False

    def __init__(
        self, upstream: UpstreamTLS, server_name: str, factory: IProtocolFactory
    ) -> None:
        self._upstream = upstream
        self._server_name = server_name
        self._factory = factory

    def buildProtocol(self, addr: Any) -> ClientTLS | None:
        """The wrapped factory's protocol under TLS (``None`` if it declines)."""
        inner = self._factory.buildProtocol(addr)
        if inner is None:
            return None
        return self._upstream.client(self._server_name, inner)


def record_server_tls(server: Server, connection: ssl.SSLObject) -> None:
    """
    Record the facts of the TLS *connection*, whose handshake with a server
    just completed, on its connection record *server*: that TLS is up, the
    SNI name sent (none for an IP address), the negotiated ALPN protocol
    and TLS version, and the server's certificate
    (:class:`~twistproxy.connection.Certificate`).
    """
    name = connection.server_hostname
    server.tls_established = True
    server.sni = name if name and not _is_ip(name) else None
    alpn = connection.selected_alpn_protocol()
    server.alpn = alpn.encode("ascii") if alpn else None
    server.tls_version = connection.version()
    presented = connection.getpeercert(binary_form=True)
    server.certificate = _certificate(presented) if presented else None


@functools.lru_cache(maxsize=256)
def _certificate(der: bytes) -> Certificate:
    """
    The record of the certificate *der* (DER): an origin presents the same
    one on every connection, and reading it again costs a parse, two names
    and a hash per connection.
    """
    from cryptography.x509 import load_der_x509_certificate

    return Certificate.from_x509(load_der_x509_certificate(der))


def _is_ip(name: str) -> bool:
    return isIPAddress(name) or isIPv6Address(name)


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
"""What OpenSSL's X.509 verification error codes (``verify_code``) mean to a user."""

_NAME_MISMATCH = (62, 64)  # X509_V_ERR_HOSTNAME_MISMATCH, X509_V_ERR_IP_ADDRESS_MISMATCH


def describe_tls_failure(reason: Failure, server_name: str | None) -> str:
    """
    Say why TLS with a server failed, in words a user can act on: the
    certificate's verification error (expired, unknown issuer, ...), a name
    the certificate does not cover, or OpenSSL's own reason.

    :param reason: The failure that ended the connection (an
        ``ssl.SSLError``, an ``ssl.SSLCertVerificationError`` for a
        refused certificate).
    :param server_name: The name the certificate was checked against.
    """
    error = reason.value
    if isinstance(error, ssl.SSLCertVerificationError):
        code = error.verify_code
        if code in _NAME_MISMATCH:
            return f"the certificate is not valid for {server_name}"
        why = _VERIFY_REASONS.get(code) or error.verify_message or f"verification error {code}"
        return f"certificate refused: {why}"
    if isinstance(error, ssl.SSLError):  # "[SSL: X] text (_ssl.c:N)"
        text = re.sub(r"^\[[^]]*\]\s*|\s*\(_ssl\.c:\d+\)$", "", str(error))
        return text or reason.getErrorMessage()
    return reason.getErrorMessage()
