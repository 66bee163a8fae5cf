# -*- test-case-name: tests.test_modes -*-
"""
Proxy modes: what a listener's clients speak and where their requests go.

A mode is written as mitmproxy writes it, ``MODE[:DATA][@[ADDRESS:]PORT]``:

- ``regular``: an explicit HTTP(S) proxy; clients send absolute-form
  requests and ``CONNECT`` (the default, and what ``--port`` listens for);
- ``upstream:http[s]://HOST[:PORT]``: the same, sending every request on
  through another proxy (:mod:`twistproxy._upstream_proxy`);
- ``reverse:http[s]://HOST[:PORT]``: a reverse proxy in front of that
  origin; clients send origin-form requests (in the clear or over TLS,
  told apart by their first byte) as to the origin itself;
- ``socks5``: a SOCKS5 server (RFC 1928); what a client sends through its
  tunnel is detected like an intercepted ``CONNECT`` tunnel's;
- ``transparent``: connections redirected by the kernel (Linux, iptables or
  nftables ``REDIRECT``), sent where they were going.

The listener is on ``127.0.0.1`` unless ``ADDRESS`` says otherwise, on
``PORT`` or the mode's default port (1080 for ``socks5``, 8080 for the
others).  :func:`parse_mode` reads the text; :class:`Mode` is what it reads,
and what a flow records as ``flow.mode`` (its text).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import attrs

from twistproxy._connect import Sniffer, hand_over
from twistproxy._socks import Socks5
from twistproxy._target import DEFAULT_PORTS, Tunnel, parse_url
from twistproxy._transparent import transparent_entry
from twistproxy.channel import Proxy

MODES: tuple[str, ...] = ("regular", "upstream", "reverse", "socks5", "transparent")
"""The modes a listener can run in."""

_DEFAULT_LISTEN_PORTS = {"socks5": 1080}
_WITH_DATA = ("upstream", "reverse")
# MODE[:DATA][@[ADDRESS:]PORT]; DATA, a URL, may hold no '@' (no credentials).
_SPEC = re.compile(r"(?P<kind>[a-z0-9]+)(?::(?P<data>[^@]*))?(?:@(?P<listen>.*))?\Z", re.DOTALL)


@attrs.frozen(slots=True)
class Mode:
    """
    One listener's mode (see the module's description for the spellings).

    :ivar kind: One of :data:`MODES`.
    :ivar scheme: For ``upstream`` and ``reverse``: ``http`` or ``https``,
        how the proxy talks to the upstream proxy or the origin.
    :ivar host: For ``upstream`` and ``reverse``: the upstream proxy or the
        origin.
    :ivar port: For ``upstream`` and ``reverse``: its port.
    :ivar listen_host: The address to listen on, if the spelling gave one.
    :ivar listen_port: The port to listen on, if the spelling gave one.
    """

    kind: str = "regular"
    scheme: str | None = None
    host: str | None = None
    port: int | None = None
    listen_host: str | None = None
    listen_port: int | None = None

    def __str__(self) -> str:
        """The mode as :func:`parse_mode` reads it: ``reverse:https://api@8443``."""
        text = self.kind
        if self.host is not None:
            assert self.scheme is not None and self.port is not None
            host = f"[{self.host}]" if ":" in self.host else self.host
            text += f":{self.scheme}://{host}"
            if self.port != DEFAULT_PORTS[self.scheme]:
                text += f":{self.port}"
        if self.listen_port is not None:
            text += "@"
            if self.listen_host is not None:
                listen = self.listen_host
                text += f"[{listen}]:" if ":" in listen else f"{listen}:"
            text += str(self.listen_port)
        return text

    @property
    def default_port(self) -> int:
        """The port this mode listens on when its spelling names none."""
        return _DEFAULT_LISTEN_PORTS.get(self.kind, 8080)

    def endpoint(self, default_port: int | None = None) -> str:
        """
        The Twisted server endpoint description of this mode's listener:
        ``tcp:PORT:interface=ADDRESS``, on ``127.0.0.1`` and
        :attr:`default_port` unless the spelling said otherwise.

        :param default_port: The port for a spelling without one, instead
            of the mode's own default.
        """
        port = self.listen_port
        if port is None:
            port = self.default_port if default_port is None else default_port
        host = self.listen_host or "127.0.0.1"
        interface = host.replace(":", r"\:")
        kind = "tcp6" if ":" in host else "tcp"
        return f"{kind}:{port}:interface={interface}"

    def tunnel(self, *, keep_host: bool = False) -> Tunnel:
        """
        Where a ``reverse`` listener's requests go: its origin, the
        ``Host`` of each request rewritten to the origin's unless
        *keep_host*.
        """
        assert self.kind == "reverse" and self.scheme is not None
        assert self.host is not None and self.port is not None
        return Tunnel(self.host, self.port, self.scheme, reverse=True, rewrite_host=not keep_host)


