"""
Tests for :mod:`twistproxy.certs`.
"""

from __future__ import annotations

import ipaddress
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from unittest import SkipTest

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from twisted.trial.unittest import SynchronousTestCase

from twistproxy.certs import (
    CA_CERT_DER,
    CA_CERT_PEM,
    CA_FILE,
    CertificateAuthority,
    CertificateStore,
    PrivateKey,
)
from twistproxy.errors import CertificateAuthorityError

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
"""The fixed "current time" of these tests."""

_CA = CertificateAuthority.generate(now=NOW)
"""A CA shared by the tests that only read it."""


class _Clock:
    """
    A settable stand-in for the store's ``now`` callable.
    """

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def _temporary_directory(case: SynchronousTestCase) -> Path:
    """
    A new directory, removed when *case* ends.
    """
    directory = tempfile.mkdtemp()
    case.addCleanup(shutil.rmtree, directory)
    return Path(directory)



_RACER = """
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives import hashes

from twistproxy.certs import CertificateAuthority

print("ready", flush=True)
sys.stdin.readline()
ca, created = CertificateAuthority.load_or_create(Path(sys.argv[1]), now=datetime.now(UTC))
print(ca.certificate.fingerprint(hashes.SHA256()).hex(), int(created), flush=True)
"""


def _race_load_or_create(directory: Path, count: int) -> list[tuple[str, bool]]:
    """
    Run `CertificateAuthority.load_or_create` on *directory* in *count*
    processes released at once (bounded: 60 s).

    :returns: Each process's CA fingerprint and whether it created the CA.
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH"))
        if p
    ))
    racers = [
        subprocess.Popen([sys.executable, "-c", _RACER, str(directory)], env=env,
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    try:
        for racer in racers:
            assert racer.stdout is not None
            assert racer.stdout.readline() == "ready\n"  # imported, waiting
        for racer in racers:
            assert racer.stdin is not None
            racer.stdin.write("go\n")
            racer.stdin.flush()
        results = []
        for racer in racers:
            out, _ = racer.communicate(timeout=60)
            assert racer.returncode == 0, out
            fingerprint, created = out.split()
            results.append((fingerprint, created == "1"))
        return results
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait()


def _key_pem(key: PrivateKey) -> bytes:
    """
    *key* as unencrypted PKCS#8 PEM.
    """
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _cert_pem(certificate: x509.Certificate) -> bytes:
    """
    *certificate* as PEM.
    """
    return certificate.public_bytes(serialization.Encoding.PEM)


def _public_der(key: PrivateKey) -> bytes:
    """
    The public half of *key* as DER, for comparing keys.
    """
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _mode(path: Path) -> int:
    """
    The permission bits of *path*.
    """
    return stat.S_IMODE(path.stat().st_mode)


def _verify_signature(leaf: x509.Certificate, issuer: x509.Certificate) -> None:
    """
    Check *leaf*'s signature with *issuer*'s public key.

    :raises cryptography.exceptions.InvalidSignature: if it does not verify.
    """
    public_key = issuer.public_key()
    assert leaf.signature_hash_algorithm is not None
    if isinstance(public_key, rsa.RSAPublicKey):
        public_key.verify(
            leaf.signature,
            leaf.tbs_certificate_bytes,
            padding.PKCS1v15(),
            leaf.signature_hash_algorithm,
        )
    else:
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(
            leaf.signature, leaf.tbs_certificate_bytes, ec.ECDSA(leaf.signature_hash_algorithm)
        )


class GenerateTests(SynchronousTestCase):
    """
    Tests for `CertificateAuthority.generate`.
    """

    def test_names(self) -> None:
        """
        The CA is self-issued, named by the given common name and the
        ``twistproxy`` organisation.
        """
        ca = CertificateAuthority.generate(now=NOW, common_name="Test CA")
        subject = ca.certificate.subject
        self.assertEqual(subject, ca.certificate.issuer)
        self.assertEqual(
            [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)], ["Test CA"]
        )
        self.assertEqual(
            [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)],
            ["twistproxy"],
        )

    def test_default_common_name(self) -> None:
        """
        Without a common name the CA is called ``twistproxy CA``.
        """
        [cn] = _CA.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.assertEqual(cn.value, "twistproxy CA")

    def test_validity(self) -> None:
        """
        The CA is valid from two days before *now* until ten years after it.
        """
        self.assertEqual(_CA.certificate.not_valid_before_utc, NOW - timedelta(days=2))
        self.assertEqual(_CA.certificate.not_valid_after_utc, NOW + timedelta(days=3650))

    def test_basic_constraints(self) -> None:
        """
        The CA carries a critical BasicConstraints with ``ca=True`` and a path
        length of zero: it signs leaves, not other CAs.
        """
        extension = _CA.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(extension.critical)
        self.assertEqual(extension.value, x509.BasicConstraints(ca=True, path_length=0))

    def test_key_usage(self) -> None:
        """
        The CA's critical key usage allows signing certificates, CRLs and
        digital signatures, and nothing else.
        """
        extension = _CA.certificate.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(extension.critical)
        usage = extension.value
        self.assertEqual(
            (usage.key_cert_sign, usage.crl_sign, usage.digital_signature), (True, True, True)
        )
        self.assertEqual(
            (
                usage.content_commitment,
                usage.key_encipherment,
                usage.data_encipherment,
                usage.key_agreement,
            ),
            (False, False, False, False),
        )

    def test_subject_key_identifier(self) -> None:
        """
        The CA carries the subject key identifier of its public key.
        """
        extension = _CA.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        self.assertEqual(
            extension.value, x509.SubjectKeyIdentifier.from_public_key(_CA.key.public_key())
        )

    def test_key_and_signature(self) -> None:
        """
        The CA has an EC P-256 key and signs itself with it using SHA-256.
        """
        self.assertIsInstance(_CA.key, ec.EllipticCurvePrivateKey)
        assert isinstance(_CA.key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(_CA.key.curve, ec.SECP256R1)
        self.assertIsInstance(_CA.certificate.signature_hash_algorithm, hashes.SHA256)
        self.assertEqual(
            _public_der(_CA.key),
            _CA.certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
        )
        _verify_signature(_CA.certificate, _CA.certificate)

    def test_random_serial(self) -> None:
        """
        Two CAs get different, large serial numbers.
        """
        other = CertificateAuthority.generate(now=NOW)
        self.assertNotEqual(_CA.certificate.serial_number, other.certificate.serial_number)
        self.assertGreater(_CA.certificate.serial_number, 2**64)

    def test_naive_now(self) -> None:
        """
        A time without a timezone is refused rather than guessed.
        """
        self.assertRaises(ValueError, CertificateAuthority.generate, now=NOW.replace(tzinfo=None))

    def test_pem_and_der(self) -> None:
        """
        `certificate_pem` and `certificate_der` encode the CA certificate.
        """
        self.assertEqual(x509.load_pem_x509_certificate(_CA.certificate_pem()), _CA.certificate)
        self.assertEqual(x509.load_der_x509_certificate(_CA.certificate_der()), _CA.certificate)


class SaveTests(SynchronousTestCase):
    """
    Tests for `CertificateAuthority.save`.
    """

    def setUp(self) -> None:
        """
        Save under a permissive umask, so that only explicit modes protect
        the files.
        """
        old = os.umask(0)
        self.addCleanup(os.umask, old)
        self.directory = _temporary_directory(self) / "conf"

    def test_directory_mode(self) -> None:
        """
        A directory that does not exist is created readable by its owner only.
        """
        _CA.save(self.directory)
        self.assertEqual(_mode(self.directory), 0o700)

    def test_modes_exact_under_strict_umask(self) -> None:
        """
        A umask that removes the owner's bits does not change the modes: the
        directory is still 0700, the files still 0600 and 0644.
        """
        os.umask(0o277)
        _CA.save(self.directory)
        self.assertEqual(_mode(self.directory), 0o700)
        self.assertEqual(_mode(self.directory / CA_FILE), 0o600)
        self.assertEqual(_mode(self.directory / CA_CERT_PEM), 0o644)

    def test_existing_directory_kept(self) -> None:
        """
        A directory that already exists keeps its mode.
        """
        self.directory.mkdir(mode=0o755)
        _CA.save(self.directory)
        self.assertEqual(_mode(self.directory), 0o755)

    def test_key_file_mode(self) -> None:
        """
        The key file is readable and writable by its owner only.
        """
        _CA.save(self.directory)
        self.assertEqual(_mode(self.directory / CA_FILE), 0o600)

    def test_key_file_replaced_mode(self) -> None:
        """
        A key file that existed with a wider mode is narrowed to 0600.
        """
        self.directory.mkdir()
        (self.directory / CA_FILE).write_bytes(b"old")
        (self.directory / CA_FILE).chmod(0o644)
        _CA.save(self.directory)
        self.assertEqual(_mode(self.directory / CA_FILE), 0o600)

    def test_key_file_contents(self) -> None:
        """
        The key file holds the CA's private key and its certificate.
        """
        _CA.save(self.directory)
        data = (self.directory / CA_FILE).read_bytes()
        key = serialization.load_pem_private_key(data, password=None)
        self.assertEqual(_public_der(key), _public_der(_CA.key))  # type: ignore[arg-type]
        self.assertEqual(x509.load_pem_x509_certificate(data), _CA.certificate)

    def test_certificate_files(self) -> None:
        """
        The PEM and DER certificate files both hold the CA certificate alone,
        readable by everyone.
        """
        _CA.save(self.directory)
        pem = (self.directory / CA_CERT_PEM).read_bytes()
        der = (self.directory / CA_CERT_DER).read_bytes()
        self.assertNotIn(b"PRIVATE KEY", pem)
        self.assertEqual(x509.load_pem_x509_certificate(pem), _CA.certificate)
        self.assertEqual(x509.load_der_x509_certificate(der), _CA.certificate)
        self.assertEqual(der, _CA.certificate_der())
        self.assertEqual(_mode(self.directory / CA_CERT_PEM), 0o644)
        self.assertEqual(_mode(self.directory / CA_CERT_DER), 0o644)


class LoadTests(SynchronousTestCase):
    """
    Tests for `CertificateAuthority.load` and
    `CertificateAuthority.load_or_create`.
    """

    def setUp(self) -> None:
        """
        Work in a fresh directory.
        """
        self.directory = _temporary_directory(self)
        self.path = self.directory / CA_FILE

    def assert_refused(self, *fragments: str) -> str:
        """
        Assert that loading ``self.path`` is refused with a one-line message
        naming the file and containing each of *fragments*.

        :returns: The message.
        """
        error = self.assertRaises(
            CertificateAuthorityError, CertificateAuthority.load, self.path, now=NOW
        )
        message = str(error)
        self.assertNotIn("\n", message)
        self.assertIn(str(self.path), message)
        for fragment in fragments:
            self.assertIn(fragment, message)
        return message

    def test_round_trip(self) -> None:
        """
        A saved CA loads back with the same certificate and key.
        """
        _CA.save(self.directory)
        loaded = CertificateAuthority.load(self.path, now=NOW)
        self.assertEqual(loaded.certificate, _CA.certificate)
        self.assertEqual(_key_pem(loaded.key), _key_pem(_CA.key))

    def test_certificate_first(self) -> None:
        """
        The certificate may come before the key, and blocks of other kinds
        are ignored.
        """
        parameters = (
            b"-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n"
        )
        self.path.write_bytes(parameters + _cert_pem(_CA.certificate) + _key_pem(_CA.key))
        loaded = CertificateAuthority.load(self.path, now=NOW)
        self.assertEqual(loaded.certificate, _CA.certificate)

    def test_rsa_ca(self) -> None:
        """
        A CA with an RSA key loads too.
        """
        ca = _rsa_ca()
        self.path.write_bytes(_key_pem(ca.key) + _cert_pem(ca.certificate))
        self.assertEqual(CertificateAuthority.load(self.path, now=NOW).certificate, ca.certificate)

    def test_load_or_create_creates(self) -> None:
        """
        `load_or_create` generates and saves a CA when there is none, and
        says so.
        """
        directory = self.directory / "conf"
        ca, created = CertificateAuthority.load_or_create(directory, now=NOW)
        self.assertTrue(created)
        self.assertEqual(
            x509.load_der_x509_certificate((directory / CA_CERT_DER).read_bytes()), ca.certificate
        )

    def test_load_or_create_reloads(self) -> None:
        """
        A second `load_or_create` loads the CA the first one created.
        """
        first, _ = CertificateAuthority.load_or_create(self.directory, now=NOW)
        second, created = CertificateAuthority.load_or_create(
            self.directory, now=NOW + timedelta(days=1)
        )
        self.assertFalse(created)
        self.assertEqual(second.certificate.serial_number, first.certificate.serial_number)
        self.assertEqual(_key_pem(second.key), _key_pem(first.key))

    def test_load_or_create_propagates(self) -> None:
        """
        `load_or_create` reports a CA file it cannot load instead of
        replacing it.
        """
        self.path.write_bytes(b"garbage")
        self.assertRaises(
            CertificateAuthorityError, CertificateAuthority.load_or_create, self.directory, now=NOW
        )
        self.assertEqual(self.path.read_bytes(), b"garbage")

    def test_load_or_create_restores_certificate_files(self) -> None:
        """
        Certificate files lost after the CA was created (a crash between the
        key file and them) are written again from the CA file on the next
        start, the key file left as it is.
        """
        ca, _ = CertificateAuthority.load_or_create(self.directory, now=NOW)
        key_file = self.path.read_bytes()
        (self.directory / CA_CERT_PEM).unlink()
        (self.directory / CA_CERT_DER).unlink()
        again, created = CertificateAuthority.load_or_create(self.directory, now=NOW)
        self.assertFalse(created)
        self.assertEqual(self.path.read_bytes(), key_file)
        self.assertEqual((self.directory / CA_CERT_PEM).read_bytes(), ca.certificate_pem())
        self.assertEqual((self.directory / CA_CERT_DER).read_bytes(), ca.certificate_der())

    def test_load_or_create_leaves_no_temporary_files(self) -> None:
        """
        Creating a CA leaves exactly the three CA files in the directory.
        """
        CertificateAuthority.load_or_create(self.directory, now=NOW)
        self.assertEqual(
            sorted(p.name for p in self.directory.iterdir()),
            sorted([CA_FILE, CA_CERT_PEM, CA_CERT_DER]),
        )

    def test_load_or_create_racing_processes(self) -> None:
        """
        Processes that call `load_or_create` at the same moment on one empty
        directory all end with the same CA, the one on disk: exactly one of
        them created it, and the key file is its owner's alone.  (Each
        process imports first and waits at a barrier, its standard input, so
        that the calls overlap.)
        """
        for _ in range(2):  # two rounds, each on a fresh directory
            directory = _temporary_directory(self) / "ca"
            results = _race_load_or_create(directory, count=6)
            # The racers used the real time: load with it too.
            on_disk = CertificateAuthority.load(directory / CA_FILE, now=datetime.now(UTC))
            fingerprint = on_disk.certificate.fingerprint(hashes.SHA256()).hex()
            self.assertEqual({f for f, _ in results}, {fingerprint}, results)
            self.assertEqual(sum(created for _, created in results), 1, results)
            self.assertEqual(
                x509.load_pem_x509_certificate((directory / CA_CERT_PEM).read_bytes()),
                on_disk.certificate,
            )
            self.assertEqual(_mode(directory / CA_FILE), 0o600)
            self.assertEqual(_mode(directory), 0o700)

    def test_missing(self) -> None:
        """
        A missing file is refused, saying it cannot be read.
        """
        self.assert_refused("cannot be read", "No such file")

    def test_garbage(self) -> None:
        """
        A file holding no PEM at all is refused.
        """
        self.path.write_bytes(b"this is not a certificate\n\x00\xff")
        self.assert_refused("no PEM private key or certificate found")

    def test_truncated(self) -> None:
        """
        A PEM block without its END line is refused as malformed.
        """
        self.path.write_bytes(_key_pem(_CA.key) + _cert_pem(_CA.certificate)[:200])
        self.assert_refused("malformed PEM")

    def test_corrupt_certificate(self) -> None:
        """
        A certificate block whose contents do not decode is refused.
        """
        corrupt = b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n"
        self.path.write_bytes(_key_pem(_CA.key) + corrupt)
        self.assert_refused("malformed PEM certificate")

    def test_certificate_only(self) -> None:
        """
        A file with a certificate but no key is refused.
        """
        self.path.write_bytes(_cert_pem(_CA.certificate))
        self.assert_refused("no private key found")

    def test_key_only(self) -> None:
        """
        A file with a key but no certificate is refused.
        """
        self.path.write_bytes(_key_pem(_CA.key))
        self.assert_refused("no certificate found")

    def test_two_certificates(self) -> None:
        """
        A file with more than one certificate is refused: which one is the
        CA would be a guess.
        """
        other = CertificateAuthority.generate(now=NOW)
        self.path.write_bytes(
            _key_pem(_CA.key) + _cert_pem(_CA.certificate) + _cert_pem(other.certificate)
        )
        self.assert_refused("2 certificates")

    def test_encrypted_key(self) -> None:
        """
        A passphrase-protected key is refused, saying so.
        """
        encrypted = _CA.key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
        self.path.write_bytes(encrypted + _cert_pem(_CA.certificate))
        self.assert_refused("encrypted")

    def test_key_mismatch(self) -> None:
        """
        A key that belongs to another CA is refused.
        """
        other = CertificateAuthority.generate(now=NOW)
        self.path.write_bytes(_key_pem(other.key) + _cert_pem(_CA.certificate))
        self.assert_refused("does not match")

    def test_expired(self) -> None:
        """
        A CA whose validity ended before *now* is refused, naming the date.
        """
        old = CertificateAuthority.generate(now=datetime(2000, 1, 1, tzinfo=UTC))
        old.save(self.directory)
        self.assert_refused("expired", "2009-12-29")

    def test_not_yet_valid(self) -> None:
        """
        A CA whose validity starts after *now* is refused.
        """
        future = CertificateAuthority.generate(now=NOW + timedelta(days=30))
        future.save(self.directory)
        self.assert_refused("not valid until")

    def test_not_a_ca(self) -> None:
        """
        A leaf certificate with its key is refused: it is not a CA.
        """
        issued = CertificateStore(_CA, now=_Clock()).certificate_for("example.com")
        self.path.write_bytes(_key_pem(issued.key) + _cert_pem(issued.certificate))
        self.assert_refused("not a CA")

    def test_no_certificate_signing(self) -> None:
        """
        A CA whose key usage does not allow signing certificates is refused.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "crl only")])
        usage = x509.KeyUsage(
            digital_signature=False,
            content_commitment=False,
            key_encipherment=False,
            data_encipherment=False,
            key_agreement=False,
            key_cert_sign=False,
            crl_sign=True,
            encipher_only=False,
            decipher_only=False,
        )
        certificate = (
            _self_signed_builder(name, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(usage, critical=True)
            .sign(key, hashes.SHA256())
        )
        self.path.write_bytes(_key_pem(key) + _cert_pem(certificate))
        self.assert_refused("key usage")


def _self_signed_builder(
    name: x509.Name, public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
) -> x509.CertificateBuilder:
    """
    A certificate builder for a self-issued certificate valid around `NOW`,
    without extensions.
    """
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
    )


