"""
Tests for :mod:`twistproxy._headers`.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twistproxy._headers import (
    CHUNKED,
    NO_BODY,
    UNTIL_CLOSE,
    VIA,
    check_request,
    check_response,
    connection_tokens,
    request_fields,
    response_fields,
)
from twistproxy.errors import InvalidMessage
from twistproxy.headers import Headers
from twistproxy.http import Request, Response

HOP_BY_HOP_FIELDS = [
    (b"Keep-Alive", b"timeout=5"),
    (b"Proxy-Connection", b"keep-alive"),
    (b"Proxy-Authorization", b"Basic dTpw"),
    (b"TE", b"trailers"),
    (b"Trailer", b"X-Checksum"),
    (b"Upgrade", b"websocket"),
    (b"Transfer-Encoding", b"chunked"),
]


class ConnectionTokensTests(SynchronousTestCase):
    """
    Tests for `connection_tokens`.
    """

    def test_tokens_lowercased_and_stripped(self) -> None:
        """
        Every comma-separated token of every ``Connection`` field is
        returned, lower-cased, without surrounding spaces or tabs; empty
        list elements are skipped.
        """
        fields = [
            (b"CONNECTION", b"Close, X-Foo ,,\tKeep-Alive"),
            (b"Host", b"h"),
            (b"connection", b"x-bar"),
        ]
        self.assertEqual(
            connection_tokens(fields),
            frozenset({b"close", b"x-foo", b"keep-alive", b"x-bar"}),
        )

    def test_other_fields_ignored(self) -> None:
        """
        Only fields named ``Connection`` count; ``Proxy-Connection`` and
        look-alikes do not.
        """
        fields = [(b"Proxy-Connection", b"close"), (b"Connections", b"x"), (b"Host", b"close")]
        self.assertEqual(connection_tokens(fields), frozenset())


class RequestFieldsTests(SynchronousTestCase):
    """
    Tests for `request_fields`.
    """

    def test_end_to_end_fields_kept_in_order_and_case(self) -> None:
        """
        End-to-end fields keep their order and the case of their names and
        values; repeated fields are all kept.
        """
        fields = [
            (b"Host", b"example.com"),
            (b"x-lower", b"MiXeD"),
            (b"Accept", b"text/html"),
            (b"Cookie", b"a=1"),
            (b"X-UPPER", b"v"),
            (b"Cookie", b"b=2"),
        ]
        self.assertEqual(
            request_fields(fields, authority=b"example.com", framing=NO_BODY, via=None),
            fields,
        )

    def test_hop_by_hop_removed(self) -> None:
        """
        ``Connection`` and the fields it names, ``Keep-Alive``,
        ``Proxy-Connection``, ``Proxy-Authorization``, ``TE``, ``Trailer``,
        ``Upgrade`` and ``Transfer-Encoding`` are not forwarded.
        """
        fields = [
            (b"Host", b"h"),
            (b"Connection", b"X-Private, Upgrade"),
            (b"X-Private", b"secret"),
            (b"Accept", b"*/*"),
            *HOP_BY_HOP_FIELDS,
            (b"x-private", b"again"),
            (b"X-Public", b"1"),
        ]
        self.assertEqual(
            request_fields(fields, authority=b"h", framing=NO_BODY, via=None),
            [(b"Host", b"h"), (b"Accept", b"*/*"), (b"X-Public", b"1")],
        )

    def test_field_named_by_connection_in_any_case(self) -> None:
        """
        A field named in ``Connection`` is removed whatever the case of the
        name in either place.
        """
        fields = [(b"Connection", b"X-FOO"), (b"x-foo", b"1"), (b"X-Bar", b"2")]
        self.assertEqual(
            request_fields(fields, authority=b"h", framing=NO_BODY, via=None),
            [(b"Host", b"h"), (b"X-Bar", b"2")],
        )

    def test_expect_removed(self) -> None:
        """
        ``Expect`` is not forwarded: the proxy answers ``100-continue``
        itself.
        """
        fields = [(b"Host", b"h"), (b"Expect", b"100-continue"), (b"X-A", b"1")]
        self.assertEqual(
            request_fields(fields, authority=b"h", framing=5, via=None),
            [(b"Host", b"h"), (b"X-A", b"1"), (b"Content-Length", b"5")],
        )

    def test_host_replaced_in_place(self) -> None:
        """
        The client's ``Host`` is replaced by the target's authority where it
        stood, keeping the client's spelling of the name; further ``Host``
        fields are dropped.
        """
        fields = [
            (b"Accept", b"*/*"),
            (b"host", b"wrong.example"),
            (b"X-A", b"1"),
            (b"Host", b"another.example"),
        ]
        self.assertEqual(
            request_fields(fields, authority=b"right.example:8080", framing=NO_BODY, via=None),
            [(b"Accept", b"*/*"), (b"host", b"right.example:8080"), (b"X-A", b"1")],
        )

    def test_host_inserted_first(self) -> None:
        """
        Without a client ``Host``, one is put first.
        """
        fields = [(b"Accept", b"*/*"), (b"X-A", b"1")]
        self.assertEqual(
            request_fields(fields, authority=b"[::1]:8000", framing=NO_BODY, via=None),
            [(b"Host", b"[::1]:8000"), (b"Accept", b"*/*"), (b"X-A", b"1")],
        )

    def test_content_length_where_first_framing_header_was(self) -> None:
        """
        A body length becomes one ``Content-Length`` in the position of the
        first framing header the client sent; the client's framing headers
        themselves are dropped.
        """
        fields = [
            (b"Host", b"h"),
            (b"X-A", b"1"),
            (b"Transfer-Encoding", b"chunked"),
            (b"X-B", b"2"),
            (b"Content-Length", b"999"),
            (b"X-C", b"3"),
        ]
        self.assertEqual(
            request_fields(fields, authority=b"h", framing=12, via=None),
            [
                (b"Host", b"h"),
                (b"X-A", b"1"),
                (b"Content-Length", b"12"),
                (b"X-B", b"2"),
                (b"X-C", b"3"),
            ],
        )

    def test_content_length_appended_when_absent(self) -> None:
        """
        A body length with no framing header from the client is appended
        after the other fields.
        """
        fields = [(b"Host", b"h"), (b"X-A", b"1")]
        self.assertEqual(
            request_fields(fields, authority=b"h", framing=0, via=None),
            [(b"Host", b"h"), (b"X-A", b"1"), (b"Content-Length", b"0")],
        )

    def test_chunked(self) -> None:
        """
        :data:`CHUNKED` framing replaces the client's framing header with
        ``Transfer-Encoding: chunked``.
        """
        fields = [(b"Host", b"h"), (b"Content-Length", b"10"), (b"X-A", b"1")]
        self.assertEqual(
            request_fields(fields, authority=b"h", framing=CHUNKED, via=None),
            [(b"Host", b"h"), (b"Transfer-Encoding", b"chunked"), (b"X-A", b"1")],
        )

    def test_no_body_adds_no_framing(self) -> None:
        """
        :data:`NO_BODY` framing removes the client's framing headers and adds
        none.
        """
        fields = [(b"Host", b"h"), (b"Content-Length", b"0"), (b"Transfer-Encoding", b"chunked")]
        self.assertEqual(
            request_fields(fields, authority=b"h", framing=NO_BODY, via=None),
            [(b"Host", b"h")],
        )

    def test_via_appended(self) -> None:
        """
        The proxy's ``Via`` entry is added last, after any ``Via`` the client
        sent, which is kept.
        """
        fields = [(b"Host", b"h"), (b"Via", b"1.0 upstream"), (b"X-A", b"1")]
        self.assertEqual(
            request_fields(fields, authority=b"h", framing=NO_BODY),
            [(b"Host", b"h"), (b"Via", b"1.0 upstream"), (b"X-A", b"1"), (b"Via", VIA)],
        )

    def test_custom_via(self) -> None:
        """
        A given ``Via`` entry is used in place of the default.
        """
        out = request_fields([], authority=b"h", framing=NO_BODY, via=b"1.1 other")
        self.assertEqual(out, [(b"Host", b"h"), (b"Via", b"1.1 other")])

    def test_input_unchanged(self) -> None:
        """
        The caller's field list is not modified.
        """
        fields = [(b"Connection", b"close"), (b"Host", b"old")]
        before = list(fields)
        request_fields(fields, authority=b"new", framing=3)
        self.assertEqual(fields, before)


class ResponseFieldsTests(SynchronousTestCase):
    """
    Tests for `response_fields`.
    """

    def test_hop_by_hop_removed(self) -> None:
        """
        Hop-by-hop fields, ``Proxy-Authenticate`` and fields named by
        ``Connection`` are not relayed; the rest keep order and case.
        """
        fields = [
            (b"Server", b"origin"),
            (b"Connection", b"keep-alive, X-Hop"),
            (b"X-Hop", b"1"),
            *HOP_BY_HOP_FIELDS,
            (b"Proxy-Authenticate", b"Basic"),
            (b"set-cookie", b"a=1"),
            (b"Set-Cookie", b"b=2"),
        ]
        self.assertEqual(
            response_fields(fields, framing=CHUNKED, close=False),
            [
                (b"Server", b"origin"),
                (b"Transfer-Encoding", b"chunked"),
                (b"set-cookie", b"a=1"),
                (b"Set-Cookie", b"b=2"),
            ],
        )

    def test_expect_and_host_not_touched(self) -> None:
        """
        Response fields get no ``Host``, no ``Via`` and keep fields that only
        requests drop.
        """
        fields = [(b"Expect", b"x"), (b"X-A", b"1")]
        self.assertEqual(
            response_fields(fields, framing=1, close=False),
            [(b"Expect", b"x"), (b"X-A", b"1"), (b"Content-Length", b"1")],
        )

    def test_length_placed_where_framing_was(self) -> None:
        """
        A length replaces the origin's framing headers, in the first one's
        position.
        """
        fields = [(b"Date", b"d"), (b"Content-Length", b"100"), (b"X-A", b"1")]
        self.assertEqual(
            response_fields(fields, framing=7, close=False),
            [(b"Date", b"d"), (b"Content-Length", b"7"), (b"X-A", b"1")],
        )

    def test_until_close_has_no_framing(self) -> None:
        """
        :data:`UNTIL_CLOSE` framing sends neither framing header.
        """
        fields = [(b"Date", b"d"), (b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")]
        self.assertEqual(
            response_fields(fields, framing=UNTIL_CLOSE, close=True),
            [(b"Date", b"d"), (b"Connection", b"close")],
        )

    def test_no_body_keeps_content_length(self) -> None:
        """
        For a bodiless response (HEAD, 204, 304) the origin's
        ``Content-Length`` is kept as sent, where it was, and nothing is
        added; ``Transfer-Encoding`` still goes.
        """
        fields = [
            (b"ETag", b'"x"'),
            (b"content-length", b"1234"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Keep-Alive", b"timeout=5"),
            (b"X-A", b"1"),
        ]
        self.assertEqual(
            response_fields(fields, framing=NO_BODY, close=False),
            [(b"ETag", b'"x"'), (b"content-length", b"1234"), (b"X-A", b"1")],
        )

    def test_no_body_without_content_length(self) -> None:
        """
        A bodiless response without ``Content-Length`` gets none, and fields
        named by ``Connection`` are still removed.
        """
        fields = [(b"Connection", b"X-Hop"), (b"X-Hop", b"1"), (b"X-A", b"2")]
        self.assertEqual(
            response_fields(fields, framing=NO_BODY, close=False),
            [(b"X-A", b"2")],
        )

    def test_close_adds_connection_close(self) -> None:
        """
        ``close=True`` appends ``Connection: close``, replacing whatever
        ``Connection`` the origin sent.
        """
        fields = [(b"Connection", b"keep-alive"), (b"X-A", b"1")]
        self.assertEqual(
            response_fields(fields, framing=0, close=True),
            [(b"X-A", b"1"), (b"Content-Length", b"0"), (b"Connection", b"close")],
        )
        self.assertEqual(
            response_fields(fields, framing=NO_BODY, close=True),
            [(b"X-A", b"1"), (b"Connection", b"close")],
        )

    def test_no_close_adds_no_connection(self) -> None:
        """
        ``close=False`` adds no ``Connection`` field.
        """
        out = response_fields([(b"X-A", b"1")], framing=2, close=False)
        self.assertNotIn(b"connection", [name.lower() for name, _ in out])


class CheckTests(SynchronousTestCase):
    """
    :func:`check_request` and :func:`check_response` refuse, naming the
    field, anything that would break a message on the wire, whoever set it.
    """

    def request(self, **changes: object) -> Request:
        request = Request.make("GET", "http://example.com/a?b=1", headers={"X-A": "1"})
        for name, value in changes.items():
            setattr(request, name, value)
        return request

    def refused(self, check: object, message: object, field: str) -> str:
        with self.assertRaises(InvalidMessage) as caught:
            check(message)  # type: ignore[operator]
        self.assertEqual(caught.exception.field, field)
        self.assertIn(field, str(caught.exception))
        return str(caught.exception)

    def test_valid_messages_pass(self) -> None:
        """A made request and response, obs-text in a reason, pass."""
        check_request(self.request())
        check_request(self.request(method="CONNECT", path="", scheme="", authority="h:443"))
        check_request(self.request(method="OPTIONS", path="*"))
        check_request(self.request(host="::1", authority="[::1]:8080"))
        response = Response.make(200, b"hi")
        response.reason = "O\udcffK"
        check_response(response)

    def test_request_fields_with_crlf_refused(self) -> None:
        """A CR or LF in the method, path, host or authority never passes."""
        self.refused(check_request, self.request(method="GET /x HTTP/1.1\r\n"), "request method")
        message = self.refused(check_request, self.request(path="/a HTTP/1.1\r\nX: y"),
                               "request path")
        self.assertIn("'/a HTTP/1.1\\r\\nX: y'", message)
        self.refused(check_request, self.request(path="/a b"), "request path")
        self.refused(check_request, self.request(path="http://x/"), "request path")
        self.refused(check_request, self.request(path=""), "request path")
        # Without a Host header to refuse it first (see test_host_setter_refuses_crlf).
        self.refused(check_request, self.request(host_header=None, host="a\r\nb"),
                     "request host")
        self.refused(check_request, self.request(host="a/b"), "request host")
        self.refused(check_request, self.request(host=""), "request host")
        self.refused(check_request, self.request(authority="a\nb"), "request authority")
        self.refused(check_request, self.request(port=0), "request port")
        self.refused(check_request, self.request(scheme="ftp"), "request scheme")
        self.refused(check_request, self.request(method=b"GET"), "request method")
        self.refused(check_request, self.request(path="/\ud800"), "request path")

    def test_host_setter_refuses_crlf(self) -> None:
        """
        A host holding CR LF, set on a request with a Host header, is
        refused by the header it would go into, and changes nothing.
        """
        request = self.request()
        with self.assertRaises(ValueError):
            request.host = "a\r\nSet-Cookie: x=y"
        self.assertEqual((request.host, request.host_header), ("example.com", "example.com"))

    def test_header_fields_refused(self) -> None:
        """A name that is not a token, a value with CR, LF or NUL, non-bytes."""
        for fields, field in [
            ([(b"X A", b"1")], "request header name"),
            ([(b"X-A:", b"1")], "request header name"),
            ([(b"", b"1")], "request header name"),
            ([(b"X-A", b"1\r\nSet-Cookie: a=b")], "request header value"),
            ([(b"X-A", b"1\nb")], "request header value"),
            ([(b"X-A", b"1\x00")], "request header value"),
            ([("X-A", b"1")], "request header name"),
            ([(b"X-A", "1")], "request header value"),
        ]:
            request = self.request()
            request.headers = Headers(fields)  # type: ignore[arg-type]  # unchecked
            self.refused(check_request, request, field)

    def test_response_fields_refused(self) -> None:
        """A reason with CR, LF or a control, a status outside 100-999, bad fields."""
        response = Response.make(200)
        response.reason = "OK\r\nSet-Cookie: a=b"
        self.refused(check_response, response, "response reason")
        response.reason = "O\x01K"
        self.refused(check_response, response, "response reason")
        for status in (99, 1000, "200", 200.0):
            response = Response.make(200)
            response.status_code = status  # type: ignore[assignment]
            self.refused(check_response, response, "response status")
        response = Response.make(200)
        response.headers = Headers([(b"Set-Cookie", b"a\r\nb")])  # unchecked
        self.refused(check_response, response, "response header value")
