# -*- test-case-name: tests.test_twisted_compat -*-
"""
Every private name of Twisted's that twistproxy relies on, in one place.

The client side subclasses ``twisted.web.http.HTTPChannel``, which exposes
no public way to choose the body's decoder from header fields parsed by the
subclass, to bound a chunked body's chunk sizes, to answer a malformed
request with a reason, or to take the bytes it has read but not parsed when
a ``CONNECT`` hands the connection to a tunnel.  The names below do it;
``tests/test_twisted_compat.py`` checks each of them against the installed
Twisted and fails naming the one a release renamed, and ``setup.cfg`` pins
Twisted to the range that test has passed on.  No other module may use a
private Twisted name.  :class:`RequestCompat` is the request's side of the
same arrangement: what Twisted's ``Request`` still expects of a request
whose channel parses the header fields itself.
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Sequence
from functools import partial

from twisted.internet import tcp
from twisted.internet.epollreactor import EPollReactor
from twisted.protocols.basic import LineReceiver
from twisted.protocols.haproxy import _exceptions, _v1parser, _v2parser
from twisted.web.http import (  # the module's own attribute access is slow (deprecations)
    HTTPChannel,
    Request,
    _ChunkedTransferDecoder,
    _MalformedChunkedDataError,
    _parseRequestLine,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import INonQueuedRequestFactory

from twistproxy._framing import MAX_LENGTH

PRIVATE_NAMES: tuple[tuple[str, str], ...] = (
    ("twisted.web.http.HTTPChannel", "_dataBuffer"),
    ("twisted.web.http.HTTPChannel", "_transferDecoder"),
    ("twisted.web.http.HTTPChannel", "_maybeChooseTransferDecoder"),
    ("twisted.web.http.HTTPChannel", "_respondToBadRequestAndDisconnect"),
    ("twisted.web.http", "_ChunkedTransferDecoder"),
    ("twisted.web.http._ChunkedTransferDecoder", "_dataReceived_CHUNK_LENGTH"),
    ("twisted.web.http._ChunkedTransferDecoder", "_trailerHeaders"),
    ("twisted.web.http", "_MalformedChunkedDataError"),
    ("twisted.web.http", "_parseRequestLine"),
    ("twisted.web.http.HTTPChannel", "_HTTPChannel__first_line"),
    ("twisted.web.http.HTTPChannel", "_HTTPChannel__header"),
    ("twisted.web.http.HTTPChannel", "_receivedHeaderSize"),
    ("twisted.protocols.basic.LineReceiver", "_buffer"),
    ("twisted.protocols.basic.LineReceiver", "_busyReceiving"),
    # The PROXY protocol's header parsers (public classes in private
    # modules; twisted.protocols.haproxy exports only proxyEndpoint, whose
    # wrapper connects the protocol before the header is read).
    ("twisted.protocols.haproxy._v1parser", "V1Parser"),
    ("twisted.protocols.haproxy._v2parser", "V2Parser"),
    ("twisted.protocols.haproxy._exceptions", "InvalidProxyHeader"),
    # A TCP transport's write buffer and state, for sending at once (send_eagerly).
    ("twisted.internet.tcp.Connection", "_tempDataLen"),
    ("twisted.internet.tcp.Connection", "_writeDisconnected"),
    ("twisted.internet.tcp.Connection", "_aborting"),
    # The epoll reactor's poller, its connections by descriptor and its
    # event handler, for dispatching without the legacy log context
    # (dispatch_directly).
    ("twisted.internet.epollreactor.EPollReactor", "_poller"),
    ("twisted.internet.epollreactor.EPollReactor", "_selectables"),
    ("twisted.internet.epollreactor.EPollReactor", "_doReadOrWrite"),
)
"""``(owner, name)`` of every private Twisted name used here, for the test."""

InvalidProxyHeader = _exceptions.InvalidProxyHeader
"""What the PROXY protocol's header parsers raise for bytes that are no header."""
ProxyHeaderV1 = _v1parser.V1Parser
"""The PROXY protocol's version 1 (text) header parser."""
ProxyHeaderV2 = _v2parser.V2Parser
"""The PROXY protocol's version 2 (binary) header parser."""


class _BoundedChunks(_ChunkedTransferDecoder):
    """
    Twisted's chunked decoder, refusing chunk sizes beyond
    :data:`~twistproxy._framing.MAX_LENGTH` (as llhttp does): its own takes
    any number of hex digits.  The trailer lines it read are handed to
    *trailers* just before the body is reported finished.
    """

    def __init__(
        self,
        data_callback: Callable[[bytes], None],
        finish_callback: Callable[[bytes], object],
        trailers: Callable[[list[bytes]], object],
    ) -> None:
        def finished(rest: bytes) -> None:
            if self._trailerHeaders:
                trailers([bytes(line) for line in self._trailerHeaders])
            finish_callback(rest)

        super().__init__(data_callback, finished)

    def _dataReceived_CHUNK_LENGTH(self) -> bool:
        done: bool = super()._dataReceived_CHUNK_LENGTH()
        if done and self.length > MAX_LENGTH:
            raise _MalformedChunkedDataError("chunk size out of range")
        return done