def _bare_ca(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> CertificateAuthority:
    """
    A CA with *key*, valid from a day before `NOW`, with basic constraints but
    no key usage and no subject key identifier.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bare test CA")])
    certificate = (
        _self_signed_builder(name, key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate, key)


def _rsa_ca() -> CertificateAuthority:
    """
    A bare CA with an RSA-2048 key.
    """
    return _bare_ca(rsa.generate_private_key(public_exponent=65537, key_size=2048))


class CertificateStoreTests(SynchronousTestCase):
    """
    Tests for `CertificateStore`: the leaves it mints.
    """

    def setUp(self) -> None:
        """
        A store over the shared CA with a settable clock.
        """
        self.clock = _Clock()
        self.store = CertificateStore(_CA, now=self.clock)

    def san(self, certificate: x509.Certificate) -> x509.Extension[x509.SubjectAlternativeName]:
        """
        The subject alternative name extension of *certificate*.
        """
        return certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)

    def test_signed_by_ca(self) -> None:
        """
        The leaf's signature verifies with the CA's public key, and its
        issuer is the CA's subject.
        """
        leaf = self.store.certificate_for("example.com").certificate
        _verify_signature(leaf, _CA.certificate)
        self.assertIsInstance(leaf.signature_hash_algorithm, hashes.SHA256)
        self.assertEqual(leaf.issuer, _CA.certificate.subject)

    def test_chain(self) -> None:
        """
        The chain sent after the leaf is the CA certificate.
        """
        self.assertEqual(self.store.certificate_for("example.com").chain, (_CA.certificate,))

    def test_dns_name(self) -> None:
        """
        A host name becomes the subject's common name and a DNS SAN, in lower
        case; the SAN is not critical when the subject names the host.
        """
        issued = self.store.certificate_for("WWW.Example.COM")
        leaf = issued.certificate
        self.assertEqual(issued.hostname, "www.example.com")
        [cn] = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.assertEqual(cn.value, "www.example.com")
        san = self.san(leaf)
        self.assertFalse(san.critical)
        self.assertEqual(list(san.value), [x509.DNSName("www.example.com")])

    def test_trailing_dot(self) -> None:
        """
        A fully qualified name with its trailing dot names the same host.
        """
        issued = self.store.certificate_for("example.com.")
        self.assertEqual(list(self.san(issued.certificate).value), [x509.DNSName("example.com")])
        self.assertIs(self.store.certificate_for("example.com"), issued)

    def test_international_name(self) -> None:
        """
        A non-ASCII host name is IDNA-encoded.
        """
        issued = self.store.certificate_for("Bücher.example")
        self.assertEqual(issued.hostname, "xn--bcher-kva.example")
        self.assertEqual(
            list(self.san(issued.certificate).value), [x509.DNSName("xn--bcher-kva.example")]
        )

    def test_invalid_names(self) -> None:
        """
        An empty name, or a non-ASCII one that cannot be IDNA-encoded, is
        refused with `ValueError`.
        """
        self.assertRaises(ValueError, self.store.certificate_for, "")
        self.assertRaises(ValueError, self.store.certificate_for, "ü" + "a" * 70 + ".example")
        self.assertEqual(self.store.minted, 0)

    def test_ipv4(self) -> None:
        """
        An IPv4 literal becomes an IP address SAN.
        """
        leaf = self.store.certificate_for("127.0.0.1").certificate
        self.assertEqual(
            list(self.san(leaf).value), [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
        )

    def test_ipv6(self) -> None:
        """
        An IPv6 literal becomes an IP address SAN.
        """
        leaf = self.store.certificate_for("::1").certificate
        self.assertEqual(list(self.san(leaf).value), [x509.IPAddress(ipaddress.ip_address("::1"))])

    def test_bracketed_ipv6(self) -> None:
        """
        A bracketed IPv6 literal names the same address as the bare one, and
        shares its certificate.
        """
        issued = self.store.certificate_for("[::1]")
        self.assertEqual(issued.hostname, "::1")
        self.assertEqual(
            list(self.san(issued.certificate).value),
            [x509.IPAddress(ipaddress.ip_address("::1"))],
        )
        self.assertIs(self.store.certificate_for("0:0::1"), issued)
        self.assertEqual(self.store.minted, 1)

    def test_long_name(self) -> None:
        """
        A name longer than a common name may be (64 characters) leaves the
        subject empty and makes the SAN critical.
        """
        name = "a" * 50 + "." + "b" * 15 + ".com"
        self.assertEqual(len(name), 70)
        leaf = self.store.certificate_for(name).certificate
        self.assertEqual(leaf.subject, x509.Name([]))
        san = self.san(leaf)
        self.assertTrue(san.critical)
        self.assertEqual(list(san.value), [x509.DNSName(name)])

    def test_longest_common_name(self) -> None:
        """
        A name of exactly 64 characters is still the subject's common name.
        """
        name = "a" * 50 + "." + "b" * 9 + ".com"
        self.assertEqual(len(name), 64)
        leaf = self.store.certificate_for(name).certificate
        [cn] = leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        self.assertEqual(cn.value, name)
        self.assertFalse(self.san(leaf).critical)

    def test_server_auth(self) -> None:
        """
        The leaf is for TLS servers: extended key usage serverAuth only.
        """
        leaf = self.store.certificate_for("example.com").certificate
        usage = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        self.assertEqual(list(usage), [ExtendedKeyUsageOID.SERVER_AUTH])

    def test_key_usage_and_constraints(self) -> None:
        """
        The leaf's critical key usage allows digital signatures only, and its
        critical basic constraints say it is not a CA.
        """
        leaf = self.store.certificate_for("example.com").certificate
        usage = leaf.extensions.get_extension_for_class(x509.KeyUsage)
        self.assertTrue(usage.critical)
        self.assertTrue(usage.value.digital_signature)
        self.assertFalse(usage.value.key_cert_sign)
        self.assertFalse(usage.value.key_encipherment)
        constraints = leaf.extensions.get_extension_for_class(x509.BasicConstraints)
        self.assertTrue(constraints.critical)
        self.assertFalse(constraints.value.ca)

    def test_key_identifiers(self) -> None:
        """
        The leaf's authority key identifier is the CA's subject key
        identifier, and its own subject key identifier is its key's.
        """
        issued = self.store.certificate_for("example.com")
        extensions = issued.certificate.extensions
        ca_ski = _CA.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        aki = extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        self.assertEqual(aki.key_identifier, ca_ski.value.digest)
        ski = extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        self.assertEqual(ski, x509.SubjectKeyIdentifier.from_public_key(issued.key.public_key()))

    def test_validity(self) -> None:
        """
        The leaf is backdated two days and lasts 397 days.
        """
        leaf = self.store.certificate_for("example.com").certificate
        self.assertLess(leaf.not_valid_before_utc, NOW)
        self.assertEqual(leaf.not_valid_before_utc, NOW - timedelta(days=2))
        self.assertEqual(leaf.not_valid_after_utc - leaf.not_valid_before_utc, timedelta(days=397))

    def test_validity_within_ca(self) -> None:
        """
        A leaf never outlives its CA, and never starts before it.
        """
        ca = CertificateAuthority.generate(now=NOW - timedelta(days=3600))
        ca_not_after = ca.certificate.not_valid_after_utc
        self.assertLess(ca_not_after, NOW + timedelta(days=395))
        leaf = CertificateStore(ca, now=_Clock()).certificate_for("example.com").certificate
        self.assertEqual(leaf.not_valid_after_utc, ca_not_after)
        young = _bare_ca(ec.generate_private_key(ec.SECP256R1()))
        self.assertGreater(young.certificate.not_valid_before_utc, NOW - timedelta(days=2))
        leaf = CertificateStore(young, now=_Clock()).certificate_for("example.com").certificate
        self.assertEqual(leaf.not_valid_before_utc, young.certificate.not_valid_before_utc)

    def test_expired_ca(self) -> None:
        """
        Once the CA has expired, minting fails with
        `CertificateAuthorityError`.
        """
        self.clock.now = _CA.certificate.not_valid_after_utc
        error = self.assertRaises(
            CertificateAuthorityError, self.store.certificate_for, "example.com"
        )
        self.assertIn("expired", str(error))

    def test_random_serials(self) -> None:
        """
        Each leaf gets its own random serial number.
        """
        one = self.store.certificate_for("one.example").certificate
        two = self.store.certificate_for("two.example").certificate
        self.assertNotEqual(one.serial_number, two.serial_number)
        self.assertGreater(one.serial_number, 2**64)

    def test_shared_leaf_key(self) -> None:
        """
        Every leaf carries the same EC P-256 key, which is not the CA's.
        """
        one = self.store.certificate_for("one.example")
        two = self.store.certificate_for("two.example")
        self.assertIs(one.key, two.key)
        self.assertIsInstance(one.key, ec.EllipticCurvePrivateKey)
        assert isinstance(one.key, ec.EllipticCurvePrivateKey)
        self.assertIsInstance(one.key.curve, ec.SECP256R1)
        self.assertEqual(
            one.certificate.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            ),
            _public_der(one.key),
        )
        self.assertEqual(_public_der(two.key), _public_der(one.key))
        self.assertNotEqual(_public_der(one.key), _public_der(_CA.key))

    def test_given_leaf_key(self) -> None:
        """
        A leaf key handed to the store is the one the leaves carry; an RSA
        leaf key also allows key encipherment, for TLS 1.2 RSA key exchange.
        """
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        issued = CertificateStore(_CA, now=_Clock(), leaf_key=key).certificate_for("example.com")
        self.assertIs(issued.key, key)
        self.assertEqual(
            x509.SubjectKeyIdentifier.from_public_key(issued.certificate.public_key()),
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
        )
        usage = issued.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        self.assertTrue(usage.key_encipherment)

    def test_rsa_ca(self) -> None:
        """
        An RSA CA without a subject key identifier signs leaves whose
        authority key identifier is computed from its public key.
        """
        ca = _rsa_ca()
        leaf = CertificateStore(ca, now=_Clock()).certificate_for("example.com").certificate
        _verify_signature(leaf, ca.certificate)
        aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        self.assertEqual(
            aki.key_identifier,
            x509.SubjectKeyIdentifier.from_public_key(ca.certificate.public_key()).digest,
        )

    def test_naive_now(self) -> None:
        """
        A ``now`` callable returning a time without a timezone is refused.
        """
        self.clock.now = NOW.replace(tzinfo=None)
        self.assertRaises(ValueError, self.store.certificate_for, "example.com")

    def test_openssl_accepts(self) -> None:
        """
        The system's ``openssl verify`` accepts the leaves for TLS servers
        under strict X.509 checks, for a name, an address and a long name.
        """
        openssl = shutil.which("openssl")
        if openssl is None:
            raise SkipTest("no openssl command")
        directory = _temporary_directory(self)
        ca_file = directory / "ca.pem"
        ca_file.write_bytes(_CA.certificate_pem())
        long_name = "a" * 50 + "." + "b" * 15 + ".com"
        cases = [
            ("example.com", ["-verify_hostname", "example.com"]),
            ("127.0.0.1", ["-verify_ip", "127.0.0.1"]),
            ("[::1]", ["-verify_ip", "::1"]),
            (long_name, ["-verify_hostname", long_name]),
        ]
        for hostname, check in cases:
            leaf_file = directory / "leaf.pem"
            leaf_file.write_bytes(_cert_pem(self.store.certificate_for(hostname).certificate))
            result = subprocess.run(
                [
                    openssl,
                    "verify",
                    "-x509_strict",
                    "-purpose",
                    "sslserver",
                    "-attime",
                    str(int(NOW.timestamp())),
                    *check,
                    "-CAfile",
                    str(ca_file),
                    str(leaf_file),
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            self.assertEqual(
                (result.returncode, result.stdout.strip()),
                (0, f"{leaf_file}: OK"),
                f"{hostname}: {result.stdout}{result.stderr}",
            )

    def test_openssl_rejects_other_name(self) -> None:
        """
        The same ``openssl verify`` refuses a leaf for a name it was not
        minted for, so the check above is not vacuous.
        """
        openssl = shutil.which("openssl")
        if openssl is None:
            raise SkipTest("no openssl command")
        directory = _temporary_directory(self)
        (directory / "ca.pem").write_bytes(_CA.certificate_pem())
        (directory / "leaf.pem").write_bytes(
            _cert_pem(self.store.certificate_for("example.com").certificate)
        )
        result = subprocess.run(
            [
                openssl,
                "verify",
                "-purpose",
                "sslserver",
                "-attime",
                str(int(NOW.timestamp())),
                "-verify_hostname",
                "example.org",
                "-CAfile",
                str(directory / "ca.pem"),
                str(directory / "leaf.pem"),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        self.assertNotEqual(result.returncode, 0)


class CertificateCacheTests(SynchronousTestCase):
    """
    Tests for `CertificateStore`'s cache.
    """

    def setUp(self) -> None:
        """
        A store over the shared CA with a settable clock.
        """
        self.clock = _Clock()
        self.store = CertificateStore(_CA, now=self.clock, capacity=2)

    def test_hit(self) -> None:
        """
        Asking again for a name returns the same certificate without minting.
        """
        first = self.store.certificate_for("example.com")
        self.assertEqual((self.store.minted, self.store.hits), (1, 0))
        self.assertIs(self.store.certificate_for("example.com"), first)
        self.assertIs(self.store.certificate_for("EXAMPLE.com"), first)
        self.assertEqual((self.store.minted, self.store.hits), (1, 2))
        self.assertEqual(len(self.store), 1)

    def test_eviction(self) -> None:
        """
        Beyond its capacity the store forgets the least recently used
        certificate and mints it again when asked.
        """
        a = self.store.certificate_for("a.example")
        self.store.certificate_for("b.example")
        self.store.certificate_for("c.example")
        self.assertEqual(len(self.store), 2)
        again = self.store.certificate_for("a.example")
        self.assertIsNot(again, a)
        self.assertEqual((self.store.minted, self.store.hits), (4, 0))

    def test_use_refreshes(self) -> None:
        """
        Using a certificate makes it the most recently used: the other one is
        evicted first.
        """
        a = self.store.certificate_for("a.example")
        b = self.store.certificate_for("b.example")
        self.store.certificate_for("a.example")
        self.store.certificate_for("c.example")
        self.assertIs(self.store.certificate_for("a.example"), a)
        self.assertIsNot(self.store.certificate_for("b.example"), b)

    def test_near_expiry(self) -> None:
        """
        A cached certificate is used until a day before it expires, then
        minted again with a fresh validity.
        """
        first = self.store.certificate_for("example.com")
        not_after = first.certificate.not_valid_after_utc
        self.clock.now = not_after - timedelta(days=1, seconds=1)
        self.assertIs(self.store.certificate_for("example.com"), first)
        self.clock.now = not_after - timedelta(days=1)
        renewed = self.store.certificate_for("example.com")
        self.assertIsNot(renewed, first)
        self.assertEqual(
            renewed.certificate.not_valid_before_utc, self.clock.now - timedelta(days=2)
        )
        self.assertEqual((self.store.minted, self.store.hits), (2, 1))

    def test_capped_by_ca_not_reminted(self) -> None:
        """
        A certificate that ends with its CA is not minted again near its
        expiry, since a new one could not last longer.
        """
        ca = CertificateAuthority.generate(now=NOW - timedelta(days=3600))
        store = CertificateStore(ca, now=self.clock)
        first = store.certificate_for("example.com")
        self.clock.now = ca.certificate.not_valid_after_utc - timedelta(hours=1)
        self.assertIs(store.certificate_for("example.com"), first)

    def test_capacity_positive(self) -> None:
        """
        A store must be able to hold at least one certificate.
        """
        self.assertRaises(ValueError, CertificateStore, _CA, now=self.clock, capacity=0)
