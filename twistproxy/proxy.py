# -*- test-case-name: tests.test_proxy -*-
"""
The proxy's requests and their factory: :class:`ProxyRequest` and
:class:`ProxyFactory`.

A :class:`ProxyRequest` is the HTTP/1 shell around one exchange: the
decisions (which hook runs when, buffering or streaming, when to connect,
what to answer) are :class:`~twistproxy._exchange.Exchange`'s; this class
turns Twisted's callbacks, the hook chain's and the upstream's into its
events, and carries out the actions it answers with on the transports.
:class:`ProxyFactory` builds the :class:`~twistproxy.channel.Proxy`
channels, and holds what they share: the hooks, the upstream pool, the
limits and the certificates.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http import HTTPFactory, Request

from twistproxy._chain import HookWaiter
from twistproxy._connect import Interception, open_tunnel, switch
from twistproxy._drain import OpenChannels
from twistproxy._events import Action, Event, ResponseHead
from twistproxy._exchange import Exchange
from twistproxy._framing import (
    CHUNKED,
    NO_BODY,
    UNTIL_CLOSE,
    chunk,
    forwarded_request,
    forwarded_response,
)
from twistproxy._headers import interim_head, last_chunk, request_head, response_head
from twistproxy._request import new_flow
from twistproxy._tls import GivenCertificate, ServerContexts, UpstreamTLS
from twistproxy._twisted_compat import RequestCompat
from twistproxy._upstream import UpstreamExchange
from twistproxy._upstream_proxy import make_pool
from twistproxy._websocket import switch_websocket
from twistproxy.channel import Busy, Proxy
from twistproxy.client import ProxyClient
from twistproxy.connection import Server
from twistproxy.errors import (
    AddonError,
    BadRequestTarget,
    HookFailed,
    LoopDetected,
    describe,
    error_response,
    error_status,
)
from twistproxy.hooks import HookChain
from twistproxy.http import HTTPFlow, Response
from twistproxy.lifecycle import AddonManager
from twistproxy.limits import Limits
from twistproxy.modes import REGULAR, Mode, entry_for
from twistproxy.pool import ConnectionPool, EndpointFactory, hostname_endpoints

if TYPE_CHECKING:
    from twisted.internet.interfaces import IAddress

    from twistproxy._tunnel import Relay
    from twistproxy.certs import CertificateStore

CONNECTION_STRATEGIES = ("eager", "lazy")
"""When an intercepted ``CONNECT`` connects to its target: see :class:`ProxyFactory`."""

DEFAULT_BODY_LIMIT = 1024 * 1024
"""Bodies up to this many bytes are buffered for the hooks; larger ones stream."""

_CONNECTION_HOOKS = ("client_connected", "client_disconnected", "server_disconnected")
# The events, as module names: an Enum member read as a class attribute is a
# Python-level look-up in CPython 3.11.
_BODY_DATA = Event.BODY_DATA
_BODY_END = Event.BODY_END
_CLIENT_GONE = Event.CLIENT_GONE
_HEAD = Event.HEAD
_HOOK_DONE = Event.HOOK_DONE
_HOOK_FAILED = Event.HOOK_FAILED
_HOOK_PENDING = Event.HOOK_PENDING
_RESPONSE_DATA = Event.RESPONSE_DATA
_RESPONSE_END = Event.RESPONSE_END
_RESPONSE_HEAD = Event.RESPONSE_HEAD
_UPSTREAM_FAILED = Event.UPSTREAM_FAILED
_UPSTREAM_READY = Event.UPSTREAM_READY


class ProxyRequest(RequestCompat, HookWaiter):
    """
    One proxied request and its flow.

    Subclass it to intercept traffic: methods named after the flow hooks
    (``requestheaders``, ``request``, ``responseheaders``, ``response``,
    ``error``, ``server_connected``, ``http_connect``, and
    ``websocket_start``, ``websocket_message`` and ``websocket_end`` for a
    request switched to a WebSocket) run before every
    addon's, take the flow and may return a Deferred or be coroutines.
    Bodies are buffered for a subclass's ``request`` and ``response``
    unless it sets ``stream_bodies = True``
    (:attr:`~twistproxy.hooks.IAddon.stream_bodies`).

    :ivar flow: The request's flow, once its head is read (``None`` for a
        request the proxy refuses).
    :ivar fields: The header fields as the client sent them, in order and
        case (filled in by the channel; see
        :class:`~twistproxy._twisted_compat.RequestCompat`).
    :ivar framing: How the client frames the body
        (:func:`~twistproxy._framing.request_framing`; set by the channel).
    """

    stream_bodies = False
    flow: HTTPFlow | None = None
    channel: Any  # the Proxy channel; Twisted sets it to None once the client is gone
    framing = NO_BODY
    _exchange: Exchange | None = None
    _handle: Callable[[Event, float, Any], Any]  # the exchange's handle()
    _upstream: Any = None  # the UpstreamExchange, or a CONNECT's TunnelEnd
    _body_transport: Any = None  # the upstream transport the client's produces for
    _gone = False  # the client's connection is gone
    _busy = False  # carrying out actions: events wait in _queue
    _chunked = False  # the request body goes upstream chunked
    _upgrade = False  # the request goes upstream asking for a WebSocket
    _head_due = False  # a request without a body: its head goes in with process()
    _response_trailers: list[tuple[bytes, bytes]] | None = None

    def __init__(self, channel: Proxy, queued: object = None) -> None:
        super().__init__(channel)
        self._factory: ProxyFactory = channel.factory
        self._seconds = channel.factory.reactor.seconds
        self._queue: list[tuple[Event, Any]] = []

    # -- Twisted's callbacks ---------------------------------------------------

    def headers_received(self, command: bytes, uri: bytes, version: bytes) -> None:
        """The channel read the request's head: make the flow and start."""
        self.method, self.uri, self.clientproto = command, uri, version
        factory = self._factory
        refusal = None
        try:
            self.flow = new_flow(
                self.channel.client_conn, command, uri, version, self.fields,
                tunnel=self.channel.tunnel,
                via=factory.via, passthrough=factory.passes_through,
                now=factory.reactor.seconds(), clock=factory.reactor.seconds,
            )
        except (BadRequestTarget, LoopDetected) as e:
            refusal = e
        self._exchange = exchange = factory.exchange(self, refusal)
        self._handle = exchange.handle
        if self.framing == NO_BODY or self.framing == 0:
            # No body: Twisted calls process() next, where the head goes in
            # as the whole request, one event instead of two.
            self._head_due = True
        else:
            self._event(_HEAD)

    def handleContentChunk(self, data: bytes) -> None:
        """A piece of the request body (transfer coding removed)."""
        self._event(_BODY_DATA, data)

    def process(self) -> None:
        """The request body is complete (for a request without one: the head too)."""
        if self._head_due:
            self._head_due = False
            self._event(_HEAD, True)
        else:
            self._event(_BODY_END, self.trailers)

    def body_timed_out(self, reason: BaseException) -> None:
        """
        The channel stopped reading the request body, too slow (*reason*):
        the exchange fails (408, or an aborted connection once an answer
        started; the error hook runs), and the connection closes after.
        """
        if self._exchange is not None and not self._gone:
            self._event(Event.CLIENT_FAILED, Failure(reason))

    def connectionLost(self, reason: Failure) -> None:
        """The client went away: the exchange stops."""
        super().connectionLost(reason)
        self._gone = True
        if self._exchange is not None:
            self._event(_CLIENT_GONE)

    def cancel(self, reason: Failure) -> bool:
        """
        The proxy gives the request up (its shutdown deadline passed): the
        exchange fails with *reason*.  ``False``: there is none yet (the
        head is still arriving).
        """
        if self._exchange is None or self._head_due:
            return False
        if not self._gone:
            self._event(Event.CANCEL, reason)
        return True

    # -- what the upstream side reports (IUpstreamReceiver) ---------------------

    def upstream_ready(self, server: Server | None) -> None:
        """The upstream side is open."""
        self._event(_UPSTREAM_READY, server)

    def response_started(
        self, status: int, reason: bytes, version: bytes,
        fields: list[tuple[bytes, bytes]], framing: int,
    ) -> None:
        """The response head arrived (on the connection now in ``upstream.server``)."""
        head = ResponseHead(version, status, reason, fields, framing, self._upstream.server)
        self._event(_RESPONSE_HEAD, head)

    def response_data(self, data: bytes) -> None:
        """A piece of the response body."""
        self._event(_RESPONSE_DATA, data)

    def response_interim(
        self, status: int, reason: bytes, fields: list[tuple[bytes, bytes]]
    ) -> None:
        """An interim (1xx) response came before the final one."""
        self._event(Event.RESPONSE_INTERIM, ResponseHead(b"HTTP/1.1", status, reason, fields,
                                                         NO_BODY))

    def response_trailers(self, fields: list[tuple[bytes, bytes]]) -> None:
        """The response body's trailer fields (its end comes next)."""
        self._response_trailers = fields

    def read_done(self) -> None:
        """The read that brought the response head is handled."""
        if self._exchange.head_due:  # type: ignore[union-attr]
            self._event(Event.READ_DONE)

    def response_ended(self) -> None:
        """
        The response is complete.  (After a ``101`` to a WebSocket upgrade
        the upstream side keeps the origin's connection, for ``SWITCH``.)
        """
        upstream = self._upstream
        if upstream is not None and getattr(upstream, "switched", None) is None:
            self._upstream = None
        self._event(_RESPONSE_END, self._response_trailers)

    def response_failed(self, reason: Failure) -> None:
        """The upstream side failed."""
        self._upstream = None
        self._event(_UPSTREAM_FAILED, reason)

    # -- events in, actions out ---------------------------------------------------

    def _event(self, event: Event, arg: Any = None) -> None:
        """
        Hand *event* to the exchange and carry out its actions; an event
        raised meanwhile waits until they are all carried out.
        """
        if self._busy:
            self._queue.append((event, arg))
            return
        self._busy = True
        try:
            for action, value in self._handle(event, self._seconds(), arg):
                _PERFORM[action](self, value)
            queue = self._queue
            while queue:
                event, arg = queue.pop(0)
                for action, value in self._handle(event, self._seconds(), arg):
                    _PERFORM[action](self, value)
        finally:
            self._busy = False

    def _run_hook(self, hook: str) -> None:
        d = self._factory.chain.run(hook, self.flow, first=self)
        if d is None:  # done already; RUN_HOOK ends its list, so its event goes in now
            for action, value in self._handle(_HOOK_DONE, self._seconds(), None):
                _PERFORM[action](self, value)
            return
        if self._wait_for_hook(d):
            self._event(_HOOK_PENDING)

    def _pause_client(self, _: object) -> None:
        if not self._gone:
            self.channel.pause_reading()

    def _resume_client(self, _: object) -> None:
        if not self._gone:
            self.channel.resume_reading()

    def _forward_body(self, data: bytes) -> None:
        self._upstream.write_body(chunk(data) if self._chunked else (data,))

    def _open_upstream(self, upgrade: bool | None) -> None:
        request = self.flow.request  # type: ignore[union-attr]
        assert request is not None
        channel, factory = self.channel, self._factory
        server_name = channel.server_name(request.host) if request.scheme == "https" else None
        self._upgrade = upgrade = bool(upgrade)
        key = factory.pool.key_for(request.scheme, request.host, request.port, server_name,
                                   tunnel=channel.tunnel is not None)
        self._upstream = upstream = UpstreamExchange(
            factory.pool, key, self, method=request.method.encode("ascii"),
            timeout=factory.limits.upstream_timeout, here=channel.getHost(),
            on_connected=self.server_hook(), upgrade=upgrade,
        )
        upstream.open()

    def server_hook(self) -> Callable[[Server], Deferred[Any] | None] | None:
        """What runs the ``server_connected`` hook for a new connection (``None``: none)."""
        if "server_connected" not in self._exchange.hooks:  # type: ignore[union-attr]
            return None
        chain = self._factory.chain
        return lambda server: chain.run("server_connected", server, first=self)

    def swap_upstream(self, upstream: Any) -> Any:
        """Make *upstream* the upstream side (a CONNECT's tunnel end); return the last one."""
        last, self._upstream = self._upstream, upstream
        return last

    def _send_request(self, arg: tuple[bool, Sequence[bytes] | None]) -> None:
        request = self.flow.request  # type: ignore[union-attr]
        assert request is not None
        complete, body = arg
        if body is not None:
            size = sum(map(len, body))
        else:
            content = request.raw_content or b""
            body, size = ((content,) if content else ()), len(content)
        trailers = request.trailers
        if trailers:  # they follow a chunked body
            framing = CHUNKED
        else:
            framing = forwarded_request(self.framing, size if complete else None)
        self._chunked = chunked = framing == CHUNKED
        upstream, factory = self._upstream, self._factory
        data = [request_head(request, framing, factory.via, self._upgrade,
                             factory.pool.proxy_fields(upstream.key))]
        for piece in body:
            data += chunk(piece) if chunked else (piece,)
        if complete and chunked:
            data.append(last_chunk(trailers.fields if trailers else None))
        upstream.send(data, complete=complete)
        if not complete:
            self._body_transport = transport = upstream.transport
            transport.registerProducer(self.channel.reading, True)

    def _end_body(self, _: object) -> None:
        self._stop_body(None)
        trailers = self.flow.request.trailers  # type: ignore[union-attr]
        self._upstream.end_body(
            (last_chunk(trailers.fields if trailers else None),) if self._chunked else ()
        )

    def _stop_body(self, _: object) -> None:
        transport, self._body_transport = self._body_transport, None
        if transport is not None:
            transport.unregisterProducer()

    def _hold_upstream(self, held: bool) -> None:
        self._upstream.hold(held)

    def _relay_response(self, data: bytes) -> None:
        # Request.write's first-write and HEAD checks are for a head it
        # writes itself: _write_head wrote this one.
        if data and not self._gone:
            self.sentLength += len(data)
            transport = self.channel.transport
            if self.chunked:
                transport.writeSequence(chunk(data))
            else:
                transport.write(data)

    def _send_head(self, arg: tuple[int, Sequence[bytes]]) -> None:
        response = self.flow.response  # type: ignore[union-attr]
        assert response is not None
        received, body = arg
        framing = forwarded_response(
            self.method, response.status_code, received, None, self.clientproto
        )
        data: list[bytes] = []
        for piece in body:
            if piece:
                data += chunk(piece) if framing == CHUNKED else (piece,)
        self._write_head(response, framing, data, own=False)
        upstream = self._upstream
        if upstream is not None and not self._gone:
            self.channel.make_room_for_streams()
            self.registerProducer(upstream, True)

    def _continue(self, _: object) -> None:
        if not self._gone:
            self.channel.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def _write_interim(self, head: ResponseHead) -> None:
        if not self._gone:
            self.channel.transport.write(interim_head(head.status, head.reason, head.fields))

    def _write_response(self, own: bool) -> None:
        response = self.flow.response  # type: ignore[union-attr]
        assert response is not None
        content = response.raw_content or b""
        framing = forwarded_response(
            self.method, response.status_code, NO_BODY, len(content), self.clientproto
        )
        trailers = response.trailers
        if trailers and framing >= 0 and self.clientproto == b"HTTP/1.1":
            # Trailers follow a chunked body: the body as one chunk, then them.
            body = [*chunk(content), last_chunk(trailers.fields)] if content else [
                last_chunk(trailers.fields)]
            self._write_head(response, CHUNKED, body, own)
            self.chunked = 0  # the last chunk is out
            return
        self._write_head(response, framing, (content,) if content and framing > 0 else (), own)

    def _write_head(
        self, response: Response, framing: int, body: Sequence[bytes], own: bool
    ) -> None:
        channel = self.channel
        if framing == UNTIL_CLOSE:
            channel.persistent = False
        self.code = response.status_code
        self.code_message = response.reason.encode("utf-8", "surrogateescape")
        self.startedWriting, self.chunked = 1, int(framing == CHUNKED)
        self.sentLength = sum(map(len, body))
        head = response_head(self.clientproto, self.code, self.code_message,
                             response.headers.fields, framing=framing,
                             close=not channel.persistent, own=own)
        channel.writeSequence([head, *body])  # one joined head: Twisted checks each piece

    def _error_page(self, reason: Failure) -> None:
        self.code, self.code_message = error_status(reason)
        self.startedWriting = 1
        self.channel.write(error_response(
            self.code, self.code_message, describe(reason), version=self.clientproto,
            close=not self.channel.persistent, head=self.method == b"HEAD",
        ))

    def _close_after(self, _: object) -> None:
        self.channel.persistent = False

    def _finish(self, _: object) -> None:
        if self.producer is not None:
            self.unregisterProducer()
        if self.chunked:  # a streamed chunked body: its last chunk, with any trailers
            response = self.flow.response if self.flow is not None else None
            trailers = response.trailers if response is not None else None
            if trailers and not self._gone:
                self.channel.transport.write(last_chunk(trailers.fields))
                self.chunked = 0
        self.finish()

    def _abandon_upstream(self, _: object) -> None:
        self._stop_body(None)
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            upstream.abandon()

    def _abort_client(self, _: object) -> None:
        if not self._gone:
            self.channel.transport.abortConnection()

    def _switch(self, to: str | None) -> None:
        if to == "websocket":
            switch_websocket(self)
        else:
            switch(self, to)