class ChannelCompat(HTTPChannel):
    """
    ``HTTPChannel`` with its private names behind public ones:
    :meth:`bad_request` for every malformed request Twisted finds itself,
    and :meth:`choose_body_decoder` for a channel that parses the header
    fields itself (chunked bodies decoded with chunk sizes bounded).
    """

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's one place for a malformed request."""
        self.bad_request()

    def bad_request(self) -> None:
        """Answer a request Twisted found malformed, and close (override it)."""
        super()._respondToBadRequestAndDisconnect()

    def choose_body_decoder(self, name: bytes, value: bytes) -> bool:
        """
        Set the request body's decoder from a ``Content-Length`` or
        ``Transfer-Encoding`` field (*name* in any case), as Twisted's own
        field parsing would, with chunk sizes bounded.  ``False``: the
        request was refused (a second framing field, a bad value).
        """
        canonical = _CANONICAL[name.lower()]
        ok: bool = self._maybeChooseTransferDecoder(canonical, value)
        decoder = self._transferDecoder
        if ok and type(decoder) is _ChunkedTransferDecoder:
            self._transferDecoder = _BoundedChunks(
                decoder.dataCallback, decoder.finishCallback, self.trailers_received
            )
        return ok

    def trailers_received(self, lines: list[bytes]) -> None:
        """
        A chunked request body ended with trailer *lines* (``name: value``,
        unparsed), just before the request is complete (override it).
        """

    def can_take_head(self) -> bool:
        """
        Whether a request head could be taken whole now
        (:meth:`take_head`): the channel waits for a request's first line,
        with nothing of it read yet, and is neither paused nor reading.
        """
        return bool(
            self._HTTPChannel__first_line
            and not self._buffer and not self._busyReceiving and not self.paused
            and self.persistent and self.line_mode
        )

    def take_head(self, request_line: bytes, fields: list[bytes], rest: bytes) -> None:
        """
        Take a request head that arrived whole, its *request_line* and its
        field lines at once, as Twisted's line-by-line parsing would take
        them (the same request, the same calls of :meth:`headerReceived`,
        ``allHeadersReceived`` and ``allContentReceived``, the same state
        after), then parse *rest*, what followed the head, as
        ``LineReceiver`` would have.  Call it only when
        :meth:`can_take_head` says so, for a head the subclass's line
        checks (limits, folding) would pass.
        """
        self.resetTimeout()
        # *rest* waits in the line buffer, as behind the lines LineReceiver
        # had yet to parse: a CONNECT's tunnel opened inside these calls
        # takes it from there (take_buffered), and reentrant reads (a
        # response finished here hands its pipelined bytes back) queue
        # behind it.
        self._buffer = rest
        self._busyReceiving = True
        try:
            self._receivedHeaderSize += len(request_line) + sum(map(len, fields))
            factory = self.requestFactory
            if INonQueuedRequestFactory.providedBy(factory):
                request = factory(self)
            else:
                request = factory(self, len(self.requests))
            self.requests.append(request)
            self._HTTPChannel__first_line = 0
            try:
                self._command, self._path, self._version = _parseRequestLine(request_line)
            except ValueError:
                self._respondToBadRequestAndDisconnect()
                return
            for line in fields:
                if not self.headerReceived(line):
                    return
            self._HTTPChannel__header = b""
            self.allHeadersReceived()
            if self.length == 0:
                self.allContentReceived()
            else:
                self.setRawMode()
        finally:
            self._busyReceiving = False
        if self.transport is None or getattr(self.transport, "disconnecting", False):
            self._buffer = b""  # as LineReceiver: nothing more of a refused request is read
            return
        rest = self.clearLineBuffer()
        if rest:
            LineReceiver.dataReceived(self, rest)


class RequestCompat(Request):
    """
    Twisted's ``Request`` for a channel that parses the header fields
    itself (:class:`ChannelCompat`): the fields are kept once, as sent, in
    :attr:`fields`, and Twisted's ``requestHeaders`` is made from them when
    somebody asks; Twisted's per-request parsing (``Content-Length``,
    cookies, the query string) is not done.  :meth:`process` runs once the
    body is complete, as in Twisted.

    :ivar fields: The header fields as the client sent them, in order and
        case (filled in by the channel).
    :ivar trailers: The trailer fields of a chunked body, once it ended
        with some (filled in by the channel), else ``None``.
    """

    trailers: list[tuple[bytes, bytes]] | None = None
    expects_continue = False  # an HTTP/1.1 client holds its body back (set by the channel)

    _fields_copied = 0  # of fields, into Twisted's requestHeaders

    def __init__(self, channel: HTTPChannel, queued: object = None) -> None:
        super().__init__(channel)
        self.fields: list[tuple[bytes, bytes]] = []

    @property
    def requestHeaders(self) -> Headers:
        """Twisted's ``Request.requestHeaders``, filled from :attr:`fields` when asked for."""
        headers = self._twisted_headers
        fields = self.fields
        if self._fields_copied < len(fields):
            for name, value in fields[self._fields_copied:]:
                headers.addRawHeader(name, value)
            self._fields_copied = len(fields)
        return headers

    @requestHeaders.setter
    def requestHeaders(self, headers: Headers) -> None:
        self._twisted_headers = headers
        self._fields_copied = 0

    def gotLength(self, length: int | None) -> None:
        """The body's framing is the channel's (it parsed the fields)."""

    def parseCookies(self) -> None:
        """Twisted parses ``Cookie`` for every request; a proxy relays it untouched."""

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """The whole request is in: Twisted's attributes, then :meth:`process`."""
        self.method, self.uri, self.clientproto = command, path, version
        self.path = path.split(b"?", 1)[0]
        self.args = {}
        self.process()


