# -*- test-case-name: tests.test_target -*-
"""
Request-target parsing: where a proxied request goes; and the one home of
default ports and of writing and splitting authorities (``host[:port]``).

A forward proxy receives ``GET http://example.com:8080/a?b=1 HTTP/1.1``
(absolute form, RFC 9112 section 3.2.2); this module turns that target into a
:class:`Target` naming the scheme, host, port, the origin-form path to send
upstream and the authority to put in its ``Host`` header.  It does no I/O.

Authorities, everywhere in twistproxy:

- :data:`DEFAULT_PORTS`: the port of each scheme;
- :func:`authority_for` (bytes, for the wire) and :func:`authority_text`
  (text, for headers and URLs): ``host[:port]`` without the scheme's
  default port;
- :func:`join_host_port`: ``host:port`` always with the port, for logs,
  messages and ``host:port`` patterns;
- :func:`parse_authority` splits strictly (a client's request-target) and
  :func:`split_authority` leniently (a recorded or hook-set ``Host``).

All of them write IPv6 literals in brackets and read them without.

:func:`parse_url` splits an absolute URL given as text (by
``Request.make``, or set as ``Request.url``) into scheme, host (without
brackets), port and path.
"""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Iterable

import attrs

from twistproxy.errors import BadRequestTarget

DEFAULT_PORTS: dict[str, int] = {"http": 80, "https": 443}
"""The port each supported scheme uses when the authority names none."""

# A reg-name (RFC 3986 section 3.2.2) allows unreserved characters,
# pct-encoding and sub-delims; a host the proxy connects to is a DNS name or
# an IPv4 address: letters, digits, "-", "_" and ".".  The rest cannot be
# connected to (Twisted's endpoint refuses them: a 500), and a decoded
# "127%2e0%2e0%2e1" would be a host the host policy never saw.
_REG_NAME = re.compile(rb"[A-Za-z0-9\-._~!$&'()*+,;=%]+\Z")
_HOST_NAME = re.compile(rb"[A-Za-z0-9\-._]+\Z")
_IPV6 = re.compile(rb"[0-9A-Fa-f:.]+\Z")
# An http(s) absolute-form target: scheme, authority, path and query (the
# fragment dropped), as the step-by-step parse below splits it.
_ABSOLUTE = re.compile(rb"(https?)://([^/?#]*)([^#]*)", re.IGNORECASE)


@attrs.frozen(slots=True)
class Target:
    """
    Where a proxied request goes.

    :ivar scheme: ``"http"`` or ``"https"``.
    :ivar host: A host name or IP literal, without brackets.
    :ivar port: The TCP port, the scheme's default when the URI names none.
    :ivar path: The origin-form request-target to send upstream (path and
        query, never empty, no fragment).
    :ivar authority: The authority exactly as the URI spelt it, without
        userinfo: the value of the ``Host`` header sent upstream.
    """

    scheme: str
    host: str
    port: int
    path: bytes
    authority: bytes


@attrs.frozen(slots=True)
class Tunnel:
    """
    Where the requests on a connection go when they name no destination of
    their own (origin form): inside an intercepted ``CONNECT`` tunnel, the
    tunnel's target, over TLS (``https``) or in the clear (``http``) as the
    client speaks inside it; on a SOCKS5 or transparent listener, the
    destination the client asked for; on a reverse proxy's listener, the
    origin it stands in front of.

    :ivar host: Where the requests go.
    :ivar port: Where the requests go.
    :ivar scheme: ``https`` or ``http``, towards the origin.
    :ivar reverse: The client addressed the proxy itself (a reverse
        proxy): every request goes to this origin, absolute-form ones
        too, and neither the client's ``Host`` nor its TLS server name
        names the origin.
    :ivar rewrite_host: Set each request's ``Host`` to this origin's
        authority (a reverse proxy's default); otherwise a ``Host`` is
        added only where the request has none.
    """

    host: str
    port: int
    scheme: str = "https"
    reverse: bool = False
    rewrite_host: bool = False

    def target(self, path: bytes) -> Target:
        """The :class:`Target` of an origin-form request for *path*."""
        scheme, host, port = self.scheme, self.host, self.port
        return Target(scheme=scheme, host=host, port=port, path=path,
                      authority=authority_for(scheme, host, port))