_PERFORM: dict[Action, Callable[[ProxyRequest, Any], None]] = {
    Action.RUN_HOOK: ProxyRequest._run_hook,
    Action.CANCEL_HOOK: ProxyRequest._cancel_hook,
    Action.PAUSE_CLIENT: ProxyRequest._pause_client,
    Action.RESUME_CLIENT: ProxyRequest._resume_client,
    Action.FORWARD_BODY: ProxyRequest._forward_body,
    Action.OPEN_UPSTREAM: ProxyRequest._open_upstream,
    Action.OPEN_TUNNEL: open_tunnel,
    Action.SEND_REQUEST: ProxyRequest._send_request,
    Action.END_BODY: ProxyRequest._end_body,
    Action.STOP_BODY: ProxyRequest._stop_body,
    Action.HOLD_UPSTREAM: ProxyRequest._hold_upstream,
    Action.RELAY_RESPONSE: ProxyRequest._relay_response,
    Action.SEND_HEAD: ProxyRequest._send_head,
    Action.CONTINUE: ProxyRequest._continue,
    Action.WRITE_INTERIM: ProxyRequest._write_interim,
    Action.WRITE_RESPONSE: ProxyRequest._write_response,
    Action.ERROR_PAGE: ProxyRequest._error_page,
    Action.CLOSE_AFTER: ProxyRequest._close_after,
    Action.FINISH: ProxyRequest._finish,
    Action.ABANDON_UPSTREAM: ProxyRequest._abandon_upstream,
    Action.ABORT_CLIENT: ProxyRequest._abort_client,
    Action.SWITCH: ProxyRequest._switch,
}


