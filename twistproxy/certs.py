# -*- test-case-name: tests.test_certs -*-
"""
The certificate authority and the certificates it mints for intercepted hosts.

To read an intercepted TLS connection, the proxy presents a certificate for the
host the client asked for, signed by a certificate authority the client has been
told to trust.  :class:`CertificateAuthority` creates, loads and saves that CA;
:class:`CertificateStore` mints a leaf certificate per host name and keeps the
most recently used ones.

This module does no networking and reads no clock: the current time comes in as
an argument or an injected callable, and files are read and written only at the
paths passed in.  Minting is synchronous and cheap (one EC signature), because
it runs inside OpenSSL's server-name callback, which cannot wait.
"""

from __future__ import annotations

import errno
import functools
import ipaddress
import os
import re
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TypeAlias

import attrs
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from twistproxy.errors import CertificateAuthorityError

# Minting one leaf, measured on the development machine (timeit, median of 200):
# with the shared EC P-256 leaf key and an EC CA ~110 µs; with an RSA-2048 CA
# ~320 µs; generating a fresh RSA-2048 leaf key each time ~35-40 ms.

PrivateKey: TypeAlias = (
    rsa.RSAPrivateKey
    | ec.EllipticCurvePrivateKey
    | ed25519.Ed25519PrivateKey
    | ed448.Ed448PrivateKey
)
"""
The key types a CA or a leaf may have: those that both sign certificates and
serve TLS through OpenSSL.
"""

CA_FILE = "twistproxy-ca.pem"
"""
The CA's private key and certificate, PEM, readable by its owner alone (0600).
"""

CA_CERT_PEM = "twistproxy-ca-cert.pem"
"""
The CA certificate alone, PEM (0644): the file users install as trusted.
"""

CA_CERT_DER = "twistproxy-ca-cert.cer"
"""
The CA certificate alone, DER (0644), for systems that want a ``.cer`` file.
"""

# A CA users install by hand should outlive many releases of the proxy; the
# leaves it signs are short-lived, so a long CA lifetime is cheap.
_CA_LIFETIME = timedelta(days=10 * 365)

# Backdating covers clients whose clocks run behind the proxy's.
_BACKDATE = timedelta(days=2)

# The CA/Browser Forum caps TLS server certificates at 398 days and Apple
# platforms refuse any over 825 days; 397 days stays under both, counting the
# validity period inclusively as RFC 5280 does.
_LEAF_LIFETIME = timedelta(days=397)

# A cached leaf this close to its expiry is minted again.
_RENEW_BEFORE = timedelta(days=1)

# ub-common-name (RFC 5280 appendix A): a longer name cannot be the subject CN.
_MAX_COMMON_NAME = 64

_DIRECTORY_MODE = 0o700
_KEY_FILE_MODE = 0o600
_CERT_FILE_MODE = 0o644

_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]+)-----\r?\n.*?-----END \1-----", re.DOTALL)
_PEM_BEGIN = b"-----BEGIN "


