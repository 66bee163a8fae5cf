# -*- test-case-name: tests.test_access -*-
"""
Access control: who may use the proxy (:class:`ProxyAuth`) and where it may
go (:class:`HostPolicy`).

Both answer in the ``http_connect`` and ``requestheaders`` hooks, so they
refuse a CONNECT before its tunnel opens (intercepted or passed through) and
a request before anything is sent upstream.  Put them first among the
addons: the twistd plugin runs :class:`ProxyAuth` before everything else and
:class:`HostPolicy` right after the CA page (``http://twistproxy/``), which is
the proxy's own page and not a destination.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import os
import re
import socket
from collections.abc import Callable, Iterable, Iterator, Mapping
from weakref import WeakKeyDictionary

from twisted.logger import Logger

from twistproxy._target import authority_text, join_host_port
from twistproxy.connection import Client
from twistproxy.filters import Filter, FilterError
from twistproxy.filters import parse as parse_filter
from twistproxy.flow import Flow
from twistproxy.hooks import Addon
from twistproxy.http import HTTPFlow, Request, Response

__all__ = [
    "HostPattern",
    "HostPolicy",
    "ProxyAuth",
    "canonical_host",
    "destination_names",
    "load_users",
    "parse_host_pattern",
    "parse_user",
]

_log = Logger(namespace="twistproxy.access")

PROXY_USER = "proxy_user"
"""The key of ``flow.metadata`` where :class:`ProxyAuth` puts the user name."""


# -- proxy authentication ----------------------------------------------------


def parse_user(text: str) -> tuple[str, str]:
    """
    Split ``user:password`` at its first colon (a password may contain
    colons, a user name may not).

    :raises ValueError: if there is no colon, or the user name or the
        password is empty; the message never repeats the password.
    """
    user, colon, password = text.partition(":")
    if not colon:
        raise ValueError("expected user:password")
    _check_user(user, password)
    return user, password


def _check_user(user: str, password: str) -> None:
    """
    :raises ValueError: if *user* is empty or has a colon, or *password* is
        empty.
    """
    if not user:
        raise ValueError("the user name is empty")
    if ":" in user:
        raise ValueError(f"the user name {user!r} contains a colon")
    if not password:
        raise ValueError(f"the password of {user!r} is empty")


def load_users(path: str | os.PathLike[str]) -> dict[str, str]:
    """
    Read a file of ``user:password`` lines (UTF-8).  Blank lines and lines
    starting with ``#`` (after any spaces) are skipped; line ends are not
    part of the password, other spaces are.

    :returns: The passwords by user name.
    :raises OSError: if the file cannot be read.
    :raises ValueError: naming the file and the line number, for a line that
        is not ``user:password``, a user given twice, or a file that is not
        UTF-8.  No message repeats a password.
    """
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_line = data[: e.start].count(b"\n") + 1
        raise ValueError(f"{os.fspath(path)}, line {bad_line}: not UTF-8") from None
    users: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), 1):
        line = line.removesuffix("\r")
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            user, password = parse_user(line)
            if user in users:
                raise ValueError(f"the user {user!r} is given twice")
        except ValueError as e:
            raise ValueError(f"{os.fspath(path)}, line {number}: {e}") from None
        users[user] = password
    return users


_DUMMY_DIGEST = bytes(32)


def _digest(password: bytes) -> bytes:
    # Equal-length values for compare_digest, whatever the passwords' lengths.
    return hashlib.sha256(password).digest()


class ProxyAuth(Addon):
    """
    Basic proxy authentication (RFC 9110 section 11.7, RFC 7617).

    A request or CONNECT without a valid ``Proxy-Authorization: Basic ...``
    header is answered ``407 Proxy Authentication Required`` with
    ``Proxy-Authenticate: Basic realm="..."``; a malformed header (another
    scheme, bad base64, no colon, more than one) is answered the same way.
    The requests inside an intercepted tunnel carry no credentials: they
    pass when the tunnel's CONNECT was authenticated by this addon (the
    connection's TLS with the client is then established).

    Passwords are compared in constant time, as SHA-256 digests with
    :func:`hmac.compare_digest`; an unknown user is compared against a dummy
    digest so that the time taken does not tell whether the user exists.
    Failed attempts are logged (namespace ``twistproxy.access``, level warn)
    with the client's address and the user name given, never the password.

    The ``Proxy-Authorization`` header is removed from ``flow.request`` in
    every case, so no later addon, flow file or log sees the credentials (it
    is a hop-by-hop field, never forwarded upstream anyway); the user name
    is put in ``flow.metadata["proxy_user"]``, for the requests inside an
    authenticated tunnel too.

    :param users: The passwords by user name.
    :param realm: The realm named in ``Proxy-Authenticate``.
    :raises ValueError: if *users* is empty, a user name is empty or has a
        colon, a password is empty, or *realm* has a quote or a backslash.
    """

    def __init__(self, users: Mapping[str, str], *, realm: str = "twistproxy") -> None:
        if not users:
            raise ValueError("proxy authentication needs at least one user")
        digests: dict[bytes, bytes] = {}
        for user, password in users.items():
            _check_user(user, password)
            digests[user.encode("utf-8")] = _digest(password.encode("utf-8"))
        if '"' in realm or "\\" in realm:
            raise ValueError("the realm may not contain quotes or backslashes")
        self._digests = digests
        self._challenge = f'Basic realm="{realm}"'
        self._tunnels: WeakKeyDictionary[Client, str] = WeakKeyDictionary()

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, realm: str = "twistproxy") -> ProxyAuth:
        """
        Make the addon from a file of ``user:password`` lines; see
        :func:`load_users`.

        :raises OSError: if the file cannot be read.
        :raises ValueError: for a malformed line (with its number) or a file
            without users.
        """
        users = load_users(path)
        if not users:
            raise ValueError(f"{os.fspath(path)}: no users in the file")
        return cls(users, realm=realm)

    @property
    def users(self) -> frozenset[str]:
        """
        The user names (not their passwords).
        """
        return frozenset(user.decode("utf-8") for user in self._digests)

    def http_connect(self, flow: HTTPFlow) -> None:
        """
        Refuse a CONNECT without valid credentials; remember an accepted
        one's connection, whose intercepted requests then pass.
        """
        user = self._authenticate(flow)
        if user is not None:
            self._tunnels[flow.client_conn] = user

    def requestheaders(self, flow: HTTPFlow) -> None:
        """
        Refuse a request without valid credentials, unless it comes through
        a tunnel whose CONNECT was accepted (and opened).
        """
        client = flow.client_conn
        if client.tunnel is not None and client in self._tunnels:
            if flow.request is not None:
                _remove_credentials(flow.request)
            flow.metadata[PROXY_USER] = self._tunnels[client]
            return
        self._authenticate(flow)

    def _authenticate(self, flow: HTTPFlow) -> str | None:
        """
        Check the flow's credentials: record the user and return its name,
        or answer 407 and return ``None``.
        """
        request = flow.request
        if request is None:
            return None
        values = request.headers.get_all_raw(b"proxy-authorization")
        if values:
            _remove_credentials(request)
        credentials = _basic_credentials(values)
        if credentials is None:
            if values:
                _log.warn(
                    "proxy authentication failed: malformed Proxy-Authorization "
                    "header from {client}",
                    client=_client(flow),
                )
            self._refuse(flow)
            return None
        user, password = credentials
        name = user.decode("utf-8", "replace")
        if not self.verify(user, password):
            _log.warn(
                "proxy authentication failed for user {user!r} from {client}",
                user=name[:100],
                client=_client(flow),
            )
            self._refuse(flow)
            return None
        flow.metadata[PROXY_USER] = name
        return name

    def verify(self, user: bytes, password: bytes) -> bool:
        """
        Whether *password* is *user*'s (UTF-8 bytes), compared in constant
        time (an unknown user against a dummy digest).  A SOCKS5 listener
        checks its clients' RFC 1929 credentials with it.
        """
        expected = self._digests.get(user)
        matched = hmac.compare_digest(
            _digest(password), _DUMMY_DIGEST if expected is None else expected
        )
        return matched and expected is not None

    def _refuse(self, flow: HTTPFlow) -> None:
        flow.response = Response.make(
            407,
            "407 Proxy Authentication Required\n\n"
            "twistproxy: this proxy needs a user name and password (Basic).\n",
            {"Proxy-Authenticate": self._challenge},
        )


def _remove_credentials(request: Request) -> None:
    if b"proxy-authorization" in request.headers:
        del request.headers[b"proxy-authorization"]


def _basic_credentials(values: list[bytes]) -> tuple[bytes, bytes] | None:
    """
    The user and password of the one ``Proxy-Authorization`` value in
    *values*, or ``None`` if there is not exactly one valid Basic value.
    """
    if len(values) != 1:
        return None
    scheme, _, token = values[0].strip().partition(b" ")
    if scheme.lower() != b"basic":
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, colon, password = decoded.partition(b":")
    if not colon:
        return None
    return user, password


def _client(flow: HTTPFlow) -> str:
    peer = flow.client_conn.peername
    if peer is None:
        return "-"
    return join_host_port(*peer)


# -- host policy -------------------------------------------------------------


class HostPattern:
    """
    One ``--allow-hosts``/``--block-hosts`` pattern, made by
    :func:`parse_host_pattern`.

    :ivar text: The pattern as given.
    :ivar filter: The filter expression, when the pattern is one.
    """

    def __init__(
        self, text: str, regex: re.Pattern[str] | None, flow_filter: Filter | None
    ) -> None:
        self.text = text
        self._regex = regex
        self.filter = flow_filter

    def __repr__(self) -> str:
        kind = "filter" if self.filter is not None else "regex"
        return f"<HostPattern {kind} {self.text!r}>"

    def matches(self, flow: HTTPFlow, names: tuple[str, ...], port: int) -> bool:
        """
        :param flow: The flow, for a filter expression.
        :param names: The destination's names (:func:`destination_names`),
            for a regex.
        :param port: The destination's port, for a regex.
        :returns: Whether the pattern matches.
        """
        regex = self._regex
        if regex is not None:
            fullmatch = regex.fullmatch
            return any(
                fullmatch(domain) is not None
                or fullmatch(join_host_port(domain, port)) is not None
                for domain in _domains(names)
            )
        assert self.filter is not None
        return self.filter(flow)


# A pattern that is a host name or address, with or without a port: taken
# literally (its dots are dots), read as a destination is.
_LITERAL = re.compile(r"(?P<host>[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::(?P<port>[0-9]{1,5}))?\Z")


def _host_regex(pattern: str) -> str:
    """
    The regular expression of a host pattern: a host name or address
    (``example.com``, ``127.1``, ``[::1]:8080``) is matched literally, in
    the form :func:`destination_names` gives it; anything else is a regex.
    """
    literal = _LITERAL.match(pattern)
    if literal is None:
        return pattern
    host = destination_names(literal["host"].strip("[]"))[0]
    if literal["port"] is None:
        return re.escape(host)
    return re.escape(join_host_port(host, int(literal["port"])))


def _domains(names: Iterable[str]) -> Iterator[str]:
    """
    Each of *names*, and each domain a name is under (``a.b.example``:
    ``b.example``, ``example``); an IP address is only itself.
    """
    for name in names:
        yield name
        if ":" in name or _IPV4.match(name):
            continue
        dot = name.find(".")
        while dot != -1:
            yield name[dot + 1 :]
            dot = name.find(".", dot + 1)


def _host_test(source: str, pattern: re.Pattern[str]) -> Callable[[Flow], bool]:
    """
    ``~d`` in a host pattern: the regex (or host name) *source* matches a
    whole name of the request's destination, or a domain it is under.
    """
    regex = re.compile(_host_regex(source), re.IGNORECASE) if _LITERAL.match(source) else pattern
    fullmatch = regex.fullmatch

    def test(flow: Flow) -> bool:
        request = flow.request if isinstance(flow, HTTPFlow) else None
        if request is None:
            return False
        names = destination_names(request.host)
        return any(fullmatch(domain) is not None for domain in _domains(names))

    return test


def parse_host_pattern(pattern: str) -> HostPattern:
    """
    Parse a host pattern: a filter expression (:mod:`twistproxy.filters`)
    if it starts with ``~`` or ``!``, or with ``(`` and has a ``~``
    somewhere; else a regular expression.  So ``(ads|track)\\.example``
    is a regular expression (host names have no ``~``) and ``(~d a | ~d b)``
    a filter.

    Patterns match whole host names, not parts of them: a regular
    expression must match all of a destination's host, or all of a domain
    it is under, optionally followed by ``:port`` (case-insensitively).  So
    ``example\\.com`` matches ``example.com`` and ``www.example.com`` on
    any port, but not ``notexample.com`` or ``example.com.evil.example``;
    ``example\\.com:443`` only port 443; ``.*:25`` any host on port 25.
    An IP address is matched whole (``0\\.0\\.1`` does not match
    ``127.0.0.1``).  A pattern that is a host name or address, with or
    without a port (``example.com``, ``127.1``, ``[::1]:8080``), is taken
    literally, its dots as dots, and read the way destinations are
    (:func:`destination_names`: ``127.1`` is ``127.0.0.1``).

    In a filter expression, ``~d`` is matched the same way, against the
    host alone; every other operator keeps its meaning.  This ``~d`` is the
    host policy's own: elsewhere (``--save-filter``, :func:`twistproxy.filters.parse`)
    ``~d`` is mitmproxy's, a regex searched anywhere in the host.

    :raises ValueError: with a one-line message, if the pattern is empty or
        is neither.
    """
    if not pattern.strip():
        raise ValueError("empty host pattern")
    start = pattern.lstrip()
    if start.startswith(("~", "!")) or (start.startswith("(") and "~" in pattern):
        try:
            return HostPattern(pattern, None, parse_filter(pattern, hosts=_host_test))
        except FilterError as e:
            raise ValueError(
                f"{pattern!r}: not a filter expression ({e.reason} at column {e.position + 1})"
            ) from None
    try:
        return HostPattern(pattern, re.compile(_host_regex(pattern), re.IGNORECASE), None)
    except re.error as e:
        raise ValueError(f"{pattern!r}: not a regular expression ({e})") from None


class HostPolicy(Addon):
    """
    Allows or refuses requests and CONNECT tunnels by their destination.

    A request is refused with ``403 Forbidden`` (a text body naming the
    destination) when a ``block`` pattern matches it, or when there are
    ``allow`` patterns and none matches: block wins over allow.  CONNECT is
    checked before its tunnel opens (so a blocked host gets no tunnel,
    passed through or intercepted), and so is every request, including
    those inside an intercepted tunnel.

    Patterns match whole host names (and the domains they are under), not
    parts of them: see :func:`parse_host_pattern`.  The destination is
    where the proxy would connect, not what the client says in its ``Host``
    header: patterns see the host with its trailing dot removed, in lower
    case, IP addresses in their usual form (``0x7f.1`` and ``2130706433``
    are ``127.0.0.1``, ``::ffff:10.0.0.1`` is ``10.0.0.1``), an unspecified
    address (``0.0.0.0``, ``0``, ``::``) as the loopback it reaches, and
    the loopback by each of its names (``127.0.0.1``, ``::1``,
    ``localhost``): see :func:`destination_names`.  Filter expressions see
    a ``Host`` header naming that destination.  Names are not resolved:
    blocking ``10.0.0.1`` does not block a name that resolves to it.

    :param allow: Patterns of allowed destinations (see
        :func:`parse_host_pattern`); none means everything not blocked.
    :param block: Patterns of refused destinations.
    :raises ValueError: with a one-line message naming an invalid pattern.
    """

    def __init__(self, *, allow: Iterable[str] = (), block: Iterable[str] = ()) -> None:
        self._allow = tuple(parse_host_pattern(p) for p in allow)
        self._block = tuple(parse_host_pattern(p) for p in block)
        self._filters = any(p.filter is not None for p in (*self._allow, *self._block))

    @property
    def allow(self) -> tuple[str, ...]:
        """The allow patterns, as given."""
        return tuple(p.text for p in self._allow)

    @property
    def block(self) -> tuple[str, ...]:
        """The block patterns, as given."""
        return tuple(p.text for p in self._block)

    def http_connect(self, flow: HTTPFlow) -> None:
        """Refuse a tunnel to a destination the policy does not allow."""
        self._check(flow)

    def requestheaders(self, flow: HTTPFlow) -> None:
        """Refuse a request to a destination the policy does not allow."""
        self._check(flow)

    def permits(self, flow: HTTPFlow) -> bool:
        """
        :returns: Whether the policy lets *flow*'s request through.
        """
        request = flow.request
        if request is None:
            return True
        names = destination_names(request.host)
        port = request.port
        subject = _destination_view(flow, request, names[0]) if self._filters else flow
        if any(p.matches(subject, names, port) for p in self._block):
            return False
        return not self._allow or any(p.matches(subject, names, port) for p in self._allow)

    def _check(self, flow: HTTPFlow) -> None:
        request = flow.request
        if request is None or self.permits(flow):
            return
        shown = join_host_port(request.host, request.port)
        flow.response = Response.make(
            403,
            f"403 Forbidden\n\ntwistproxy: the host policy refuses this request to {shown}.\n",
        )


_LEGACY_IPV4 = re.compile(r"[0-9a-fx.]+\Z")
_IPV4 = re.compile(r"[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+\Z")
# Where a connection to an unspecified address goes: this host's loopback.
_UNSPECIFIED = {"0.0.0.0": "127.0.0.1", "::": "::1"}
_LOOPBACK = ("127.0.0.1", "::1", "localhost")


def canonical_host(host: str) -> str:
    """
    *host* as the resolver will read it: lower case, without trailing dots,
    an IP address in its usual form (``inet_aton``'s forms such as
    ``2130706433`` or ``0x7f.1`` for IPv4, an IPv4-mapped IPv6 address as
    IPv4).
    """
    name = host.rstrip(".").lower() or host.lower()
    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        if _LEGACY_IPV4.match(name) and any(c.isdigit() for c in name):
            try:
                return socket.inet_ntoa(socket.inet_aton(name))
            except OSError:
                pass
        return name
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def destination_names(host: str) -> tuple[str, ...]:
    """
    The names the host policy knows the destination *host* by, the first
    its usual form: :func:`canonical_host`, with an unspecified address
    (``0.0.0.0``, ``0``, ``::``, any spelling) as the loopback address a
    connection to it reaches.  The loopback destination (``127.0.0.1``,
    ``::1``, ``localhost`` or a name under ``.localhost``) goes by all
    three of ``127.0.0.1``, ``::1`` and ``localhost``, so a pattern for one
    matches the others.  Other ``127.x.y.z`` addresses are themselves only.
    """
    name = canonical_host(host)
    name = _UNSPECIFIED.get(name, name)
    if name in _LOOPBACK or name.endswith(".localhost"):
        return (name, *(alias for alias in _LOOPBACK if alias != name))
    return (name,)


def _destination_view(flow: HTTPFlow, request: Request, host: str) -> HTTPFlow:
    """
    *flow* itself, or when its request's host or ``Host`` header differs
    from the destination, a copy for filters to look at whose request goes
    to *host* and whose ``Host`` header names it.
    """
    connect = request.method.upper() == "CONNECT"
    authority = authority_text("" if connect else request.scheme, host, request.port)
    header = request.host_header
    if host == request.host and (header is None or header.lower() == authority):
        return flow
    headers = request.headers.copy()
    headers[b"Host"] = authority
    view = HTTPFlow(flow.client_conn, flow.server_conn, now=_at(flow.timestamp_created))
    view.request = Request(
        host,
        request.port,
        request.method,
        request.scheme,
        authority if request.authority else "",
        request.path,
        request.http_version,
        headers,
        None,
    )
    view.marked = flow.marked
    view.is_replay = flow.is_replay
    return view


def _at(timestamp: float) -> Callable[[], float]:
    return lambda: timestamp