def _ignore_cancel(reason: Failure) -> None:
    reason.trap(CancelledError, HookFailed)


class ProxyFactory(Interception, HTTPFactory):
    """
    Builds :class:`~twistproxy.channel.Proxy` channels sharing one
    configuration: the hooks, the upstream pool and the limits.

    :param reactor: The reactor for timeouts, timestamps and, by default,
        upstream connections.
    :param addons: Addon objects, run in order after the request class's own
        hook methods, or an :class:`~twistproxy.lifecycle.AddonManager` that
        several factories share (its lifecycle hooks then run once for all).
    :param request_factory: The :class:`ProxyRequest` subclass to use.
    :raises AddonError: if an addon or *request_factory* has a misspelt hook,
        or *request_factory* defines a connection hook (those belong in
        addons: a request lives for one request).
    :param endpoint_factory: Makes the endpoint for an upstream connection
        from ``(scheme, host, port)``; by default a ``HostnameEndpoint``.
    :param body_limit: Bodies up to this many bytes are buffered for hooks.
    :param timeout: Seconds an idle client connection is kept open.
    :param connect_timeout: Seconds to wait for an upstream connection.
    :param pool: The upstream connection pool; by default a new one.
    :param cert_store: Mints the certificates for intercepted CONNECT
        tunnels; without one, every tunnel is passed through untouched.
    :param ignore_hosts: Regular expressions searched in ``host:port`` of a
        CONNECT: matching tunnels are passed through untouched.
    :param upstream_tls: TLS settings towards ``https`` origins (trust,
        ``--insecure``); by default verified against the system's store.
    :param limits: Sizes, counts and times the proxy enforces.
    :param hook_timeout: Seconds each hook's Deferred or coroutine may take;
        then it is cancelled and the flow fails with ``HookTimeout`` (500).
        ``None``: no deadline.
    :param intercept_timeout: Seconds a flow held with ``flow.intercept()``
        may wait for ``flow.resume()``; then it fails the same way. ``None``
        (the default): it waits for as long as it takes.
    :param connection_strategy: ``"eager"`` (the default): an intercepted
        ``CONNECT`` connects to its target before it is answered, as a
        passed-through one always does, so an unreachable target is the
        ``CONNECT``'s 502 or 504, and the connection serves the first
        request inside; ``"lazy"``: an intercepted ``CONNECT`` is answered
        once its certificate is minted, and connections are made when a
        request inside needs one (for hooks that answer them all, such as
        server replay without a network, or that send them elsewhere).
    :param mode: The listener's mode (:mod:`twistproxy.modes`): a
        ``regular`` proxy by default; one factory per listener.
    :param keep_host_header: In ``reverse`` mode, send the client's
        ``Host`` to the origin rather than the origin's own authority.
    :param upstream_auth: ``upstream`` mode: ``USER:PASS`` for its proxy (Basic).
    :param certificates: Certificates of the user's own, presented instead
        of minted ones for the names they match (``--certs``; with a
        *cert_store* only).
    :raises ValueError: if *hook_timeout* or *intercept_timeout* is not a
        positive finite number, *connection_strategy* is neither, or
        *upstream_auth* is not ``USER:PASS``.
    :ivar addons: The :class:`~twistproxy.lifecycle.AddonManager`.
    :ivar contexts: The per-host TLS contexts for interception, or ``None``.
    :ivar connect_eagerly: The connection strategy is ``eager``.
    :ivar connections: Client connections open now.
    :ivar channels: The channels serving them, for a drain.
    :ivar via: This proxy's ``Via`` entry, unique to the process.
    :ivar mode: The *mode* given.
    :ivar mode_text: *mode* as text, for the flows' ``client_conn.proxy_mode``.
    :ivar entry: What the mode does with a new connection first
        (:func:`~twistproxy.modes.entry_for`), or ``None``.
    """

    protocol = Proxy  # type: ignore[assignment]  # HTTPFactory types this as its H2 wrapper
    noisy = False

    def __init__(
        self,
        *,
        reactor: IReactorTime,
        addons: Sequence[object] | AddonManager = (),
        request_factory: type[ProxyRequest] = ProxyRequest,
        endpoint_factory: EndpointFactory | None = None,
        body_limit: int = DEFAULT_BODY_LIMIT,
        timeout: float = 60.0,
        connect_timeout: float = 30.0,
        pool: ConnectionPool | None = None,
        cert_store: CertificateStore | None = None,
        ignore_hosts: Sequence[str] = (),
        upstream_tls: UpstreamTLS | None = None,
        limits: Limits | None = None,
        hook_timeout: float | None = 60.0,
        intercept_timeout: float | None = None,
        connection_strategy: str = "eager",
        mode: Mode = REGULAR,
        keep_host_header: bool = False,
        upstream_auth: str | None = None,
        certificates: Sequence[GivenCertificate] = (),
    ) -> None:
        super().__init__(timeout=timeout, reactor=reactor)
        self.mode = mode
        self.mode_text = str(mode)
        self.entry = entry_for(mode, keep_host=keep_host_header)
        if connection_strategy not in CONNECTION_STRATEGIES:
            raise ValueError(
                f"connection_strategy must be one of {', '.join(CONNECTION_STRATEGIES)}, "
                f"not {connection_strategy!r}"
            )
        self.connect_eagerly = connection_strategy == "eager"
        self.limits = limits if limits is not None else Limits()
        self.connections = 0
        self.channels = OpenChannels(reactor)
        # A token of this process for Via: seeing it again means a loop.
        self.via = b"1.1 twistproxy-" + os.urandom(4).hex().encode("ascii")
        self.contexts = (
            ServerContexts(cert_store, given=certificates) if cert_store is not None else None
        )
        self._ignore_hosts = [re.compile(pattern, re.IGNORECASE) for pattern in ignore_hosts]
        self.request_factory = request_factory
        self.addons = AddonManager.of(addons)
        self.chain = HookChain(
            self.addons.addons, first_base=ProxyRequest, clock=reactor,
            timeout=hook_timeout, intercept_timeout=intercept_timeout,
        )
        misplaced = self.chain.first_hooks(request_factory) & set(_CONNECTION_HOOKS)
        if misplaced:
            raise AddonError(
                f"{request_factory.__qualname__} defines {', '.join(sorted(misplaced))}: a "
                "ProxyRequest lives for one request, so connection hooks belong in an addon"
            )
        self.addons.attach(self)
        if endpoint_factory is None:
            endpoint_factory = hostname_endpoints(reactor, connect_timeout)
        self.pool = make_pool(  # through the upstream proxy in upstream mode
            pool, mode, upstream_auth, reactor=reactor, endpoint_factory=endpoint_factory,
            connect_timeout=connect_timeout, tls=upstream_tls,
            max_response_header_size=self.limits.max_response_header_size,
        )
        self.body_limit = body_limit
        self.pool.on_disconnect = self.server_closed

    def buildProtocol(self, addr: IAddress | None) -> Any:
        """
        Make a channel for a new client connection, or, beyond
        ``limits.max_connections``, a protocol that answers 503 and closes.
        """
        maximum = self.limits.max_connections
        if maximum and self.connections >= maximum:
            return Busy()
        self.connections += 1
        return self._channel(addr)

    def _channel(self, addr: IAddress | None) -> Proxy:
        channel: Proxy = super().buildProtocol(addr)  # type: ignore[assignment]
        channel.requestFactory = self.request_factory
        return channel

    def exchange(self, request: ProxyRequest, refusal: BaseException | None) -> Exchange:
        """The exchange for *request*, whose flow is made (or *refusal* says why not)."""
        hooks, whole = self.hooks_for(type(request))
        return Exchange(
            request.flow, refusal=refusal, hooks=hooks, whole=whole,
            body_limit=self.body_limit, declared=request.framing,
            intercepting=self.contexts is not None, expect=request.expects_continue,
        )

    def hooks_for(self, cls: type[ProxyRequest]) -> tuple[frozenset[str], frozenset[str]]:
        """What ``chain.hooks_for`` says of the addons and *cls* (a request class)."""
        return self.chain.hooks_for(cls)

    def server_closed(self, owner: ProxyClient | Relay) -> None:
        """
        A connection to an origin (pooled, or a passthrough tunnel's) closed:
        stamp its record and run ``server_disconnected``.
        """
        server = owner.server
        if server is None:
            return
        if server.timestamp_end is None:
            server.timestamp_end = self.reactor.seconds()
        self.run_detached("server_disconnected", server)

    def run_detached(self, hook: str, subject: object) -> None:
        """
        Run a connection *hook* nobody waits for; its failure is logged by
        the chain and goes no further.
        """
        if self.chain.has(hook):
            d = self.chain.run(hook, subject)
            if d is not None:
                d.addErrback(_ignore_cancel)

    def startFactory(self) -> None:
        """Tell the addons' manager (``running`` once every listener is up)."""
        self.addons.started(self)

    def stopFactory(self) -> None:
        """Close the idle upstream connections; tell the addons' manager (``done``)."""
        self.pool.close()
        self.addons.stopped(self)

    def log(self, request: Request) -> None:
        """Twisted's access log is not written; see the flow log addon."""