@attrs.frozen
class CertificateAuthority:
    """
    A certificate authority: a CA certificate and its private key.

    :ivar certificate: The CA certificate, self-signed when generated here.
    :ivar key: The private key matching the certificate's public key.
    """

    certificate: x509.Certificate
    key: PrivateKey

    @classmethod
    def generate(cls, *, now: datetime, common_name: str = "twistproxy CA") -> CertificateAuthority:
        """
        Create a new self-signed CA with an EC P-256 key.

        :param now: The current time, timezone-aware.
        :param common_name: The common name of the CA's subject and issuer.
        :returns: The new authority, valid from two days before *now* for ten
            years.
        :raises ValueError: if *now* is naive or *common_name* is empty or
            longer than 64 characters.
        """
        _check_aware(now)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "twistproxy"),
            ]
        )
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + _CA_LIFETIME)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                _key_usage(digital_signature=True, key_cert_sign=True, crl_sign=True),
                critical=True,
            )
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return cls(certificate, key)

    @classmethod
    def load(cls, path: Path, *, now: datetime) -> CertificateAuthority:
        """
        Load a CA from a PEM file holding its private key and its certificate,
        in either order.  Other PEM blocks (such as ``EC PARAMETERS``) are
        ignored.

        :param path: The file to read.
        :param now: The current time, timezone-aware; the CA must be valid then.
        :returns: The loaded authority.
        :raises CertificateAuthorityError: with a one-line reason naming
            *path*, if the file cannot be read, is malformed, does not hold
            exactly one unencrypted private key and one certificate, the key
            does not match the certificate, the certificate is not a CA, or it
            is not valid at *now*.
        :raises ValueError: if *now* is naive.
        """
        _check_aware(now)
        try:
            data = path.read_bytes()
        except OSError as e:
            raise _refusal(path, f"cannot be read ({e.strerror or e})") from e
        key, certificate = _parse_ca_file(path, data)
        _check_ca(path, key, certificate, now)
        return cls(certificate, key)

    def save(self, directory: Path) -> None:
        """
        Write the CA to *directory*: :data:`CA_FILE` (key and certificate,
        mode 0600), :data:`CA_CERT_PEM` and :data:`CA_CERT_DER` (the
        certificate alone, mode 0644).  Existing files are replaced, each at
        once (written beside it, then renamed over it): a reader, or a crash,
        never sees half a file.

        A directory that does not exist is created with mode 0700; one that
        already exists keeps its mode, since it may be shared with other files.

        :param directory: Where to write the files.
        :raises OSError: if the directory or a file cannot be written.
        """
        _make_directory(directory)
        # The certificate files first: once CA_FILE exists, a CA is present.
        self._save_certificates(directory)
        _write_file(directory / CA_FILE, self._key_file(), _KEY_FILE_MODE)

    @classmethod
    def load_or_create(cls, directory: Path, *, now: datetime) -> tuple[CertificateAuthority, bool]:
        """
        Load the CA saved in *directory*, or generate and save one there if
        there is none.

        Creation is atomic and happens once: the new :data:`CA_FILE` is
        written in full under a temporary name, then linked to its name
        only if no other process got there first (``link`` never replaces a
        file).  A process that loses that race loads the winner's CA, so
        every process started on one directory, however close together, ends
        with the CA on disk.  The certificate files follow the key file;
        missing ones (a crash in between) are written again by the next
        start.

        :param directory: The directory holding :data:`CA_FILE`.
        :param now: The current time, timezone-aware.
        :returns: The authority, and whether it was created by this call.
        :raises CertificateAuthorityError: if :data:`CA_FILE` exists but cannot
            be loaded (see :meth:`load`).
        :raises OSError: if a new CA cannot be saved.
        """
        path = directory / CA_FILE
        if not path.exists():
            authority = cls.generate(now=now)
            _make_directory(directory)
            if _create_file(path, authority._key_file(), _KEY_FILE_MODE):
                authority._save_certificates(directory)
                return authority, True
        authority = cls.load(path, now=now)
        try:
            authority._save_certificates(directory, missing_only=True)
        except OSError:
            pass  # a read-only directory: the CA itself is usable
        return authority, False

    def _key_file(self) -> bytes:
        """
        The contents of :data:`CA_FILE`: the private key, then the certificate.
        """
        key_pem = self.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        return key_pem + self.certificate_pem()

    def _save_certificates(self, directory: Path, *, missing_only: bool = False) -> None:
        """
        Write :data:`CA_CERT_PEM` and :data:`CA_CERT_DER` into *directory*
        (only those that do not exist, if *missing_only*).
        """
        for name, data in ((CA_CERT_PEM, self.certificate_pem()),
                           (CA_CERT_DER, self.certificate_der())):
            if not (missing_only and (directory / name).exists()):
                _write_file(directory / name, data, _CERT_FILE_MODE)

    def certificate_pem(self) -> bytes:
        """
        :returns: The CA certificate, PEM-encoded.
        """
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def certificate_der(self) -> bytes:
        """
        :returns: The CA certificate, DER-encoded.
        """
        return self.certificate.public_bytes(serialization.Encoding.DER)


@attrs.frozen(kw_only=True)
class IssuedCertificate:
    """
    A leaf certificate minted for one host.

    :ivar certificate: The leaf certificate.
    :ivar key: The leaf's private key (shared by every leaf of a store).
    :ivar chain: The certificates to send after the leaf: the CA certificate.
    :ivar hostname: The name the certificate was minted for, normalised: lower
        case, IDNA-encoded, IP literals without brackets.
    """

    certificate: x509.Certificate
    key: PrivateKey
    chain: tuple[x509.Certificate, ...]
    hostname: str


