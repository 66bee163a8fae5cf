# -*- test-case-name: tests.test_web_api -*-
"""
Who may use the web UI: the token, and the ``Host`` and ``Origin`` checks
that keep other web pages out (DNS rebinding, cross-origin requests).
Core code: decisions on header values, no I/O.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets

TOKEN_HEADER = b"x-twistproxy-token"
"""The request header that may carry the token (for scripts and curl)."""


def new_token() -> str:
    """A random token (32 URL-safe characters, 192 bits)."""
    return secrets.token_urlsafe(24)


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` or ``[v6]:port`` into its parts; ``None`` if malformed."""
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep:
            return None
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            return None
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            host, port_text = value, None
    if port_text is None:
        return host.lower(), None
    if not port_text.isdigit():
        return None
    return host.lower(), int(port_text)


class Guard:
    """
    The checks every request to the web UI passes.

    :param token: The token the UI URL carries.
    :param port: The port the UI listens on (set once it listens).
    :param names: Host names (besides ``localhost`` and IP literals) the
        ``Host`` header may name: the ``--web-host`` given, if a name.
    """

    def __init__(self, token: str, port: int = 0, names: frozenset[str] = frozenset()) -> None:
        self.token = token
        self.port = port
        self._names = frozenset(n.lower() for n in names) | {"localhost"}

    @property
    def cookie_name(self) -> bytes:
        """The cookie holding the token; per port, as cookies are shared across ports."""
        return f"twistproxy-token-{self.port}".encode()

    def host_refusal(self, host: bytes | None) -> str | None:
        """
        Why the ``Host`` header *host* is refused, or ``None``: it must name
        this port and ``localhost``, an IP address or a name given with
        ``--web-host`` (a name an attacker's DNS points here is refused:
        DNS rebinding).
        """
        if host is None:
            return "no Host header"
        parts = _split_host(host.decode("latin-1"))
        if parts is None:
            return "a malformed Host header"
        name, port = parts
        if port is not None and port != self.port:
            return "a Host header naming another port"
        if port is None and self.port != 80:
            return "a Host header without this port"
        if name in self._names:
            return None
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return f"the host name {name!r} (use an address, localhost or --web-host)"
        return None

    def origin_refusal(self, origin: bytes | None, host: bytes | None,
                       fetch_site: bytes | None) -> str | None:
        """
        Why a request with *origin* (``Origin``) and *fetch_site*
        (``Sec-Fetch-Site``) is refused as cross-origin, or ``None``: an
        ``Origin`` must be this UI's own (``http://`` and the ``Host``).
        """
        if fetch_site is not None and fetch_site.lower() == b"cross-site":
            return "a cross-site request"
        if origin is None:
            return None
        if host is None or origin != b"http://" + host:
            return f"a request from another origin ({origin.decode('latin-1')})"
        return None

    def token_valid(self, given: bytes | str | None) -> bool:
        """Whether *given* is the token (compared in constant time)."""
        if given is None:
            return False
        if isinstance(given, str):
            given = given.encode("utf-8", "replace")
        return hmac.compare_digest(given, self.token.encode())
