"""
Certificates for the HTTPS tests, made once per session: the proxy's CA, a
separate CA for the test origins, and origin certificates that are valid,
expired, for the wrong host, or from an unknown CA.
"""

from __future__ import annotations

import datetime
import ipaddress
from pathlib import Path
from typing import Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from zope.interface import implementer

from twistproxy.certs import CertificateAuthority

NOW = datetime.datetime.now(datetime.UTC)


@attrs.frozen
class OriginCert:
    """A certificate and key for a test origin, and the PEM path of its CA."""

    certificate: x509.Certificate
    key: Any


def make_ca(name: str) -> tuple[x509.Certificate, Any]:
    """A self-signed CA valid around :data:`NOW`: its certificate and key."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(days=1))
        .not_valid_after(NOW + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def make_leaf(ca: tuple[x509.Certificate, Any], names: list[str], *, expired: bool = False
              ) -> OriginCert:
    """A server certificate for *names* (DNS names or IP literals) signed by *ca*."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    sans: list[x509.GeneralName] = []
    for name in names:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            sans.append(x509.DNSName(name))
    start = NOW - datetime.timedelta(days=10 if expired else 1)
    end = NOW - datetime.timedelta(days=2) if expired else NOW + datetime.timedelta(days=20)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])]))
        .issuer_name(ca_cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start).not_valid_after(end)
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        .sign(ca_key, hashes.SHA256())
    )
    return OriginCert(cert, key)


@attrs.frozen
class PKI:
    """Everything the HTTPS tests trust or present, with PEM files in *directory*."""

    directory: Path
    proxy_ca: CertificateAuthority
    proxy_ca_pem: Path
    origin_ca_pem: Path
    good: OriginCert
    expired: OriginCert
    wrong_host: OriginCert
    unknown_ca: OriginCert


def make_pki(directory: Path) -> PKI:
    """Make the test PKI under *directory*."""
    proxy_ca = CertificateAuthority.generate(now=NOW, common_name="twistproxy test CA")
    proxy_ca.save(directory / "proxy-ca")
    origin_ca = make_ca("origin test CA")
    origin_ca_pem = directory / "origin-ca.pem"
    origin_ca_pem.write_bytes(origin_ca[0].public_bytes(serialization.Encoding.PEM))
    names = ["localhost", "127.0.0.1", "::1"]
    return PKI(
        directory=directory,
        proxy_ca=proxy_ca,
        proxy_ca_pem=directory / "proxy-ca" / "twistproxy-ca-cert.pem",
        origin_ca_pem=origin_ca_pem,
        good=make_leaf(origin_ca, names),
        expired=make_leaf(origin_ca, names, expired=True),
        wrong_host=make_leaf(origin_ca, ["elsewhere.example"]),
        unknown_ca=make_leaf(make_ca("nobody trusts me"), names),
    )


def _select_http11(connection: SSL.Connection, offered: list[bytes]) -> Any:
    """An origin's ALPN choice: ``http/1.1`` when offered, else none."""
    return b"http/1.1" if b"http/1.1" in offered else SSL.NO_OVERLAPPING_PROTOCOLS


@implementer(IOpenSSLServerConnectionCreator)
class OriginTLS:
    """Server TLS for a test origin presenting *cert* (ALPN: ``http/1.1``, if offered)."""

    def __init__(self, cert: OriginCert) -> None:
        context = SSL.Context(SSL.TLS_SERVER_METHOD)
        context.use_certificate(cert.certificate)
        context.use_privatekey(cert.key)
        context.set_alpn_select_callback(_select_http11)
        self.context = context

    def serverConnectionForTLS(self, tls_protocol: Any) -> SSL.Connection:
        connection = SSL.Connection(self.context, None)
        connection.set_app_data(tls_protocol)
        return connection
