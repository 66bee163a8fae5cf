"""
Tests for :mod:`twistproxy._sniff`: what a tunnel carries, from its first
bytes.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from twistproxy._sniff import Carried, sniff

_CLIENT_HELLO = b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03client-hello"
_REQUEST = b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n"


class SniffTests(SynchronousTestCase):
    """Tests for :func:`sniff`."""

    def test_client_hello(self) -> None:
        """A TLS handshake record of version 3.x is TLS, from its third byte."""
        self.assertIs(sniff(_CLIENT_HELLO), Carried.TLS)
        for minor in (0x00, 0x01, 0x03, 0x04):
            self.assertIs(sniff(bytes([0x16, 0x03, minor])), Carried.TLS)

    def test_client_hello_in_pieces(self) -> None:
        """One or two bytes of a ClientHello are not enough to decide."""
        self.assertIsNone(sniff(b"\x16"))
        self.assertIsNone(sniff(b"\x16\x03"))

    def test_not_tls(self) -> None:
        """A handshake type byte with another version is raw TCP."""
        self.assertIs(sniff(b"\x16\x02"), Carried.RAW)
        self.assertIs(sniff(b"\x16\x03\x10"), Carried.RAW)
        self.assertIs(sniff(b"\x17\x03\x03"), Carried.RAW)

    def test_request_line(self) -> None:
        """A whole request line is HTTP: any method token, any target form."""
        for line in (b"GET / HTTP/1.1\r\n", b"POST /x?y=1 HTTP/1.0\r\n",
                     b"OPTIONS * HTTP/1.1\r\n", b"GET http://example.com/ HTTP/1.1\r\n",
                     b"PROPFIND /dav HTTP/1.1\n", b"X-CUSTOM /a HTTP/1.1\r\n"):
            with self.subTest(line=line):
                self.assertIs(sniff(line), Carried.HTTP)
        self.assertIs(sniff(_REQUEST), Carried.HTTP)

    def test_request_line_in_pieces(self) -> None:
        """Every start of a request line waits for more."""
        for end in range(1, len(_REQUEST.split(b"\n")[0]) + 1):
            with self.subTest(data=_REQUEST[:end]):
                self.assertIsNone(sniff(_REQUEST[:end]))

    def test_text_protocols_are_raw(self) -> None:
        """
        Lines that start like a request but are not one are raw TCP: an SMTP
        or Redis command, a request line of another version.
        """
        for data in (b"EHLO example.com\r\n", b"PING\r\n", b"SET a b\r\n",
                     b"GET / HTTP/2.0\r\n", b"GET /  HTTP/1.1\r\n", b"GET / HTTP/1.1 x\r\n",
                     b"SSH-2.0-OpenSSH_9.6\r\n"):
            with self.subTest(data=data):
                self.assertIs(sniff(data), Carried.RAW)

    def test_raw_as_soon_as_known(self) -> None:
        """Bytes that cannot start a request line are raw without waiting for more."""
        for data in (b"\x00", b"\xff\xfe", b"GET\x00", b"GET /a\tb", b"GET / HTTPS",
                     b"GET / HTTP/1.2", b"{\"json\": 1}"):
            with self.subTest(data=data):
                self.assertIs(sniff(data), Carried.RAW)

    def test_long_line_is_raw(self) -> None:
        """A first line longer than a request line may be is raw, ended or not."""
        long = b"GET /" + b"a" * 100
        self.assertIs(sniff(long, max_line=64), Carried.RAW)
        self.assertIs(sniff(long + b" HTTP/1.1\r\n", max_line=64), Carried.RAW)
        self.assertIs(sniff(long + b" HTTP/1.1\r\n", max_line=200), Carried.HTTP)