REGULAR = Mode()
"""The regular mode, on the default port."""


def parse_mode(text: str) -> Mode:
    """
    Read a mode spelt ``MODE[:DATA][@[ADDRESS:]PORT]``.

    :raises ValueError: with a message saying what is wrong, if *text* is
        not such a mode.
    """
    match = _SPEC.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a mode (expected MODE[:DATA][@[ADDRESS:]PORT])")
    kind, data, listen = match.group("kind", "data", "listen")
    if listen is not None and "@" in listen:
        raise ValueError(f"{text!r}: one '@' only, before the listener (credentials "
                         "for an upstream proxy go in --upstream-auth)")
    if kind not in MODES:
        raise ValueError(f"unknown mode {kind!r}: choose one of {', '.join(MODES)}")
    listen_host: str | None = None
    listen_port: int | None = None
    if listen is not None:
        try:
            listen_host, listen_port = _listener(listen)
        except ValueError as e:
            if data and "://" in data:
                raise ValueError(f"{e} (credentials for an upstream proxy go in "
                                 "--upstream-auth, not in the URL)") from None
            raise
    scheme = host = port = None
    if kind in _WITH_DATA:
        if not data:
            raise ValueError(f"{kind} needs a URL: {kind}:http://HOST[:PORT] or https://")
        scheme, host, port = _server(kind, data)
    elif data is not None:
        raise ValueError(f"{kind} takes no data (got {data!r})")
    return Mode(kind, scheme, host, port, listen_host, listen_port)


def _server(kind: str, url: str) -> tuple[str, str, int]:
    """The scheme, host and port of an upstream proxy's or an origin's *url*."""
    if "://" not in url:
        url = f"http://{url}" if kind == "upstream" else f"https://{url}"
    elif url.split("://", 1)[0].lower() not in DEFAULT_PORTS:
        raise ValueError(f"{kind}: {url!r}: the scheme must be http or https")
    try:
        scheme, host, port, path = parse_url(url)
    except ValueError as e:
        raise ValueError(f"{kind}: {url!r} is not a URL ({e})") from None
    if path not in ("/", ""):
        raise ValueError(f"{kind}: {url!r} has a path; give scheme://host[:port] only")
    return scheme, host, port


def _listener(text: str) -> tuple[str | None, int]:
    """The address (if any) and port of a listener's ``[ADDRESS:]PORT``."""
    host: str | None
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host = None
    elif host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) < 65536:
        raise ValueError(f"@{text}: {port_text!r} is not a port number")
    if host is not None:
        if not host:
            raise ValueError(f"@{text}: no address before the port")
        if host != "localhost":
            try:
                ipaddress.ip_address(host)
            except ValueError:
                raise ValueError(f"@{text}: {host!r} is not an IP address") from None
    return host, int(port_text)


def entry_for(mode: Mode, *, keep_host: bool = False) -> Callable[[Proxy], None] | None:
    """
    What a listener in *mode* does with a new client connection before its
    first byte, or ``None`` for a ``regular`` (or ``upstream``) listener,
    whose clients speak to a proxy.

    :param keep_host: For ``reverse``: keep the client's ``Host`` rather
        than write the origin's.
    """
    if mode.kind == "reverse":
        tunnel = mode.tunnel(keep_host=keep_host)

        def reverse(channel: Proxy) -> None:
            _take_over(channel, Sniffer(channel, tunnel.host, tunnel.port, None, fixed=tunnel))

        return reverse
    if mode.kind == "socks5":
        return _socks5
    if mode.kind == "transparent":
        return transparent_entry
    return None


def _socks5(channel: Proxy) -> None:
    """A SOCKS5 listener's new connection: the handshake comes first."""
    protocol = Socks5(channel)
    hand_over(channel, protocol, b"")
    channel.stop_deadlines()
    protocol.start()


def _take_over(channel: Proxy, sniffer: Sniffer) -> None:
    """Give *channel*'s new connection to *sniffer*, before any byte."""
    hand_over(channel, sniffer, b"")
    channel.stop_deadlines()
    sniffer.start()
