"""
Tests for the built-in rewrites (:mod:`twistproxy.addons.rewrites`,
:mod:`twistproxy.addons.maplocal`, :mod:`twistproxy.addons.stickycookie`):
the spec parsers, and each addon on flows built by hand.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from twistproxy.addons.maplocal import MapLocal, file_candidates, parse_local_spec
from twistproxy.addons.rewrites import (
    AntiCache,
    BlockList,
    MapRemote,
    ModifyBody,
    ModifyHeaders,
    parse_block_spec,
    parse_body_spec,
    parse_header_spec,
    parse_remote_spec,
    split_spec,
    unescape,
)
from twistproxy.addons.stickycookie import StickyCookie, parse_set_cookie
from twistproxy.connection import Client, Server
from twistproxy.filters import parse as parse_filter
from twistproxy.hooks import HookChain, validate_addon
from twistproxy.http import HTTPFlow, Request, Response


def _flow(url: str, *, method: str = "GET", headers: dict[str, str] | None = None,
          content: bytes = b"") -> HTTPFlow:
    """A live flow whose request for *url* has been read."""
    request = Request.make(method, url, content, headers=headers or {})
    flow = HTTPFlow(Client(peername=("127.0.0.1", 5000)),
                    Server(address=(request.host, request.port)), live=True, now=lambda: 0.0)
    flow.request = request
    return flow


def _answered(flow: HTTPFlow, status: int = 200, content: bytes = b"",
              headers: dict[str, str] | None = None) -> HTTPFlow:
    flow.response = Response.make(status, content, headers or {})
    return flow


class SplitSpecTests(SynchronousTestCase):
    """:func:`split_spec`: mitmproxy's separator rule."""

    def test_with_and_without_filter(self) -> None:
        """Two fields: no filter; three: the first is the filter."""
        self.assertEqual(split_spec("|a|b", ["x", "y"]), (None, ["a", "b"]))
        flow_filter, fields = split_spec("|~q|a|b", ["x", "y"])
        self.assertEqual((flow_filter.expression if flow_filter else None, fields),
                         ("~q", ["a", "b"]))

    def test_any_separator_and_the_last_field_keeps_it(self) -> None:
        """The first character separates; the last field may contain it."""
        flow_filter, fields = split_spec(":~d a:b:c:d", ["x", "y"])
        self.assertIsNotNone(flow_filter)
        self.assertEqual(fields, ["b", "c:d"])

    def test_too_few_fields(self) -> None:
        """Too few fields say what was expected, and name a separator other than |."""
        with self.assertRaisesRegex(ValueError, r"^expected \|\[filter\|\]x\|y$"):
            split_spec("|a", ["x", "y"])
        with self.assertRaisesRegex(ValueError, "first character, 'a' here"):
            split_spec("abc", ["x", "y"])
        with self.assertRaisesRegex(ValueError, "expected"):
            split_spec("", ["x", "y"])

    def test_filter_required(self) -> None:
        """With need_filter, the filter is not optional."""
        with self.assertRaisesRegex(ValueError, r"expected \|filter\|status"):
            split_spec("|444", ["status"], need_filter=True)

    def test_bad_filter_one_line(self) -> None:
        """A bad filter is one line naming it and the column."""
        with self.assertRaises(ValueError) as caught:
            split_spec("|~nope x|a|b", ["x", "y"])
        message = str(caught.exception)
        self.assertNotIn("\n", message)
        self.assertIn("'~nope x'", message)
        self.assertIn("column 1", message)

    def test_filter_alone_refused(self) -> None:
        """A filter given where the first field goes is refused with the right shape."""
        with self.assertRaisesRegex(ValueError, r"is a filter.*\|~d api\|url-regex\|r"):
            split_spec("|~d api|https://x", ["url-regex", "r"])