def parse_absolute_form(uri: bytes) -> Target:
    """
    Parse an absolute-form request-target.

    :param uri: The request-target from the request line.
    :returns: The parsed target.
    :raises BadRequestTarget: if *uri* is not an ``http`` or ``https`` URI
        with a usable host and port.
    """
    match = _ABSOLUTE.match(uri)
    if match is not None:  # one C call for the common case; the rest below says why not
        scheme, authority, path = match.groups()
        scheme_name = "https" if len(scheme) == 5 else "http"
        if not path:
            path = b"/"
        elif path[:1] == b"?":
            path = b"/" + path
        host, port = parse_authority(authority, DEFAULT_PORTS[scheme_name])
        return Target(scheme=scheme_name, host=host, port=port, path=path, authority=authority)
    return _parse_step_by_step(uri)


def _parse_step_by_step(uri: bytes) -> Target:
    """:func:`parse_absolute_form` a piece at a time, to say what is wrong."""
    scheme_end = uri.find(b"://")
    if scheme_end <= 0:
        raise BadRequestTarget(
            "this is a proxy: the request-target must be an absolute URI "
            "such as http://example.com/"
        )
    scheme = uri[:scheme_end].lower()
    if scheme == b"http":
        scheme_name = "http"
    elif scheme == b"https":
        scheme_name = "https"
    else:
        raise BadRequestTarget(f"unsupported scheme {scheme.decode('ascii', 'replace')!r}")
    rest = uri[scheme_end + 3 :]
    end = len(rest)
    for delimiter in (b"/", b"?", b"#"):
        index = rest.find(delimiter)
        if index != -1 and index < end:
            end = index
    authority = rest[:end]
    path = rest[end:]
    fragment = path.find(b"#")
    if fragment != -1:
        path = path[:fragment]
    if not path:
        path = b"/"
    elif path[:1] == b"?":
        path = b"/" + path
    host, port = parse_authority(authority, DEFAULT_PORTS[scheme_name])
    return Target(scheme=scheme_name, host=host, port=port, path=path, authority=authority)


def parse_authority(authority: bytes, default_port: int) -> tuple[str, int]:
    """
    Split an authority (``host[:port]``) into its host and port.

    :param authority: The authority, without userinfo.
    :param default_port: The port to use when the authority names none.
    :returns: The host (IPv6 literals without brackets) and the port.
    :raises BadRequestTarget: if the authority has userinfo, an empty or
        malformed host (a reg-name with percent-encoding or sub-delims is
        one: no DNS name has them), or a port outside 1-65535.
    """
    if b"@" in authority:
        raise BadRequestTarget("userinfo in the request-target is not allowed")
    if authority[:1] == b"[":
        close = authority.find(b"]")
        if close == -1:
            raise BadRequestTarget("unterminated IPv6 literal in the request-target")
        host = authority[1:close]
        port_part = authority[close + 1 :]
        if not _IPV6.match(host) or b":" not in host:
            raise BadRequestTarget("malformed IPv6 literal in the request-target")
        if port_part and port_part[:1] != b":":
            raise BadRequestTarget("malformed authority in the request-target")
        port_text = port_part[1:]
    else:
        host, colon, port_text = authority.partition(b":")
        if not host or not _REG_NAME.match(host):
            raise BadRequestTarget("missing or malformed host in the request-target")
        if not _HOST_NAME.match(host):
            raise BadRequestTarget(
                f"malformed host {host.decode('ascii')!r} in the request-target: a host "
                "name has only letters, digits, '-', '_' and '.' (no percent-encoding)"
            )
        if not colon:
            port_text = b""
    if not port_text:
        port = default_port
    elif port_text.isdigit() and len(port_text) <= 5 and 0 < int(port_text) < 65536:
        port = int(port_text)
    else:
        raise BadRequestTarget(f"invalid port {port_text.decode('ascii', 'replace')!r}")
    return host.decode("ascii"), port


