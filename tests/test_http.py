"""
Tests for :mod:`twistproxy.http`.
"""

from __future__ import annotations

import gzip
import json
from typing import Any

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from tests.test_body import gzip_response
from twistproxy.connection import Client, Server
from twistproxy.flow import FLOW_STATE_VERSION, Error
from twistproxy.headers import Headers
from twistproxy.http import HTTPFlow, Request, Response


class MessageTests(SynchronousTestCase):
    """
    Tests for what `Message` adds to `MessageBody`.
    """

    def test_stream_default(self) -> None:
        """
        Messages are buffered unless a hook sets ``stream``.
        """
        self.assertFalse(Response.make().stream)


class RequestTests(SynchronousTestCase):
    """
    Tests for `Request`.
    """

    def make_request(self, **overrides: Any) -> Request:
        """
        An origin-form GET for http://example.com/path?a=1, with
        *overrides* applied to the constructor's arguments.
        """
        args: dict[str, Any] = dict(
            host="example.com",
            port=80,
            method=b"GET",
            scheme=b"http",
            authority=b"",
            path=b"/path?a=1",
            http_version=b"HTTP/1.1",
            headers=[(b"Host", b"example.com")],
            content=b"",
        )
        args.update(overrides)
        return Request(**args)

    def test_bytes_become_str(self) -> None:
        """
        The text attributes are stored as str, whatever they are given as.
        """
        request = self.make_request(path=b"/caf\xc3\xa9\xff")
        self.assertEqual(request.method, "GET")
        self.assertEqual(request.scheme, "http")
        self.assertEqual(request.http_version, "HTTP/1.1")
        self.assertEqual(request.path, "/café\udcff")
        self.assertIsInstance(request.headers, Headers)

    def test_headers_not_copied(self) -> None:
        """
        A Headers instance is used as it is.
        """
        headers = Headers([(b"Host", b"example.com")])
        self.assertIs(self.make_request(headers=headers).headers, headers)

    def test_url(self) -> None:
        """
        The URL leaves out the scheme's default port and keeps others.
        """
        self.assertEqual(self.make_request().url, "http://example.com/path?a=1")
        self.assertEqual(self.make_request(port=8080).url, "http://example.com:8080/path?a=1")
        request = self.make_request(scheme="https", port=443)
        self.assertEqual(request.url, "https://example.com/path?a=1")
        request = self.make_request(scheme="https", port=80)
        self.assertEqual(request.url, "https://example.com:80/path?a=1")

    def test_url_ipv6(self) -> None:
        """
        IPv6 hosts are bracketed in the URL, and a URL with a bracketed
        host sets the bare address.
        """
        request = self.make_request()
        request.url = "http://[::1]:8000/x"
        self.assertEqual(request.host, "::1")
        self.assertEqual(request.port, 8000)
        self.assertEqual(request.path, "/x")
        self.assertEqual(request.url, "http://[::1]:8000/x")
        self.assertEqual(request.host_header, "[::1]:8000")

    def test_url_setter(self) -> None:
        """
        Setting the URL updates scheme, host, port, path and the Host
        header, in place.
        """
        request = self.make_request(
            headers=[(b"Accept", b"*/*"), (b"host", b"example.com"), (b"X", b"1")]
        )
        request.url = "https://other.example:8443/new?q=2#frag"
        self.assertEqual(
            (request.scheme, request.host, request.port, request.path),
            ("https", "other.example", 8443, "/new?q=2"),
        )
        self.assertEqual(request.headers.fields[1], (b"host", b"other.example:8443"))
        request.url = "https://other.example"
        self.assertEqual((request.port, request.path), (443, "/"))
        self.assertEqual(request.host_header, "other.example")

    def test_url_setter_authority(self) -> None:
        """
        An absolute-form request's authority follows the URL; no Host header
        is added when there was none.
        """
        request = self.make_request(authority="example.com", headers=[])
        request.url = "http://b.example:81/"
        self.assertEqual(request.authority, "b.example:81")
        self.assertIsNone(request.host_header)

    def test_host_and_port_setters(self) -> None:
        """
        Setting the host or the port updates an existing Host header (in
        place, the default port left out) and a non-empty authority, as
        setting the URL does; no Host header is added when there was none.
        """
        request = self.make_request(
            authority="example.com",
            headers=[(b"Accept", b"*/*"), (b"host", b"example.com"), (b"X", b"1")],
        )
        request.host = "other.example"
        self.assertEqual(request.headers.fields[1], (b"host", b"other.example"))
        self.assertEqual(request.authority, "other.example")
        request.port = 8080
        self.assertEqual(request.host_header, "other.example:8080")
        self.assertEqual(request.authority, "other.example:8080")
        self.assertEqual(request.url, "http://other.example:8080/path?a=1")
        request.host = "::1"
        self.assertEqual(request.host_header, "[::1]:8080")
        request.port = 80
        self.assertEqual(request.host_header, "[::1]")
        bare = self.make_request(headers=[])
        bare.host = "b.example"
        self.assertIsNone(bare.host_header)
        self.assertEqual(bare.authority, "")

    def test_connect_host_and_port_setters(self) -> None:
        """A CONNECT's authority always names the port."""
        request = self.make_request(method="CONNECT", authority="example.com:443", path="",
                                    port=443, headers=[(b"Host", b"example.com:443")])
        request.host = "other.example"
        self.assertEqual(request.authority, "other.example:443")
        self.assertEqual(request.url, "other.example:443")

    def test_url_setter_invalid(self) -> None:
        """
        A URL that is not absolute, or has a bad port, is refused.
        """
        request = self.make_request()
        for bad in ("/relative", "example.com/x", "http://h:99999/", "ftp://h/x"):
            with self.assertRaises(ValueError, msg=bad):
                request.url = bad
        self.assertEqual(request.url, "http://example.com/path?a=1")

    def test_connect_url(self) -> None:
        """
        A CONNECT request's URL is its authority.
        """
        request = self.make_request(
            method="CONNECT", authority="example.com:443", path="", port=443
        )
        self.assertEqual(request.url, "example.com:443")
        self.assertEqual(request.pretty_url, "example.com:443")

    def test_host_header(self) -> None:
        """
        ``host_header`` reads, replaces and removes the Host header.
        """
        request = self.make_request()
        self.assertEqual(request.host_header, "example.com")
        request.host_header = "h2.example"
        self.assertEqual(request.headers.fields, ((b"Host", b"h2.example"),))
        request.host_header = None
        self.assertIsNone(request.host_header)
        request.host_header = None

    def test_pretty_host_and_url(self) -> None:
        """
        ``pretty_host`` and ``pretty_url`` prefer the Host header.
        """
        request = self.make_request(host="10.0.0.1", headers=[(b"Host", b"[2001:db8::1]:8080")])
        self.assertEqual(request.pretty_host, "2001:db8::1")
        self.assertEqual(request.pretty_url, "http://[2001:db8::1]:8080/path?a=1")
        request.headers["Host"] = "example.com"
        self.assertEqual(request.pretty_host, "example.com")
        self.assertEqual(request.pretty_url, "http://example.com/path?a=1")
        request.host_header = None
        self.assertEqual(request.pretty_host, "10.0.0.1")
        self.assertEqual(request.pretty_url, "http://10.0.0.1/path?a=1")

    def test_query(self) -> None:
        """
        ``query`` parses the path's query string, keeping order, repeats,
        blanks and non-UTF-8 bytes.
        """
        request = self.make_request(path="/s?q=caf%C3%A9&q=two+words&empty=&x=%FF")
        self.assertEqual(
            request.query,
            [("q", "café"), ("q", "two words"), ("empty", ""), ("x", "\udcff")],
        )
        self.assertEqual(self.make_request(path="/no-query").query, [])

    def test_query_setter(self) -> None:
        """
        Setting ``query`` rewrites the query string; an empty one removes it.
        """
        request = self.make_request()
        request.query = [("a", "1 2"), ("b", "é"), ("c", "\udcff")]
        self.assertEqual(request.path, "/path?a=1+2&b=%C3%A9&c=%FF")
        self.assertEqual(request.query[2], ("c", "\udcff"))
        request.query = []
        self.assertEqual(request.path, "/path")

    def test_path_components(self) -> None:
        """
        ``path_components`` splits and percent-decodes the path; setting it
        keeps the query.
        """
        request = self.make_request(path="/a/b%2Fc//d?x=1")
        self.assertEqual(request.path_components, ("a", "b/c", "d"))
        request.path_components = ["x y", "z/w"]
        self.assertEqual(request.path, "/x%20y/z%2Fw?x=1")

    def test_make(self) -> None:
        """
        ``make`` builds an HTTP/1.1 origin-form request with a Host header
        first and a Content-Length for the body.
        """
        request = Request.make("POST", "https://example.com:8443/submit?x=1", "é", {"X-A": "1"})
        self.assertEqual(request.http_version, "HTTP/1.1")
        self.assertEqual(
            (request.scheme, request.host, request.port, request.path, request.authority),
            ("https", "example.com", 8443, "/submit?x=1", ""),
        )
        self.assertEqual(
            request.headers.fields,
            ((b"Host", b"example.com:8443"), (b"X-A", b"1"), (b"Content-Length", b"2")),
        )
        self.assertEqual(request.raw_content, b"\xc3\xa9")
        self.assertIsNone(request.timestamp_start)

    def test_make_lengths(self) -> None:
        """
        ``make`` adds Content-Length for POST/PUT/PATCH even when empty, not
        for an empty GET, and keeps a Host header it is given.
        """
        get = Request.make("GET", "http://example.com/", headers=[(b"host", b"alias")])
        self.assertEqual(get.headers.fields, ((b"host", b"alias"),))
        put = Request.make("PUT", "http://example.com/")
        self.assertEqual(put.headers["content-length"], "0")

    def test_make_does_not_change_headers(self) -> None:
        """
        ``make`` copies a Headers it is given.
        """
        headers = Headers()
        Request.make("POST", "http://example.com/", b"x", headers)
        self.assertEqual(headers.fields, ())

    def test_make_content_encoding(self) -> None:
        """
        ``make`` encodes the body with a Content-Encoding it is given.
        """
        request = Request.make(
            "POST", "http://example.com/", b"data" * 10, {"Content-Encoding": "gzip"}
        )
        raw = request.raw_content or b""
        self.assertEqual(gzip.decompress(raw), b"data" * 10)
        self.assertEqual(request.headers["content-length"], str(len(raw)))

    def test_trailers(self) -> None:
        """
        Trailers are a Headers (fields given are made one), kept in the
        state, and checked like header fields as they are set.
        """
        request = self.make_request(trailers=[(b"X-Sum", b"abc")])
        assert request.trailers is not None
        self.assertEqual(request.trailers["x-sum"], "abc")
        again = Request.from_state(request.get_state())
        self.assertEqual(again.trailers, request.trailers)
        self.assertIsNone(self.make_request().trailers)
        self.assertIsNone(Request.from_state(self.make_request().get_state()).trailers)
        with self.assertRaises(ValueError):
            request.trailers["X-Bad"] = "a\r\nb"

    def test_state_round_trip(self) -> None:
        """
        The state keeps bytes as bytes and rebuilds an equal request.
        """
        request = self.make_request(
            path=b"/\xff", content=b"\x00\x01\xff", timestamp_start=1.0, timestamp_end=2.0
        )
        state = request.get_state()
        self.assertEqual(state["content"], b"\x00\x01\xff")
        self.assertEqual(state["headers"], [[b"Host", b"example.com"]])
        restored = Request.from_state(state)
        self.assertEqual(restored.get_state(), state)
        self.assertEqual(restored.path, "/\udcff")
        self.assertEqual(restored.headers, request.headers)
        self.assertIsNot(restored.headers, request.headers)

    def test_state_refuses_unknown_keys(self) -> None:
        """
        A request state with an unknown key is refused.
        """
        state = self.make_request().get_state()
        state["extra"] = 1
        self.assertRaises(ValueError, Request.from_state, state)