class UnescapeTests(SynchronousTestCase):
    """:func:`unescape`: bytes escapes undone, other backslashes kept."""

    def test_escapes(self) -> None:
        r"""``\n``, ``\t``, ``\x41``, octal and ``\\`` are undone."""
        self.assertEqual(unescape(r"a\nb\t\x41\101\\"), b"a\nb\tAA\\")

    def test_regex_escapes_kept(self) -> None:
        r"""``\d`` and ``\.`` stay, with no warning (warnings are errors here)."""
        self.assertEqual(unescape(r"\d+\.x"), rb"\d+\.x")

    def test_utf8(self) -> None:
        """Text is UTF-8."""
        self.assertEqual(unescape("é"), "é".encode())

    def test_bad(self) -> None:
        r"""``\x`` without two hex digits, and a trailing backslash, are errors."""
        self.assertRaises(ValueError, unescape, r"\xg1")
        self.assertRaises(ValueError, unescape, "a\\")


class ParserTests(SynchronousTestCase):
    """Each rewrite's spec parser."""

    def test_block(self) -> None:
        """A block spec needs a filter and a status 200-599 (444 included)."""
        spec = parse_block_spec("|~d ads.example|444")
        self.assertEqual(spec.status, 444)
        self.assertEqual(parse_block_spec(":~all:403").status, 403)
        for bad in ("|~d x|99", "|~d x|600", "|~d x|four", "|403"):
            self.assertRaises(ValueError, parse_block_spec, bad)

    def test_remote(self) -> None:
        """A map_remote regex is checked."""
        spec = parse_remote_spec("|~m GET|//a/|//b/")
        self.assertEqual((spec.pattern.pattern, spec.replacement), ("//a/", "//b/"))
        with self.assertRaisesRegex(ValueError, "url-regex '\\(': "):
            parse_remote_spec("|(|x")

    def test_header(self) -> None:
        """A header name must be a token; a value file must be readable."""
        spec = parse_header_spec(r"|~q|X-A|a\tb")
        self.assertEqual((spec.name, spec.read_value()), (b"X-A", b"a\tb"))
        self.assertEqual(parse_header_spec("|X-A|").read_value(), b"")
        self.assertRaisesRegex(ValueError, "not a header name", parse_header_spec, "|X A|v")
        self.assertRaisesRegex(ValueError, "cannot read /nonexistent",
                               parse_header_spec, "|X-A|@/nonexistent")
        self.assertRaises(ValueError, parse_header_spec, r"|X-A|a\nb")

    def test_body(self) -> None:
        """A body regex is bytes, DOTALL; a replacement file must be readable."""
        spec = parse_body_spec(r"|~s|a.\d|b")
        self.assertTrue(spec.pattern.search(b"a\n1"))
        self.assertRaisesRegex(ValueError, r"regex '\[': ", parse_body_spec, "|[|x")
        self.assertRaisesRegex(ValueError, "cannot read", parse_body_spec, "|a|@/nonexistent")

    def test_reads_bodies(self) -> None:
        """A body spec knows whether its filter needs bodies."""
        self.assertTrue(parse_body_spec("|~s & ~bs x|a|b").reads_bodies)
        self.assertFalse(parse_body_spec("|~s & ~u x|a|b").reads_bodies)
        self.assertFalse(parse_body_spec("|a|b").reads_bodies)

    def test_local(self) -> None:
        """A map_local path must exist; it is resolved."""
        directory = tempfile.mkdtemp()
        self.addCleanup(Path(directory).rmdir)
        spec = parse_local_spec(f"|example.com/js|{directory}/.")
        self.assertEqual(spec.path, Path(directory).resolve())
        self.assertRaisesRegex(ValueError, "No such file", parse_local_spec,
                               "|x|/nonexistent/dir")

    def test_filter_operators(self) -> None:
        """Filter.operators lists the operators, through !, & and |."""
        self.assertEqual(parse_filter("!~d a & (~bs x | ~c 200) foo").operators,
                         {"d", "bs", "c", "u"})


