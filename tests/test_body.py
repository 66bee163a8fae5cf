"""
Tests for :mod:`twistproxy._body`.
"""

from __future__ import annotations

import copy
import gzip
import pickle
import zlib

from twisted.trial.unittest import SynchronousTestCase

from twistproxy._body import content_type_params
from twistproxy.http import Response


def gzip_response(body: bytes) -> Response:
    """
    A response whose body is *body* gzipped, with a Content-Length.
    """
    raw = gzip.compress(body)
    return Response(
        "HTTP/1.1",
        200,
        "OK",
        [
            (b"Content-Encoding", b"gzip"),
            (b"Content-Length", str(len(raw)).encode()),
            (b"Content-Type", b"text/plain; charset=utf-8"),
        ],
        raw,
    )


class MessageBodyTests(SynchronousTestCase):
    """
    Tests for `MessageBody`, the body handling `Request` and `Response`
    share (through `Message`).
    """

    def test_content_decodes(self) -> None:
        """
        ``content`` undoes the Content-Encoding; ``raw_content`` keeps the
        wire form.
        """
        response = gzip_response(b"hello world")
        self.assertEqual(response.content, b"hello world")
        self.assertEqual(gzip.decompress(response.raw_content or b""), b"hello world")

    def test_content_identity(self) -> None:
        """
        Without a Content-Encoding, ``content`` is the raw body itself.
        """
        raw = b"plain"
        response = Response("HTTP/1.1", 200, "OK", [], raw)
        self.assertIs(response.content, raw)

    def test_content_none(self) -> None:
        """
        A body that was not captured reads as None.
        """
        response = gzip_response(b"x")
        response.raw_content = None
        self.assertIsNone(response.content)
        self.assertIsNone(response.text)

    def test_undecodable(self) -> None:
        """
        An undecodable body raises ValueError from ``content``;
        ``get_content(strict=False)`` gives the raw body.
        """
        response = gzip_response(b"x")
        response.raw_content = b"not gzip"
        self.assertRaises(ValueError, lambda: response.content)
        self.assertEqual(response.get_content(strict=False), b"not gzip")

    def test_set_content_reencodes(self) -> None:
        """
        Setting ``content`` encodes with the current Content-Encoding and
        updates Content-Length.
        """
        response = gzip_response(b"old")
        response.content = b"new body " * 10
        raw = response.raw_content or b""
        self.assertEqual(gzip.decompress(raw), b"new body " * 10)
        self.assertEqual(response.headers["content-length"], str(len(raw)))
        self.assertEqual(response.content, b"new body " * 10)

    def test_set_content_without_length(self) -> None:
        """
        Setting ``content`` adds no Content-Length when there was none.
        """
        response = Response("HTTP/1.1", 200, "OK", [(b"Transfer-Encoding", b"chunked")], b"")
        response.content = b"abc"
        self.assertEqual(response.raw_content, b"abc")
        self.assertNotIn("content-length", response.headers)

    def test_set_content_unknown_encoding(self) -> None:
        """
        Setting ``content`` under a coding that cannot be applied stores it
        plain and removes the Content-Encoding header.
        """
        response = Response("HTTP/1.1", 200, "OK", [(b"Content-Encoding", b"magic")], b"??")
        response.content = b"plain"
        self.assertEqual(response.raw_content, b"plain")
        self.assertNotIn("content-encoding", response.headers)

    def test_set_content_str(self) -> None:
        """
        Setting ``content`` to a str is a TypeError.
        """
        response = Response.make()
        with self.assertRaises(TypeError):
            response.content = "text"  # type: ignore[assignment]

    def test_text_charset(self) -> None:
        """
        ``text`` decodes with the Content-Type charset and encodes with it
        on set.
        """
        response = Response(
            "HTTP/1.1",
            200,
            "OK",
            [(b"Content-Type", b'text/html; charset="ISO-8859-1"'), (b"Content-Length", b"4")],
            b"caf\xe9",
        )
        self.assertEqual(response.text, "café")
        response.text = "naïve"
        self.assertEqual(response.raw_content, b"na\xefve")
        self.assertEqual(response.headers["Content-Length"], "5")

    def test_text_default_utf8(self) -> None:
        """
        Without a charset, ``text`` is UTF-8, and bytes that are not UTF-8
        round-trip.
        """
        response = Response("HTTP/1.1", 200, "OK", [], "é".encode() + b"\xff")
        text = response.text
        self.assertEqual(text, "é\udcff")
        response.text = text
        self.assertEqual(response.raw_content, b"\xc3\xa9\xff")

    def test_text_charset_fallback(self) -> None:
        """
        Text the declared charset cannot encode is stored as UTF-8 and the
        charset changed to match.
        """
        response = Response(
            "HTTP/1.1", 200, "OK", [(b"Content-Type", b"text/plain; charset=latin-1")], b""
        )
        response.text = "€"
        self.assertEqual(response.raw_content, "€".encode())
        self.assertEqual(response.headers["content-type"], "text/plain; charset=utf-8")
        self.assertEqual(response.text, "€")

    def test_decode(self) -> None:
        """
        ``decode()`` stores the plain body and removes Content-Encoding.
        """
        response = gzip_response(b"hello")
        response.decode()
        self.assertEqual(response.raw_content, b"hello")
        self.assertNotIn("Content-Encoding", response.headers)
        self.assertEqual(response.headers["Content-Length"], "5")

    def test_decode_not_strict(self) -> None:
        """
        ``decode(strict=False)`` leaves an undecodable message unchanged;
        ``decode()`` raises.
        """
        response = gzip_response(b"x")
        response.raw_content = b"junk"
        response.decode(strict=False)
        self.assertEqual(response.raw_content, b"junk")
        self.assertEqual(response.headers["content-encoding"], "gzip")
        self.assertRaises(ValueError, response.decode)

    def test_encode(self) -> None:
        """
        ``encode()`` applies a coding (undoing the previous one) and sets
        Content-Encoding; ``identity`` removes it.
        """
        response = gzip_response(b"hello " * 20)
        response.encode("deflate")
        raw = response.raw_content or b""
        self.assertEqual(zlib.decompress(raw), b"hello " * 20)
        self.assertEqual(response.headers["content-encoding"], "deflate")
        self.assertEqual(response.headers["content-length"], str(len(raw)))
        response.encode("identity")
        self.assertEqual(response.raw_content, b"hello " * 20)
        self.assertNotIn("content-encoding", response.headers)

    def test_encode_unknown(self) -> None:
        """
        ``encode()`` with an unknown coding raises and changes nothing.
        """
        response = gzip_response(b"x")
        before = response.get_state()
        self.assertRaises(ValueError, response.encode, "magic")
        self.assertEqual(response.get_state(), before)

    def test_slotted(self) -> None:
        """
        A message keeps every attribute in slots, its base class's too (no
        ``__dict__``), and a copy or a pickle round trip keeps the body's
        attributes.
        """
        response = gzip_response(b"hello")
        self.assertEqual(response.content, b"hello")
        response.body_size = 7
        self.assertFalse(hasattr(response, "__dict__"))
        for copied in (copy.copy(response), pickle.loads(pickle.dumps(response))):
            self.assertEqual(copied.raw_content, response.raw_content)
            self.assertEqual(copied.content, b"hello")
            self.assertEqual(copied.get_state(), response.get_state())
        response.raw_content = None
        self.assertEqual(copy.copy(response).body_size, 7)


class ContentTypeParamsTests(SynchronousTestCase):
    """
    Tests for `content_type_params`.
    """

    def test_split(self) -> None:
        """
        The media type comes apart from its parameters, whose names are
        lower-cased and whose values lose their quotes.
        """
        self.assertEqual(
            content_type_params('text/html ; Charset="UTF-8"; q=1'),
            ("text/html", {"charset": "UTF-8", "q": "1"}),
        )

    def test_no_parameters(self) -> None:
        """
        A media type alone has no parameters; a parameter without ``=`` is
        ignored.
        """
        self.assertEqual(content_type_params("application/json"), ("application/json", {}))
        self.assertEqual(content_type_params("text/plain; flag"), ("text/plain", {}))
