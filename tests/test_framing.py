"""
Tests for :mod:`twistproxy._framing`: how bodies are delimited, as they
arrive and as the proxy forwards them.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twistproxy._framing import (
    CHUNKED,
    MAX_LENGTH,
    NO_BODY,
    UNTIL_CLOSE,
    content_length,
    forwarded_request,
    forwarded_response,
    request_framing,
    response_framing,
    transfer_coding,
)
from twistproxy.errors import BadFraming, UpstreamProtocolError


class RequestFramingTests(SynchronousTestCase):
    """
    Tests for :func:`request_framing`, :func:`transfer_coding` and
    :func:`content_length`.
    """

    def test_content_length(self) -> None:
        """A ``Content-Length`` is the length, whatever its name's case and spaces."""
        self.assertEqual(request_framing([(b"content-LENGTH", b" 42 ")]), 42)
        self.assertEqual(request_framing([(b"Content-Length", b"0")]), 0)

    def test_nothing(self) -> None:
        """A request with neither field has no body."""
        self.assertEqual(request_framing([(b"Host", b"h")]), NO_BODY)
        self.assertEqual(request_framing([]), NO_BODY)

    def test_chunked(self) -> None:
        """Exactly ``chunked`` (any case) in HTTP/1.1 frames the body as chunked."""
        self.assertEqual(request_framing([(b"Transfer-Encoding", b"CHUNKED")]), CHUNKED)
        self.assertEqual(transfer_coding(b" chunked\t", b"HTTP/1.1"), CHUNKED)

    def test_other_codings_refused(self) -> None:
        """
        Another coding, a list (chunked last or not) and any coding in
        HTTP/1.0 are refused: the proxy would have to undo them, and parsers
        disagree about a chunked that is not last.
        """
        for value in (b"gzip", b"gzip, chunked", b"chunked, gzip", b"identity", b""):
            with self.subTest(value=value), self.assertRaises(BadFraming):
                request_framing([(b"Transfer-Encoding", value)])
        with self.assertRaises(BadFraming):
            request_framing([(b"Transfer-Encoding", b"chunked")], b"HTTP/1.0")

    def test_bad_lengths_refused(self) -> None:
        """A length that is not a decimal number up to 2**63 - 1 is refused."""
        for value in (b"-1", b"+5", b"abc", b"5 5", b"", b"%d" % (MAX_LENGTH + 1)):
            with self.subTest(value=value), self.assertRaises(BadFraming):
                content_length(value)
        self.assertEqual(content_length(b"%d" % MAX_LENGTH), MAX_LENGTH)

    def test_both_refused(self) -> None:
        """Both fields, or lengths that disagree, are refused; equal lengths pass."""
        with self.assertRaises(BadFraming):
            request_framing([(b"Content-Length", b"3"), (b"Transfer-Encoding", b"chunked")])
        with self.assertRaises(BadFraming):
            request_framing([(b"Content-Length", b"3"), (b"Content-Length", b"4")])
        self.assertEqual(request_framing([(b"Content-Length", b"3")] * 2), 3)


class ResponseFramingTests(SynchronousTestCase):
    """
    Tests for :func:`response_framing`.
    """

    def test_bodiless(self) -> None:
        """
        A response to HEAD, a 1xx, 204 and 304, and a 2xx to CONNECT have no
        body whatever their fields say.
        """
        fields = [(b"Content-Length", b"10")]
        self.assertEqual(response_framing(b"HEAD", 200, fields), NO_BODY)
        for status in (100, 103, 204, 304):
            with self.subTest(status=status):
                self.assertEqual(response_framing(b"GET", status, fields), NO_BODY)
        self.assertEqual(response_framing(b"CONNECT", 200, fields), NO_BODY)
        self.assertEqual(response_framing(b"CONNECT", 407, fields), 10)

    def test_length_chunked_close(self) -> None:
        """
        ``chunked`` wins over a length; a length is the length; neither
        means the body ends with the connection.
        """
        self.assertEqual(response_framing(b"GET", 200, [(b"Content-Length", b" 5")]), 5)
        both = [(b"Content-Length", b"3"), (b"Transfer-Encoding", b"Chunked")]
        self.assertEqual(response_framing(b"GET", 200, both), CHUNKED)
        self.assertEqual(response_framing(b"GET", 200, [(b"X", b"y")]), UNTIL_CLOSE)

    def test_other_codings_refused(self) -> None:
        """A transfer coding other than exactly chunked cannot be relayed."""
        for value in (b"gzip", b"gzip, chunked", b"chunked, gzip"):
            with self.subTest(value=value), self.assertRaises(UpstreamProtocolError):
                response_framing(b"GET", 200, [(b"Transfer-Encoding", value)])


class ForwardedTests(SynchronousTestCase):
    """
    Tests for :func:`forwarded_request` and :func:`forwarded_response`.
    """

    def test_request_in_hand(self) -> None:
        """
        A whole body goes with its length; an empty one without framing
        when it came without, with ``Content-Length: 0`` when it came with one.
        """
        self.assertEqual(forwarded_request(CHUNKED, 7), 7)
        self.assertEqual(forwarded_request(7, 7), 7)
        self.assertEqual(forwarded_request(NO_BODY, 0), NO_BODY)
        self.assertEqual(forwarded_request(0, 0), 0)
        self.assertEqual(forwarded_request(CHUNKED, 0), 0)

    def test_request_still_arriving(self) -> None:
        """A body still arriving keeps its length, or goes on chunked."""
        self.assertEqual(forwarded_request(5000, None), 5000)
        self.assertEqual(forwarded_request(CHUNKED, None), CHUNKED)

    def test_response(self) -> None:
        """
        HEAD and bodiless statuses get no body; a whole body its length; a
        streamed one its length, or chunked for HTTP/1.1 and the connection's
        end for HTTP/1.0.
        """
        self.assertEqual(forwarded_response(b"HEAD", 200, 5, None, b"HTTP/1.1"), NO_BODY)
        self.assertEqual(forwarded_response(b"GET", 304, 5, 5, b"HTTP/1.1"), NO_BODY)
        self.assertEqual(forwarded_response(b"GET", 101, 5, 5, b"HTTP/1.1"), NO_BODY)
        self.assertEqual(forwarded_response(b"GET", 200, CHUNKED, 9, b"HTTP/1.1"), 9)
        self.assertEqual(forwarded_response(b"GET", 200, 12, None, b"HTTP/1.0"), 12)
        self.assertEqual(forwarded_response(b"GET", 200, CHUNKED, None, b"HTTP/1.1"), CHUNKED)
        self.assertEqual(forwarded_response(b"GET", 200, UNTIL_CLOSE, None, b"HTTP/1.1"), CHUNKED)
        self.assertEqual(
            forwarded_response(b"GET", 200, UNTIL_CLOSE, None, b"HTTP/1.0"), UNTIL_CLOSE
        )
        self.assertEqual(forwarded_response(b"GET", 200, NO_BODY, None, b"HTTP/1.1"), NO_BODY)