class BlockListTests(SynchronousTestCase):
    """:class:`BlockList`."""

    def test_status(self) -> None:
        """A matching request is answered; the flow is marked."""
        flow = _flow("http://ads.example/x")
        BlockList(["|~d ads|403"]).requestheaders(flow)
        assert flow.response is not None
        self.assertEqual(flow.response.status_code, 403)
        self.assertTrue(flow.metadata["blocklisted"])

    def test_444_kills(self) -> None:
        """444 kills the flow."""
        flow = _flow("http://ads.example/x")
        BlockList(["|~d ads|444"]).requestheaders(flow)
        self.assertTrue(flow.killed)
        self.assertIsNone(flow.response)

    def test_no_match(self) -> None:
        """Other requests pass untouched."""
        flow = _flow("http://example.com/")
        BlockList(["|~d ads|403"]).requestheaders(flow)
        self.assertIsNone(flow.response)
        self.assertNotIn("blocklisted", flow.metadata)


class AntiCacheTests(SynchronousTestCase):
    """:class:`AntiCache`."""

    def test_strips(self) -> None:
        """If-None-Match and If-Modified-Since go; other headers stay."""
        flow = _flow("http://a/", headers={"If-None-Match": "x", "If-Modified-Since": "y",
                                           "If-Match": "z"})
        AntiCache().requestheaders(flow)
        self.assertEqual([n.lower() for n in flow.request.headers], ["host", "if-match"])


class MapRemoteTests(SynchronousTestCase):
    """:class:`MapRemote`."""

    def test_rewrites_url_and_host(self) -> None:
        """The URL is rewritten with groups; host, port, scheme and Host follow."""
        flow = _flow("http://api.example/v1/x?q=1")
        MapRemote([r"|~d api|http://api\.example/v(\d)|https://staging.example:8443/v\1"]
                  ).requestheaders(flow)
        request = flow.request
        self.assertEqual((request.scheme, request.host, request.port, request.path),
                         ("https", "staging.example", 8443, "/v1/x?q=1"))
        self.assertEqual(request.headers["Host"], "staging.example:8443")

    def test_filter(self) -> None:
        """A rule whose filter does not match changes nothing."""
        flow = _flow("http://api.example/")
        MapRemote(["|~m POST|api|other"]).requestheaders(flow)
        self.assertEqual(flow.request.url, "http://api.example/")


class ModifyHeadersTests(SynchronousTestCase):
    """:class:`ModifyHeaders`."""

    def test_request_and_response(self) -> None:
        """~q rules act on requests, ~s rules on responses, unfiltered ones on both."""
        addon = ModifyHeaders(["|~q|X-Q|q", "|~s|X-S|s", "|X-All|all"])
        flow = _flow("http://a/")
        addon.requestheaders(flow)
        self.assertEqual((flow.request.headers.get("X-Q"), flow.request.headers.get("X-S"),
                          flow.request.headers.get("X-All")), ("q", None, "all"))
        _answered(flow)
        addon.responseheaders(flow)
        assert flow.response is not None
        self.assertEqual((flow.response.headers.get("X-Q"), flow.response.headers.get("X-S"),
                          flow.response.headers.get("X-All")), (None, "s", "all"))

    def test_replace_remove_and_two_values(self) -> None:
        """Matching rules first remove the header, then add each non-empty value."""
        flow = _flow("http://a/", headers={"X-A": "old", "X-B": "gone"})
        ModifyHeaders(["|X-A|one", "|X-A|two", "|X-B|"]).requestheaders(flow)
        self.assertEqual(flow.request.headers.get_all("X-A"), ["one", "two"])
        self.assertNotIn("X-B", flow.request.headers)

    def test_filters_see_the_original(self) -> None:
        """Every filter is tried before any change (mitmproxy's order)."""
        flow = _flow("http://a/")
        ModifyHeaders(["|X-A|1", "|~h X-A|X-Seen|yes"]).requestheaders(flow)
        self.assertNotIn("X-Seen", flow.request.headers)

    def test_unreadable_file_skipped(self) -> None:
        """A value file gone since the spec was read is skipped."""
        path = Path(tempfile.mkdtemp()) / "v"
        path.write_text("v1\n")
        addon = ModifyHeaders([f"|X-F|@{path}"])
        path.unlink()
        path.parent.rmdir()
        flow = _flow("http://a/", headers={"X-F": "old"})
        addon.requestheaders(flow)
        self.assertNotIn("X-F", flow.request.headers)

    def test_not_for_answered(self) -> None:
        """A request already answered is left alone."""
        flow = _answered(_flow("http://a/"))
        ModifyHeaders(["|~q|X-A|1"]).requestheaders(flow)
        self.assertNotIn("X-A", flow.request.headers)