class CertificateStore:
    """
    Mints leaf certificates signed by a CA and keeps the most recently used
    ones.  Not thread-safe: call it from the reactor thread.

    :ivar authority: The CA that signs the leaves.
    :ivar minted: How many certificates have been minted.
    :ivar hits: How many requests were answered from the cache.
    """

    def __init__(
        self,
        authority: CertificateAuthority,
        *,
        now: Callable[[], datetime],
        capacity: int = 1024,
        leaf_key: PrivateKey | None = None,
    ) -> None:
        """
        :param authority: The CA that signs the leaves.
        :param now: Returns the current time, timezone-aware.
        :param capacity: How many certificates to keep, at least one.
        :param leaf_key: The private key every leaf carries; a new EC P-256
            key when not given.
        :raises ValueError: if *capacity* is less than one.
        """
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        if leaf_key is None:
            # One leaf key for the whole process, separate from the CA key:
            # mitmproxy reused the CA key for leaves and hit client bugs
            # (its issue #6494), and a single leaf key makes minting cost one
            # signature instead of a key generation.
            leaf_key = ec.generate_private_key(ec.SECP256R1())
        self.authority = authority
        self.minted = 0
        self.hits = 0
        self._now = now
        self._capacity = capacity
        self._leaf_key = leaf_key
        self._cache: OrderedDict[str, IssuedCertificate] = OrderedDict()
        # Everything that is the same for every leaf, computed once.
        ca = authority.certificate
        self._ca_not_before = ca.not_valid_before_utc
        self._ca_not_after = ca.not_valid_after_utc
        self._chain = (ca,)
        public_key = leaf_key.public_key()
        self._base = (
            x509.CertificateBuilder()
            .issuer_name(ca.subject)
            .public_key(public_key)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                _key_usage(
                    digital_signature=True,
                    # RSA key exchange (TLS 1.2) encrypts to the leaf key.
                    key_encipherment=isinstance(leaf_key, rsa.RSAPrivateKey),
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(_authority_key_identifier(ca), critical=False)
        )
        self._hash = _signature_hash(authority.key)

    def __len__(self) -> int:
        """
        :returns: How many certificates are cached.
        """
        return len(self._cache)

    def certificate_for(self, hostname: str) -> IssuedCertificate:
        """
        Return a certificate for *hostname*, from the cache or freshly minted.

        :param hostname: A DNS name (ASCII or Unicode) or an IP literal,
            optionally in brackets (``[::1]``), without a port.
        :returns: A certificate naming *hostname* in its subject alternative
            names, valid now and for at least another day unless the CA
            expires sooner.
        :raises ValueError: if *hostname* is empty or not a valid name.
        :raises CertificateAuthorityError: if the CA has expired.
        """
        name, san = _normalise(hostname)
        now = self._now()
        _check_aware(now)
        issued = self._cache.get(name)
        if issued is not None and not self._stale(issued, now):
            self._cache.move_to_end(name)
            self.hits += 1
            return issued
        issued = self._mint(name, san, now)
        self._cache[name] = issued
        self._cache.move_to_end(name)
        while len(self._cache) > self._capacity:
            self._cache.popitem(last=False)
        self.minted += 1
        return issued

    def _stale(self, issued: IssuedCertificate, now: datetime) -> bool:
        """
        Whether a cached certificate must be minted again: it is expired, or
        it expires within a day and a new one would last longer.
        """
        not_after = issued.certificate.not_valid_after_utc
        if now >= not_after:
            return True
        return not_after - now <= _RENEW_BEFORE and not_after < self._ca_not_after

    def _mint(self, name: str, san: x509.GeneralName, now: datetime) -> IssuedCertificate:
        """
        Sign a new leaf certificate for *name*.
        """
        if now >= self._ca_not_after:
            raise CertificateAuthorityError(
                f"the CA certificate expired on {_format_time(self._ca_not_after)}"
            )
        not_before = max(now - _BACKDATE, self._ca_not_before)
        # Never outlive the CA: clients would reject the chain at that point anyway.
        not_after = min(not_before + _LEAF_LIFETIME, self._ca_not_after)
        long_name = len(name) > _MAX_COMMON_NAME
        subject = x509.Name([] if long_name else [x509.NameAttribute(NameOID.COMMON_NAME, name)])
        certificate = (
            self._base.subject_name(subject)
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            # RFC 5280 section 4.2.1.6: critical when the subject is empty.
            .add_extension(x509.SubjectAlternativeName([san]), critical=long_name)
            .sign(self.authority.key, self._hash)
        )
        return IssuedCertificate(
            certificate=certificate, key=self._leaf_key, chain=self._chain, hostname=name
        )


@functools.lru_cache(maxsize=1024)
def _normalise(hostname: str) -> tuple[str, x509.GeneralName]:
    """
    The cache key and the subject alternative name for *hostname*; a
    tunnel asks for its host's certificate up to three times (the CONNECT,
    the SNI, the context), so the answers are kept.

    :raises ValueError: if *hostname* is empty or cannot be IDNA-encoded.
    """
    literal = hostname[1:-1] if hostname.startswith("[") and hostname.endswith("]") else hostname
    try:
        address = ipaddress.ip_address(literal)
    except ValueError:
        pass
    else:
        return str(address), x509.IPAddress(address)
    name = hostname.lower()
    if name.endswith("."):
        name = name[:-1]  # the fully qualified form names the same host
    if not name:
        raise ValueError(f"not a host name: {hostname!r}")
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError as e:
            raise ValueError(f"not a valid host name: {hostname!r}") from e
    return name, x509.DNSName(name)


def _key_usage(
    *,
    digital_signature: bool = False,
    key_encipherment: bool = False,
    key_cert_sign: bool = False,
    crl_sign: bool = False,
) -> x509.KeyUsage:
    """
    A key usage extension with the given bits set and the others clear.
    """
    return x509.KeyUsage(
        digital_signature=digital_signature,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=key_cert_sign,
        crl_sign=crl_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _authority_key_identifier(ca: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """
    The authority key identifier for certificates *ca* signs: its subject key
    identifier, or one computed from its public key if it carries none.
    """
    try:
        ski = ca.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        ski = x509.SubjectKeyIdentifier.from_public_key(ca.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _signature_hash(key: PrivateKey) -> hashes.SHA256 | None:
    """
    The hash to sign with *key*: SHA-256, or none for EdDSA keys, which hash
    internally.
    """
    if isinstance(key, (ed25519.Ed25519PrivateKey, ed448.Ed448PrivateKey)):
        return None
    return hashes.SHA256()


def _parse_ca_file(path: Path, data: bytes) -> tuple[PrivateKey, x509.Certificate]:
    """
    Find the one private key and the one certificate in a CA file's PEM data.

    :raises CertificateAuthorityError: if there are not exactly one of each,
        or a block is malformed.
    """
    blocks = list(_PEM_BLOCK.finditer(data))
    if len(blocks) != data.count(_PEM_BEGIN):
        raise _refusal(path, "malformed PEM (a BEGIN line without its END line)")
    keys = []
    certificates = []
    for block in blocks:
        label = block.group(1).decode("ascii")
        if label == "CERTIFICATE":
            try:
                certificates.append(x509.load_pem_x509_certificate(block.group(0)))
            except ValueError as e:
                raise _refusal(path, "malformed PEM certificate") from e
        elif label.endswith("PRIVATE KEY"):
            try:
                keys.append(serialization.load_pem_private_key(block.group(0), password=None))
            except TypeError as e:
                raise _refusal(path, "the private key is encrypted; it must not be") from e
            except UnsupportedAlgorithm as e:
                raise _refusal(path, "the private key's algorithm is not supported") from e
            except ValueError as e:
                raise _refusal(path, "malformed PEM private key") from e
    if not keys and not certificates:
        raise _refusal(path, "no PEM private key or certificate found")
    if not keys:
        raise _refusal(path, "no private key found")
    if not certificates:
        raise _refusal(path, "no certificate found")
    if len(keys) > 1:
        raise _refusal(path, f"{len(keys)} private keys found; expected one")
    if len(certificates) > 1:
        raise _refusal(path, f"{len(certificates)} certificates found; expected one")
    [key] = keys
    if not isinstance(key, PrivateKey):
        raise _refusal(path, f"unsupported private key type {type(key).__name__}")
    return key, certificates[0]


def _check_ca(
    path: Path,
    key: PrivateKey,
    certificate: x509.Certificate,
    now: datetime,
) -> None:
    """
    Check that *key* and *certificate* make a CA valid at *now*.

    :raises CertificateAuthorityError: if they do not.
    """
    if _public_der(key.public_key()) != _public_der(certificate.public_key()):
        raise _refusal(path, "the private key does not match the certificate")
    try:
        extensions = certificate.extensions
        try:
            constraints = extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            constraints = None
        try:
            usage: x509.KeyUsage | None = extensions.get_extension_for_class(x509.KeyUsage).value
        except x509.ExtensionNotFound:
            usage = None
    except ValueError as e:
        raise _refusal(path, "the certificate has a malformed extension") from e
    if constraints is None or not constraints.ca:
        raise _refusal(path, "the certificate is not a CA (no BasicConstraints with ca=True)")
    if usage is not None and not usage.key_cert_sign:
        raise _refusal(path, "the certificate's key usage does not allow signing certificates")
    not_before = certificate.not_valid_before_utc
    not_after = certificate.not_valid_after_utc
    if now > not_after:
        raise _refusal(path, f"the CA certificate expired on {_format_time(not_after)}")
    if now < not_before:
        raise _refusal(path, f"the CA certificate is not valid until {_format_time(not_before)}")


def _public_der(key: CertificatePublicKeyTypes) -> bytes:
    """
    *key* as DER SubjectPublicKeyInfo, for comparing keys.
    """
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _make_directory(directory: Path) -> None:
    """
    Create *directory* (and its parents) with mode 0700 if it does not
    exist; an existing one keeps its mode.
    """
    try:
        directory.mkdir(mode=_DIRECTORY_MODE, parents=True)
    except FileExistsError:
        pass
    else:
        # mkdir's mode is filtered through the umask; make it exact.
        directory.chmod(_DIRECTORY_MODE)


def _write_temporary(path: Path, data: bytes, mode: int) -> Path:
    """
    Write *data* to a new file beside *path*, created with exactly *mode*
    (so a secret is never readable by others, even briefly) and flushed to
    disk.

    :returns: The new file's path.
    """
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with open(fd, "wb") as f:
            os.fchmod(fd, mode)  # mkstemp makes 0600; the certificates are 0644
            f.write(data)
            f.flush()
            os.fsync(fd)
    except BaseException:
        os.unlink(name)
        raise
    return Path(name)


def _write_file(path: Path, data: bytes, mode: int) -> None:
    """
    Replace the file at *path* with *data*, with exactly *mode*, at once:
    written in full beside it, then renamed over it.
    """
    temporary = _write_temporary(path, data, mode)
    try:
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink()
        raise


def _create_file(path: Path, data: bytes, mode: int) -> bool:
    """
    Create the file at *path* with *data* and exactly *mode*, unless it
    exists: written in full beside it, then hard-linked to *path*, which
    fails if another process created *path* first.  On a file system
    without hard links, *path* is created exclusively and written in place.

    :returns: Whether this call created the file.
    """
    temporary = _write_temporary(path, data, mode)
    try:
        os.link(temporary, path)
    except FileExistsError:
        return False
    except OSError as e:
        if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP):
            raise
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, mode)
        except FileExistsError:
            return False
        with open(fd, "wb") as f:
            os.fchmod(fd, mode)
            f.write(data)
    finally:
        temporary.unlink()
    return True


def _refusal(path: Path, reason: str) -> CertificateAuthorityError:
    """
    The error refusing the CA file at *path*, on one line.
    """
    return CertificateAuthorityError(f"CA file {path}: {' '.join(reason.split())}")


def _format_time(moment: datetime) -> str:
    """
    *moment* as a short UTC timestamp for error messages.
    """
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC"


def _check_aware(now: datetime) -> None:
    """
    :raises ValueError: if *now* carries no timezone.
    """
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError(f"the current time must be timezone-aware, not {now!r}")
