# -*- test-case-name: tests.test_flow -*-
"""
The records of the connections a flow goes through: the client's
(:class:`Client`) and the server's (:class:`Server`, with the origin's TLS
certificate as a :class:`Certificate`), each with a versioned plain-data
state that :class:`~twistproxy.flow.Flow`'s state holds.

The semantics follow ``mitmproxy.connection``.  Like the flow models, these
are core code: plain data, no clock, no sockets.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Self

import attrs

from twistproxy._state import LazyId, check_keys

if TYPE_CHECKING:
    from cryptography import x509


def _address(value: Iterable[Any] | None) -> tuple[str, int] | None:
    """
    Turn an address from a state dict (a list after a JSON round trip) back
    into a ``(host, port)`` tuple.

    :raises ValueError: if *value* is not a pair.
    """
    if value is None:
        return None
    host, port = value
    return (host, port)


_CONNECTION_KEYS = (
    "id",
    "peername",
    "sockname",
    "timestamp_start",
    "timestamp_end",
    "error",
    "tls_established",
    "sni",
    "alpn",
    "tls_version",
)


@attrs.define(kw_only=True, eq=False)
class Connection:
    """
    What is known about one TCP connection (and the TLS on it).

    Connections compare by identity: two records are the same connection
    only if they are the same object.

    :ivar id: A unique id (a UUID4 string).
    :ivar peername: The remote ``(host, port)``, once connected.
    :ivar sockname: The local ``(host, port)``, once connected.
    :ivar timestamp_start: When the connection was established.
    :ivar timestamp_end: When it closed.
    :ivar error: Why it failed, if it did.
    :ivar tls_established: Whether a TLS handshake completed on it.
    :ivar sni: The TLS server name indication, if any.
    :ivar alpn: The negotiated ALPN protocol, if any.
    :ivar tls_version: The negotiated TLS version (``"TLSv1.3"``), if any.
    """

    # Made when first asked for: a record is made per flow, its id rarely read.
    _id: str | None = attrs.field(default=None, alias="id", repr=False)
    peername: tuple[str, int] | None = None
    sockname: tuple[str, int] | None = None
    timestamp_start: float | None = None
    timestamp_end: float | None = None
    error: str | None = None
    tls_established: bool = False
    sni: str | None = None
    alpn: bytes | None = None
    tls_version: str | None = None

    _state_keys: ClassVar[tuple[str, ...]] = _CONNECTION_KEYS
    _address_keys: ClassVar[tuple[str, ...]] = ("peername", "sockname")

    id = LazyId()

    def get_state(self) -> dict[str, Any]:
        """
        :returns: This record as plain data; addresses become lists.
        """
        state = {key: getattr(self, key) for key in self._state_keys}
        for key in self._address_keys:
            if state[key] is not None:
                state[key] = list(state[key])
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """
        Replace this record's fields with those of *state*.

        :param state: A dict from :meth:`get_state`; addresses may be lists.
        :raises ValueError: if *state* has unknown or missing keys.
        """
        check_keys(state, self._state_keys, type(self).__name__.lower())
        values = dict(state)
        for key in self._address_keys:
            values[key] = _address(values[key])
        for key, value in values.items():
            setattr(self, key, value)

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """
        Build a record from a dict made by :meth:`get_state`.

        :raises ValueError: if *state* has unknown or missing keys.
        """
        conn = cls()
        conn.set_state(state)
        return conn


@attrs.define(kw_only=True, eq=False)
class Client(Connection):
    """
    The connection from the client to the proxy.

    :ivar tunnel: Where the ``CONNECT`` tunnel this connection became goes,
        ``(host, port)``, once the proxy opened it (answered ``200``);
        every request after that came through the tunnel.  Not kept in
        flow files: the flows inside carry their host and port.
    :ivar proxy_mode: The mode of the listener the client connected to, as
        :func:`~twistproxy.modes.parse_mode` reads it (``"regular"``,
        ``"reverse:https://api.internal@8443"``...).
    """

    tunnel: tuple[str, int] | None = attrs.field(default=None, repr=False)
    proxy_mode: str = "regular"

    _state_keys: ClassVar[tuple[str, ...]] = (*_CONNECTION_KEYS, "proxy_mode")


_CERTIFICATE_KEYS = (
    "subject",
    "issuer",
    "dns_names",
    "ip_addresses",
    "not_before",
    "not_after",
    "serial",
    "sha256",
)


@attrs.frozen(kw_only=True)
class Certificate:
    """
    What a server's certificate says, as the proxy recorded it at the TLS
    handshake: plain data, kept in flow files.

    :ivar subject: The subject name, as an RFC 4514 string
        (``"CN=example.com,O=Example"``).
    :ivar issuer: The issuer name, as an RFC 4514 string.
    :ivar dns_names: The DNS names of the subject alternative names, in
        their order.
    :ivar ip_addresses: The IP addresses of the subject alternative names,
        as strings (``"127.0.0.1"``, ``"::1"``), in their order.
    :ivar not_before: The start of the validity period, in seconds since
        the epoch.
    :ivar not_after: The end of the validity period, in seconds since the
        epoch.
    :ivar serial: The serial number, in lowercase hexadecimal (a string: it
        may have up to 20 bytes, more than a JSON number holds exactly).
    :ivar sha256: The SHA-256 fingerprint of the certificate's DER
        encoding, in lowercase hexadecimal.
    """

    subject: str
    issuer: str
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    not_before: float
    not_after: float
    serial: str
    sha256: str

    @classmethod
    def from_x509(cls, certificate: x509.Certificate) -> Self:
        """
        Read the facts of *certificate*.

        :param certificate: A ``cryptography`` certificate (pyOpenSSL's
            ``get_peer_certificate(as_cryptography=True)`` gives one).
        """
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes

        try:
            sans = certificate.extensions.get_extension_for_class(
                x509.SubjectAlternativeName
            ).value
        except x509.ExtensionNotFound:
            dns_names: tuple[str, ...] = ()
            ip_addresses: tuple[str, ...] = ()
        else:
            dns_names = tuple(sans.get_values_for_type(x509.DNSName))
            ip_addresses = tuple(str(ip) for ip in sans.get_values_for_type(x509.IPAddress))
        return cls(
            subject=certificate.subject.rfc4514_string(),
            issuer=certificate.issuer.rfc4514_string(),
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            not_before=certificate.not_valid_before_utc.timestamp(),
            not_after=certificate.not_valid_after_utc.timestamp(),
            serial=format(certificate.serial_number, "x"),
            sha256=certificate.fingerprint(hashes.SHA256()).hex(),
        )

    def get_state(self) -> dict[str, Any]:
        """
        :returns: This record as plain data; the name lists become lists.
        """
        return {
            "subject": self.subject,
            "issuer": self.issuer,
            "dns_names": list(self.dns_names),
            "ip_addresses": list(self.ip_addresses),
            "not_before": self.not_before,
            "not_after": self.not_after,
            "serial": self.serial,
            "sha256": self.sha256,
        }

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> Self:
        """
        Build a record from a dict made by :meth:`get_state`.

        :raises ValueError: if *state* has unknown or missing keys.
        """
        check_keys(state, _CERTIFICATE_KEYS, "certificate")
        return cls(**{**state, "dns_names": tuple(state["dns_names"]),
                      "ip_addresses": tuple(state["ip_addresses"])})


@attrs.define(kw_only=True, eq=False)
class Server(Connection):
    """
    The connection from the proxy to the origin (or upstream proxy).

    The TLS fields (:attr:`tls_established`, :attr:`sni`, :attr:`alpn`,
    :attr:`tls_version` and :attr:`certificate`) are set when the proxy's
    TLS handshake on the connection completes: with the origin, or with an
    ``https`` upstream proxy for the plain ``http`` requests that go to it.

    :ivar address: The ``(host, port)`` the proxy connects to.
    :ivar certificate: The certificate the server presented, once the TLS
        handshake completed; ``None`` without TLS (and in flows recorded
        before twistproxy kept it).
    """

    address: tuple[str, int] | None = None
    certificate: Certificate | None = None

    _state_keys: ClassVar[tuple[str, ...]] = (*_CONNECTION_KEYS, "address", "certificate")
    _address_keys: ClassVar[tuple[str, ...]] = ("peername", "sockname", "address")

    def get_state(self) -> dict[str, Any]:
        """
        :returns: This record as plain data; addresses become lists, the
            certificate a dict (or ``None``).
        """
        state = super().get_state()
        if self.certificate is not None:
            state["certificate"] = self.certificate.get_state()
        return state

    def set_state(self, state: Mapping[str, Any]) -> None:
        """
        Replace this record's fields with those of *state*.

        :param state: A dict from :meth:`get_state`; addresses may be lists.
        :raises ValueError: if *state*, or its certificate, has unknown or
            missing keys.
        """
        certificate = state.get("certificate")
        if certificate is not None:
            state = {**state, "certificate": Certificate.from_state(certificate)}
        super().set_state(state)