def _bracketed(host: str) -> str:
    """
    *host* as an authority writes it: an IPv6 literal (a host with a colon)
    in brackets, unless it already is.
    """
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def authority_for(scheme: str, host: str, port: int) -> bytes:
    """
    The authority naming *host* and *port* as it is sent (``Host`` header
    form): IPv6 literals in brackets, a non-ASCII host name IDNA-encoded,
    the port left out when it is *scheme*'s default.
    """
    name = _bracketed(host)
    encoded = name.encode("ascii") if name.isascii() else name.encode("idna")
    return encoded if DEFAULT_PORTS.get(scheme) == port else b"%s:%d" % (encoded, port)


def authority_text(scheme: str, host: str, port: int) -> str:
    """
    The authority naming *host* and *port* as text, for a ``Host`` header
    set through the ``str`` API or a URL: like :func:`authority_for`, but
    the host is kept as it is (not IDNA-encoded).  A scheme without a
    default port (``""``, for a ``CONNECT`` authority) always gets the port.
    """
    name = _bracketed(host)
    return name if DEFAULT_PORTS.get(scheme) == port else f"{name}:{port}"


def join_host_port(host: str, port: int) -> str:
    """
    ``host:port``, always with the port, IPv6 literals in brackets
    (``[::1]:8080``): an address in logs and messages, and what ``host:port``
    patterns are matched against.
    """
    return f"{_bracketed(host)}:{port}"


def split_authority(authority: str) -> tuple[str, int | None]:
    """
    Split ``host[:port]`` leniently, never raising: for a ``Host`` header
    that was recorded or set by a hook, not for a client's request-target
    (:func:`parse_authority` checks those).

    :returns: The host (an IPv6 literal without its brackets; the whole
        *authority* when it cannot be split) and the port, or ``None`` when
        there is no valid one.
    """
    if authority.startswith("["):
        end = authority.find("]")
        if end != -1:
            rest = authority[end + 1 :]
            port = rest[1:] if rest.startswith(":") else ""
            return authority[1:end], int(port) if port.isdigit() else None
    host, sep, port = authority.rpartition(":")
    if not sep or ":" in host:
        return authority, None
    return host, int(port) if port.isdigit() else None


def parse_url(url: str) -> tuple[str, str, int, str]:
    """
    Parse an absolute URL that code gave as text (``Request.make``, setting
    ``Request.url``) into scheme, host (without brackets), port and path
    (with the query; without the fragment).  It is lenient, as
    :func:`urllib.parse.urlsplit` is, and takes any scheme with a port:
    a client's request-target is parsed by :func:`parse_absolute_form`.

    :raises ValueError: if there is no scheme or host, or no port and the
        scheme has no default.
    """
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme
    host = parts.hostname
    if not scheme or not host:
        raise ValueError(f"not an absolute URL: {url!r}")
    port = parts.port  # raises ValueError when out of range
    if port is None:
        try:
            port = DEFAULT_PORTS[scheme]
        except KeyError:
            raise ValueError(f"no port in URL and no default for {scheme!r}: {url!r}") from None
    path = parts.path or "/"
    if parts.query:
        path = f"{path}?{parts.query}"
    return scheme, host, port, path


def check_host(fields: Iterable[tuple[bytes, bytes]], target: Target) -> bytes | None:
    """
    Refuse a request whose ``Host`` header contradicts its absolute-form
    target: two parsers (this proxy and the origin) must not disagree
    about where a request goes.

    :param fields: The request's header fields.
    :returns: The ``Host`` header's value, or ``None`` without one.
    :raises BadRequestTarget: for more than one ``Host`` header, a malformed
        one, or one naming another host or port than *target*.
    """
    values = [value for name, value in fields if len(name) == 4 and name.lower() == b"host"]
    if not values:
        return None
    if len(values) > 1:
        raise BadRequestTarget("more than one Host header")
    value = values[0]
    if value == target.authority:
        return value  # the same bytes: the same host and port
    host, port = parse_authority(value.strip(), DEFAULT_PORTS[target.scheme])
    if host.lower() != target.host.lower() or port != target.port:
        raise BadRequestTarget("the Host header contradicts the request-target")
    return value