class ModifyBodyTests(SynchronousTestCase):
    """:class:`ModifyBody`."""

    def test_streams_bodies_by_default(self) -> None:
        """It does not make the chain buffer every body."""
        chain = HookChain([ModifyBody(["|a|b"])])
        self.assertEqual(chain.whole_bodies(), frozenset())
        validate_addon(ModifyBody([]))

    def test_buffers_only_what_may_match(self) -> None:
        """
        In the headers hooks a streamed message is buffered when a rule
        matches the headers or reads bodies; not otherwise, nor for
        server-sent events.
        """
        def request_stream(spec: str) -> bool:
            flow = _flow("http://a/x", method="POST", content=b"body")
            flow.request.stream = True
            ModifyBody([spec]).requestheaders(flow)
            return flow.request.stream

        self.assertFalse(request_stream("|~q|a|b"))
        self.assertTrue(request_stream("|~s|a|b"))
        self.assertTrue(request_stream("|~u /other|a|b"))
        self.assertFalse(request_stream(":~u /other | ~bq z:a:b"))

        def response_stream(spec: str, content_type: str = "text/plain") -> bool:
            flow = _answered(_flow("http://a/x"), headers={"Content-Type": content_type})
            assert flow.response is not None
            flow.response.stream = True
            ModifyBody([spec]).responseheaders(flow)
            return flow.response.stream

        self.assertFalse(response_stream("|~s|a|b"))
        self.assertTrue(response_stream("|~q|a|b"))
        self.assertTrue(response_stream("|~s|a|b", "text/event-stream"))

    def test_replaces_literally(self) -> None:
        """Every match is replaced, in rule order; the replacement has no group syntax."""
        flow = _answered(_flow("http://a/"), content=b"a1 a2")
        ModifyBody([r"|~s|a(\d)|<\g<1>x>", "|~s|x|y"]).response(flow)
        assert flow.response is not None
        self.assertEqual(flow.response.content, rb"<\g<1>y> <\g<1>y>")
        self.assertEqual(flow.response.headers["Content-Length"], "17")

    def test_request_side(self) -> None:
        """A request rule changes the request body only before there is a response."""
        flow = _flow("http://a/", method="POST", content=b"secret")
        addon = ModifyBody(["|secret|public"])
        addon.request(flow)
        self.assertEqual(flow.request.content, b"public")
        _answered(flow, content=b"secret")
        addon.request(flow)
        assert flow.response is not None
        self.assertEqual(flow.response.content, b"secret")

    def test_streamed_not_modified(self) -> None:
        """A streamed body is left as it is."""
        flow = _answered(_flow("http://a/"), content=b"abc")
        assert flow.response is not None
        flow.response.stream = True
        ModifyBody(["|b|x"]).response(flow)
        self.assertEqual(flow.response.content, b"abc")