_CANONICAL = {b"content-length": b"Content-Length", b"transfer-encoding": b"Transfer-Encoding"}


def take_buffered(channel: HTTPChannel) -> bytes:
    """
    Remove and return the bytes *channel* has read but not parsed: what the
    client sent after the request being handled (often a TLS ClientHello
    right behind a ``CONNECT``).
    """
    pending: list[bytes] = channel._dataBuffer
    channel._dataBuffer = []
    return b"".join(pending) + channel.clearLineBuffer()


_EAGER_LIMIT = tcp.Connection.SEND_LIMIT


class _EagerWrites:
    """
    A TCP transport's ``write`` and ``writeSequence`` that send at once
    when nothing is queued before them (see :func:`send_eagerly`).
    """

    __slots__ = ("_transport", "_send", "_write")

    def __init__(self, transport: tcp.Connection) -> None:
        self._transport = transport
        self._send = transport.socket.send
        self._write = transport.write  # Twisted's own: queue, send when writable

    def write(self, data: bytes) -> None:
        """Send *data* now if the transport is idle, else queue it (Twisted)."""
        t = self._transport
        if (
            not t._tempDataLen and t.offset == len(t.dataBuffer) and len(data) <= _EAGER_LIMIT
            and t.connected and not t.disconnecting and not t._writeDisconnected
            and not t._aborting and not t.TLS and type(data) is bytes
        ):
            try:
                sent = self._send(data)
            except OSError:  # full (EAGAIN) or failing: Twisted's path finds out which
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self._write(data)

    def writeSequence(self, iovec: Sequence[bytes]) -> None:
        """:meth:`write` of the joined pieces."""
        self.write(b"".join(iovec))


def send_eagerly(transport: object) -> None:
    """
    Make a TCP *transport* send each write at once when nothing waits to be
    sent before it, instead of queuing it until the reactor's next turn
    finds the socket writable: the same bytes in the same order, with one
    system call for the write instead of three (the send and the two
    ``epoll_ctl`` that start and stop watching for writability) and no
    reactor turn spent on it.  A write the socket does not take whole, and
    any write while something is queued, goes Twisted's way, with its
    producer pausing.  Other transports (TLS, wrappers) are left as they
    are; a TCP transport that starts TLS later is, too (checked per write).
    """
    if isinstance(transport, tcp.Connection) and "write" not in vars(transport):
        eager = _EagerWrites(transport)
        transport.write = eager.write  # type: ignore[method-assign]
        transport.writeSequence = eager.writeSequence  # type: ignore[method-assign]


def dispatch_directly(reactor: object) -> bool:
    """
    Make an epoll *reactor* hand each ready connection to its event handler
    directly, instead of through ``log.callWithLogger``, which wraps every
    read and write event in the legacy log's context (four Python calls and
    a dict per event, a reactor event being two to three per proxied
    request).  The handler (``_doReadOrWrite``) catches and logs what a
    read or write raises either way; what is lost is the legacy ``log.msg``
    "system" prefix (``HTTPChannel,3,127.0.0.1``) on messages logged during
    an event, which twistproxy's own log lines do not carry anyway (they
    show their namespace).  0.936 of the instructions per request of scenario (a) with
    eight connections (``bench/instructions.py --sockets``).

    Only for the process's own reactor (twistd's): an application that
    embeds the proxy keeps its reactor as it is.

    :returns: Whether *reactor* is an epoll reactor and now dispatches so.
    """
    if not isinstance(reactor, EPollReactor):
        return False
    reactor.doIteration = partial(_poll_directly, reactor)  # type: ignore[method-assign]
    return True


def _poll_directly(reactor: EPollReactor, timeout: float | None) -> None:
    """``EPollReactor.doPoll`` without ``log.callWithLogger`` around each event."""
    try:
        events = reactor._poller.poll(-1 if timeout is None else timeout,
                                      len(reactor._selectables))
    except OSError as e:
        if e.errno == errno.EINTR:
            return
        raise
    handle = reactor._doReadOrWrite
    selectables = reactor._selectables
    for fd, event in events:
        selectable = selectables.get(fd)
        if selectable is not None:
            handle(selectable, fd, event)
