# -*- test-case-name: tests.test_hardening -*-
"""
The client side's connection: :class:`Proxy`, an ``HTTPChannel`` that
frames the client's requests strictly.

Twisted's channel parses the requests and queues them, so pipelined requests
are answered in order.  This subclass adds what a proxy must refuse that a
web server may let pass (bare LF line ends, folded header lines, control
characters, ambiguous framing, heads beyond the configured limits, slow
heads, bodies trickled below a minimum pace), keeps every header field as it
arrived for the request, records the client connection for the flows and
runs the connection hooks.  Each
request is a :class:`~twistproxy.proxy.ProxyRequest`, told when its head is
complete.
"""

from __future__ import annotations

import re
import ssl
from typing import Any

from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twistproxy._framing import NO_BODY, content_length, transfer_coding
from twistproxy._headers import connection_tokens, expects_continue, trailer_fields
from twistproxy._target import Tunnel
from twistproxy._timer import Deadline, Pace
from twistproxy._tls import describe_tls_failure
from twistproxy._tunnel import Relay
from twistproxy._twisted_compat import ChannelCompat, send_eagerly
from twistproxy.client import PoolKey, host_and_port
from twistproxy.connection import Client
from twistproxy.errors import BadFraming, RequestBodyTimeout, describe, error_response

_log = Logger()

