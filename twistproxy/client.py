# -*- test-case-name: tests.test_client -*-
"""
The upstream side: HTTP/1.1 connections to origin servers.

A :class:`ProxyClient` is one connection to an origin.  It carries one
exchange at a time for a *receiver* (the :class:`~twistproxy.proxy.ProxyRequest`
it serves), parses the response with httptools (llhttp) and reports the
response to the receiver as it arrives.  :meth:`ProxyClient.handleResponseEnd`
ends an exchange exactly once, whether the end of the message or the loss of
the connection comes first.  Idle keep-alive connections wait in a
:class:`~twistproxy.pool.ConnectionPool`, keyed by :class:`PoolKey`.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, NamedTuple
from typing import Protocol as TypingProtocol

import httptools
from twisted.internet.error import ConnectionDone
from twisted.internet.interfaces import IHandshakeListener, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from twistproxy._events import IResponseReceiver
from twistproxy._framing import NO_BODY, NO_BODY_STATUSES, UNTIL_CLOSE, response_framing
from twistproxy._headers import connection_tokens
from twistproxy._memorytls import ClientTLS
from twistproxy._timer import Deadline
from twistproxy._tls import describe_tls_failure, record_server_tls
from twistproxy._twisted_compat import send_eagerly
from twistproxy.connection import Server
from twistproxy.errors import (
    UpstreamConnectionLost,
    UpstreamProtocolError,
    UpstreamTLSFailed,
    upstream_error,
)

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress


_log = Logger()

class PoolKey(NamedTuple):
    """
    What a pooled connection is good for: the origin's scheme, host and
    port, and for ``https`` the server name sent as SNI and verified; with
    *proxy*, those of an upstream proxy, the connection carrying
    absolute-form requests to any origin (:mod:`twistproxy._upstream_proxy`).
    """

    scheme: str
    host: str
    port: int
    server_name: str | None = None
    proxy: bool = False


class _Keeper(TypingProtocol):
    """
    What a connection asks of the pool that keeps it (a
    :class:`~twistproxy.pool.ConnectionPool`).
    """

    clock: IReactorTime
    max_response_header_size: int

    def release(self, client: ProxyClient) -> None:
        """Take back *client*, whose exchange ended and which can carry another."""

    def forget(self, client: ProxyClient) -> None:
        """Drop *client*, which closed or is being closed, from the idle ones."""

    def disconnected(self, client: ProxyClient) -> None:
        """*client*'s connection closed: stamp its record."""


class _Unsolicited(Exception):
    """
    Raised inside the parser when bytes start a response after the exchange
    ended: the connection cannot be trusted with another one.
    """


class _SkipBody(Exception):
    """
    Raised inside the parser to end a response to HEAD at its headers:
    httptools cannot be told that such a response has no body.
    """


