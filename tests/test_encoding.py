"""
Tests for :mod:`twistproxy._encoding`.
"""

from __future__ import annotations

import gzip
import importlib.util
import zlib
from unittest import skipIf

from twisted.trial.unittest import SynchronousTestCase

from twistproxy._encoding import DecodedTooLarge, available, decode, encode

HAVE_BROTLI = importlib.util.find_spec("brotli") is not None
HAVE_ZSTANDARD = importlib.util.find_spec("zstandard") is not None

BODY = b"twistproxy body \x00\xff\xfe " * 50


class EncodingTests(SynchronousTestCase):
    """
    Tests for the codecs that are always available.
    """

    def test_identity(self) -> None:
        """
        ``identity`` leaves the body as it is both ways.
        """
        self.assertEqual(encode(BODY, "identity"), BODY)
        self.assertEqual(decode(BODY, "identity"), BODY)

    def test_gzip_round_trip(self) -> None:
        """
        ``gzip`` output is a real gzip stream and decodes back to the body.
        """
        encoded = encode(BODY, "gzip")
        self.assertNotEqual(encoded, BODY)
        self.assertEqual(gzip.decompress(encoded), BODY)
        self.assertEqual(decode(encoded, "gzip"), BODY)

    def test_gzip_reproducible(self) -> None:
        """
        Encoding with gzip gives the same bytes every time (no timestamp in
        the header).
        """
        self.assertEqual(encode(BODY, "gzip"), encode(BODY, "gzip"))

    def test_x_gzip(self) -> None:
        """
        ``x-gzip`` is an alias of ``gzip``.
        """
        self.assertEqual(decode(gzip.compress(BODY), "x-gzip"), BODY)
        self.assertEqual(decode(encode(BODY, "x-gzip"), "gzip"), BODY)

    def test_deflate_round_trip(self) -> None:
        """
        ``deflate`` encodes zlib-wrapped and decodes back to the body.
        """
        encoded = encode(BODY, "deflate")
        self.assertEqual(zlib.decompress(encoded), BODY)
        self.assertEqual(decode(encoded, "deflate"), BODY)

    def test_deflate_raw(self) -> None:
        """
        A raw deflate stream (no zlib wrapper), as some servers send, is
        decoded too.
        """
        compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
        raw = compressor.compress(BODY) + compressor.flush()
        self.assertEqual(decode(raw, "deflate"), BODY)

    def test_names_case_and_whitespace(self) -> None:
        """
        Coding names are matched case-insensitively with surrounding
        whitespace ignored.
        """
        self.assertEqual(decode(encode(BODY, " GZip "), "gzip"), BODY)
        self.assertEqual(decode(gzip.compress(BODY), "\tGZIP "), BODY)

    def test_chain(self) -> None:
        """
        A list of codings is applied in order and undone in reverse.
        """
        encoded = encode(BODY, "deflate, gzip")
        self.assertEqual(zlib.decompress(gzip.decompress(encoded)), BODY)
        self.assertEqual(decode(encoded, "deflate, gzip"), BODY)

    def test_empty_body(self) -> None:
        """
        An empty body decodes to an empty body under any known coding, as a
        HEAD response with ``Content-Encoding: gzip`` has.
        """
        for name in available():
            self.assertEqual(decode(b"", name), b"", name)

    def test_unknown_encoding(self) -> None:
        """
        An unknown coding raises ValueError naming it, both ways.
        """
        with self.assertRaises(ValueError) as caught:
            decode(BODY, "compress")
        self.assertIn("'compress'", str(caught.exception))
        self.assertRaises(ValueError, encode, BODY, "bogus")
        self.assertRaises(ValueError, decode, b"", "bogus")

    def test_corrupt_gzip(self) -> None:
        """
        A body that is not gzip, or is truncated, raises ValueError.
        """
        self.assertRaises(ValueError, decode, b"not gzip at all", "gzip")
        self.assertRaises(ValueError, decode, gzip.compress(BODY)[:-10], "gzip")

    def test_corrupt_deflate(self) -> None:
        """
        A body that is not deflate, or is truncated, raises ValueError.
        """
        self.assertRaises(ValueError, decode, b"\xff\xff\xff\xff not deflate", "deflate")
        self.assertRaises(ValueError, decode, zlib.compress(BODY)[:-10], "deflate")

    def test_available(self) -> None:
        """
        The standard-library codings are always available; ``br`` and
        ``zstd`` exactly when their packages are installed.
        """
        names = available()
        self.assertTrue({"identity", "gzip", "x-gzip", "deflate"} <= names)
        self.assertEqual("br" in names, HAVE_BROTLI)
        self.assertEqual("zstd" in names, HAVE_ZSTANDARD)