_BARE_LF = re.compile(rb"(?<!\r)\n")
_CONTROL = re.compile(rb"[\x00-\x08\x0a-\x1f\x7f]")
_TOKEN = re.compile(rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+")
_STREAM_BUFFER = 512 * 1024  # client write buffer before a streamed origin is paused


@implementer(IPushProducer)
class ClientReading:
    """
    A channel's reading from its client, as the producer of a request body
    streaming upstream: a slow origin pauses it, and the body's pace clock
    with it (:meth:`Proxy.pause_reading`).
    """

    __slots__ = ("_channel",)

    def __init__(self, channel: Proxy) -> None:
        self._channel = channel

    def pauseProducing(self) -> None:
        """The origin is full: stop reading from the client."""
        self._channel.pause_reading()

    def resumeProducing(self) -> None:
        """The origin takes more: read from the client again."""
        self._channel.resume_reading()

    def stopProducing(self) -> None:
        """The upstream connection is gone: so is the client's reason to send."""
        self._channel.transport.stopProducing()


class Busy(Protocol):
    """Answers a connection beyond ``max_connections`` with 503, then closes."""

    def connectionMade(self) -> None:
        """Answer at once and close."""
        self.transport.write(  # type: ignore[union-attr]
            error_response(503, b"Service Unavailable", "too many connections",
                           fields=[(b"Retry-After", b"1")])
        )
        self.transport.loseConnection()  # type: ignore[union-attr]


class Proxy(ChannelCompat):
    """
    An HTTP/1.1 connection from a proxy client.

    :ivar client_conn: The connection record shared by this channel's flows.
    :ivar tunnel: For a channel inside an intercepted tunnel, where the
        tunnel goes; its requests are in origin form and go there.
    :ivar body_pace: The minimum pace of the request body being read
        (:class:`~twistproxy._timer.Pace`, :class:`~twistproxy.limits.Limits`).
    :ivar reading: The client's reading as a producer (:class:`ClientReading`).
    """

    client_conn: Client
    tunnel: Tunnel | None = None
    # A TCP (or TLS) transport: ITransport, IPushProducer and IConsumer.
    transport: Any
    _tls_recorded = False
    _head_lines = 0  # lines of the request head read so far
    _head_bytes = 0
    _last_byte = b""
    _version = b""  # of the request whose head is being read
    _request_line = b""
    _host: Any = None
    _peer: Any = None
    _origin: Relay | None = None
    handed_over = False  # the connection went on to a tunnel or a WebSocket (hand_over)
    _draining = False
    _served = False  # a request on this connection was answered
    _pace_due = False  # a body is expected but held back (100-continue): paced from its first byte
    _body_stopped = False  # the body was too slow: what else the client sends is dropped

    def adopt(self, client_conn: Client, tunnel: Tunnel, origin: Relay | None = None) -> None:
        """
        Serve the requests inside an intercepted tunnel: the flows share the
        outer connection's *client_conn*, whose connection hooks already ran.

        :param origin: The connection the ``CONNECT`` opened to the tunnel's
            target: the pool keeps it for the first request (see
            :meth:`pool_origin`), or it is closed with this channel.
        """
        self.client_conn = client_conn
        self.tunnel = tunnel
        self._origin = origin

    def pool_origin(self, server_name: str | None) -> None:
        """
        Hand the ``CONNECT``'s connection to the upstream pool, as an idle
        connection for the tunnel's scheme, host and port (for ``https``,
        TLS with *server_name*), where the first request inside takes it.
        """
        origin, self._origin = self._origin, None
        tunnel = self.tunnel
        if origin is None or tunnel is None:
            return
        key = PoolKey(tunnel.scheme, tunnel.host, tunnel.port, server_name)
        self.factory.pool.adopt(key, origin)

    def tls_server_name(self) -> str:
        """
        The name to present to the origin inside the tunnel: the client's
        SNI, else the tunnel's host.  The first call records the TLS details
        (version, SNI, ALPN) on :attr:`client_conn`.
        """
        tunnel = self.tunnel
        assert tunnel is not None
        client = self.client_conn
        if not self._tls_recorded:
            self._tls_recorded = True
            tls = self.transport  # a ServerTLS
            client.tls_established = True
            client.sni = tls.server_name
            client.alpn = tls.alpn()
            client.tls_version = tls.tls_version()
        return client.sni or tunnel.host

    def server_name(self, host: str) -> str:
        """
        The TLS name to present to an ``https`` origin *host* (and verify it
        against): inside an intercepted tunnel to that host, the client's
        SNI (:meth:`tls_server_name`); otherwise (a reverse proxy's origin
        too: the client's SNI names the proxy) *host*.
        """
        tunnel = self.tunnel
        if (tunnel is not None and host == tunnel.host and tunnel.scheme == "https"
                and not tunnel.reverse):
            return self.tls_server_name()
        return host

    def handshakeCompleted(self) -> None:
        """
        ``IHandshakeListener``: inside an intercepted tunnel, the client's
        TLS handshake is done; record its details on :attr:`client_conn`,
        and start TLS with the same name on the ``CONNECT``'s connection.
        """
        self.pool_origin(self.tls_server_name())

    def make_room_for_streams(self) -> None:
        """
        A response streams to the client: let a few reads queue before the
        client's buffer pauses the origin (at Twisted's 64 KiB every read
        paused and resumed it).
        """
        transport = self.transport
        if getattr(transport, "bufferSize", _STREAM_BUFFER) < _STREAM_BUFFER:
            transport.bufferSize = _STREAM_BUFFER

    def relay_closed(self, relay: Relay | None = None) -> None:
        """The client's side of a tunnel closed (relayed raw, or not yet sniffed)."""
        self._closed()

    # -- the request head: limits and strict framing ---------------------

    def dataReceived(self, data: bytes) -> None:
        """
        Start the head timer when a request's first byte arrives, and refuse
        a head whose lines end in a bare LF (parsers that accept it and
        parsers that do not would see different requests).
        """
        if not self.line_mode:
            if self._body_stopped:
                return
            pace = self.body_pace
            if pace.running:
                pace.received(len(data))
            elif self._pace_due:
                self._pace_due = False
                self._start_pace()
        else:
            if not self._head_deadline.active():
                self._head_deadline.start(self.factory.limits.header_timeout)
            # Every LF behind a CR (two counts in C) is the common case.
            if data.count(b"\n") != data.count(b"\r\n") and self._bare_lf(data):
                self._refuse(400, b"Bad Request", "lines must end with CRLF, not a bare LF")
                return
            self._last_byte = data[-1:]
            if self._head_lines == 0 and self._whole_head(data):
                return
        super().dataReceived(data)

    def _whole_head(self, data: bytes) -> bool:
        """
        Take a request head that arrived whole at the start of *data* at
        once (:meth:`take_head`) when the line checks of
        :meth:`lineReceived` would pass every line of it; ``False``: it is
        to be read line by line (it is cut, or a line may be refused).
        """
        end = data.find(b"\r\n\r\n")
        if end <= 0 or data[0] == 0x0D:  # cut, or a stray empty line first
            return False
        limits = self.factory.limits
        head = data[:end]
        if end + 4 > limits.max_header_size or b"\r\n " in head or b"\r\n\t" in head:
            return False
        lines = head.split(b"\r\n")
        request_line = lines[0]
        if (len(request_line) > limits.max_request_line
                or len(lines) > limits.max_header_count + 1 or not self.can_take_head()):
            return False
        self._request_line = request_line
        del lines[0]
        self.take_head(request_line, lines, data[end + 4:])
        return True

    def _bare_lf(self, data: bytes) -> bool:
        """
        Whether the head in *data* has a line ending in a bare LF.  Only the
        head is looked at (a body or a ClientHello may follow it in the same
        read); the previous read's last byte is context for a CRLF split in
        two.
        """
        last = self._last_byte
        text = last + data
        end = text.find(b"\r\n\r\n")
        return _BARE_LF.search(text, len(last), len(text) if end == -1 else end + 4) is not None

    def _head_timed_out(self) -> None:
        self._refuse(408, b"Request Timeout", "the request head took too long to arrive")

    def lineReceived(self, line: bytes) -> None:
        """Enforce the head's limits and refuse folded header lines."""
        limits = self.factory.limits
        if self._head_lines == 0:
            if not line:
                super().lineReceived(line)  # Twisted eats one stray empty line
                return
            if len(line) > limits.max_request_line:
                self._refuse(414, b"URI Too Long", "the request line is too long")
                return
            # Twisted splits it the same way, and refuses any other shape.
            self._request_line = line
            self._version = line.rpartition(b" ")[2]
        elif line and line[0] in (0x20, 0x09):
            self._refuse(400, b"Bad Request", "folded header lines (obs-fold) are not accepted")
            return
        self._head_bytes += len(line) + 2
        if self._head_bytes > limits.max_header_size:
            self._refuse(431, b"Request Header Fields Too Large", "the request head is too large")
            return
        if line:
            self._head_lines += 1
            if self._head_lines > limits.max_header_count + 1:
                self._refuse(431, b"Request Header Fields Too Large", "too many header fields")
                return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A line longer than any limit allows, still without its end."""
        if self._head_lines == 0:
            self._refuse(414, b"URI Too Long", "the request line is too long")
        else:
            self._refuse(431, b"Request Header Fields Too Large", "a header line is too long")

    def bad_request(self) -> None:
        """Twisted found the request malformed: answer with a reason."""
        self._refuse(400, b"Bad Request", "malformed request")

    def _refuse(self, status: int, phrase: bytes, reason: str) -> None:
        """Answer a request that cannot be read any further, and close."""
        self._head_deadline.stop()
        if self.transport is None or self.transport.disconnecting:
            return
        self.transport.write(error_response(status, phrase, reason))
        self.loseConnection()

    def headerReceived(self, line: bytes) -> bool:
        """
        Check a header field and keep it as sent: a token for a name, no
        control characters in the value (Twisted refuses only NUL, CR and
        LF; origins may refuse the rest), and a body framing that says one
        thing.
        """
        name, colon, value = line.partition(b":")
        if not colon or _TOKEN.fullmatch(name) is None:
            self.bad_request()
            return False
        if _CONTROL.search(value):
            self._refuse(400, b"Bad Request", "control characters in a header value")
            return False
        value = value.strip(b" \t")
        request = self.requests[-1]
        request.fields.append((name, value))
        if len(name) == 14 or len(name) == 17:
            try:
                framing = None
                if name.lower() == b"content-length":
                    framing = content_length(value)
                elif name.lower() == b"transfer-encoding":
                    framing = transfer_coding(value, self._version)
            except BadFraming as e:
                self._refuse(400, b"Bad Request", str(e))
                return False
            if framing is not None:
                request.framing = framing
                return self.choose_body_decoder(name, value)
        return True

    def trailers_received(self, lines: list[bytes]) -> None:
        """
        Keep a chunked request's trailer fields on the request, each checked
        as a header field is; a line that is not a field is dropped (it is
        never passed on), as are the fields no trailer may carry.
        """
        request = self.requests[-1]
        trailers = []
        for line in lines:
            name, colon, value = line.partition(b":")
            if colon and _TOKEN.fullmatch(name) and not _CONTROL.search(value):
                trailers.append((name, value.strip(b" \t")))
        request.trailers = trailer_fields(trailers)

    def checkPersistence(self, request: Any, version: bytes) -> bool:
        """
        Whether the connection stays open after this request: HTTP/1.1
        without a ``close`` token.  Twisted's own check splits ``Connection``
        on spaces and misses ``close`` in ``Connection: close, X-Foo``.
        """
        if version != b"HTTP/1.1" or self._draining:
            return False
        return b"close" not in connection_tokens(request.fields)

    def allHeadersReceived(self) -> None:
        """
        The head is complete: whether the connection persists, ``100
        Continue`` to a client that expects it, and the request builds its
        flow and runs hooks.  (Twisted's own also parses cookies and reads
        the fields back from ``requestHeaders``, which a proxy needs not.)
        """
        self._head_lines = self._head_bytes = 0
        self._head_deadline.stop()
        request = self.requests[-1]
        self.persistent = self.checkPersistence(request, self._version)
        # Who asks for a held-back body is the exchange's to decide.
        request.expects_continue = self._version == b"HTTP/1.1" and expects_continue(
            request.fields
        )
        command, path, version = self._request_line.split(b" ")
        if request.framing != NO_BODY and request.framing != 0:
            if request.expects_continue:
                self._pace_due = True  # the client waits for 100 Continue
            else:
                self._start_pace()
        request.headers_received(command, path, version)

    # -- the request body: a minimum pace ------------------------------------

    def _start_pace(self) -> None:
        limits = self.factory.limits
        window = limits.body_timeout
        self.body_pace.start(window, int(window * limits.body_min_rate))

    def allContentReceived(self) -> None:
        """The request body is complete: its pace no longer matters."""
        self.body_pace.stop()
        self._pace_due = False
        super().allContentReceived()

    def pause_reading(self) -> None:
        """
        ``IPushProducer.pauseProducing`` for the request body: stop reading
        from the client, and stop the body's pace clock (the proxy holds the
        client back: that time is not the client's).
        """
        self.body_pace.pause()
        self.transport.pauseProducing()

    def resume_reading(self) -> None:
        """Read from the client again; its body's pace is measured anew."""
        self.body_pace.resume()
        self.transport.resumeProducing()

    def _body_too_slow(self) -> None:
        """
        The request body fell below the minimum pace: read no more of it,
        and fail its request (408, or an aborted connection if an answer
        started); the connection closes after.
        """
        self._body_stopped = True
        self.persistent = False
        self.transport.pauseProducing()
        limits = self.factory.limits
        reason = RequestBodyTimeout(
            f"the request body arrived too slowly (under {limits.body_min_rate} bytes/s "
            f"over {limits.body_timeout:g} s)"
        )
        if self.requests:
            self.requests[-1].body_timed_out(reason)
        else:  # (a request ends only once its body is in: not reached)
            self.loseConnection()

    # -- the connection ---------------------------------------------------

    def connectionMade(self) -> None:
        """Record the client and run the ``client_connected`` hook."""
        clock = self.factory.reactor
        self._idle_deadline = Deadline(clock, self.timeoutConnection)
        self._head_deadline = Deadline(clock, self._head_timed_out)
        self.body_pace = Pace(clock, self._body_too_slow)
        self.reading = ClientReading(self)
        super().connectionMade()
        limits = self.factory.limits
        # Twisted's own checks answer 400; ours come first with 414/431.
        self.totalHeadersSize = limits.max_header_size + 1
        self.maxHeaders = limits.max_header_count + 1
        self.MAX_LENGTH = max(limits.max_request_line, limits.max_header_size)
        factory = self.factory
        factory.channels.add(self)
        if self.tunnel is not None:
            return  # adopted: the outer connection did this
        # A response is one write: sent at once, without delay.
        send_eagerly(self.transport)
        setTcpNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            setTcpNoDelay(True)
        self.client_conn = Client(
            peername=host_and_port(self.getPeer()),
            sockname=host_and_port(self.getHost()),
            timestamp_start=factory.reactor.seconds(),
            proxy_mode=factory.mode_text,
        )
        if factory.entry is not None:
            # A listener whose clients speak something else first (SOCKS5),
            # or whose requests go to one place (reverse, transparent).
            factory.entry(self)
        if factory.chain.has("client_connected"):
            d = factory.chain.run("client_connected", self.client_conn)
            if d is not None:
                self.transport.pauseProducing()
                d.addBoth(self._client_hook_done)

    def _client_hook_done(self, result: object) -> None:
        """
        The ``client_connected`` hook ended: the client is served either
        way; a hook that failed was logged by the chain and is as if absent.
        """
        if self.transport is not None:
            self.transport.resumeProducing()

    def getHost(self) -> Any:
        """The local address, asked of the transport once (Twisted asks per request)."""
        host = self._host
        if host is None:
            host = self._host = self.transport.getHost()
        return host

    def getPeer(self) -> Any:
        """The client's address, asked of the transport once."""
        peer = self._peer
        if peer is None:
            peer = self._peer = self.transport.getPeer()
        return peer

    # -- timeouts: Twisted's TimeoutMixin interface, on a Deadline ---------

    def setTimeout(self, period: float | None) -> float | None:
        """
        ``TimeoutMixin.setTimeout``: change the idle timeout (``None``: none).
        Twisted stops and restarts it around every request; a
        :class:`~twistproxy._timer.Deadline` makes that cost no timer.
        """
        previous: float | None = self.timeOut
        self.timeOut = period  # type: ignore[assignment]
        if period is None:
            self._idle_deadline.stop()
        else:
            self._idle_deadline.start(period)
        return previous

    def resetTimeout(self) -> None:
        """``TimeoutMixin.resetTimeout``: restart a running idle timeout."""
        if self.timeOut is not None and self._idle_deadline.active():
            self._idle_deadline.start(self.timeOut)

    def stop_deadlines(self) -> None:
        """Cancel every timer of the connection (it closed or changed hands)."""
        self._idle_deadline.cancel()
        self._head_deadline.cancel()
        self.body_pace.cancel()

    # -- shutting down (twistproxy._drain) ---------------------------------

    def requestDone(self, request: Any) -> None:
        """A request was answered: the connection is between requests now."""
        self._served = True
        super().requestDone(request)

    def drain(self) -> None:
        """
        The proxy stops: close the connection once it is idle.  Between
        requests it closes now; with a request in hand (or before its
        first) after that response (announced with ``Connection: close``
        when its head is still to go).  A tunnel or WebSocket it went on to
        runs on until :meth:`shut`.
        """
        self._draining = True  # the requests to come do not persist (checkPersistence)
        if self.handed_over or self.transport is None:
            return
        if self.requests:
            self.persistent = False  # (between requests, Twisted would drop what comes)
        elif self._served and not self._head_deadline.active():
            self.loseConnection()

    def shut(self, reason: Failure) -> bool:
        """
        The drain's deadline: give up what the connection still carries.  A
        request is failed with *reason* (its 503, or an aborted connection
        once its response started: see the exchange's ``CANCEL``), a head
        still arriving is answered 503, a tunnel or WebSocket is aborted;
        an idle connection is closed.

        :returns: Whether something was given up.
        """
        transport = self.transport
        if transport is None or transport.disconnecting:
            return False
        if self.handed_over:
            transport.abortConnection()
            return True
        if self.requests and self.requests[0].cancel(reason):
            return True
        if self.requests or self._head_deadline.active():
            self._refuse(503, b"Service Unavailable", describe(reason))
            return True
        self.loseConnection()
        return False

    def abort(self) -> None:
        """The drain waited long enough: abort the connection."""
        if self.transport is not None:
            self.transport.abortConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """Tell the requests, then run the ``client_disconnected`` hook."""
        super().connectionLost(reason)
        self.stop_deadlines()
        origin, self._origin = self._origin, None
        if origin is not None and not origin.lost:
            origin.transport.loseConnection()  # the client left before a request
        if self.tunnel is not None and not self._tls_recorded and reason.check(ssl.SSLError):
            peer = self.client_conn.peername
            _log.info(
                "TLS with client {client} for {host} failed: {why} "
                "(does the client trust the twistproxy CA?)",
                client=f"{peer[0]}:{peer[1]}" if peer else "?", host=self.tunnel.host,
                why=describe_tls_failure(reason, None),
            )
        self._closed()

    def _closed(self) -> None:
        client = getattr(self, "client_conn", None)
        factory = getattr(self, "factory", None)
        if client is None or factory is None:
            return
        client.timestamp_end = factory.reactor.seconds()
        factory.channels.remove(self)
        factory.connections -= 1
        factory.run_detached("client_disconnected", client)