@implementer(IHandshakeListener)
class ProxyClient(Protocol):
    """
    One HTTP/1.1 connection to an origin server.

    Over TLS it is an ``IHandshakeListener``: when the handshake completes,
    its facts and the server's certificate go on :attr:`server`
    (:func:`~twistproxy._tls.record_server_tls`), or on the record made
    later when there is none yet.

    :ivar key: The pool key this connection belongs to.
    :ivar father: The receiver of the exchange in progress, ``None`` between
        exchanges; taken and cleared by :meth:`handleResponseEnd` and on
        failure, so each exchange ends once.
    :ivar reused: ``True`` once the connection has carried an exchange, or
        waited idle before its first (one the pool adopted): the origin may
        have closed it meanwhile, so the retry rule applies to it.
    :ivar server: The connection record flows using this connection share.
    :ivar max_header_size: Bytes a response's header fields may take; more
        fails the exchange (502).
    :ivar deadline: While the connection waits in a pool, when the pool
        closes it; while it carries an :class:`UpstreamExchange`, how long
        the origin may stay silent (set by :class:`ProxyClientFactory`).
    :ivar answered: A byte of a response (an interim one too) arrived
        during the exchange in progress.
    :ivar lost: The connection has ended.
    :ivar upgraded: The origin switched protocols (``101``) for an upgrade
        request: the connection left its pool, reading is paused, and
        :attr:`switched_data` holds the bytes that followed the ``101``
        head; it is the next protocol's (:meth:`take_switched`).
    :ivar tls_done: The TLS handshake on the connection completed.
    :ivar adopted: The pool adopted it from a ``CONNECT`` (opened for the
        tunnel, not because the pool had none idle).
    """

    father: IResponseReceiver | None = None
    server: Server | None = None
    max_header_size = 64 * 1024
    deadline: Deadline
    answered = False
    _header_bytes = 0
    # A TCP (or TLS) transport: ITransport, IPushProducer and IConsumer.
    transport: Any
    reused = False
    _pool: _Keeper | None = None
    _started = False
    _head_read = False  # the read being handled brought a response head
    _until_close = False
    _request_sent = True
    _method = b"GET"
    _keep_alive = True
    _upgrade = False  # the request in progress asks for a protocol switch
    _switching = False  # ... and the 101 head is being read
    upgraded = False
    switched_data = b""
    lost = False
    tls_done = False
    adopted = False

    def __init__(self, key: PoolKey) -> None:
        self.key = key
        self._parser = httptools.HttpResponseParser(self)
        self._fields: list[tuple[bytes, bytes]] = []
        self._reason = b""

    # -- sending -----------------------------------------------------------

    def send(
        self,
        father: IResponseReceiver,
        data: Sequence[bytes],
        *,
        method: bytes,
        complete: bool = True,
        upgrade: bool = False,
    ) -> None:
        """
        Start an exchange: write a request's head and whatever body is known.

        :param father: Who receives the response.
        :param data: The bytes to write (head, then body pieces).
        :param method: The request's method, which decides whether the
            response has a body (not for ``HEAD``).
        :param complete: *data* is the whole request; with ``False`` the
            body follows through :meth:`write_body` and :meth:`end_body`.
        :param upgrade: The request asks for a WebSocket: a ``101`` answers
            it (and ends HTTP on this connection) instead of being an error.
        """
        assert self.father is None, "one exchange at a time"
        self.father = father
        self._method = method
        self._upgrade = upgrade
        self._switching = False
        self.answered = False
        self._started = False
        self._until_close = False
        self._request_sent = complete
        self._fields = []
        assert self.transport is not None
        self.transport.writeSequence(data)

    def write_body(self, data: Sequence[bytes]) -> None:
        """Write more of a streamed request body."""
        assert self.transport is not None
        self.transport.writeSequence(data)

    def end_body(self, data: Sequence[bytes] = ()) -> None:
        """Write the end of a streamed request body."""
        self._request_sent = True
        if data:
            assert self.transport is not None
            self.transport.writeSequence(data)

    # -- receiving ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        """Feed the parser; a malformed response fails the exchange."""
        if self.father is None:
            # Nothing is owed to anyone: a response nobody asked for.
            self._abort()
            return
        try:
            self._parser.feed_data(data)
            if self._head_read:  # this read brought a head: say it is over
                self._head_read = False
                if self.father is not None:
                    self.father.read_done()
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, _SkipBody):
                self._parser = httptools.HttpResponseParser(self)
                if not data.endswith(b"\r\n\r\n"):
                    self._keep_alive = False  # bytes after a bodiless response
                self.handleResponseEnd()
            elif isinstance(cause, _Unsolicited):
                self._abort()
            elif isinstance(cause, UpstreamProtocolError):
                self._fail(Failure(cause))
            else:
                # A receiver's callback raised: a bug, not the server's fault.
                _log.failure("relaying a response failed", Failure(cause))
                self._fail(Failure(UpstreamProtocolError(f"relaying the response failed: {e}")))
        except httptools.HttpParserUpgrade as e:
            # llhttp stops behind a 101 with Upgrade and Connection: upgrade.
            if self._switching:
                self._switched(data[e.args[0]:])
            else:
                self._fail(Failure(UpstreamProtocolError("the server switched protocols unasked")))
        except httptools.HttpParserError as e:
            self._fail(Failure(UpstreamProtocolError(f"bad response from the server: {e}")))

    def _switched(self, rest: bytes) -> None:
        """
        The ``101`` head is over; *rest* is what followed it, the next
        protocol's.  The connection leaves the pool, reading pauses until
        somebody takes it over (:meth:`take_switched`), and the exchange
        ends.
        """
        self._switching = False
        if self.father is None:  # abandoned meanwhile (a hook killed the flow)
            return
        self.upgraded = True
        self._keep_alive = False
        self.switched_data = rest
        if self._pool is not None:
            self._pool.forget(self)
        self.deadline.cancel()
        self.transport.pauseProducing()
        father, self.father = self.father, None
        self._started = False
        if father is not None:
            father.response_ended()

    def take_switched(self) -> bytes:
        """
        Take over a connection the origin switched to another protocol
        (:attr:`upgraded`): return the bytes that followed the ``101``.
        The caller hands the transport to the new protocol
        (:func:`~twistproxy._connect.hand_over`).
        """
        data, self.switched_data = self.switched_data, b""
        return data

    def on_message_begin(self) -> None:
        """httptools callback: a message starts; bytes nobody asked for stop here."""
        if self.father is None:
            raise _Unsolicited()
        self.answered = True
        self._reason = b""
        self._header_bytes = 0

    def on_status(self, reason: bytes) -> None:
        """httptools callback: the reason phrase (not called when it is empty)."""
        self._reason += reason

    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools callback: one header field (their total size is bounded)."""
        self._fields.append((name, value))
        self._header_bytes += len(name) + len(value) + 4
        if self._header_bytes > self.max_header_size:
            raise UpstreamProtocolError("the response headers are too large")

    def on_headers_complete(self) -> None:
        """httptools callback: the head is complete; report it."""
        parser = self._parser
        status = parser.get_status_code()
        fields, self._fields = self._fields, []
        if not 100 <= status <= 599:  # RFC 9110 section 15: outside it, invalid
            raise UpstreamProtocolError(
                f"the server answered with status {status:03d}, which HTTP does not have "
                "(100-599)"
            )
        if status < 200:
            if status == 101:
                if not self._upgrade:
                    raise UpstreamProtocolError("the server switched protocols unasked")
                if not _switches_to_websocket(fields):
                    raise UpstreamProtocolError(
                        "the server's 101 does not say Upgrade: websocket, Connection: upgrade"
                    )
                self._switching = True
                self._report_switch(fields)
                return
            if self.father is not None:  # an interim response (100 Continue, 103...)
                self.father.response_interim(status, self._reason, fields)
            return
        self._started = True
        self._keep_alive = parser.should_keep_alive()
        version = b"HTTP/" + parser.get_http_version().encode("ascii")
        framing = response_framing(self._method, status, fields)
        self._until_close = framing == UNTIL_CLOSE
        father = self.father
        assert father is not None
        self._head_read = True
        father.response_started(status, self._reason, version, fields, framing)
        if framing == NO_BODY and status not in NO_BODY_STATUSES and self.father is father:
            # httptools knows 204 and 304 have no body, not the answer to a
            # HEAD (or a CONNECT).
            raise _SkipBody()

    def _report_switch(self, fields: list[tuple[bytes, bytes]]) -> None:
        """Report the ``101`` head that answers an upgrade request."""
        version = b"HTTP/" + self._parser.get_http_version().encode("ascii")
        father = self.father
        assert father is not None
        father.response_started(101, self._reason, version, fields, NO_BODY)

    def on_body(self, body: bytes) -> None:
        """
        httptools callback: a piece of the body; llhttp lets an interim
        response (say 199) declare one, which is not the final response's.
        """
        father = self.father
        if father is not None and self._started:
            father.response_data(body)

    def on_message_complete(self) -> None:
        """
        httptools callback: a message is complete; fields read after its
        head were its trailers.
        """
        if self._started and not self._switching:
            if self._fields:  # (each head's fields were taken at its end)
                trailers, self._fields = self._fields, []
                if self.father is not None:
                    self.father.response_trailers(trailers)
            self.handleResponseEnd()

    def handleResponseEnd(self) -> None:
        """
        End the exchange in progress successfully: runs once per exchange,
        whoever calls it first (the parser at the end of the message, or
        :meth:`connectionLost` for a body delimited by the connection's end).
        The connection goes back to the pool when it can carry another one.
        """
        father, self.father = self.father, None
        if father is None:
            return
        self._started = False
        self.reused = True
        reusable = self._keep_alive and self._request_sent and not self._until_close
        pool = self._pool
        if reusable and pool is not None and self.transport is not None:
            pool.release(self)
        else:
            self._abort()
        father.response_ended()

    def connectionMade(self) -> None:
        """Send small requests at once and without delay (under TLS too)."""
        transport = self.transport
        send_eagerly(transport.transport if isinstance(transport, ClientTLS) else transport)
        setTcpNoDelay = getattr(self.transport, "setTcpNoDelay", None)
        if setTcpNoDelay is not None:
            setTcpNoDelay(True)

    def handshakeCompleted(self) -> None:
        """
        ``IHandshakeListener``: TLS with the server (the origin, or an
        ``https`` upstream proxy) is up; record its facts on :attr:`server`
        if the connection has its record yet (:meth:`record_tls`).
        """
        self.tls_done = True
        self.record_tls()

    def record_tls(self) -> None:
        """
        Once the TLS handshake completed and the connection has its record,
        put the handshake's facts on the record (its SNI, ALPN, version and
        the server's certificate); otherwise do nothing.
        """
        server = self.server
        if self.tls_done and server is not None:
            record_server_tls(server, self.transport.getHandle())

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """
        The connection ended: completes a close-delimited body, fails any
        other exchange in progress, and leaves the pool.
        """
        self.lost = True
        if self._pool is not None:
            self._pool.forget(self)
            self._pool.disconnected(self)
        if self.father is not None:
            if self._started and self._until_close and reason.check(ConnectionDone):
                # Only a clean close ends a body delimited by the close; a
                # reset leaves it truncated.
                self._keep_alive = False
                self.handleResponseEnd()
            elif self._started:
                self._fail(
                    Failure(UpstreamConnectionLost("the server closed the connection mid-response"))
                )
            elif reason.check(ssl.SSLError):
                name = self.key.server_name or self.key.host
                why = describe_tls_failure(reason, name)
                self._fail(Failure(UpstreamTLSFailed(f"TLS with {name} failed: {why}")))
            else:
                self._fail(upstream_error(reason))

    def _fail(self, reason: Failure) -> None:
        father, self.father = self.father, None
        self._abort()
        if father is not None:
            father.response_failed(reason)

    def abandon(self) -> None:
        """
        Drop the exchange in progress without telling its receiver, and close
        the connection: the receiver went away.
        """
        self.father = None
        self._abort()

    def _abort(self) -> None:
        self._keep_alive = False
        if self._pool is not None:
            self._pool.forget(self)
        transport = self.transport
        if transport is not None:
            transport.abortConnection()

    @property
    def peer(self) -> IAddress | None:
        """The origin's address, once connected."""
        return self.transport.getPeer() if self.transport is not None else None


def _switches_to_websocket(fields: list[tuple[bytes, bytes]]) -> bool:
    """Whether a ``101``'s *fields* say ``Upgrade: websocket`` and ``Connection: upgrade``."""
    upgrade = [value for name, value in fields if name.lower() == b"upgrade"]
    return (
        len(upgrade) == 1 and upgrade[0].strip().lower() == b"websocket"
        and b"upgrade" in connection_tokens(fields)
    )


def host_and_port(address: IAddress | None) -> tuple[str, int] | None:
    """
    The ``(host, port)`` of an IPv4/IPv6 address (as a transport's
    ``getPeer``/``getHost`` gives it) for a connection record, or ``None``
    for an address without both (a UNIX socket, none at all).
    """
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    if host is None or port is None:
        return None
    return (host, port)


class ProxyClientFactory(ClientFactory):
    """
    Builds the :class:`ProxyClient` for one new upstream connection.

    :ivar key: The pool key of the connection.
    """

    protocol = ProxyClient
    noisy = False

    def __init__(self, pool: _Keeper, key: PoolKey) -> None:
        self.pool = pool
        self.key = key

    def buildProtocol(self, addr: IAddress | None) -> ProxyClient:
        """Make the connection's protocol, attached to the pool."""
        client = ProxyClient(self.key)
        client.factory = self
        client._pool = self.pool
        client.deadline = Deadline(self.pool.clock, client.abandon)
        client.max_header_size = self.pool.max_response_header_size
        return client