class MapLocalTests(SynchronousTestCase):
    """:class:`MapLocal` and :func:`file_candidates`."""

    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp()).resolve()
        (self.root / "a b.css").write_text("css")
        self.addCleanup(lambda: ((self.root / "a b.css").unlink(), self.root.rmdir()))

    def test_candidates(self) -> None:
        """The rest of the URL, decoded, without the query; then index.html; then escaped."""
        spec = parse_local_spec(f"|example.com/s|{self.root}")
        self.assertEqual(file_candidates("http://example.com/s/x/a%20b.css?v=1", spec),
                         [self.root / "x/a b.css", self.root / "x/a b.css/index.html",
                          self.root / "x/a_b.css", self.root / "x/a_b.css/index.html"])
        self.assertEqual(file_candidates("http://example.com/s", spec),
                         [self.root / "index.html"])

    def test_group(self) -> None:
        """A group in the regex is the file's name, query kept."""
        spec = parse_local_spec(rf"|page=(\w+)|{self.root}")
        self.assertEqual(file_candidates("http://e/index.php?page=about", spec)[0],
                         self.root / "about")

    def test_traversal(self) -> None:
        """A path with a .. segment (encoded or not) has no candidates."""
        spec = parse_local_spec(f"|e/s|{self.root}")
        for url in ("http://e/s/../x", "http://e/s/a/%2E%2E/%2e%2e/x", "http://e/s/x%00"):
            self.assertIsNone(file_candidates(url, spec), url)

    def test_serves_and_404(self) -> None:
        """A file found is served with its type; none found is 404; no match passes."""
        addon = MapLocal([f"|e/s|{self.root}"])
        flow = _flow("http://e/s/a%20b.css")
        addon.requestheaders(flow)
        assert flow.response is not None
        self.assertEqual((flow.response.status_code, flow.response.content,
                          flow.response.headers["Content-Type"]), (200, b"css", "text/css"))
        flow = _flow("http://e/s/missing")
        addon.requestheaders(flow)
        assert flow.response is not None
        self.assertEqual(flow.response.status_code, 404)
        flow = _flow("http://e/other")
        addon.requestheaders(flow)
        self.assertIsNone(flow.response)


class StickyCookieTests(SynchronousTestCase):
    """:class:`StickyCookie` and :func:`parse_set_cookie`."""

    def test_parse(self) -> None:
        """Name, value and lower-cased attributes; no name=value is None."""
        self.assertEqual(parse_set_cookie("a=b=c; Path=/x; Secure"),
                         ("a", "b=c", {"path": "/x", "secure": ""}))
        self.assertIsNone(parse_set_cookie("garbage"))

    def _response(self, addon: StickyCookie, url: str, *cookies: str) -> None:
        flow = _answered(_flow(url))
        assert flow.response is not None
        for cookie in cookies:
            flow.response.headers.add("Set-Cookie", cookie)
        addon.responseheaders(flow)

    def test_round_trip(self) -> None:
        """
        Cookies come back to matching requests of the same domain, port and
        path prefix; an expired one is forgotten; the request's Cookie is
        replaced.
        """
        addon = StickyCookie("~d example", now=lambda: 1_000_000_000.0)
        self._response(addon, "http://example.com/login", "sid=1; Path=/app",
                       "t=2", "gone=3; Expires=Thu, 01 Jan 1970 00:00:00 GMT")
        flow = _flow("http://example.com/app/x", headers={"Cookie": "mine=0"})
        addon.requestheaders(flow)
        self.assertEqual(sorted(flow.request.headers["Cookie"].split("; ")), ["sid=1", "t=2"])
        self.assertTrue(flow.metadata["stickycookie"])
        flow = _flow("http://example.com/other")
        addon.requestheaders(flow)
        self.assertEqual(flow.request.headers["Cookie"], "t=2")
        flow = _flow("http://example.com:8080/app")
        addon.requestheaders(flow)
        self.assertNotIn("Cookie", flow.request.headers)
        self._response(addon, "http://example.com/", "t=x; Max-Age=0")
        flow = _flow("http://example.com/")
        addon.requestheaders(flow)
        self.assertNotIn("Cookie", flow.request.headers)

    def test_domain(self) -> None:
        """A Domain attribute shares the cookie with subdomains; another domain's is ignored."""
        addon = StickyCookie("~all")
        self._response(addon, "http://www.example.com/", "a=1; Domain=.example.com",
                       "b=2; Domain=evil.example")
        flow = _flow("http://api.example.com/")
        addon.requestheaders(flow)
        self.assertEqual(flow.request.headers["Cookie"], "a=1")

    def test_bad_filter(self) -> None:
        """A bad filter is a one-line ValueError."""
        self.assertRaisesRegex(ValueError, r"^expected a regular expression after ~d at column 3$",
                               StickyCookie, "~d")