class ResponseTests(SynchronousTestCase):
    """
    Tests for `Response`.
    """

    def test_make_defaults(self) -> None:
        """
        ``make()`` is an empty 200 with a zero Content-Length and no
        timestamps.
        """
        response = Response.make()
        self.assertEqual(
            (response.http_version, response.status_code, response.reason),
            ("HTTP/1.1", 200, "OK"),
        )
        self.assertEqual(response.headers.fields, ((b"Content-Length", b"0"),))
        self.assertEqual(response.raw_content, b"")
        self.assertIsNone(response.timestamp_start)
        self.assertIsNone(response.timestamp_end)

    def test_make_text(self) -> None:
        """
        A str body is UTF-8 with a text/plain Content-Type added.
        """
        response = Response.make(404, "não")
        self.assertEqual(response.reason, "Not Found")
        self.assertEqual(response.raw_content, "não".encode())
        self.assertEqual(
            response.headers.fields,
            (
                (b"Content-Type", b"text/plain; charset=utf-8"),
                (b"Content-Length", b"4"),
            ),
        )

    def test_make_keeps_content_type(self) -> None:
        """
        A given Content-Type is kept, and bytes bodies get none added.
        """
        response = Response.make(200, "{}", {"Content-Type": "application/json"})
        self.assertEqual(response.headers.get_all("content-type"), ["application/json"])
        self.assertNotIn("content-type", Response.make(200, b"\x00").headers)

    def test_make_unknown_status(self) -> None:
        """
        An unknown status has an empty reason.
        """
        self.assertEqual(Response.make(599).reason, "")

    def test_bytes_become_str(self) -> None:
        """
        The version and reason are stored as str.
        """
        response = Response(b"HTTP/1.0", 204, b"No Content", [], None)
        self.assertEqual((response.http_version, response.reason), ("HTTP/1.0", "No Content"))

    def test_state_round_trip(self) -> None:
        """
        ``from_state(get_state())`` rebuilds an equal response.
        """
        response = gzip_response(b"\x00\xff")
        state = response.get_state()
        restored = Response.from_state(state)
        self.assertEqual(restored.get_state(), state)
        self.assertEqual(restored.content, b"\x00\xff")