@skipIf(not HAVE_BROTLI, "brotli is not installed")
class BrotliTests(SynchronousTestCase):
    """
    Tests for the ``br`` codec.
    """

    def test_round_trip(self) -> None:
        """
        ``br`` output is real brotli and decodes back to the body.
        """
        import brotli

        encoded = encode(BODY, "br")
        self.assertEqual(brotli.decompress(encoded), BODY)
        self.assertEqual(decode(encoded, "BR"), BODY)

    def test_corrupt(self) -> None:
        """
        A body that is not brotli, or is truncated, raises ValueError.
        """
        self.assertRaises(ValueError, decode, b"not brotli", "br")
        self.assertRaises(ValueError, decode, encode(BODY, "br")[:-3], "br")


@skipIf(not HAVE_ZSTANDARD, "zstandard is not installed")
class ZstdTests(SynchronousTestCase):
    """
    Tests for the ``zstd`` codec.
    """

    def test_round_trip(self) -> None:
        """
        ``zstd`` output is real zstd and decodes back to the body.
        """
        import zstandard

        encoded = encode(BODY, "zstd")
        self.assertEqual(zstandard.ZstdDecompressor().decompress(encoded), BODY)
        self.assertEqual(decode(encoded, "zstd"), BODY)

    def test_frame_without_content_size(self) -> None:
        """
        A frame written by a streaming compressor, which does not record the
        content size, is decoded.
        """
        import zstandard

        compressor = zstandard.ZstdCompressor().compressobj()
        encoded = compressor.compress(BODY) + compressor.flush()
        self.assertEqual(zstandard.frame_content_size(encoded), -1)
        self.assertEqual(decode(encoded, "zstd"), BODY)

    def test_several_frames(self) -> None:
        """
        Concatenated frames decode to the concatenated bodies.
        """
        encoded = encode(b"one ", "zstd") + encode(b"two", "zstd")
        self.assertEqual(decode(encoded, "zstd"), b"one two")

    def test_corrupt(self) -> None:
        """
        A body that is not zstd, or is truncated, raises ValueError.
        """
        self.assertRaises(ValueError, decode, b"not zstd at all", "zstd")
        self.assertRaises(ValueError, decode, encode(BODY, "zstd")[:-4], "zstd")


class LimitTests(SynchronousTestCase):
    """
    :func:`decode` with a limit: a body decoding to more raises
    :exc:`DecodedTooLarge` without ever being made whole; one within it
    decodes as without a limit.
    """

    BOMB = b"\0" * (8 * 1024 * 1024)  # 8 MiB of zeros: a few KiB in any coding
    LIMIT = 1024 * 1024

    def check(self, coding: str) -> None:
        bomb = encode(self.BOMB, coding)
        self.assertLess(len(bomb), 64 * 1024)
        with self.assertRaises(DecodedTooLarge):
            decode(bomb, coding, limit=self.LIMIT)
        exact = encode(b"x" * self.LIMIT, coding)
        self.assertEqual(decode(exact, coding, limit=self.LIMIT), b"x" * self.LIMIT)
        with self.assertRaises(DecodedTooLarge):
            decode(exact, coding, limit=self.LIMIT - 1)
        self.assertEqual(decode(bomb, coding), self.BOMB)

    def test_gzip(self) -> None:
        self.check("gzip")

    def test_gzip_members(self) -> None:
        """Every member of a multi-member gzip body counts."""
        body = gzip.compress(b"a" * 1000) + gzip.compress(b"b" * 1000)
        self.assertEqual(decode(body, "gzip", limit=2000), b"a" * 1000 + b"b" * 1000)
        with self.assertRaises(DecodedTooLarge):
            decode(body, "gzip", limit=1999)

    def test_deflate(self) -> None:
        self.check("deflate")
        raw = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        body = raw.compress(self.BOMB) + raw.flush()
        with self.assertRaises(DecodedTooLarge):
            decode(body, "deflate", limit=self.LIMIT)

    @skipIf(not HAVE_BROTLI, "brotli is not installed")
    def test_br(self) -> None:
        self.check("br")

    @skipIf(not HAVE_ZSTANDARD, "zstandard is not installed")
    def test_zstd(self) -> None:
        self.check("zstd")

    def test_each_step_is_bounded(self) -> None:
        """In a chain of codings, the limit holds for every step."""
        self.check("gzip, deflate")

    def test_truncated_is_invalid_not_too_large(self) -> None:
        """A cut body within the limit is a plain ValueError."""
        body = gzip.compress(b"a" * 1000)[:-12]
        with self.assertRaises(ValueError) as caught:
            decode(body, "gzip", limit=10_000)
        self.assertNotIsInstance(caught.exception, DecodedTooLarge)
