"""
Tests for :mod:`twistproxy._target`.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from twistproxy._target import (
    DEFAULT_PORTS,
    Target,
    _parse_step_by_step,
    authority_for,
    authority_text,
    join_host_port,
    parse_absolute_form,
    parse_authority,
    parse_url,
    split_authority,
)
from twistproxy.errors import BadRequestTarget


class ParseAbsoluteFormTests(SynchronousTestCase):
    """
    Tests for `parse_absolute_form`.
    """

    def test_http_default_port(self) -> None:
        """
        An ``http`` URI without a port goes to port 80, with its path and
        query as the origin-form target.
        """
        self.assertEqual(
            parse_absolute_form(b"http://example.com/a/b?c=1&d=2"),
            Target(
                scheme="http",
                host="example.com",
                port=80,
                path=b"/a/b?c=1&d=2",
                authority=b"example.com",
            ),
        )

    def test_https_default_port(self) -> None:
        """
        An ``https`` URI without a port goes to port 443.
        """
        target = parse_absolute_form(b"https://example.com/x")
        self.assertEqual((target.scheme, target.host, target.port), ("https", "example.com", 443))

    def test_explicit_port(self) -> None:
        """
        A port in the authority is used instead of the scheme's default, and
        stays in the authority.
        """
        target = parse_absolute_form(b"https://example.com:8443/x")
        self.assertEqual(target.port, 8443)
        self.assertEqual(target.host, "example.com")
        self.assertEqual(target.authority, b"example.com:8443")

    def test_explicit_default_port_kept_in_authority(self) -> None:
        """
        An authority naming the default port is kept exactly as spelt, port
        included.
        """
        target = parse_absolute_form(b"http://example.com:80/")
        self.assertEqual(target.port, 80)
        self.assertEqual(target.authority, b"example.com:80")

    def test_ipv6_literal_with_port(self) -> None:
        """
        An IPv6 literal's host has no brackets; the authority keeps them.
        """
        self.assertEqual(
            parse_absolute_form(b"http://[::1]:8000/x"),
            Target(scheme="http", host="::1", port=8000, path=b"/x", authority=b"[::1]:8000"),
        )

    def test_ipv6_literal_default_port(self) -> None:
        """
        An IPv6 literal without a port gets the scheme's default port.
        """
        target = parse_absolute_form(b"https://[2001:db8::7]/")
        self.assertEqual((target.host, target.port), ("2001:db8::7", 443))

    def test_no_path(self) -> None:
        """
        A URI with no path at all is sent upstream as ``/``.
        """
        target = parse_absolute_form(b"http://example.com")
        self.assertEqual(target.path, b"/")
        self.assertEqual(target.authority, b"example.com")

    def test_query_only(self) -> None:
        """
        A URI with a query but no path gets ``/`` before the query, and the
        query is not taken for part of the authority.
        """
        target = parse_absolute_form(b"http://h?x=1")
        self.assertEqual(target.path, b"/?x=1")
        self.assertEqual(target.host, "h")
        self.assertEqual(target.authority, b"h")

    def test_query_containing_slash(self) -> None:
        """
        A ``/`` inside a query that directly follows the authority does not
        end the authority there.
        """
        target = parse_absolute_form(b"http://h:81?next=/a/b")
        self.assertEqual((target.host, target.port), ("h", 81))
        self.assertEqual(target.path, b"/?next=/a/b")

    def test_fragment_dropped(self) -> None:
        """
        A fragment is never sent upstream.
        """
        self.assertEqual(parse_absolute_form(b"http://h/a?b=1#frag").path, b"/a?b=1")

    def test_fragment_only(self) -> None:
        """
        A URI whose only component after the authority is a fragment is sent
        upstream as ``/``.
        """
        target = parse_absolute_form(b"http://h#frag")
        self.assertEqual(target.path, b"/")
        self.assertEqual(target.authority, b"h")

    def test_uppercase_scheme(self) -> None:
        """
        The scheme is case-insensitive and reported in lower case.
        """
        self.assertEqual(parse_absolute_form(b"HTTP://example.com/").scheme, "http")
        self.assertEqual(parse_absolute_form(b"HtTpS://example.com/").port, 443)

    def test_authority_verbatim(self) -> None:
        """
        The authority is kept exactly as the URI spelt it, case included,
        and so is the path.
        """
        target = parse_absolute_form(b"http://ExAmple.COM:8080/Path%2Fx")
        self.assertEqual(target.authority, b"ExAmple.COM:8080")
        self.assertEqual(target.host, "ExAmple.COM")
        self.assertEqual(target.path, b"/Path%2Fx")

    def test_origin_form_rejected(self) -> None:
        """
        An origin-form target is not something a forward proxy can route.
        """
        self.assertRaises(BadRequestTarget, parse_absolute_form, b"/x")

    def test_origin_form_with_uri_in_query_rejected(self) -> None:
        """
        An origin-form target whose query holds a URI is still rejected.
        """
        self.assertRaises(BadRequestTarget, parse_absolute_form, b"/x?u=http://h/")

    def test_missing_scheme_rejected(self) -> None:
        """
        A target starting with ``://`` has no scheme and is rejected.
        """
        self.assertRaises(BadRequestTarget, parse_absolute_form, b"://h/")

    def test_unsupported_scheme_rejected(self) -> None:
        """
        Only ``http`` and ``https`` are proxied.
        """
        with self.assertRaises(BadRequestTarget) as caught:
            parse_absolute_form(b"ftp://example.com/file")
        self.assertIn("ftp", str(caught.exception))

    def test_userinfo_rejected(self) -> None:
        """
        Credentials in the URI are refused rather than forwarded.
        """
        self.assertRaises(BadRequestTarget, parse_absolute_form, b"http://u:p@h/")
        self.assertRaises(BadRequestTarget, parse_absolute_form, b"http://u@h/")

    def test_at_sign_in_path_allowed(self) -> None:
        """
        An ``@`` after the authority is part of the path, not userinfo.
        """
        target = parse_absolute_form(b"http://h/@user")
        self.assertEqual((target.host, target.path), ("h", b"/@user"))

    def test_empty_host_rejected(self) -> None:
        """
        A URI with an empty host, with or without a port, is rejected.
        """
        self.assertRaises(BadRequestTarget, parse_absolute_form, b"http:///x")
        self.assertRaises(BadRequestTarget, parse_absolute_form, b"http://:80/x")

    def test_bad_ports_rejected(self) -> None:
        """
        Ports outside 1-65535, and ports that are not digits, are rejected.
        """
        for uri in (
            b"http://h:0/",
            b"http://h:65536/",
            b"http://h:abc/",
            b"http://h:-1/",
            b"http://h:8080:1/",
            b"http://[::1]:0/",
        ):
            with self.subTest(uri=uri):
                self.assertRaises(BadRequestTarget, parse_absolute_form, uri)

    def test_highest_port(self) -> None:
        """
        Port 65535 is accepted.
        """
        self.assertEqual(parse_absolute_form(b"http://h:65535/").port, 65535)

    def test_unterminated_ipv6_rejected(self) -> None:
        """
        An IPv6 literal without its closing bracket is rejected.
        """
        self.assertRaises(BadRequestTarget, parse_absolute_form, b"http://[::1/x")
        self.assertRaises(BadRequestTarget, parse_absolute_form, b"http://[::1")


class ParseAuthorityTests(SynchronousTestCase):
    """
    Tests for `parse_authority`.
    """

    def test_host_only(self) -> None:
        """
        An authority without a port gets the default port.
        """
        self.assertEqual(parse_authority(b"example.com", 443), ("example.com", 443))

    def test_host_and_port(self) -> None:
        """
        An explicit port wins over the default.
        """
        self.assertEqual(parse_authority(b"example.com:8080", 80), ("example.com", 8080))

    def test_empty_port(self) -> None:
        """
        An empty port (``host:``) means the default port (RFC 3986 section
        3.2.3).
        """
        self.assertEqual(parse_authority(b"example.com:", 80), ("example.com", 80))

    def test_ipv4_literal(self) -> None:
        """
        An IPv4 literal is a host like any other.
        """
        self.assertEqual(parse_authority(b"127.0.0.1:8000", 80), ("127.0.0.1", 8000))

    def test_ipv6_literal(self) -> None:
        """
        An IPv6 literal loses its brackets; its port is after the ``]``.
        """
        self.assertEqual(parse_authority(b"[::1]:8000", 80), ("::1", 8000))
        self.assertEqual(parse_authority(b"[fe80::1]", 80), ("fe80::1", 80))

    def test_malformed_ipv6_rejected(self) -> None:
        """
        Brackets must hold an IPv6 address and be followed by nothing or a
        port.
        """
        for authority in (b"[::1", b"[]", b"[1.2.3.4]", b"[::1]x", b"[::1]80", b"[g::1]"):
            with self.subTest(authority=authority):
                self.assertRaises(BadRequestTarget, parse_authority, authority, 80)

    def test_userinfo_rejected(self) -> None:
        """
        An authority with userinfo is rejected.
        """
        self.assertRaises(BadRequestTarget, parse_authority, b"user@example.com", 80)

    def test_malformed_host_rejected(self) -> None:
        """
        Hosts with characters outside a reg-name are rejected.
        """
        for authority in (b"", b":80", b"exa mple.com", b"ex/ample", "\u00e9.com".encode()):
            with self.subTest(authority=authority):
                self.assertRaises(BadRequestTarget, parse_authority, authority, 80)

    def test_encoded_host_rejected(self) -> None:
        """
        A reg-name with percent-encoding or sub-delims is no host name the
        proxy could connect to (nor one the host policy saw decoded): it is
        refused, naming the host.
        """
        for authority in (b"127%2e0%2e0%2e1", b"127%2e0%2e0%2e1:8080", b"a!b", b"x;y=1",
                          b"(a)", b"a~b", b"a*b,c", b"a'b&c$d+e"):
            with self.subTest(authority=authority):
                with self.assertRaises(BadRequestTarget) as caught:
                    parse_authority(authority, 80)
                self.assertIn(repr(authority.split(b":")[0].decode()), str(caught.exception))
        self.assertEqual(parse_authority(b"a_b.Example-1.com:81", 80), ("a_b.Example-1.com", 81))

    def test_port_range(self) -> None:
        """
        Ports 1 and 65535 are the bounds; 0, 65536 and over-long digit
        strings are rejected.
        """
        self.assertEqual(parse_authority(b"h:1", 80), ("h", 1))
        self.assertEqual(parse_authority(b"h:65535", 80), ("h", 65535))
        for authority in (b"h:0", b"h:65536", b"h:000080", b"h:abc", b"h: 80"):
            with self.subTest(authority=authority):
                self.assertRaises(BadRequestTarget, parse_authority, authority, 80)


class WriteAuthorityTests(SynchronousTestCase):
    """
    Tests for `DEFAULT_PORTS`, `authority_for`, `authority_text` and
    `join_host_port`: the one way twistproxy writes ``host[:port]``.
    """

    def test_default_ports(self) -> None:
        """
        ``http`` is port 80 and ``https`` 443; no other scheme has one.
        """
        self.assertEqual(DEFAULT_PORTS, {"http": 80, "https": 443})

    def test_default_port_left_out(self) -> None:
        """
        The scheme's default port is left out, any other port is written;
        a scheme without a default (``""``, for ``CONNECT``) always gets it.
        """
        cases = [
            ("http", "example.com", 80, "example.com"),
            ("https", "example.com", 443, "example.com"),
            ("http", "example.com", 443, "example.com:443"),
            ("https", "example.com", 8443, "example.com:8443"),
            ("", "example.com", 443, "example.com:443"),
        ]
        for scheme, host, port, expected in cases:
            with self.subTest(scheme=scheme, port=port):
                self.assertEqual(authority_text(scheme, host, port), expected)
                self.assertEqual(authority_for(scheme, host, port), expected.encode("ascii"))

    def test_ipv6_bracketed(self) -> None:
        """
        An IPv6 literal is written in brackets, once: a host already in
        brackets keeps them.
        """
        for host in ("::1", "[::1]"):
            with self.subTest(host=host):
                self.assertEqual(authority_text("http", host, 80), "[::1]")
                self.assertEqual(authority_text("http", host, 8080), "[::1]:8080")
                self.assertEqual(authority_for("https", host, 8443), b"[::1]:8443")
                self.assertEqual(join_host_port(host, 443), "[::1]:443")

    def test_unicode_host(self) -> None:
        """
        A non-ASCII host name is IDNA-encoded for the wire and kept as it is
        in text.
        """
        self.assertEqual(authority_for("https", "b\u00fccher.example", 443),
                         b"xn--bcher-kva.example")
        self.assertEqual(authority_for("http", "b\u00fccher.example", 81),
                         b"xn--bcher-kva.example:81")
        self.assertEqual(authority_text("http", "b\u00fccher.example", 81),
                         "b\u00fccher.example:81")

    def test_join_host_port(self) -> None:
        """
        `join_host_port` always writes the port, even a default one.
        """
        self.assertEqual(join_host_port("example.com", 80), "example.com:80")
        self.assertEqual(join_host_port("127.0.0.1", 8080), "127.0.0.1:8080")
        self.assertEqual(join_host_port("fe80::1", 443), "[fe80::1]:443")


class SplitAuthorityTests(SynchronousTestCase):
    """
    Tests for `split_authority`, the lenient split of a recorded or
    hook-set ``Host`` value.
    """

    def test_host_and_port(self) -> None:
        """
        ``host:port`` splits into the host and the port as a number; a host
        alone has no port.
        """
        self.assertEqual(split_authority("example.com:8080"), ("example.com", 8080))
        self.assertEqual(split_authority("example.com"), ("example.com", None))

    def test_ipv6(self) -> None:
        """
        A bracketed IPv6 literal loses its brackets; an unbracketed one is
        a host without a port.
        """
        self.assertEqual(split_authority("[::1]:8080"), ("::1", 8080))
        self.assertEqual(split_authority("[::1]"), ("::1", None))
        self.assertEqual(split_authority("::1"), ("::1", None))

    def test_never_raises(self) -> None:
        """
        What cannot be split is kept: no valid port gives ``None``, an
        unterminated bracket keeps the whole value as the host.
        """
        self.assertEqual(split_authority("example.com:http"), ("example.com", None))
        self.assertEqual(split_authority("example.com:"), ("example.com", None))
        self.assertEqual(split_authority("[::1]x"), ("::1", None))
        self.assertEqual(split_authority("[::1"), ("[::1", None))
        self.assertEqual(split_authority(""), ("", None))


class ParseUrlTests(SynchronousTestCase):
    """
    Tests for `parse_url`, the split of an absolute URL given as text.
    """

    def test_parts(self) -> None:
        """
        A URL splits into scheme, host, port and path with the query; the
        fragment is dropped and an empty path is ``/``.
        """
        self.assertEqual(
            parse_url("https://example.com:8443/a/b?x=1#frag"),
            ("https", "example.com", 8443, "/a/b?x=1"),
        )
        self.assertEqual(parse_url("http://example.com"), ("http", "example.com", 80, "/"))
        self.assertEqual(parse_url("http://example.com?q"), ("http", "example.com", 80, "/?q"))

    def test_ipv6(self) -> None:
        """
        A bracketed IPv6 host loses its brackets.
        """
        self.assertEqual(parse_url("http://[::1]:8000/x"), ("http", "::1", 8000, "/x"))

    def test_other_scheme_with_port(self) -> None:
        """
        A scheme without a default port is taken when the URL names one.
        """
        self.assertEqual(parse_url("ftp://h:21/f"), ("ftp", "h", 21, "/f"))

    def test_refused(self) -> None:
        """
        A URL without scheme or host, with a port out of range, or without
        a port for a scheme that has no default, raises ValueError.
        """
        for bad in ("/relative", "example.com/x", "http://:80/", "http://h:99999/", "ftp://h/x"):
            with self.assertRaises(ValueError, msg=bad):
                parse_url(bad)


def _outcome(parse: object, uri: bytes) -> object:
    """What *parse* makes of *uri*: its Target, or the message it refuses with."""
    try:
        return parse(uri)  # type: ignore[operator]
    except BadRequestTarget as e:
        return str(e)


_URI_PIECES = st.sampled_from([
    b"http", b"HTTPS", b"https", b"ftp", b"://", b":", b"/", b"?", b"#", b"@", b"[", b"]",
    b"::1", b"example.com", b"80", b"8080", b"0", b"99999", b"a", b"%20", b"x=1", b"",
])


class FastPathTests(SynchronousTestCase):
    """
    :func:`parse_absolute_form` parses the common target with one regular
    expression; whatever it accepts, the step-by-step parse makes the same of.
    """

    @settings(max_examples=400, deadline=None)
    @given(st.lists(_URI_PIECES, max_size=8).map(b"".join))
    def test_same_as_step_by_step(self, uri: bytes) -> None:
        """Every target: the same Target, or the same refusal."""
        self.assertEqual(_outcome(parse_absolute_form, uri), _outcome(_parse_step_by_step, uri))