class HTTPFlowTests(SynchronousTestCase):
    """
    Tests for `HTTPFlow`.
    """

    def make_flow(self) -> HTTPFlow:
        """
        A live flow with a request and response that have binary bodies.
        """
        clock = Clock()
        clock.advance(10)
        flow = HTTPFlow(
            Client(peername=("127.0.0.1", 5000)),
            Server(address=("example.com", 80)),
            live=True,
            now=clock.seconds,
        )
        flow.request = Request.make("POST", "http://example.com/up", b"\x00\xff\xfe")
        flow.response = gzip_response(b"\x89PNG\r\n\x1a\n")
        return flow

    def test_type(self) -> None:
        """
        HTTP flows are of type "http" and start without messages.
        """
        flow = HTTPFlow(Client(), Server())
        self.assertEqual(flow.type, "http")
        self.assertIsNone(flow.request)
        self.assertIsNone(flow.response)
        self.assertEqual(flow.get_state()["type"], "http")

    def test_state_round_trip(self) -> None:
        """
        A flow with binary bodies survives ``get_state``/``from_state``.
        """
        flow = self.make_flow()
        flow.error = Error("late", 11.0)
        state = flow.get_state()
        self.assertEqual(state["version"], FLOW_STATE_VERSION)
        self.assertEqual(state["request"]["content"], b"\x00\xff\xfe")
        restored = HTTPFlow.from_state(state)
        self.assertEqual(restored.get_state(), state)
        assert restored.request is not None and restored.response is not None
        self.assertEqual(restored.request.content, b"\x00\xff\xfe")
        self.assertEqual(restored.response.content, b"\x89PNG\r\n\x1a\n")

    def test_state_without_messages(self) -> None:
        """
        A flow without request or response round-trips too.
        """
        flow = HTTPFlow(Client(), Server())
        restored = HTTPFlow.from_state(json.loads(json.dumps(flow.get_state())))
        self.assertIsNone(restored.request)
        self.assertEqual(restored.get_state(), flow.get_state())

    def test_version_mismatch(self) -> None:
        """
        A state of another version is refused.
        """
        state = self.make_flow().get_state()
        state["version"] = 0
        self.assertRaises(ValueError, HTTPFlow.from_state, state)

    def test_unknown_key(self) -> None:
        """
        A state with an unknown key is refused, naming it.
        """
        state = self.make_flow().get_state()
        state["udp_messages"] = None
        with self.assertRaises(ValueError) as caught:
            HTTPFlow.from_state(state)
        self.assertIn("udp_messages", str(caught.exception))

    def test_bad_request_state_leaves_flow(self) -> None:
        """
        A state whose request is broken is refused without changing the
        flow.
        """
        flow = self.make_flow()
        state = flow.get_state()
        state["comment"] = "new"
        state["request"]["bogus"] = 1
        self.assertRaises(ValueError, flow.set_state, state)
        self.assertEqual(flow.comment, "")

    def test_copy(self) -> None:
        """
        A copy has its own request and response.
        """
        flow = self.make_flow()
        copy = flow.copy()
        self.assertIsInstance(copy, HTTPFlow)
        self.assertNotEqual(copy.id, flow.id)
        self.assertFalse(copy.live)
        assert copy.request is not None and flow.request is not None
        assert copy.response is not None and flow.response is not None
        self.assertIsNot(copy.request, flow.request)
        self.assertIsNot(copy.request.headers, flow.request.headers)
        copy.request.headers["X-New"] = "1"
        copy.request.path = "/changed"
        copy.response.content = b"other"
        self.assertNotIn("X-New", flow.request.headers)
        self.assertEqual(flow.request.path, "/up")
        self.assertEqual(flow.response.content, b"\x89PNG\r\n\x1a\n")

    def test_backup_revert_messages(self) -> None:
        """
        Reverting restores the request as it was at backup time.
        """
        flow = self.make_flow()
        flow.backup()
        assert flow.request is not None
        flow.request.url = "http://other.example/"
        self.assertTrue(flow.modified())
        flow.revert()
        assert flow.request is not None
        self.assertEqual(flow.request.url, "http://example.com/up")
        self.assertFalse(flow.modified())

    def test_repr(self) -> None:
        """
        The repr names the request and the status.
        """
        self.assertEqual(repr(self.make_flow()), "<HTTPFlow POST http://example.com/up -> 200>")
        self.assertEqual(repr(HTTPFlow(Client(), Server())), "<HTTPFlow no request>")
