"""
An origin server for the end-to-end tests, written on raw sockets so that a
test controls the exact bytes and framing of every response and sees the
exact bytes of every request.

Routes (by path prefix):

- ``/echo``: 200 with a JSON body describing the request as received (method,
  target, raw header lines in order and case, body length and SHA-256).
- ``/chunked``: the body ``chunk-0 ... chunk-4`` in five chunks.
- ``/close``: a body delimited by closing the connection.
- ``/status/N``: status N with no body (204, 304) or a short one.
- ``/bytes/N``: N bytes of a repeating pattern with Content-Length, written
  as the socket drains (a streaming producer, so the origin itself stays
  small for large N).
- ``/reset``: headers promising 1000 bytes, 100 bytes, then (0.1 s later) a reset.
- ``/hang``: never answers.
- ``/interim``: ``100 Continue`` and ``103 Early Hints`` before the 200.
- ``/gzip``: a gzip-encoded text body.
- ``/abort``: the connection is reset before any response byte.
- ``/garbage``: bytes that are not HTTP.
- ``/sink``: stops reading the request body for ``SINK_PAUSE`` seconds
  after its headers, then reads it all and answers with its length.
- ``/ambiguous``: a response with both Content-Length and chunked coding.
- ``/bigheaders``: a response whose header fields take 128 KiB.
- ``/midheaders``: half a response head, then a reset.
- ``/stall``: the head and 10 of 1000 body bytes, then nothing.
- ``/trickle/N/MS``: a chunked ``text/plain`` body of N pieces
  (``piece-i\n``), one every MS milliseconds; ``/events/N/MS`` the same as
  server-sent events (``data: i\n\n``, ``text/event-stream``).  The
  factory's ``trickled`` is when the last piece was written.
- ``/trailers/MS``: a chunked body ``hello`` whose last chunk, MS
  milliseconds later, carries the trailers ``X-Sum: abc`` and
  ``Host: elsewhere`` (a field no trailer may carry).  A request's
  trailers show in ``/echo``'s headers, after its header fields.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from typing import Any

import httptools
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

PATTERN = bytes(range(256)) * 256  # 64 KiB
SINK_PAUSE = 2.0


class Received:
    """One request as the origin received it."""

    def __init__(self) -> None:
        self.method = b""
        self.target = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = b""
        self.size = 0
        self.raw = b""


class OriginProtocol(Protocol):
    """Parses requests with httptools and answers by route."""

    def connectionMade(self) -> None:
        self.factory.connections += 1
        self.factory.open += 1
        self.parser = httptools.HttpRequestParser(self)
        self.current = Received()
        self.queue: list[Received] = []

    def dataReceived(self, data: bytes) -> None:
        if len(self.current.raw) < 65536:
            self.current.raw += data
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.transport.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
            self.transport.loseConnection()

    def connectionLost(self, reason: object = None) -> None:
        self.factory.open -= 1

    def on_url(self, url: bytes) -> None:
        self.current.target += url

    def on_headers_complete(self) -> None:
        if self.current.target.startswith(b"/sink"):
            from twisted.internet import reactor

            self.transport.pauseProducing()
            reactor.callLater(SINK_PAUSE, self.transport.resumeProducing)

    def on_header(self, name: bytes, value: bytes) -> None:
        self.current.headers.append((name, value))

    def on_body(self, body: bytes) -> None:
        self.current.size += len(body)
        if not self.current.target.startswith(b"/sink"):  # counted, not kept
            self.current.body += body

    def on_message_complete(self) -> None:
        request, self.current = self.current, Received()
        request.method = self.parser.get_method()
        self.factory.received.append(request)
        self.answer(request)

    def answer(self, request: Received) -> None:
        path = request.target.decode()
        write = self.transport.write
        if path.startswith("/echo"):
            body = json.dumps(
                {
                    "method": request.method.decode(),
                    "target": path,
                    "headers": [[n.decode("latin-1"), v.decode("latin-1")]
                                for n, v in request.headers],
                    "length": len(request.body),
                    "sha256": hashlib.sha256(request.body).hexdigest(),
                }
            ).encode()
            write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                  b"X-Origin-Case: Kept\r\ncontent-length: %d\r\n\r\n" % len(body))
            if request.method != b"HEAD":
                write(body)
        elif path.startswith("/chunked"):
            write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                  b"Content-Type: text/plain\r\n\r\n")
            for i in range(5):
                piece = b"chunk-%d " % i
                write(b"%x\r\n%s\r\n" % (len(piece), piece))
            write(b"0\r\n\r\n")
        elif path.startswith("/close"):
            write(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n"
                  b"delimited by close")
            self.transport.loseConnection()
        elif path.startswith("/status/"):
            code = int(path.split("/")[2])
            if code in (204, 304):
                write(b"HTTP/1.1 %d Whatever\r\nX-Status: yes\r\n\r\n" % code)
            else:
                write(b"HTTP/1.1 %d Whatever\r\ncontent-length: 6\r\n\r\nstatus" % code)
        elif path.startswith("/bytes/"):
            size = int(path.split("/")[2].split("?")[0])
            write(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                  b"Content-Length: %d\r\n\r\n" % size)
            if request.method != b"HEAD":
                _PatternProducer(self.transport, size, self.factory).start()
        elif path.startswith("/reset"):
            from twisted.internet import reactor

            write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 100)
            reactor.callLater(0.1, self.transport.abortConnection)
        elif path.startswith("/hang"):
            pass
        elif path.startswith("/abort"):
            self.transport.abortConnection()
        elif path.startswith("/ambiguous"):
            write(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"5\r\nhello\r\n0\r\n\r\n")
        elif path.startswith("/bigheaders"):
            write(b"HTTP/1.1 200 OK\r\n" + b"X-Big: " + b"b" * 131072 + b"\r\n"
                  b"Content-Length: 2\r\n\r\nok")
        elif path.startswith("/midheaders"):
            from twisted.internet import reactor

            write(b"HTTP/1.1 200 OK\r\nContent-Ty")
            reactor.callLater(0.1, self.transport.abortConnection)
        elif path.startswith("/stall"):
            write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"s" * 10)
        elif path.startswith("/garbage"):
            write(b"SPDY/9 what is this\r\n\r\n")
        elif path.startswith("/sink"):
            write(b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%d"
                  % (len(str(request.size)), request.size))
        elif path.startswith("/interim"):
            write(b"HTTP/1.1 100 Continue\r\n\r\n"
                  b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>\r\n\r\n"
                  b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal")
        elif path.startswith(("/trickle/", "/events/")):
            _, kind, count, ms = path.split("/")
            events = kind == "events"
            content_type = b"text/event-stream" if events else b"text/plain"
            write(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n" % content_type)
            self._trickle(0, int(count), int(ms) / 1000, events)
        elif path.startswith("/trailers/"):
            from twisted.internet import reactor

            write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum\r\n\r\n"
                  b"5\r\nhello\r\n")
            last = b"0\r\nX-Sum: abc\r\nHost: elsewhere\r\n\r\n"
            delay = int(path.split("/")[2]) / 1000
            if delay:
                reactor.callLater(delay, write, last)
            else:
                write(last)
        elif path.startswith("/gzip"):
            body = gzip.compress(b"hello, compressed world")
            write(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
        else:
            write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\nnot found")


    def _trickle(self, index: int, count: int, interval: float, events: bool) -> None:
        """Write piece *index* of *count*, and the next one *interval* seconds on."""
        from twisted.internet import reactor

        if self.transport is None or self.transport.disconnected:
            return
        if index == count:
            self.transport.write(b"0\r\n\r\n")
            self.factory.trickled = reactor.seconds()
            return
        piece = b"data: %d\n\n" % index if events else b"piece-%d\n" % index
        self.transport.write(b"%x\r\n%s\r\n" % (len(piece), piece))
        reactor.callLater(interval, self._trickle, index + 1, count, interval, events)


@implementer(IPushProducer)
class _PatternProducer:
    """Writes *size* bytes of PATTERN as the transport drains."""

    def __init__(self, transport: Any, size: int, factory: OriginFactory) -> None:
        self.transport = transport
        self.factory = factory
        self.left = size
        self.paused = False

    def start(self) -> None:
        self.transport.registerProducer(self, True)
        self.resumeProducing()

    def resumeProducing(self) -> None:
        self.paused = False
        while not self.paused and self.left > 0:
            piece = PATTERN[: min(self.left, len(PATTERN))]
            self.left -= len(piece)
            self.factory.body_sent += len(piece)
            self.transport.write(piece)
        if self.left == 0 and not self.paused:
            self.transport.unregisterProducer()
            self.left = -1

    def pauseProducing(self) -> None:
        self.paused = True

    def stopProducing(self) -> None:
        self.left = -1


class OriginFactory(Factory):
    """Builds origin connections and remembers what they received."""

    protocol = OriginProtocol

    def __init__(self) -> None:
        self.received: list[Received] = []
        self.connections = 0
        self.open = 0
        self.body_sent = 0  # bytes of /bytes/N bodies written so far
        self.trickled: float | None = None  # when /trickle or /events ended


def pattern_bytes(size: int) -> bytes:
    """What ``/bytes/size`` sends, for comparisons in tests (small sizes)."""
    whole, rest = divmod(size, len(PATTERN))
    return PATTERN * whole + PATTERN[:rest]
